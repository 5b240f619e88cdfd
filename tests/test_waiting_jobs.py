"""Batched jobs that mostly wait (a quick database or Redis round trip) run at the same time in the
sidecar, as Sidekiq's processor threads run them, instead of waiting one after the other on the
batch's request thread. Against the real Rails sidecar (examples/rails_app's WaitWorker, which
sleeps a fifth of a millisecond and records when it ran); Ruby's Sidekiq client enqueues."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_BASE, TEST_DB
from tests.helpers import rails
from tests.helpers.procs import ruby_json, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from vs_sidekiq import most_at_once  # noqa: E402  (the benchmark's --slow mode counts the same way)

URL = f"{REDIS_BASE}/{TEST_DB}"
pytestmark = [pytest.mark.rails, pytest.mark.ruby]
JOBS = 800


@pytest.fixture(scope="module")
def sidecar() -> Iterator[rails.Sidecar]:
    yield from rails.serve(URL, threads=10)


def test_batched_jobs_that_wait_run_at_the_same_time(redis_url, r, worker, sidecar):
    ruby_json(redis_url, f'puts {JOBS}.times.map {{ Sidekiq::Client.push("class" => "WaitWorker", '
                         f'"args" => ["waited", 0.0002]) }}.to_json')
    w = worker("-c", "10", sidecar_url=sidecar.url)
    wait_until(lambda: r.llen("waited") >= JOBS, 60, what=f"{JOBS} WaitWorker jobs")
    assert 'endpoint="perform_batch"' in sidecar.metrics(), "WaitWorker jobs never shared a request"
    runs = [tuple(map(float, v.split())) for v in r.lrange("waited", 0, -1)]
    # once the worker batches them and the sidecar has learned that they wait: the last half.
    # One after the other, a batch is one Puma thread; the worker's pipelined lanes share it.
    late = most_at_once(runs[JOBS // 2:])
    assert late >= 3, f"at most {late} WaitWorker jobs ran at once"
    assert w.events("job_requeued") == []
