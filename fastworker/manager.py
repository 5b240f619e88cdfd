"""Owns the in-flight jobs (Sidekiq manager.rb).

Duties:
1. spawn a task per job (the token is already taken) and keep the busy map the heartbeat publishes;
2. on each finish: drop it from the busy map and release its token (in the task's ``finally``) to the
   limiter of its queue's capsule;
   count the jobs of classes that share requests while they run (the fetch loop waits for them);
3. ``drain(deadline)``: wait for in-flight jobs to finish;
4. ``hard_shutdown()``: stop every job still running in the sidecar (POST /cancel: Sidekiq::Shutdown
   in its thread, as Sidekiq's hard shutdown raises it), THEN requeue it byte-identical at the head
   of its queue, THEN cancel its task (which closes its request's connection: a sidecar that did
   not answer the cancel stops the job when it sees that). Until the requeue the job stays in our
   in-progress list, so a crash in between loses nothing: the recoverer gives it back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .broker import Broker
from .clock import Clock, wait_event
from .limiter import Limiter
from .log import log
from .processor import Processor, Work

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def _base36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if not n:
            return out


class Manager:
    def __init__(self, processor: Processor, limiter: Limiter, broker: Broker, clock: Clock,
                 limiters: dict[str, Limiter] | None = None) -> None:
        self.processor = processor
        self.limiter = limiter
        # capsules: the token of a job goes back to its queue's capsule (a queue is in one capsule)
        self.limiters = limiters or {}
        self.broker = broker
        self.clock = clock
        self.busy: dict[str, Work] = {}
        self.fast_in_flight = 0  # jobs of classes that share requests, started and not finished
        self.fast_requests = 0  # their requests in flight (a batch counts once)
        self._seq = 0
        self._idle: asyncio.Event | None = None
        processor.on_finished = self._finished

    def spawn(self, queue: str, env: Any, fast: bool = False) -> Work:
        """Start one job; the caller already holds a token for it."""
        self._seq += 1
        work = Work(queue, env, _base36(self._seq), self.clock.now())
        self.busy[work.tid] = work
        if fast:
            work.fast = work.lead = True
            self.fast_in_flight += 1
            self.fast_requests += 1
        work.task = asyncio.get_running_loop().create_task(self.processor.process(work))
        return work

    def spawn_batch(self, items: list[tuple[str, Any]]) -> list[Work]:
        """Start several fast jobs as one sidecar request; the caller holds a token for each."""
        works = []
        now = self.clock.now()
        for queue, env in items:
            self._seq += 1
            work = Work(queue, env, _base36(self._seq), now)
            work.fast = True
            self.busy[work.tid] = work
            works.append(work)
        works[0].lead = True
        self.fast_in_flight += len(works)
        self.fast_requests += 1
        task = asyncio.get_running_loop().create_task(self.processor.process_batch(works))
        for w in works:
            w.task = task
        return works

    def _finished(self, work: Work) -> None:
        if self.busy.pop(work.tid, None) is not None:
            if work.fast:
                self.fast_in_flight -= 1
                if work.lead:  # counted before the tokens go back, so the fetch loop wakes to it
                    self.fast_requests -= 1
            limiter = self.limiters.get(work.queue, self.limiter)
            if work.hold:  # refused at capacity: the token comes back later (processor.py, backpressure)
                asyncio.get_running_loop().call_later(work.hold, limiter.release)
            else:
                limiter.release()
        if not self.busy and self._idle is not None:
            self._idle.set()

    async def drain(self, deadline: float) -> bool:
        """Wait until nothing is in flight or the monotonic ``deadline``; True if all finished."""
        while self.busy:
            remaining = deadline - self.clock.mono()
            if remaining <= 0:
                return False
            self._idle = asyncio.Event()
            await wait_event(self._idle, min(remaining, 0.5))
        return True

    async def hard_shutdown(self) -> int:
        works = list(self.busy.values())
        if not works:
            return 0
        for w in works:
            w.abandoned = True
        answer = await self.processor.sidecar.cancel([w.env.jid for w in works])
        if answer is not None:
            log.warn("shutdown_cancelled", stopped=len(answer.get("stopped") or []),
                     still_running=(answer.get("running") or [])[:50], unknown=len(answer.get("unknown") or []))
        items = [(w.queue, w.env.raw) for w in works]
        # Sidekiq's hard shutdown raises Sidekiq::Shutdown through Processor#stats: processed and failed
        self.broker.count(processed=len(items), failed=len(items))
        try:
            await self.broker.bulk_requeue(items)
            log.warn("shutdown_requeued", count=len(items), jids=[w.env.jid for w in works][:50])
        except Exception as exc:  # Redis down at the deadline: they stay in the in-progress list
            log.error("shutdown_requeue_failed", count=len(items), error_class=type(exc).__name__,
                      error_message=str(exc))
        tasks = list({id(w.task): w.task for w in works if w.task is not None}.values())
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=3.0)
        return len(items)
