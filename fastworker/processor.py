"""Runs ONE unit of work end to end (Sidekiq processor.rb#process); no loops.

1. log start, mark busy (the manager publishes it through the heartbeat)
2. POST /perform with the job's original bytes
3. outcome:
   - done                      -> ack (batched), processed += 1
   - the job raised (422)      -> Sidekiq's retry policy: retry set, or /exhausted + dead set, or dropped
   - sidecar unavailable       -> back to the head of its queue, no retry spent; the breaker counts it
   - sidecar says not a job    -> dead set with the reason
4. ``finally``: the concurrency token is released, whatever happened
A job abandoned by a hard shutdown has already been requeued: whatever its request returns, the
processor leaves Redis alone.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import retry
from .breaker import Breaker
from .broker import Broker
from .clock import Clock
from .errors import SidecarUnavailable
from .log import log
from .sidecar_client import BadJob, Failed, SidecarClient


class Work:
    """One fetched job moving through the stages (Sidekiq's UnitOfWork)."""

    __slots__ = ("queue", "env", "tid", "run_at", "task", "abandoned")

    def __init__(self, queue: str, env: Any, tid: str, run_at: float) -> None:
        self.queue = queue
        self.env = env
        self.tid = tid
        self.run_at = run_at
        self.task: asyncio.Task[None] | None = None
        self.abandoned = False


class Processor:
    def __init__(self, broker: Broker, sidecar: SidecarClient, breaker: Breaker, clock: Clock,
                 policy: retry.Policy, dead_max_jobs: int, dead_timeout: int, metrics: Any = None) -> None:
        self.broker = broker
        self.sidecar = sidecar
        self.breaker = breaker
        self.clock = clock
        self.policy = policy
        self.dead_max_jobs = dead_max_jobs
        self.dead_timeout = dead_timeout
        self.metrics = metrics
        self.on_finished: Any = None  # set by the manager

    async def process(self, work: Work) -> None:
        env = work.env
        t0 = self.clock.mono()
        if log.info_on:
            log.emit(20, "job_start", {"jid": env.jid, "class": env.display_class, "queue": work.queue,
                                       "retry_count": env.retry_count})
        if self.metrics is not None:
            self.metrics.job_started(work, self.clock.now())
        try:
            self.breaker.started()
            try:
                failure = await self.sidecar.perform(env.raw, env.jid)
            except SidecarUnavailable as exc:
                if not work.abandoned:
                    await self._unavailable(work, exc)
                return
            except BadJob as exc:
                self.breaker.success()
                if not work.abandoned:
                    await self.kill_bad(work.queue, env.raw, f"sidecar rejected the job: {exc}")
                return
            if work.abandoned:
                return
            self.breaker.success()
            elapsed = self.clock.mono() - t0
            if failure is None:
                self.broker.ack(work.queue, env.raw)
                if log.info_on:
                    log.emit(20, "job_done", {"jid": env.jid, "class": env.display_class, "queue": work.queue,
                                              "elapsed_ms": round(elapsed * 1000, 3),
                                              "retry_count": env.retry_count})
                if self.metrics is not None:
                    self.metrics.job_done(work, elapsed, True)
            else:
                log.warn("job_fail", jid=env.jid, **{"class": env.display_class}, queue=work.queue,
                         elapsed_ms=round(elapsed * 1000, 3), retry_count=env.retry_count,
                         error_class=failure.error_class, error_message=failure.error_message[:500])
                if self.metrics is not None:
                    self.metrics.job_done(work, elapsed, False)
                await self._failed(work, failure)
        finally:
            if self.on_finished is not None:
                self.on_finished(work)

    async def _unavailable(self, work: Work, exc: SidecarUnavailable) -> None:
        env = work.env
        self.breaker.failure(exc.reason, exc.retry_after)
        await self.broker.requeue(work.queue, env.raw)
        log.warn("job_requeued", jid=env.jid, **{"class": env.display_class}, queue=work.queue,
                 reason=exc.reason, sidecar_status=exc.status)
        if self.metrics is not None:
            self.metrics.requeued("sidecar_unavailable")

    async def _failed(self, work: Work, failure: Failed) -> None:
        env = work.env
        now = self.clock.now()
        decision = retry.decide(env, failure, work.queue, now, self.policy)
        if isinstance(decision, retry.RetryAt):
            await self.broker.retry(work.queue, env.raw, decision.member, decision.score)
            log.info("retry_scheduled", jid=env.jid, **{"class": env.display_class}, queue=work.queue,
                     retry_count=decision.count, delay_s=round(decision.delay, 3),
                     error_class=failure.error_class)
            return
        if isinstance(decision, retry.Discard):
            self.broker.drop(work.queue, env.raw)
            log.info("job_discarded", jid=env.jid, **{"class": env.display_class}, queue=work.queue)
            return
        # exhausted (or retry: false): Ruby runs the hooks, then the morgue
        try:
            result = await self.sidecar.exhausted(decision.job, failure.error_class, failure.error_message,
                                                  decision.run_exhausted_block)
        except SidecarUnavailable as exc:
            # the hooks could not run: the job goes back untouched and will fail its way here again
            await self._unavailable(work, exc)
            return
        if decision.to_dead_set and result != "discard":
            import orjson
            await self.broker.kill(work.queue, env.raw, orjson.dumps(decision.job), now,
                                   self.dead_max_jobs, self.dead_timeout)
            log.warn("job_dead", jid=env.jid, **{"class": env.display_class}, queue=work.queue,
                     retry_count=decision.job.get("retry_count"), error_class=failure.error_class,
                     error_message=failure.error_message[:500])
            if self.metrics is not None:
                self.metrics.dead()
        else:
            self.broker.drop(work.queue, env.raw)
            log.info("job_dropped", jid=env.jid, **{"class": env.display_class}, queue=work.queue,
                     reason="retry disabled" if not decision.run_exhausted_block else
                     ("dead: false" if not decision.to_dead_set else "retries_exhausted returned discard"))

    async def kill_bad(self, queue: str, raw: bytes, reason: str) -> None:
        """A payload that cannot run goes to the dead set as the raw string, with the reason logged."""
        await self.broker.kill(queue, raw, raw, self.clock.now(), self.dead_max_jobs, self.dead_timeout,
                               processed=0, failed=0)
        log.error("job_dead", queue=queue, reason=reason, payload=raw[:200].decode("utf-8", "replace"))
        if self.metrics is not None:
            self.metrics.dead()
