"""The fetch loop (Sidekiq fetch.rb + processor.rb#fetch), one task per process.

Duties:
1. fetch only while a concurrency token is free (plus a small prefetch bound): with every token
   taken, fetching pauses, and at most ``prefetch`` jobs ever wait fetched-but-not-started;
2. many jobs per round trip when queues are deep (one Lua call moves a batch);
3. queue order: strict (the given order, every time) or weighted (a fresh shuffle of the
   expanded list per job slot, de-duplicated: Sidekiq's per-fetch shuffle);
4. with every queue empty, block instead of polling: one waker per queue blocks on it (a BLMOVE
   into the in-progress list) and hands the job to the fetch loop the moment it is pushed;
5. decode each job (the core); an undecodable one goes to the dead set with the reason;
6. after quiet or stop began, jobs fetched in flight go back to the head of their queue.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, Sequence

from . import core, limits
from .breaker import Breaker
from .broker import REDIS_ERRORS, Broker
from .limiter import Limiter
from .log import log
from .manager import Manager
from .processor import Processor

BATCH_MAX = 64
WAKER_TIMEOUT = 5.0  # seconds a waker blocks per command: an idle worker sends 0.2 cmd/s per queue
IDLE_RECHECK = 10.0  # the fetch loop re-polls on its own only if every waker failed to wake it


class Fetcher:
    def __init__(self, broker: Broker, limiter: Limiter, manager: Manager, processor: Processor,
                 breaker: Breaker, queues: Sequence[tuple[str, int]], prefetch: int) -> None:
        self.broker = broker
        self.limiter = limiter
        self.manager = manager
        self.processor = processor
        self.breaker = breaker
        names: list[str] = []
        for name, _ in queues:
            if name not in names:
                names.append(name)
        self.names = names
        self.strict = all(w == 0 for _, w in queues)
        # the expanded list as queue indexes (1-based), each repeated max(weight, 1) times
        self._expanded = [names.index(n) + 1 for n, w in queues for _ in range(max(w, 1))]
        self.prefetch = prefetch
        self.quiet = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._wakers: list[asyncio.Task[None]] = []
        self._handoff: list[tuple[str, bytes]] = []  # jobs a waker already moved to in-progress
        self.fetched = 0
        self.round_trips = 0
        self.in_hand: Sequence[tuple[str, bytes]] = ()  # fetched, not yet handed to the manager (recoverer)

    # -- queue order ---------------------------------------------------------------------------

    def orders(self, n: int) -> bytes:
        if self.strict or len(self.names) == 1:
            return b""
        exp = self._expanded[:]
        out = bytearray()
        shuffle = random.shuffle
        for _ in range(n):
            shuffle(exp)
            out += bytes(dict.fromkeys(exp))
        return bytes(out)

    # -- the loop ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Quiet: no new fetches from now on (TSTP, or the first step of TERM)."""
        self.quiet = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        backoff = 0.05
        try:
            while not self.quiet:
                await self.limiter.wait_free()
                if self.quiet:
                    break
                if not self.breaker.allow_fetch():
                    await self._sleep_or_wake(0.1)
                    continue
                if self._handoff:  # jobs a waker already took: they come first
                    items, self._handoff = self._handoff, []
                    self.fetched += len(items)
                    await self._dispatch(items)
                    continue
                n = min(self.limiter.free + self.prefetch, BATCH_MAX)
                if self.breaker.state != "closed":
                    n = 1
                try:
                    items = await self.broker.fetch(n, self.orders(n))
                except REDIS_ERRORS as exc:
                    self.broker.health.failed("fetch", exc)
                    await self._sleep_or_wake(backoff * (0.5 + random.random()))
                    backoff = min(backoff * 2, 5.0)
                    continue
                backoff = 0.05
                self.broker.health.succeeded()
                self.round_trips += 1
                if not items:
                    await self._idle_wait()
                    continue
                self.fetched += len(items)
                await self._dispatch(items)
        finally:
            for t in self._wakers:
                t.cancel()
            if self._wakers:
                await asyncio.wait(self._wakers, timeout=1.0)
            self._wakers = []
            if self._handoff:  # taken by a waker as quiet began: back to the head of its queue
                items, self._handoff = self._handoff, []
                await self.broker.bulk_requeue(items[::-1])

    async def _dispatch(self, items: list[tuple[str, bytes]]) -> None:
        self.in_hand = items
        try:
            await self._dispatch_items(items)
        finally:
            self.in_hand = ()
        if self.breaker.state == "half_open":
            await asyncio.sleep(0)  # let the probe job call breaker.started() before the next fetch

    async def _dispatch_items(self, items: list[tuple[str, bytes]]) -> None:
        batch: list[tuple[str, Any]] = []
        batch_max = self.processor.sidecar.batch_max
        for i, (queue, raw) in enumerate(items):
            if len(raw) > self.processor.sidecar.max_body:  # never sent: it could never run
                await self.processor.kill_bad(queue, raw, limits.too_large(len(raw), self.processor.sidecar.max_body),
                                              limits.TOO_LARGE_CLASS)
                continue
            try:
                env = core.decode_envelope(raw)
            except core.PayloadError as exc:
                await self.processor.kill_bad(queue, raw, f"undecodable payload: {exc}")
                continue
            if not self.limiter.try_acquire():
                # never hold a partial batch's tokens while waiting for another one
                self._start_batch(batch)
                batch = []
                await self.limiter.acquire()
            if self.quiet or self.breaker.state == "open":
                # quiet or stop began, or the circuit opened, while this batch was in hand: put the
                # rest back, next in line (a job never goes to a sidecar the breaker gave up on)
                self.limiter.release()
                self._start_batch(batch)
                rest = [(queue, raw)] + list(items[i + 1:])
                await self.broker.bulk_requeue(rest[::-1])
                log.info("fetch_requeued", count=len(rest), reason="quiet" if self.quiet else "breaker_open")
                return
            if batch_max > 1 and self.processor.batchable(env):
                batch.append((queue, env))
                if len(batch) >= batch_max:
                    self._start_batch(batch)
                    batch = []
            else:
                self.manager.spawn(queue, env)
        self._start_batch(batch)

    def _start_batch(self, batch: list[tuple[str, Any]]) -> None:
        if len(batch) == 1:
            self.manager.spawn(*batch[0])
        elif batch:
            self.manager.spawn_batch(batch)

    async def _sleep_or_wake(self, seconds: float) -> None:
        self._wake.clear()
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _idle_wait(self) -> None:
        if not self._wakers:
            loop = asyncio.get_running_loop()
            self._wakers = [loop.create_task(self._waker(q)) for q in self.names]
        self._wake.clear()
        self._idle.set()
        try:
            await asyncio.wait_for(self._wake.wait(), IDLE_RECHECK)
        except asyncio.TimeoutError:
            pass
        finally:
            self._idle.clear()

    async def _waker(self, queue: str) -> None:
        while True:
            await self._idle.wait()
            try:
                raw = await self.broker.wait_for_job(queue, WAKER_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self.broker.health.failed("wait", exc)
                await asyncio.sleep(1.0)
                continue
            if raw is not None:
                self._handoff.append((queue, raw))
                self._wake.set()
