"""Runs ONE unit of work end to end (Sidekiq processor.rb#process); no loops.

1. log start, mark busy (the manager publishes it through the heartbeat)
2. POST /perform with the job's original bytes
3. outcome:
   - done                      -> ack (batched), processed += 1
   - the job raised (422)      -> Sidekiq's retry policy: retry set, or /exhausted + dead set, or dropped
   - sidecar unavailable       -> back to the head of its queue, no retry spent; the breaker counts it
   - sidecar at capacity       -> back to the head of its queue, no retry spent; not a failure (the
                                  sidecar is alive and full: several workers share it); the job
                                  leaves the busy set at once, but its token comes back only after
                                  a growing moment (backpressure)
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
from .clock import Backoff, Clock
from .errors import SidecarUnavailable
from .hooks import Hooks
from .log import log
from .batching import BatchPlanner
from .outcome import BadJob, Done, Failed, NotAttempted
from .sidecar_client import SidecarClient


class Work:
    """One fetched job moving through the stages (Sidekiq's UnitOfWork)."""

    __slots__ = ("queue", "env", "tid", "run_at", "task", "abandoned", "log_fields", "fast", "lead", "hold")

    def __init__(self, queue: str, env: Any, tid: str, run_at: float) -> None:
        self.queue = queue
        self.env = env
        self.tid = tid
        self.run_at = run_at
        self.task: asyncio.Task[None] | None = None
        self.abandoned = False
        self.log_fields = b""  # its start/done lines' fields, encoded once (log.job_fields)
        self.fast = False  # of a class that shares requests (batching.py)
        self.lead = False  # the first job of its fast request: the manager counts requests by it
        self.hold = 0.0  # seconds its token waits once it is done (refused at capacity: backpressure)


BUSY_HOLD_MAX = 1.0  # seconds, at most, a token refused at capacity waits before it is released


class Processor:
    def __init__(self, broker: Broker, sidecar: SidecarClient, breaker: Breaker, clock: Clock,
                 policy: retry.Policy, dead_max_jobs: int, dead_timeout: int, planner: BatchPlanner,
                 hooks: Hooks, metrics: Any = None) -> None:
        self.broker = broker
        self.hooks = hooks  # an exhausted job's hooks and dead-set write
        self.sidecar = sidecar
        self.breaker = breaker
        self.clock = clock
        self.policy = policy
        self.dead_max_jobs = dead_max_jobs
        self.dead_timeout = dead_timeout
        self.metrics = metrics
        self.on_finished: Any = None  # set by the manager
        self.planner = planner  # learns runtimes and request overhead from every answer
        self._reports: set[asyncio.Task[None]] = set()  # invalid jobs on their way to the error handlers
        # how long a token refused at capacity waits: 50 ms doubling to BUSY_HOLD_MAX while the
        # sidecar stays full, back to 50 ms once a job runs. Without it the refused job comes
        # straight back (next fetch), and workers sharing a full sidecar spin on 503s.
        self._busy = Backoff(BUSY_HOLD_MAX)

    async def process(self, work: Work) -> None:
        """One job, one POST /perform."""
        env = work.env
        t0 = self.clock.mono()
        self._started([work])
        try:
            self.breaker.started()
            try:
                result = await self.sidecar.perform(env.raw, env.jid)
            except SidecarUnavailable as exc:
                if self.metrics is not None:
                    self.metrics.sidecar_call("unavailable", self.clock.mono() - t0)
                if not work.abandoned:
                    await self._refused([work], exc)
                return
            elapsed = self.clock.mono() - t0
            self._measured(elapsed, [(work, result)])
            self._busy.reset()
            if not work.abandoned:
                self.breaker.success()
                await self._outcome(work, result, elapsed)
        finally:
            if self.on_finished is not None:
                self.on_finished(work)

    async def process_batch(self, works: list[Work]) -> None:
        """Several sub-millisecond jobs in one POST /perform_batch (each keeps its own outcome)."""
        t0 = self.clock.mono()
        self._started(works)
        try:
            self.breaker.started()
            try:
                results = await self.sidecar.perform_batch([w.env.raw for w in works], [w.env.jid for w in works])
            except SidecarUnavailable as exc:
                if self.metrics is not None:
                    share = (self.clock.mono() - t0) / len(works)
                    for _ in works:
                        self.metrics.sidecar_call("unavailable", share)
                live = [w for w in works if not w.abandoned]
                if live:
                    await self._refused(live, exc)
                return
            self.breaker.success()
            wall = self.clock.mono() - t0
            self._measured(wall, list(zip(works, results, strict=True)), getattr(results, "ran", None),
                           getattr(results, "waiting", None))
            elapsed = wall / len(works)
            unavailable: list[tuple[Work, NotAttempted]] = []
            for w, result in zip(works, results, strict=True):
                if w.abandoned:
                    continue
                if isinstance(result, NotAttempted):
                    unavailable.append((w, result))
                    if self.metrics is not None:
                        self.metrics.sidecar_call("unavailable", elapsed)
                else:
                    await self._outcome(w, result, elapsed)
            if len(unavailable) < len(works):
                self._busy.reset()
            for interrupted in (True, False):  # stopped by Sidekiq::Shutdown, or never attempted
                group = [(w, r) for w, r in unavailable if r.interrupted is interrupted]
                if group:
                    await self._requeue([w for w, _ in group], group[0][1])
            refused = [w for w, r in unavailable if r.busy]
            if refused:
                self._hold(refused)
        finally:
            if self.on_finished is not None:
                for w in works:
                    self.on_finished(w)

    def _started(self, works: list[Work]) -> None:
        if log.info_on:
            for w in works:
                env = w.env
                w.log_fields = log.job_fields(env.jid, env.display_class, w.queue, env.retry_count)
            log.job_lines(b"job_start", [w.log_fields for w in works])
        if self.metrics is not None:
            now = self.clock.now()
            for w in works:
                self.metrics.job_started(w, now)

    def _measured(self, wall: float, answers: list[tuple[Work, Any]], ran: float | None = None,
                  waiting: bool | None = None) -> None:
        """Teach the planner each class's runtime and what the request cost beyond running its
        jobs. ``ran``: how long the sidecar says that took. Jobs it ran at the same time (they wait)
        overlap, and each one's runtime also holds the moments the others had the GVL: each job
        then counts for its share of ``ran``, which is what it costs the request (a class is
        batched while that is below a request's overhead). ``waiting``: whether the sidecar
        found the batch's jobs waiting, for each of its classes."""
        planner = self.planner
        runtimes = []
        for w, result in answers:
            ms = result.runtime_ms if isinstance(result, (Done, Failed)) else None
            if ms is not None:
                runtimes.append((w.env.klass, ms / 1000))
        total = sum(seconds for _, seconds in runtimes)
        share = ran / total if ran is not None and 0 < ran < total else 1.0
        for klass, seconds in runtimes:
            planner.observe_runtime(klass, seconds * share)
            if waiting is not None:
                planner.observe_waiting(klass, waiting)
        planner.observe_request(wall, total if ran is None else ran)

    async def _outcome(self, work: Work, result: Done | Failed | BadJob, elapsed: float) -> None:
        env = work.env
        if isinstance(result, Done):
            # Sidekiq's Processor#stats counts a JobRetry::Skip (an interrupted IterableJob) failed too
            self.broker.ack(work.queue, env.raw, failed=1 if result.skipped else 0)
            if log.info_on:
                log.job_lines(b"job_done", (work.log_fields,), round(elapsed * 1000, 3))
            if self.metrics is not None:
                self.metrics.job_done(work, elapsed, True)
        elif isinstance(result, Failed):
            log.warn("job_fail", jid=env.jid, **{"class": env.display_class}, queue=work.queue,
                     elapsed_ms=round(elapsed * 1000, 3), retry_count=env.retry_count,
                     error_class=result.error_class, error_message=result.error_message[:500])
            if self.metrics is not None:
                self.metrics.job_done(work, elapsed, False)
            await self._failed(work, result)
        else:
            if self.metrics is not None:
                self.metrics.sidecar_call("bad_job", elapsed)
            await self.kill_bad(work.queue, env.raw, f"sidecar rejected the job: {result}", "Fastworker::PayloadError")

    async def _refused(self, works: list[Work], exc: SidecarUnavailable) -> None:
        """The request was refused or failed as a whole: the breaker hears of it (an outage
        counts, a full sidecar does not) and the jobs go back to their queue."""
        if exc.busy:
            self.breaker.busy()
        else:
            self.breaker.failure(exc.reason, exc.retry_after)
        await self._requeue(works, exc)
        if exc.busy:
            self._hold(works)

    def _hold(self, works: list[Work]) -> None:
        """Jobs refused at capacity: their tokens come back late (the manager waits ``hold``),
        longer while the sidecar stays full, so workers sharing it settle on what it takes. The
        jobs themselves are back in their queue: no busy entry shows them meanwhile."""
        delay = self._busy.delay()
        for w in works:
            w.hold = delay

    async def _requeue(self, works: list[Work], exc: SidecarUnavailable | NotAttempted) -> None:
        """Infrastructure failed, not the job: back to the head of its queue, no retry spent. Jobs
        the sidecar stopped with Sidekiq::Shutdown count as processed and failed, as Sidekiq's
        Processor#stats counts them (the exception passes through it)."""
        await self.broker.bulk_requeue([(w.queue, w.env.raw) for w in reversed(works)])
        if exc.interrupted:
            self.broker.count(processed=len(works), failed=len(works))
        for w in works:
            log.warn("job_requeued", jid=w.env.jid, **{"class": w.env.display_class}, queue=w.queue,
                     reason=exc.reason, sidecar_status=exc.status)
            if self.metrics is not None:
                self.metrics.requeued("sidecar_busy" if exc.busy else "sidecar_unavailable")

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
        if isinstance(decision, retry.Discard) and decision.job is None:
            await self.broker.drop(work.queue, env.raw)
            log.info("job_discarded", jid=env.jid, **{"class": env.display_class}, queue=work.queue)
            return
        error = failure.error()
        if isinstance(decision, retry.Discard):  # 8.x: the death handlers see the discarded job
            assert decision.job is not None
            log.info("job_discarded", jid=env.jid, **{"class": env.display_class}, queue=work.queue)
            await self.hooks.exhausted(work.queue, env.raw, decision.job, error, run_block=False, to_dead=False,
                                       pid=failure.pid)
            return
        # exhausted (or retry: false): the block, the morgue, the death handlers, and never a re-run
        await self.hooks.exhausted(work.queue, env.raw, decision.job, error, decision.run_exhausted_block,
                                   decision.to_dead_set, failure.pid)

    async def kill_bad(self, queue: str, raw: bytes, reason: str, error_class: str | None = None,
                       undecodable: bool = False) -> None:
        """A payload that cannot run goes to the dead set (retry.dead_member_for), reason logged.
        An ``undecodable`` one is also shown to the app's error handlers, as Sidekiq's Processor
        shows them invalid JSON: in the background, so the fetch loop never waits for it."""
        now = self.clock.now()
        await self.broker.kill(queue, raw, retry.dead_member_for(raw, queue, reason, now, error_class), now,
                               self.dead_max_jobs, self.dead_timeout, processed=0, failed=0)
        log.error("job_dead", queue=queue, reason=reason, payload=raw[:200].decode("utf-8", "replace"))
        if self.metrics is not None:
            self.metrics.dead()
        if undecodable:
            task = asyncio.get_running_loop().create_task(self.sidecar.report_invalid(raw))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)
