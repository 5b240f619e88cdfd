"""The fetch loop's idle path (fastworker/fetcher.py), one tick at a time, with stand-ins for Redis
and the sidecar: what it asks of Redis, and in which order, when every queue is empty."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from fastworker import core
from fastworker.batching import BatchPlanner, Offer
from fastworker.breaker import Breaker
from fastworker.fetcher import Fetcher
from fastworker.limiter import Limiter

JOB = b'{"class":"HardJob","args":[],"jid":"0123456789abcdef01234567","queue":"default","retry":true}'


class Redis:
    """Empty queues; ``push`` wakes the blocked BLMOVE with one job. ``calls`` is every command
    and every job started, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.pushed: asyncio.Queue[bytes] = asyncio.Queue()
        self.health = SimpleNamespace(succeeded=lambda: None, failed=lambda *a: None)

    async def fetch(self, n: int, orders: bytes) -> list[tuple[str, bytes]]:
        self.calls.append("fetch")
        return []

    async def wait_for_job(self, queue: str, timeout: float) -> bytes | None:
        self.calls.append("blmove")
        return await self.pushed.get()

    async def bulk_requeue(self, items: Any) -> None:
        self.calls.append("requeue")


async def test_a_waker_blocks_again_only_after_the_job_it_took_has_started():
    """The job a BLMOVE brings goes to the sidecar before the next BLMOVE is written: that write
    sits on the job's path otherwise (the pickup latency of an idle worker)."""
    redis = Redis()
    manager = SimpleNamespace(fast_in_flight=0, spawn=lambda queue, env, fast=False: redis.calls.append("start"))
    processor = SimpleNamespace(sidecar=SimpleNamespace(max_body=1 << 20))
    fetcher = Fetcher(redis, Limiter(5), manager, processor, Breaker(),  # type: ignore[arg-type]
                      BatchPlanner(5, Offer()), [("default", 0)])
    idle = asyncio.ensure_future(fetcher.tick())  # every queue empty: the loop idles, its waker blocks
    await asyncio.sleep(0.01)
    assert redis.calls == ["fetch", "blmove"]
    redis.pushed.put_nowait(JOB)
    await asyncio.wait_for(idle, 1)  # the waker takes the job and wakes the loop
    await fetcher.tick()  # the job starts
    idle = asyncio.ensure_future(fetcher.tick())  # the fetch behind it finds nothing: idle again
    await asyncio.sleep(0.01)
    assert redis.calls == ["fetch", "blmove", "start", "fetch", "blmove"]
    fetcher.stop()
    await asyncio.wait_for(idle, 1)
    assert core.decode_envelope(JOB).jid == "0123456789abcdef01234567"
    for t in fetcher._wakers:
        t.cancel()
