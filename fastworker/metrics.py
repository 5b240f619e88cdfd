"""Prometheus metrics (design.md "Metrics"): yabeda-sidekiq's names and labels, plus ``fastworker_*``.

Three kinds, each with its own cost model:

1. Per-job counters and histograms (``sidekiq_jobs_executed_total``, ``sidekiq_job_runtime_seconds``,
   ...), updated by the processor on the hot path. They are plain integers and bucket lists in a
   ``_JobSeries`` cached per (queue, worker class): a finished job costs a dict lookup, three integer
   additions and one ``bisect``. Nothing is locked (everything runs on the event loop thread), and the
   Prometheus families are built only when somebody scrapes.
2. Process gauges (in-flight jobs, the concurrency limit, breaker state, Redis errors, ...), read from
   the live objects at scrape time: free between scrapes.
3. Queue-wide gauges (waiting jobs and latency per queue, scheduled/retry/dead sizes, processes, busy
   workers, concurrency, saturation), read from Redis the way Sidekiq::Stats and ProcessSet read them,
   in two pipelined round trips, at most once a second however often Prometheus scrapes: the HTTP
   handler awaits ``refresh()``, which reuses a snapshot younger than ``QUEUE_STATS_TTL`` and lets
   concurrent scrapes share one refresh in flight.

Label ``worker`` is the job's class, or the wrapped class for ActiveJob (yabeda-sidekiq's rule).
"""

from __future__ import annotations

import asyncio
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from . import __version__, core
from .broker import REDIS_ERRORS, RedisHealth
from .exposition import CounterFamily, Family, GaugeFamily, HistogramFamily, ProcessStats, go_float, render
from .keys import Keys
from .log import log

# yabeda-sidekiq's LONG_RUNNING_JOB_RUNTIME_BUCKETS: Prometheus' defaults, then long-running jobs
BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                              30, 60, 120, 300, 1800, 3600, 21_600)
_LE = tuple(go_float(b) for b in BUCKETS) + ("+Inf",)

QUEUE_STATS_TTL = 1.0  # seconds a Redis snapshot is reused
QUEUE_STATS_TIMEOUT = 3.0  # a scrape never waits longer than this for Redis; stale data is served
MAX_SERIES = 2_000  # (queue, class) pairs tracked; beyond that the class is reported as "other"

# the classic text format every Prometheus (2.x included) and agent reads; our names are all legacy-safe
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# why a job goes back on its queue without spending a retry (the launcher's hang watchdog, the
# processor's unavailable sidecar, a sidecar at capacity): the labels of fastworker_jobs_requeued_total
REQUEUE_REASONS = ("sidecar_hung", "sidecar_unavailable", "sidecar_busy")


class _Histogram:
    """Bucket counts (not cumulative) plus sum; ``observe`` is one bisect and two additions."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        total = 0
        for le, n in zip(_LE, self.counts, strict=True):
            total += n
            out.append((le, total))
        return out

    @property
    def count(self) -> int:
        return sum(self.counts)


class _JobSeries:
    """Everything counted for one (queue, worker) label pair."""

    __slots__ = ("labels", "executed", "success", "failed", "runtime", "latency")

    def __init__(self, labels: list[str]) -> None:
        self.labels = labels
        self.executed = 0
        self.success = 0
        self.failed = 0
        self.runtime = _Histogram()
        self.latency = _Histogram()


class QueueStats:
    """One Redis snapshot of the queue-wide numbers (what Sidekiq::Stats and ProcessSet report)."""

    __slots__ = ("waiting", "latency", "scheduled", "retry", "dead", "processes", "workers", "concurrency",
                 "available", "taken_at")

    def __init__(self) -> None:
        self.waiting: dict[str, int] = {}
        self.latency: dict[str, float] = {}
        self.scheduled = 0
        self.retry = 0
        self.dead = 0
        self.processes = 0
        self.workers = 0
        self.concurrency = 0
        self.available = 0
        self.taken_at = 0.0

    @property
    def saturation(self) -> float:
        """yabeda-sidekiq's: 1 - available / concurrency; a quiet process counts as full."""
        if self.concurrency <= 0:
            return 0.0
        return 1.0 - self.available / self.concurrency


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def queue_latency(raw: bytes | None, now: float) -> float:
    """Seconds since the oldest job (the list's right end) was enqueued; 0 for none (Queue#latency)."""
    if not raw:
        return 0.0
    try:
        job = orjson.loads(raw)
        enqueued = core.to_epoch_seconds(job.get("enqueued_at")) if isinstance(job, dict) else None
    except orjson.JSONDecodeError:
        return 0.0
    if enqueued is None:
        return 0.0
    return max(0.0, now - enqueued)


@dataclass(slots=True)
class ProcessView:
    """What /metrics says of this process itself, read at each scrape. The launcher wires it with
    callables: the parts they read (manager, fetcher, recoverer) are built after the processor
    that counts into Metrics."""

    identity: str
    started_at: float
    in_flight: Callable[[], int]
    capacity: Callable[[], int]
    breaker: Callable[[], Any]  # the Breaker (state, transitions)
    fetched: Callable[[], int]
    quiet: Callable[[], bool]  # quiet (TSTP) or stopping
    ready: Callable[[], tuple[bool, str]]
    recovered: Callable[[], tuple[int, int]]  # jobs requeued, poison pills killed


class Metrics:
    def __init__(self, redis: Any, keys: Keys, queue_names: Sequence[str], health: RedisHealth,
                 process: ProcessView, job_metrics: Any = None) -> None:
        self.redis = redis
        self.keys = keys
        self.queue_names = list(queue_names)
        self.health = health
        self.process = process
        self.job_metrics = job_metrics
        self._series: dict[tuple[str, str], _JobSeries] = {}
        self._sidecar: dict[str, _Histogram] = {}
        # every reason exported from the start (0), so the dashboard's rate() reads 0, not "no data"
        self._requeued: dict[str, int] = dict.fromkeys(REQUEUE_REASONS, 0)
        self._dead = 0
        self.queue_stats: QueueStats | None = None
        self.queue_stats_refreshes = 0
        self.queue_stats_errors = 0
        self._refresh_started = -math.inf
        self._refreshing: asyncio.Task[None] | None = None
        self._extra: list[Callable[[], Iterable[Family]]] = []
        self._process_stats = ProcessStats()

    # -- hot path (called by the processor) ---------------------------------------------------

    def _bind(self, queue: str, worker: str) -> _JobSeries:
        if len(self._series) >= MAX_SERIES:
            # a flood of distinct class names must not grow memory and the scrape without bound:
            # past the cap, new classes share one "other" series per queue (and are not cached)
            s = self._series.get((queue, "other"))
            if s is None:
                s = self._series[(queue, "other")] = _JobSeries([queue, "other"])
            return s
        s = self._series[(queue, worker)] = _JobSeries([queue, worker])
        return s

    def _get(self, work: Any) -> _JobSeries:
        queue = work.queue
        worker = work.env.worker_class
        s = self._series.get((queue, worker))
        if s is None:
            s = self._bind(queue, worker)
        return s

    def job_started(self, work: Any, now: float) -> None:
        """The job is about to be sent: its latency is the time since it was enqueued (yabeda)."""
        env = work.env
        t = env.enqueued_at
        if t is None:
            t = env.created_at
        if t is not None:
            self._get(work).latency.observe(max(0.0, now - t))

    def job_done(self, work: Any, elapsed: float, ok: bool) -> None:
        """The sidecar answered: done (``ok``) or the job raised."""
        s = self._get(work)
        s.executed += 1
        if ok:
            s.success += 1
        else:
            s.failed += 1
        s.runtime.observe(elapsed)
        self.sidecar_call("done" if ok else "failed", elapsed)
        jm = self.job_metrics
        if jm is not None:  # Sidekiq 7+/8 apps: the Web UI's Metrics tab (fastworker/job_metrics.py)
            jm.record(work.env.worker_class, elapsed, ok)

    def sidecar_call(self, outcome: str, elapsed: float) -> None:
        """One job handed to the sidecar: done, failed (the job raised), unavailable, or bad_job (400).

        A batched request (POST /perform_batch) reports each of its jobs, with an equal share of the
        request's time."""
        h = self._sidecar.get(outcome)
        if h is None:
            h = self._sidecar[outcome] = _Histogram()
        h.observe(elapsed)

    def requeued(self, reason: str) -> None:
        self._requeued[reason] = self._requeued.get(reason, 0) + 1

    def dead(self) -> None:
        self._dead += 1

    def add_collector(self, fn: Callable[[], Iterable[Family]]) -> None:
        """Another component contributes families at scrape time (the HTTP server's loop lag)."""
        self._extra.append(fn)

    # -- queue-wide numbers, from Redis ---------------------------------------------------------

    async def refresh(self, ttl: float = QUEUE_STATS_TTL) -> None:
        """Make the queue-wide snapshot at most ``ttl`` old; one Redis read per ``ttl`` at most.

        Concurrent callers share the read in flight. A failed read keeps the previous snapshot
        and is not retried before ``ttl`` has passed either.
        """
        if self._refreshing is None:
            if time.monotonic() - self._refresh_started < ttl:
                return
            self._refresh_started = time.monotonic()
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh())
        task = self._refreshing
        try:
            await asyncio.wait_for(asyncio.shield(task), QUEUE_STATS_TIMEOUT)
        except TimeoutError:
            log.warn("metrics_refresh_slow", timeout_s=QUEUE_STATS_TIMEOUT)

    async def _refresh(self) -> None:
        try:
            self.queue_stats = await self.read_queue_stats()
            self.queue_stats_refreshes += 1
            self.health.succeeded()
        except REDIS_ERRORS as exc:
            self.queue_stats_errors += 1
            self.health.failed("metrics", exc)
        except Exception as exc:  # noqa: BLE001 - a scrape must never take the worker down
            self.queue_stats_errors += 1
            log.error("metrics_refresh_failed", error_class=type(exc).__name__, error_message=str(exc)[:300])
        finally:
            self._refreshing = None

    async def read_queue_stats(self) -> QueueStats:
        k = self.keys
        r = self.redis
        async with r.pipeline(transaction=False) as p:
            p.smembers(k.queues)
            p.smembers(k.processes)
            p.zcard(k.schedule)
            p.zcard(k.retry)
            p.zcard(k.dead)
            queues_raw, procs_raw, scheduled, retry, dead = await p.execute()
        names = sorted({q.decode("utf-8", "replace") for q in queues_raw} | set(self.queue_names))
        procs = sorted(m.decode("utf-8", "replace") for m in procs_raw)
        async with r.pipeline(transaction=False) as p:
            for q in names:
                p.llen(k.queue(q))
                p.lindex(k.queue(q), -1)
            for ident in procs:
                p.hmget(k.process(ident), "info", "busy", "quiet", "concurrency")
            res = await p.execute()
        now = time.time()
        st = QueueStats()
        st.taken_at = now
        st.scheduled, st.retry, st.dead = int(scheduled), int(retry), int(dead)
        for i, q in enumerate(names):
            st.waiting[q] = int(res[2 * i])
            st.latency[q] = queue_latency(res[2 * i + 1], now)
        for info, busy, quiet, conc in res[2 * len(names):]:
            if info is None:  # its record expired: a dead process (ProcessSet skips it too)
                continue
            st.processes += 1
            if conc is None:  # a real Sidekiq before 8.1.2 keeps it in info only
                try:
                    conc = orjson.loads(info).get("concurrency")
                except (orjson.JSONDecodeError, AttributeError):
                    conc = 0
            c = _int(conc)
            b = _int(busy)
            st.workers += b
            st.concurrency += c
            st.available += 0 if quiet == b"true" else max(0, c - b)
        return st

    # -- exposition -----------------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text format (call ``await refresh()`` first for fresh queue numbers)."""
        return render([*_Collector(self).collect(), *self._process_stats.families()])


class _Collector:
    """Builds every family at scrape time from the counters above and the live objects."""

    def __init__(self, m: Metrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Family]:
        m = self.m
        yield from self._jobs(m)
        yield from self._queues(m.queue_stats)
        yield from self._process(m)
        for fn in m._extra:
            yield from fn()

    @staticmethod
    def _jobs(m: Metrics) -> Iterator[Family]:
        series = list(m._series.values())
        lbl = ["queue", "worker"]
        executed = CounterFamily("sidekiq_jobs_executed", "Jobs executed (done or failed).", labels=lbl)
        success = CounterFamily("sidekiq_jobs_success", "Jobs that finished without raising.", labels=lbl)
        failed = CounterFamily("sidekiq_jobs_failed", "Jobs that raised.", labels=lbl)
        runtime = HistogramFamily("sidekiq_job_runtime_seconds", "Job execution time (the sidecar call).",
                                  labels=lbl)
        latency = HistogramFamily("sidekiq_job_latency_seconds",
                                  "Time from enqueue (enqueued_at) to the job's start.", labels=lbl)
        for s in series:
            if s.executed:
                executed.add_metric(s.labels, s.executed)
                success.add_metric(s.labels, s.success)
                failed.add_metric(s.labels, s.failed)
                runtime.add_metric(s.labels, s.runtime.cumulative(), s.runtime.sum)
            if s.latency.count:
                latency.add_metric(s.labels, s.latency.cumulative(), s.latency.sum)
        yield from (executed, success, failed, runtime, latency)

        calls = CounterFamily("fastworker_sidecar_calls", "Jobs handed to the sidecar, by outcome "
                              "(done, failed, unavailable, bad_job).", labels=["outcome"])
        dur = HistogramFamily("fastworker_sidecar_call_duration_seconds", "Sidecar request time per "
                              "job, by outcome (a batch's time is shared by its jobs).",
                              labels=["outcome"])
        for outcome, h in sorted(m._sidecar.items()):
            calls.add_metric([outcome], h.count)
            dur.add_metric([outcome], h.cumulative(), h.sum)
        yield from (calls, dur)

        req = CounterFamily("fastworker_jobs_requeued", "Jobs put back on their queue without "
                            "spending a retry, by reason.", labels=["reason"])
        for reason, n in sorted(m._requeued.items()):
            req.add_metric([reason], n)
        yield req
        yield CounterFamily("fastworker_jobs_dead", "Jobs this process moved to the dead set.",
                            value=m._dead)
        recovered, poison = m.process.recovered()  # the recoverer keeps its own counts
        yield CounterFamily("fastworker_jobs_recovered", "Jobs requeued from dead processes' "
                            "in-progress lists.", value=recovered)
        yield CounterFamily("fastworker_jobs_poison_pill", "Jobs sent to the dead set for having been "
                            "in flight in too many crashed processes.", value=poison)

    @staticmethod
    def _queues(st: QueueStats | None) -> Iterator[Family]:
        if st is None:  # Redis never answered: no numbers rather than made-up zeros
            return
        waiting = GaugeFamily("sidekiq_jobs_waiting_count", "Jobs waiting in each queue.",
                              labels=["queue"])
        latency = GaugeFamily("sidekiq_queue_latency", "Seconds since the oldest job in the queue "
                              "was enqueued.", labels=["queue"])
        for q in sorted(st.waiting):
            waiting.add_metric([q], st.waiting[q])
            latency.add_metric([q], round(st.latency[q], 6))
        yield waiting
        yield latency
        for name, doc, value in (
            ("sidekiq_jobs_scheduled_count", "Jobs in the schedule set.", st.scheduled),
            ("sidekiq_jobs_retry_count", "Jobs in the retry set.", st.retry),
            ("sidekiq_jobs_dead_count", "Jobs in the dead set.", st.dead),
            ("sidekiq_active_processes", "Live processes (Sidekiq or fastworker) with a heartbeat.",
             st.processes),
            ("sidekiq_active_workers_count", "Jobs running now across all processes.", st.workers),
            ("sidekiq_concurrency", "Jobs all processes can run at once.", st.concurrency),
            ("sidekiq_available_workers", "Free job slots across all processes (quiet ones count as full).",
             st.available),
            ("sidekiq_saturation", "1 - available / concurrency.", st.saturation),
            ("fastworker_queue_stats_timestamp_seconds", "When the queue-wide numbers were read from Redis.",
             st.taken_at),
        ):
            yield GaugeFamily(name, doc, value=value)

    @staticmethod
    def _process(m: Metrics) -> Iterator[Family]:
        view = m.process
        info = GaugeFamily("fastworker_info", "This process.", labels=["version", "identity"])
        info.add_metric([__version__, view.identity], 1)
        yield info
        yield GaugeFamily("fastworker_jobs_in_flight", "Jobs this process is running now.",
                          value=view.in_flight())
        yield GaugeFamily("fastworker_concurrency_limit", "Jobs this process runs at once at most.",
                          value=view.capacity())
        breaker = view.breaker()
        state = GaugeFamily("fastworker_breaker_state", "Sidecar circuit breaker state (1 = current).",
                            labels=["state"])
        trans = CounterFamily("fastworker_breaker_transitions", "Circuit breaker transitions "
                              "into each state.", labels=["state"])
        for s in ("closed", "open", "half_open"):
            state.add_metric([s], 1 if breaker.state == s else 0)
            trans.add_metric([s], breaker.transitions.get(s, 0))
        yield state
        yield trans
        health = m.health
        yield GaugeFamily("fastworker_redis_up", "1 while Redis answers.", value=1 if health.ok else 0)
        yield CounterFamily("fastworker_redis_errors", "Failed Redis operations.", value=health.errors)
        yield CounterFamily("fastworker_jobs_fetched", "Jobs fetched from Redis.", value=view.fetched())
        yield GaugeFamily("fastworker_quiet", "1 once quiet (TSTP) or stopping.",
                          value=1 if view.quiet() else 0)
        ready, _ = view.ready()
        yield GaugeFamily("fastworker_ready", "1 while /readyz answers 200.", value=1 if ready else 0)
        yield CounterFamily("fastworker_queue_stats_refreshes", "Reads of the queue-wide numbers "
                            "from Redis (at most one a second).", value=m.queue_stats_refreshes)
        yield CounterFamily("fastworker_queue_stats_errors", "Failed reads of the queue-wide numbers.",
                            value=m.queue_stats_errors)
        yield GaugeFamily("fastworker_start_time_seconds", "When this process started (epoch s).",
                          value=view.started_at)

