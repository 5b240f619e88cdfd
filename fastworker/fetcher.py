"""The fetch loop (Sidekiq fetch.rb + processor.rb#fetch), one task per process.

Duties:
1. fetch one job per free concurrency token, never more (Sidekiq fetches only for an idle thread):
   a fetched job starts at once, none waits fetched-but-not-started, and a process whose tokens are
   all busy leaves the queued jobs in Redis for other processes;
2. many jobs per round trip when queues are deep (one Lua call moves them, and lands the acks of
   the jobs whose tokens it refills);
3. queue order: strict (the given order, every time) or weighted (a fresh shuffle of the
   expanded list per job slot, de-duplicated: Sidekiq's per-fetch shuffle);
4. with every queue empty, block instead of polling: one waker per queue blocks on it (a BLMOVE
   into the in-progress list) and hands the job to the fetch loop the moment it is pushed;
5. decode each job (the core); an undecodable one goes to the dead set with the reason;
6. start each job with its token: fast classes share requests as the batch planner splits them,
   the others get a request each;
7. after quiet or stop began, jobs fetched in flight go back to the head of their queue.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any
from collections.abc import Sequence

from . import core, limits
from .batching import BatchPlanner
from .breaker import Breaker
from .capsules import Capsule
from .broker import REDIS_ERRORS, Broker
from .limiter import Limiter
from .log import log
from .manager import Manager
from .poll_loop import tick_failed
from .processor import Processor
from .clock import Backoff, wait_event

FETCH_MAX = 64  # jobs per fetch call at most
WAKER_TIMEOUT = 5.0  # seconds a waker blocks per command: an idle worker sends 0.2 cmd/s per queue
IDLE_RECHECK = 10.0  # the fetch loop re-polls on its own only if every waker failed to wake it


class Fetcher:
    def __init__(self, broker: Broker, limiter: Limiter, manager: Manager, processor: Processor,
                 breaker: Breaker, planner: BatchPlanner, capsule: Capsule) -> None:
        self.broker = broker
        self.limiter = limiter
        self.manager = manager
        self.processor = processor
        self.breaker = breaker
        self.planner = planner
        names = list(capsule.queue_names)
        self.names = names
        self.strict = capsule.strict
        # the expanded list as queue indexes (1-based), the broker's way of naming them
        self._expanded = [names.index(n) + 1 for n in capsule.expanded_queues]
        self.quiet = False
        self._backoff = Backoff()  # after a failed fetch
        self._deep = False  # the last fetch found a job for every free token
        self._rearm = False  # the next tick waits on the wakers instead of fetching
        self._left_behind = False  # a waker's queue still held jobs after the one it took
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._wakers: list[asyncio.Task[None]] = []
        self._handoff: list[tuple[str, bytes]] = []  # jobs a waker already moved to in-progress
        self.fetched = 0
        self.in_hand: Sequence[tuple[str, bytes]] = ()  # fetched, not yet handed to the manager

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

    def held(self) -> list[bytes]:
        """The jobs this loop holds outside the manager (for the recoverer's orphan sweep)."""
        return [raw for _, raw in self.in_hand] + [raw for _, raw in self._handoff]

    async def run(self) -> None:
        self._backoff.reset()
        try:
            while not self.quiet:
                await self.tick()
        finally:
            for t in self._wakers:
                t.cancel()
            if self._wakers:
                await asyncio.wait(self._wakers, timeout=1.0)
            self._wakers = []
            if self._handoff:  # taken by a waker as quiet began: back to the head of its queue
                items, self._handoff = self._handoff, []
                await self.broker.bulk_requeue(items[::-1])

    async def tick(self) -> None:
        """Wait for a free token, fetch one job per free token, start them."""
        await self.limiter.wait_free()
        if self.quiet:
            return
        if not self.breaker.allow_fetch():
            await self._sleep_or_wake(0.1)
            return
        free = self.limiter.free
        if self.breaker.state != "closed":
            free = 1  # half-open: probe jobs one at a time
        if self._handoff:  # jobs a waker already took: they come first, at once
            items, self._handoff = self._handoff[:free], self._handoff[free:]
            requeued = bool(self._handoff)
            if requeued:  # more than tokens (one waker per queue): the rest go back, next in line
                rest, self._handoff = self._handoff, []
                await self.broker.bulk_requeue(rest[::-1])
            self.fetched += len(items)
            # The wakers' jobs left their queues empty (the LLEN behind each BLMOVE): the next
            # tick goes back to the wakers instead of a fetch that would find nothing, one round
            # trip less per job at a trickle. A job left behind means a burst: that one fetches.
            self._rearm, self._left_behind = not (self._left_behind or requeued), False
            await self._dispatch(items)
            return
        if self._rearm:
            self._rearm = False
            await self._idle_wait()
            return
        if (self._deep and self.limiter.in_use and self.manager.fast_in_flight
                and (free < min(self.planner.size, self.limiter.capacity)
                     or self.manager.fast_requests >= self.planner.lanes)):
            # the queue is deep and fast jobs hold this pool's tokens: they give them back within a
            # request's time, so gather them for one batch of a free lane instead of refilling them
            # one request each (the jobs meanwhile stay in Redis, where any process may take
            # them). A queue that is not deep gets every free token at once: latency comes first.
            await self.limiter.wait_release()
            return
        n = min(free, FETCH_MAX)
        try:
            items = await self.broker.fetch(n, self.orders(n))
        except REDIS_ERRORS as exc:
            self.broker.health.failed("fetch", exc)
            await self._sleep_or_wake(self._backoff.delay())
            return
        self._backoff.reset()
        self.broker.health.succeeded()
        self._deep = len(items) >= n  # it had a job for every token asked: more are likely waiting
        if not items:
            await self._idle_wait()
            return
        self.fetched += len(items)
        await self._dispatch(items)

    async def _dispatch(self, items: list[tuple[str, bytes]]) -> None:
        self.in_hand = items
        try:
            await self._dispatch_items(items)
        finally:
            self.in_hand = ()
        if self.breaker.state == "half_open":
            await asyncio.sleep(0)  # let the probe job call breaker.started() before the next fetch

    async def _dispatch_items(self, items: list[tuple[str, bytes]]) -> None:
        planner = self.planner
        batch: list[tuple[str, Any]] = []
        for i, (queue, raw) in enumerate(items):
            if len(raw) > self.processor.sidecar.max_body:  # never sent: it could never run
                await self.processor.kill_bad(queue, raw, limits.too_large(len(raw), self.processor.sidecar.max_body),
                                              limits.TOO_LARGE_CLASS)
                continue
            try:
                env = core.decode_envelope(raw)
            except core.PayloadError as exc:
                await self.processor.kill_bad(queue, raw, f"undecodable payload: {exc}", undecodable=True)
                continue
            if self.quiet or self.breaker.state == "open" or not self.limiter.try_acquire():
                # quiet or stop began, or the circuit opened, while this fetch was in hand (a job
                # never goes to a sidecar the breaker gave up on): the rest go back, next in line
                self._start(batch)
                rest = [(queue, raw)] + list(items[i + 1:])
                await self.broker.bulk_requeue(rest[::-1])
                log.info("fetch_requeued", count=len(rest), reason="quiet" if self.quiet else "breaker_open")
                return
            if planner.batchable(env.klass):
                batch.append((queue, env))
            else:
                self.manager.spawn(queue, env)
        self._start(batch)

    def _start(self, batchable: list[tuple[str, Any]]) -> None:
        planner = self.planner
        waiting = all(planner.waits(env.klass) for _, env in batchable)
        for group in planner.split(batchable, self.manager.fast_requests, waiting):
            if len(group) == 1:
                self.manager.spawn(*group[0], fast=True)
            else:
                self.manager.spawn_batch(group)

    async def _sleep_or_wake(self, seconds: float) -> None:
        self._wake.clear()
        await wait_event(self._wake, seconds)

    async def _idle_wait(self) -> None:
        if not self._wakers:
            loop = asyncio.get_running_loop()
            self._wakers = [loop.create_task(self._waker(q)) for q in self.names]
        self._wake.clear()
        if self._handoff:  # a waker took a job while this fetch was under way (its wake-up was cleared)
            return
        self._idle.set()
        try:
            await wait_event(self._wake, IDLE_RECHECK)
        finally:
            self._idle.clear()

    async def _waker(self, queue: str) -> None:
        while True:
            await self._idle.wait()
            try:
                raw, left = await self.broker.wait_for_job(queue, WAKER_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self.broker.health.failed("wait", exc)
                await asyncio.sleep(1.0)
                continue
            except Exception as exc:  # e.g. an error reply: a dead waker would leave the loop deaf to pushes
                tick_failed("waker", exc, queue=queue)
                await asyncio.sleep(1.0)
                continue
            if raw is not None:
                self._handoff.append((queue, raw))
                self._left_behind = self._left_behind or left > 0
                # the loop is busy from now on: this waker blocks again only when it is idle again,
                # so the next BLMOVE is not sent before the job it just took goes to the sidecar
                self._idle.clear()
                self._wake.set()
