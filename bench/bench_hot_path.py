"""Micro-benchmarks of the worker's hot path against a real Redis (per batch of 10 jobs).

Run: ``pytest bench/bench_hot_path.py --benchmark-only`` (REDIS_URL picks the server; DB 8 of the
local one by default, flushed). Rows:
- ``fetch round trip``: one ACK_FETCH call that lands the acks and counters of the 10 jobs of the
  last batch and fetches the next 10, then decodes them with the compiled core or its twin;
- ``ack flush``: the same call with nothing to fetch (every token busy, quiet);
- ``redis-py pipeline``: the flush as it was done before, the ack script and the INCRBYs in one
  redis-py pipeline (which sends SCRIPT EXISTS first), for comparison.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Iterator
from types import ModuleType

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from fastworker import scripts
from fastworker.broker import Broker
from fastworker.keys import Keys

URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/8")
NO_EXTENSIONS = bool(os.environ.get("FASTWORKER_NO_EXTENSIONS"))
BATCH = 10
JOBS = [orjson.dumps({"retry": True, "queue": "default", "class": "NoopWorker", "args": [],
                      "jid": f"{i:024x}", "created_at": 1700000000.5, "enqueued_at": 1700000000.5})
        for i in range(BATCH)]


@pytest.fixture(params=["c", "py"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "c" and NO_EXTENSIONS:
        pytest.skip("FASTWORKER_NO_EXTENSIONS is set")
    return importlib.import_module({"c": "fastworker._core", "py": "fastworker._core_py"}[request.param])


@pytest.fixture
def hot() -> Iterator[tuple[asyncio.AbstractEventLoop, Broker, redis.Redis]]:
    sync = redis.Redis.from_url(URL)
    sync.flushdb()
    loop = asyncio.new_event_loop()
    client = aioredis.Redis.from_url(URL)
    broker = loop.run_until_complete(_broker(client))
    yield loop, broker, sync
    loop.run_until_complete(broker.close())
    loop.run_until_complete(client.aclose())
    loop.close()
    sync.flushdb()
    sync.close()


async def _broker(client: aioredis.Redis) -> Broker:
    return Broker(client, client, Keys(), "bench:1:hot", ["default"])


def _refill(sync: redis.Redis) -> None:
    sync.lpush("queue:default", *JOBS)


@pytest.mark.benchmark(group="hot path: one batch of 10")
def test_fetch_round_trip(benchmark, hot, impl: ModuleType) -> None:
    loop, broker, sync = hot

    def cycle() -> int:
        for raw in JOBS:  # the previous batch finished: its acks ride on this fetch
            broker._acks.append(("default", raw))
        broker._processed += BATCH
        items = loop.run_until_complete(broker.fetch(BATCH))
        return len([impl.decode_envelope(raw) for _, raw in items])

    _refill(sync)
    loop.run_until_complete(broker.fetch(BATCH))
    got = benchmark.pedantic(cycle, setup=lambda: _refill(sync), rounds=300, warmup_rounds=20)
    assert got == BATCH


@pytest.mark.benchmark(group="hot path: ack flush of 10")
def test_ack_flush(benchmark, hot) -> None:
    loop, broker, sync = hot

    async def acked_and_flushed() -> None:
        for raw in JOBS:
            broker.ack("default", raw)
        # the call that lands them; flush() would first wait ACK_LINGER for a fetch to carry them
        await broker.fetch(0)

    def flush() -> None:
        loop.run_until_complete(acked_and_flushed())

    benchmark.pedantic(flush, rounds=300, warmup_rounds=20)
    assert int(sync.get("stat:processed") or 0) >= 300 * BATCH


@pytest.mark.benchmark(group="hot path: ack flush of 10")
def test_ack_flush_as_a_redis_py_pipeline(benchmark, hot) -> None:
    """The reference: what a redis-py Script in a pipeline costs (SCRIPT EXISTS every time)."""
    loop, broker, sync = hot
    client = broker.redis
    ack = client.register_script(scripts.REQUEUE)  # any script: the cost is redis-py's pipeline path

    async def flush() -> None:
        async with client.pipeline(transaction=False) as p:
            await ack(keys=["fastworker:bench:none", "fastworker:bench:none2"], args=[1, 2, b"x"], client=p)
            p.incrby("stat:processed", BATCH)
            p.incrby("stat:processed:2026-12-01", BATCH)
            p.expire("stat:processed:2026-12-01", 100)
            await p.execute()

    benchmark.pedantic(lambda: loop.run_until_complete(flush()), rounds=300, warmup_rounds=20)
