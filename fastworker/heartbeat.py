"""The Sidekiq process record and its heartbeat (sidekiq-compat.md §2.2-2.4; Sidekiq launcher.rb).

What Sidekiq::ProcessSet, Workers, Stats and the Web UI's Busy page read, written the way Sidekiq
writes it, so a fastworker process shows up (and obeys Quiet/Stop) like any Sidekiq process:

* one beat = a timed PING (``rtt_us``), then ONE MULTI:
  ``UNLINK <id>:work <id>:workers``; ``HSET`` each busy job into both (6.5+ reads ``:work``, 6.4.1
  ``:workers``; value ``{"queue","payload": <the raw job string>,"run_at": <int epoch s>}``) and
  ``EXPIRE`` them; ``SADD processes <id>`` (in the same MULTI as ``info``, or a concurrent
  ProcessSet cleanup could prune us); ``EXISTS <id>``; ``HSET <id> info busy beat quiet rss rtt_us
  concurrency``; ``EXPIRE <id> <ttl>``; ``RPOP <id>-signals``.
* a popped signal (the Web UI's / API's ``quiet!``, ``stop!``, ``dump_threads``) goes to
  ``on_signal`` (the launcher's handle_signal_name): TSTP quiets, TERM stops, TTIN logs every
  in-flight job.
* a beat at start, then every ``heartbeat_interval`` (5 s, Sidekiq 6's BEAT_PAUSE), and at once when
  the process turns quiet or starts stopping, so the UI shows it without waiting.
* a failed beat is a Redis error like any other (``health.failed``); the loop carries on.
* after a beat that landed: the Sidekiq 7+/8 job metrics counted since the last one (job_metrics.py), in
  a pipeline of their own, as Sidekiq's ExecutionTracker flushes on ``:beat``.
* on stop: ``SREM processes`` and ``UNLINK`` both busy hashes (the record itself expires, as in
  Sidekiq's ``clear_heartbeat``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from . import __version__
from .broker import REDIS_ERRORS, RedisHealth
from .capsules import queue_mode
from .clock import wait_event
from .exposition import CounterFamily, Family, GaugeFamily
from .keys import Keys
from .log import log

CLEAR_TIMEOUT = 3.0  # seconds the final SREM/UNLINK may take before shutdown goes on without it
RTT_WARNING_US = 50_000  # Sidekiq's RTT_WARNING_LEVEL: warn when five beats in a row are slower


def rss_kb() -> int:
    """Resident set size in KB (VmRSS), as Sidekiq reports it; 0 where /proc is missing."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def process_info(c: Any, started_at: float, queue_names: list[str], identity: str) -> dict[str, Any]:
    """The ``info`` JSON: every field Sidekiq 6.4.1 through 8.1 writes (compat §2.2's table). With capsules,
    as 7.x/8.x's Launcher#to_data: ``capsules`` is name -> {concurrency, mode, weights} (Capsule#to_h),
    ``queues`` every capsule's queues once, ``weights`` one hash per capsule; ``concurrency`` (read by
    6.x and by ProcessSet#total_concurrency) is the sum."""
    capsules: dict[str, Any] = {}
    for cap in c.all_capsules:
        weights = cap.weights  # a name is in one capsule once: duplicates are refused when read
        capsules[cap.name] = {"concurrency": cap.concurrency, "mode": queue_mode(weights), "weights": weights}
    return {
        "hostname": os.environ.get("DYNO") or socket.gethostname(),
        "started_at": float(started_at),
        "pid": os.getpid(),
        "tag": c.tag or "",
        "concurrency": c.total_concurrency,
        "queues": list(queue_names),
        "weights": [cap["weights"] for cap in capsules.values()],
        "capsules": capsules,
        "labels": list(c.labels),
        "identity": identity,
        # shown by the 7.x/8.x Busy page when it differs from the UI's own Sidekiq version
        "version": f"fastworker {__version__}",
        "embedded": False,
    }


class Heartbeat:
    def __init__(self, redis: Any, keys: Keys, identity: str, health: RedisHealth, info: dict[str, Any], *,
                 interval: float, ttl: int, busy: Callable[[], list[Any]], quiet: Callable[[], bool],
                 on_signal: Callable[[str], None], metrics: Any = None, job_metrics: Any = None) -> None:
        self.redis = redis
        self.identity = identity
        self.health = health
        self.interval = interval
        self.ttl = ttl
        self.concurrency = info["concurrency"]
        self.busy = busy  # the jobs in flight (the manager's busy map)
        self.is_quiet = quiet  # quiet or stopping: the record says "quiet"
        self.on_signal = on_signal
        self.job_metrics = job_metrics  # Sidekiq 7+/8's, flushed with each beat (None on 6.x)
        k = keys
        ident = identity
        self.key = k.process(ident)
        self.work_key = k.work(ident)
        self.workers_key = k.workers(ident)
        self.signals_key = k.signals(ident)
        self.processes_key = k.processes
        self.info_json = orjson.dumps(info)
        self.beats = 0
        self.last_beat: float | None = None
        self._known: bool | None = None  # did our record exist at the last beat?
        self._had_busy = True  # unknown at start: clear the busy hashes on the first beat
        self._busy_cache: dict[str, tuple[Any, bytes]] = {}
        self.last_rtt_us = 0
        self._rtts: deque[int] = deque(maxlen=5)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if metrics is not None:
            metrics.add_collector(self._metrics)

    # -- component contract ----------------------------------------------------------------------

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The loop's task, watched by the launcher (/healthz names a loop that died)."""
        return self._task

    async def start(self) -> None:
        await self.beat()  # listed in ProcessSet before the first job is fetched
        self._task = asyncio.get_running_loop().create_task(self._run())

    def quiet(self) -> None:
        self._wake.set()

    def stopping(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            # cancel until it ends: Python 3.11's wait_for swallows a cancel that arrives just as
            # the wake event it waits for is set (stopping() sets it right before this)
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait([self._task], timeout=0.1)
            self._task = None
        try:
            await asyncio.wait_for(self._clear(), CLEAR_TIMEOUT)
        except (TimeoutError, *REDIS_ERRORS) as exc:
            # best effort, as in Sidekiq: the record expires within the TTL anyway
            log.warn("heartbeat_clear_failed", error_class=type(exc).__name__, error_message=str(exc)[:300])

    async def _clear(self) -> None:
        await self._flush_job_metrics(time.time())  # the last jobs' metrics, as Sidekiq's final beat
        async with self.redis.pipeline(transaction=True) as p:
            p.srem(self.processes_key, self.identity)
            p.unlink(self.work_key, self.workers_key)
            await p.execute()
        log.info("heartbeat_cleared", identity=self.identity)

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await wait_event(self._wake, self.interval)
            self._wake.clear()
            await self.beat()

    def _busy_payloads(self, works: list[Any]) -> dict[str, bytes]:
        """tid -> the busy-hash JSON; each job's JSON is built once and reused on later beats."""
        old = self._busy_cache
        new: dict[str, tuple[Any, bytes]] = {}
        out: dict[str, bytes] = {}
        for w in works:
            hit = old.get(w.tid)
            if hit is not None and hit[0] is w:
                js = hit[1]
            else:
                js = orjson.dumps({"queue": w.queue, "payload": w.env.raw.decode("utf-8", "replace"),
                                   "run_at": int(w.run_at)})
            new[w.tid] = (w, js)
            out[w.tid] = js
        self._busy_cache = new
        return out

    async def beat(self) -> bool:
        """One heartbeat; False (logged, counted as a Redis error) when Redis did not take it."""
        busy = self._busy_payloads(self.busy())
        try:
            t0 = time.perf_counter()
            await self.redis.ping()
            rtt_us = max(1, int((time.perf_counter() - t0) * 1_000_000))
            now = time.time()
            existed, signal = await self._write(busy, self.is_quiet(), rtt_us, now)
        except REDIS_ERRORS as exc:
            self.health.failed("heartbeat", exc)
            return False
        except Exception as exc:  # noqa: BLE001 - e.g. a Redis error reply; the loop must survive
            log.error("heartbeat_failed", error_class=type(exc).__name__, error_message=str(exc)[:300])
            return False
        self.health.succeeded()
        await self._flush_job_metrics(now)
        self._had_busy = bool(busy)
        self.beats += 1
        self.last_beat = now
        self._watch_rtt(rtt_us)
        if not existed:
            # first beat, or the record expired during an outage and is back now
            log.info("heartbeat_registered" if self._known is None else "heartbeat_restored",
                     identity=self.identity, busy=len(busy), rtt_us=rtt_us)
        self._known = True
        if signal is not None:
            name = signal.decode("utf-8", "replace") if isinstance(signal, bytes) else str(signal)
            log.info("remote_signal", signal=name, identity=self.identity)
            self.on_signal(name)
        return True

    async def _write(self, busy: dict[str, bytes], quiet: bool, rtt_us: int, now: float) -> tuple[bool, Any]:
        """The beat's one MULTI; returns whether our record existed, and the signal popped (or None)."""
        async with self.redis.pipeline(transaction=True) as p:
            if busy or self._had_busy:  # nothing busy now or last beat: the hashes are gone already
                p.unlink(self.work_key, self.workers_key)
            if busy:
                p.hset(self.work_key, mapping=busy)
                p.hset(self.workers_key, mapping=busy)
                p.expire(self.work_key, self.ttl)
                p.expire(self.workers_key, self.ttl)
            p.sadd(self.processes_key, self.identity)
            p.exists(self.key)
            p.hset(self.key, mapping={
                "info": self.info_json,
                "busy": len(busy),
                "beat": repr(now),
                "quiet": "true" if quiet else "false",
                "rss": rss_kb(),
                "rtt_us": rtt_us,
                "concurrency": self.concurrency,
            })
            p.expire(self.key, self.ttl)
            p.rpop(self.signals_key)
            res = await p.execute()
        return bool(res[-4]), res[-1]

    def _watch_rtt(self, rtt_us: int) -> None:
        """Sidekiq's RTT warning: five beats in a row slower than RTT_WARNING_US."""
        self.last_rtt_us = rtt_us
        self._rtts.append(rtt_us)
        if len(self._rtts) == self._rtts.maxlen and min(self._rtts) > RTT_WARNING_US:
            log.warn("redis_rtt_high", rtt_us=list(self._rtts), threshold_us=RTT_WARNING_US)
            self._rtts.clear()

    async def _flush_job_metrics(self, now: float) -> None:
        """Sidekiq 7+/8's job metrics counted since the last beat (fastworker/job_metrics.py), as its
        ExecutionTracker flushes them on every beat; counts that did not land go with the next beat."""
        jm = self.job_metrics
        if jm is None:
            return
        rows = jm.take()
        commands = jm.commands(rows, now)
        if not commands:
            return
        try:
            async with self.redis.pipeline(transaction=False) as p:
                for command in commands:
                    p.execute_command(*command)
                await p.execute()
        except Exception as exc:  # noqa: BLE001 - metrics must never stop the heartbeat
            jm.restore(rows)
            log.warn("job_metrics_flush_failed", error_class=type(exc).__name__, error_message=str(exc)[:300])

    def _metrics(self) -> Iterator[Family]:
        yield CounterFamily("fastworker_heartbeats", "Heartbeats written to Redis.", value=self.beats)
        if self.last_beat is not None:
            yield GaugeFamily("fastworker_heartbeat_timestamp_seconds", "When the last heartbeat landed "
                              "(epoch s).", value=self.last_beat)
            yield GaugeFamily("fastworker_redis_rtt_seconds", "Redis PING round trip at the last heartbeat.",
                              value=self.last_rtt_us / 1e6)
