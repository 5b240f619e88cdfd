"""Micro-benchmarks of the core, compiled twin vs pure twin.

Run: ``pytest bench/bench_core.py --benchmark-only`` (the default addopts skip benchmarks).
``--benchmark-group-by=group`` (the default) puts c and py of one function side by side;
the ``orjson.loads`` row is the parse floor that both decoders pay.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import orjson
import pytest

NO_EXTENSIONS = bool(os.environ.get("FASTWORKER_NO_EXTENSIONS"))

# A 6.4.1 client payload, byte for byte as LPUSHed (JSON.generate, merge order).
SIDEKIQ_641 = (
    b'{"retry":true,"queue":"default","args":[1,"x"],"class":"HardJob",'
    b'"jid":"5b0e4c2f7a9d1e3f4a5b6c7d","created_at":1700000000.123456,"enqueued_at":1700000000.124}'
)
# Rails 6.1's ActiveJob adapter wrapping a mailer-style job, after one failed attempt.
ACTIVEJOB = (
    b'{"class":"ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper","wrapped":"InvoiceMailerJob",'
    b'"queue":"mailers","args":[{"job_class":"InvoiceMailerJob","job_id":"0b8d8f6e-3c1e-4b5e-9c55-1f0e2d7c9a10",'
    b'"provider_job_id":null,"queue_name":"mailers","priority":null,'
    b'"arguments":[{"_aj_globalid":"gid://demo/Invoice/42"},"deliver_now"],"executions":1,'
    b'"exception_executions":{},"locale":"en","timezone":"UTC","enqueued_at":"2023-11-14T22:13:20Z"}],'
    b'"retry":true,"jid":"d1c3f0a9b8e7d6c5b4a39281","created_at":1700000000.5,"enqueued_at":1700000030.25,'
    b'"error_message":"Net::ReadTimeout","error_class":"Net::ReadTimeout","failed_at":1700000001.0,'
    b'"retry_count":0,"retried_at":1700000030.0}'
)


@pytest.fixture(params=["c", "py"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "c" and NO_EXTENSIONS:
        pytest.skip("FASTWORKER_NO_EXTENSIONS is set")
    return importlib.import_module({"c": "fastworker._core", "py": "fastworker._core_py"}[request.param])


@pytest.mark.benchmark(group="decode_envelope: Sidekiq 6.4.1 payload")
def test_orjson_loads_641_floor(benchmark) -> None:
    job = benchmark(orjson.loads, SIDEKIQ_641)
    assert job["class"] == "HardJob"


@pytest.mark.benchmark(group="decode_envelope: Sidekiq 6.4.1 payload")
def test_decode_641(benchmark, impl: ModuleType) -> None:
    env = benchmark(impl.decode_envelope, SIDEKIQ_641)
    assert (env.klass, env.queue, env.enqueued_at) == ("HardJob", "default", 1700000000.124)


@pytest.mark.benchmark(group="decode_envelope: ActiveJob payload")
def test_orjson_loads_activejob_floor(benchmark) -> None:
    job = benchmark(orjson.loads, ACTIVEJOB)
    assert job["wrapped"] == "InvoiceMailerJob"


@pytest.mark.benchmark(group="decode_envelope: ActiveJob payload")
def test_decode_activejob(benchmark, impl: ModuleType) -> None:
    env = benchmark(impl.decode_envelope, ACTIVEJOB)
    assert (env.worker_class, env.retry_count, env.failed_at) == ("InvoiceMailerJob", 0, 1700000001.0)


@pytest.mark.benchmark(group="retry_delay")
def test_retry_delay(benchmark, impl: ModuleType) -> None:
    assert benchmark(impl.retry_delay, 5, 37) == 5**4 + 15 + 37


@pytest.mark.benchmark(group="retry_jitter")
def test_retry_jitter(benchmark, impl: ModuleType) -> None:
    assert benchmark(impl.retry_jitter, 5, 0.37, True) == 22


@pytest.mark.benchmark(group="TokenPool.try_acquire")
def test_token_acquire(benchmark, impl: ModuleType) -> None:
    pool = impl.TokenPool(2**62)  # never fills, so every call takes a token
    assert benchmark(pool.try_acquire) is True


@pytest.mark.benchmark(group="TokenPool acquire+release cycle")
def test_token_cycle(benchmark, impl: ModuleType) -> None:
    pool = impl.TokenPool(16)
    acquire, release = pool.try_acquire, pool.release

    def cycle() -> None:
        acquire()
        release()

    benchmark(cycle)
    assert (pool.in_use, pool.peak) == (0, 1)


@pytest.mark.benchmark(group="job metrics (7.x/8.x Web UI Metrics tab): one job recorded")
def test_job_metrics_record(benchmark) -> None:
    """Was a timed test (under 0.5 µs per job); a shared machine made it flaky, so it is a figure."""
    from fastworker.job_metrics import JobMetrics
    from fastworker.keys import Keys

    record = JobMetrics(8, Keys()).record
    benchmark(record, "HardJob", 0.0123, True)
