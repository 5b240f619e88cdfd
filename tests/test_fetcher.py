"""The fetch loop's idle path (fastworker/fetcher.py), one tick at a time, with stand-ins for Redis
and the sidecar: what it asks of Redis, and in which order, when every queue is empty."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from fastworker import core
from fastworker.batching import BatchPlanner, Offer
from fastworker.breaker import Breaker
from fastworker.capsules import Capsule
from fastworker.fetcher import Fetcher
from fastworker.limiter import Limiter
from redis.exceptions import ResponseError

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

    async def wait_for_job(self, queue: str, timeout: float) -> tuple[bytes | None, int]:
        self.calls.append("blmove")
        return await self.pushed.get(), 0

    async def bulk_requeue(self, items: Any) -> None:
        self.calls.append("requeue")


def idle_fetcher(redis: Redis) -> Fetcher:
    """A fetch loop of 5 tokens on ``redis``; each job it starts is a "start" in ``redis.calls``."""
    manager = SimpleNamespace(fast_in_flight=0, fast_requests=0,
                              spawn=lambda queue, env, fast=False: redis.calls.append("start"))
    processor = SimpleNamespace(sidecar=SimpleNamespace(max_body=1 << 20))
    return Fetcher(redis, Limiter(5), manager, processor, Breaker(),  # type: ignore[arg-type]
                   BatchPlanner(5, Offer()), Capsule("default", 5, (("default", 0),)))


async def test_a_waker_blocks_again_only_after_the_job_it_took_has_started():
    """The job a BLMOVE brings goes to the sidecar before the next BLMOVE is written: that write
    sits on the job's path otherwise (the pickup latency of an idle worker)."""
    redis = Redis()
    fetcher = idle_fetcher(redis)
    idle = asyncio.ensure_future(fetcher.tick())  # every queue empty: the loop idles, its waker blocks
    await asyncio.sleep(0.01)
    assert redis.calls == ["fetch", "blmove"]
    redis.pushed.put_nowait(JOB)
    await asyncio.wait_for(idle, 1)  # the waker takes the job and wakes the loop
    await fetcher.tick()  # the job starts
    idle = asyncio.ensure_future(fetcher.tick())  # a lone job of an idle worker: straight back to the waker
    await asyncio.sleep(0.01)
    assert redis.calls == ["fetch", "blmove", "start", "blmove"]
    fetcher.stop()
    await asyncio.wait_for(idle, 1)
    assert core.decode_envelope(JOB).jid == "0123456789abcdef01234567"
    for t in fetcher._wakers:
        t.cancel()


class DeepRedis:
    """A queue that always has a job for every token asked."""

    def __init__(self) -> None:
        self.health = SimpleNamespace(succeeded=lambda: None, failed=lambda *a: None)

    async def fetch(self, n: int, orders: bytes) -> list[tuple[str, bytes]]:
        return [("default", JOB)] * n

    async def bulk_requeue(self, items: Any) -> None:
        pass


class HeldSidecar:
    """A stand-in processor: each request stays in flight until the test answers it."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, asyncio.Future[None]]] = []
        self.sizes: list[int] = []
        self.on_finished: Any = None
        self.sidecar = SimpleNamespace(max_body=1 << 20)

    async def process_batch(self, works: list[Any]) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.requests.append((len(works), fut))
        self.sizes.append(len(works))
        try:
            await fut
        finally:
            for w in works:
                self.on_finished(w)

    async def process(self, work: Any) -> None:
        await self.process_batch([work])

    async def answer_oldest(self) -> None:
        _, fut = self.requests.pop(0)
        fut.set_result(None)
        for _ in range(20):  # the request's finally, then the fetch loop's ticks that follow it
            await asyncio.sleep(0)


async def test_a_deep_queue_keeps_fast_requests_to_the_lanes_the_sidecar_offers():
    """Before one Puma process that takes 2 requests pipelined, 10 tokens of no-op jobs run as two
    requests of 5 in turn. A third request in flight lands on a second connection, where two Puma
    threads fight for the GVL (batching.py, LANES). Started from the 3/3/4 split that an uneven
    warm-up leaves, the fetch loop must find its way back to two lanes, not keep three."""
    from fastworker.manager import Manager
    sidecar = HeldSidecar()
    limiter = Limiter(10)
    manager = Manager(sidecar, limiter, DeepRedis(), SimpleNamespace(now=lambda: 0.0, mono=lambda: 0.0))  # type: ignore[arg-type]
    planner = BatchPlanner(10, Offer(batch_max=32, processes=1, pipeline=2))
    planner.observe_runtime("HardJob", 0.00005)
    planner.observe_request(0.001, 0.0005)
    assert planner.batchable("HardJob") and planner.size == 5
    fetcher = Fetcher(DeepRedis(), limiter, manager, sidecar, Breaker(),  # type: ignore[arg-type]
                      planner, Capsule("default", 10, (("default", 0),)))
    env = core.decode_envelope(JOB)
    for size in (3, 3, 4):  # the uneven start
        for _ in range(size):
            assert limiter.try_acquire()
        manager.spawn_batch([("default", env)] * size)
    fetcher._deep = True
    loop = asyncio.ensure_future(fetcher.run())
    try:
        for _ in range(3):
            await asyncio.sleep(0)
        in_flight = []
        for _ in range(12):
            await sidecar.answer_oldest()
            in_flight.append(len(sidecar.requests))
        assert sidecar.sizes[-4:] == [5, 5, 5, 5], sidecar.sizes
        assert in_flight[-6:] == [2] * 6, in_flight  # each answer refilled at once, in one request
    finally:
        fetcher.stop()
        for _, fut in sidecar.requests:
            fut.set_result(None)
        await asyncio.wait_for(loop, 1)


def test_reconnect_backoff_doubles_with_jitter_up_to_its_cap_and_resets():
    """One rule for the fetch loop's and until_ok's pauses after a Redis error (clock.Backoff)."""
    from fastworker.clock import Backoff
    b = Backoff(cap=0.4)
    delays = [b.delay() for _ in range(5)]
    for d, base in zip(delays, [0.05, 0.1, 0.2, 0.4, 0.4], strict=True):
        assert 0.5 * base <= d <= 1.5 * base
    b.reset()
    assert b.delay() <= 0.075


async def test_a_waker_survives_an_error_reply_and_takes_the_next_job():
    """An error a waker does not expect (here an error reply) is logged and the waker goes on: a
    dead waker would leave an idle worker deaf to pushes until its 10 s re-check."""
    redis = Redis()
    replies: list[Any] = [ResponseError("ERR syntax error"), JOB]

    async def wait_for_job(queue: str, timeout: float) -> tuple[bytes | None, int]:
        redis.calls.append("blmove")
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply, 0

    redis.wait_for_job = wait_for_job  # type: ignore[method-assign]
    fetcher = idle_fetcher(redis)
    await asyncio.wait_for(fetcher.tick(), 3)  # idle; the waker fails once, then takes the job
    await fetcher.tick()
    assert redis.calls == ["fetch", "blmove", "blmove", "start"]
    for t in fetcher._wakers:
        t.cancel()
