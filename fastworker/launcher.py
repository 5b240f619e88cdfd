"""Builds the components and owns start order, shutdown order and signals (asynq server.go).

Start:    Redis clients -> broker registration -> sidecar client (and its /health) -> HTTP server -> heartbeat ->
          scheduler -> recoverer -> lifecycle (the sidecar fires :startup) -> fetcher (producers last,
          so everything they feed is ready).
Shutdown (TERM/INT, or ``stop!`` from the Web UI):
          readiness off -> fetcher and scheduler stop (quiet) -> in-flight jobs get until
          ``timeout`` -> the unfinished are stopped in the sidecar (POST /cancel: Sidekiq::Shutdown in
          their threads), then requeued byte-identical at the head of their queue ->
          acks flushed -> anything left in our in-progress lists goes back -> heartbeat cleared
          -> clients closed -> exit 0. A second TERM ends the wait at once.
TSTP:     quiet only (no fetching, no scheduling; in-flight jobs finish; the process stays).
TTIN:     log what every in-flight job is doing.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import os
import secrets
import signal
import socket
from typing import Any

from . import core, retry, signing
from .batching import BatchPlanner
from .breaker import Breaker
from .broker import Broker, RedisHealth
from .clock import REAL_CLOCK, Clock
from .config import Config
from .fetch_pools import FetchPools
from .heartbeat import Heartbeat, process_info
from .http_server import HttpServer
from .keys import Keys
from .job_metrics import JobMetrics
from .lifecycle import Lifecycle
from .limiter import Limiter
from .log import configure, log
from .manager import Manager
from .metrics import Metrics, ProcessView
from .poll_loop import tick_failed
from .processor import Processor
from .redis_url import connect
from .recoverer import Recoverer, held_jobs
from .scheduler import Scheduler
from .hooks import Hooks
from .sidecar_client import SidecarClient


def make_identity() -> str:
    host = os.environ.get("DYNO") or socket.gethostname()
    return f"{host}:{os.getpid()}:{secrets.token_hex(6)}"


def redis_client(url: str, max_connections: int, blocking: bool = False, tls: dict[str, str] | None = None) -> Any:
    """A redis-py asyncio client (hiredis parser when installed) for a redis:// or sentinel URL."""
    return connect(url, max_connections=max_connections, blocking=blocking, tls=tls)


def effective_config(config: Config, sources: dict[str, str]) -> dict[str, Any]:
    """The configuration as it is used, each value with where it came from (logged once at startup);
    the Redis URL without its password."""
    from dataclasses import asdict

    from .redis_url import redact

    values = asdict(config)
    values["redis_url"] = redact(config.redis_url)
    return {"values": values, "sources": {k: sources.get(k, "default") for k in values}}


class Launcher:
    def __init__(self, config: Config, clock: Clock = REAL_CLOCK, identity: str | None = None,
                 sources: dict[str, str] | None = None) -> None:
        self.config = config
        self.config_sources = sources or {}
        self.clock = clock
        self.identity = identity or make_identity()
        self.keys = Keys(config.namespace)
        self.queue_names = list(config.all_queue_names)  # every capsule's queues
        self.health = RedisHealth()
        self.stopping = False
        self.quiet = False
        self.started_at = clock.now()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._next_hang_probe = 0.0  # monotonic time of the next hung-sidecar probe (_breaker_probe_tick)
        self._deadline: float | None = None
        self.components: list[Any] = []  # the loops beside the job path: http, heartbeat, scheduler, recoverer
        self.fetch_task: asyncio.Task[Any] | None = None  # /healthz may ask before start() has made it

    # -- start ---------------------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        tls = {"ssl_ca_certs": c.redis_ca_file, "ssl_certfile": c.redis_cert_file, "ssl_keyfile": c.redis_key_file}
        self.redis = redis_client(c.redis_url, max_connections=16, tls=tls)
        self.blocking_redis = redis_client(c.redis_url, max_connections=len(self.queue_names) + 2, blocking=True,
                                           tls=tls)
        self.broker = Broker(self.redis, self.blocking_redis, self.keys, self.identity, self.queue_names, self.health)
        await self.broker.register()
        secret = signing.load_secret(os.environ)  # checked by the CLI already (exit 2 on a bad one)
        self.sidecar = SidecarClient(c.sidecar_url, c.total_concurrency, c.sidecar_connect_timeout, c.job_timeout,
                                     signing.Signer(secret) if secret else None, c.max_job_bytes)
        await self.sidecar.start()
        if await self.sidecar.health():  # also learns whether /perform_batch is there, and its processes
            await self.sidecar.warm()
        else:
            log.warn("sidecar_not_ready", sidecar_url=c.sidecar_url)
        self.breaker = Breaker(c.breaker_threshold, c.breaker_cooldown, mono=self.clock.mono)
        self.limiter = Limiter(c.concurrency)
        self.job_metrics = JobMetrics.for_version(c.sidekiq_version, self.keys)  # None on 6.x
        self.metrics = Metrics(self.redis, self.keys, self.queue_names, self.health, self._process_view(),
                               self.job_metrics)
        self.planner = BatchPlanner(c.total_concurrency, self.sidecar.offer)
        self.hooks = Hooks(self.broker, self.sidecar, self.clock, c.dead_max_jobs, c.dead_timeout, self.metrics)
        self.processor = Processor(self.broker, self.sidecar, self.breaker, self.clock,
                                   retry.Policy(c.max_retries, c.sidekiq_version), c.dead_max_jobs,
                                   c.dead_timeout, self.planner, self.hooks, self.metrics)
        self.manager = Manager(self.processor, self.limiter, self.broker, self.clock)
        self.fetcher = FetchPools(c, self.broker, self.manager, self.processor, self.breaker, self.planner,
                                  self.limiter)
        # the loops beside the job path, started before the fetcher so that what they watch exists
        # Lifecycle last: the sidecar's :startup fires once everything but the fetcher runs
        scheduler = Scheduler(self.redis, self.keys, self.health, self.clock, poll_interval=c.poll_interval,
                              sidekiq_version=c.sidekiq_version, dead_max_jobs=c.dead_max_jobs,
                              dead_timeout=c.dead_timeout, metrics=self.metrics, sidecar=self.sidecar)
        lifecycle = Lifecycle(self.sidecar, self.identity, c.heartbeat_interval,
                              {"timeout": c.timeout, "concurrency": c.concurrency, "max_retries": c.max_retries},
                              self.is_quiet)
        recoverer = Recoverer(self.redis, self.broker, self.keys, self.identity, self.health,
                              queue_names=self.queue_names, process_ttl=c.process_ttl,
                              heartbeat_interval=c.heartbeat_interval, poison_pill_limit=c.poison_pill_limit,
                              dead_max_jobs=c.dead_max_jobs, dead_timeout=c.dead_timeout,
                              held=lambda: held_jobs(self.manager, self.fetcher, self.broker),
                              stopping=lambda: self.stopping, metrics=self.metrics)
        self.recoverer = recoverer
        heartbeat = Heartbeat(self.redis, self.keys, self.identity, self.health,
                              process_info(c, self.started_at, self.queue_names, self.identity),
                              interval=c.heartbeat_interval, ttl=c.process_ttl,
                              busy=lambda: list(self.manager.busy.values()), quiet=self.is_quiet,
                              on_signal=self.handle_signal_name, metrics=self.metrics, job_metrics=self.job_metrics)
        http = HttpServer(c.http_host, c.http_port, lambda: self.ready, self.dead_loops, self.metrics)
        for comp in (http, heartbeat, scheduler, recoverer, self.hooks, lifecycle):
            await comp.start()
            self.components.append(comp)
        loop = asyncio.get_running_loop()
        settle_heap()
        self._tasks.append(loop.create_task(self._flush_logs(), name="log_flush"))
        self._tasks.append(loop.create_task(self._breaker_probe(), name="breaker_probe"))
        self.fetch_task = loop.create_task(self.fetcher.run(), name="fetch")
        for name, task in self.loops().items():
            task.add_done_callback(functools.partial(self._loop_ended, name))
        log.info("config", **effective_config(c, self.config_sources))
        log.info("startup", identity=self.identity, queues=self.queue_names, concurrency=c.total_concurrency,
                 capsules={cap.name: cap.concurrency for cap in c.all_capsules},
                 sidecar_url=c.sidecar_url, sidecar_processes=self.sidecar.offer.processes,
                 sidecar_pipeline=self.sidecar.offer.pipeline, batch_size=self.planner.size,
                 sidecar_connections=self.sidecar.connections(), core=core.IMPLEMENTATION,
                 loop=type(loop).__module__, frozen_objects=gc.get_freeze_count())

    def _process_view(self) -> ProcessView:
        """What /metrics reads of this process; the manager, fetcher and recoverer come after
        Metrics (the processor counts into it), hence callables."""
        return ProcessView(self.identity, self.started_at,
                           in_flight=lambda: len(self.manager.busy),
                           capacity=lambda: self.limiter.capacity,
                           breaker=lambda: self.breaker,
                           fetched=lambda: self.fetcher.fetched,
                           quiet=lambda: self.quiet or self.stopping,
                           ready=lambda: self.ready,
                           recovered=lambda: (self.recoverer.recovered, self.recoverer.killed))

    def is_quiet(self) -> bool:
        """Quiet (TSTP, the Web UI's Quiet) or stopping: no new work is fetched."""
        return self.quiet or self.stopping

    # -- the loops ------------------------------------------------------------------------------

    def loops(self) -> dict[str, asyncio.Task[Any]]:
        """Every background loop by name: the fetch loop, the launcher's own, each component's."""
        out = {t.get_name(): t for t in self._tasks}
        if self.fetch_task is not None:
            out["fetch"] = self.fetch_task
        for comp in self.components:
            if comp.task is not None:
                out[type(comp).__name__.lower()] = comp.task
        return out

    def dead_loops(self) -> list[dict[str, str | None]]:
        """The loops that ended although the process was neither quieted nor stopped (/healthz:
        alive, but a part of it is not working)."""
        if self.is_quiet():
            return []
        return [{"loop": name, "error": _failure(t)} for name, t in self.loops().items() if t.done()]

    def _loop_ended(self, name: str, task: asyncio.Task[Any]) -> None:
        error = _failure(task)
        if error is not None or not self.is_quiet():
            log.error("loop_died", loop=name, error=error)

    # -- signals and remote commands ------------------------------------------------------------

    def install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "TERM")
        loop.add_signal_handler(signal.SIGINT, self.request_stop, "INT")
        loop.add_signal_handler(signal.SIGTSTP, self.request_quiet, "TSTP")
        loop.add_signal_handler(signal.SIGTTIN, self.dump_busy)

    def handle_signal_name(self, name: str) -> None:
        """A signal sent through Redis (``<identity>-signals``, the Web UI's Quiet/Stop)."""
        if name == "TSTP":
            self.request_quiet("TSTP")
        elif name in ("TERM", "INT"):
            self.request_stop(name)
        elif name in ("TTIN", "INFO"):
            self.dump_busy()
        else:
            log.warn("signal_ignored", signal=name)

    def request_quiet(self, source: str = "TSTP") -> None:
        if self.quiet:
            return
        self.quiet = True
        log.info("quiet", source=source)
        self.fetcher.stop()
        for comp in self.components:
            q = getattr(comp, "quiet", None)
            if q is not None:
                q()

    def request_stop(self, source: str = "TERM") -> None:
        if self.stopping:
            # a second TERM: stop waiting for in-flight jobs
            log.warn("shutdown_hurry", source=source)
            self._deadline = self.clock.mono()
            return
        self.stopping = True
        log.info("shutdown_begin", source=source, timeout_s=self.config.timeout)
        self._stop.set()

    def dump_busy(self) -> None:
        now = self.clock.now()
        busy = list(self.manager.busy.values())
        log.warn("busy_dump", count=len(busy))
        for w in busy:
            log.warn("busy_job", tid=w.tid, jid=w.env.jid, **{"class": w.env.display_class}, queue=w.queue,
                     running_s=round(now - w.run_at, 3))

    # -- run and shutdown ------------------------------------------------------------------------

    async def run(self) -> int:
        await self.start()
        await self._stop.wait()
        await self.shutdown()
        return 0

    async def shutdown(self) -> None:
        c = self.config
        self._deadline = self.clock.mono() + c.timeout
        self.request_quiet("shutdown")
        for comp in self.components:
            sp = getattr(comp, "stopping", None)
            if sp is not None:
                sp()
        # the fetch loop finishes its round trip and puts back what it holds
        if self.fetch_task is not None:
            await self._wait_task(self.fetch_task)
        while self.manager.busy:
            if await self.manager.drain(min(self._deadline, self.clock.mono() + 0.5)):
                break
            if self.clock.mono() >= self._deadline:
                break
        if self.manager.busy:
            n = await self.manager.hard_shutdown()
            log.info("shutdown_hard", requeued=n)
        self.broker.stopping = True
        try:
            await self.broker.flush()
            moved = await self.broker.return_inprogress()
            if moved:
                log.warn("shutdown_returned_inprogress", count=moved)
            await self.broker.unregister()
        except Exception as exc:  # Redis down: the jobs stay in our in-progress lists for the recoverer
            log.error("shutdown_flush_failed", error_class=type(exc).__name__, error_message=str(exc))
        for comp in reversed(self.components):
            try:
                await comp.stop()
            except Exception as exc:
                log.error("component_stop_failed", component=type(comp).__name__, error_message=str(exc))
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sidecar.close()
        await self.broker.close()
        await self.redis.aclose()
        await self.blocking_redis.aclose()
        log.info("shutdown_complete")
        log.flush()

    async def _wait_task(self, task: asyncio.Task[Any]) -> None:
        # in slices, so that a second TERM (which moves the deadline to now) ends the wait at once;
        # the fetch loop may sit waiting for a free token until a job finishes
        while not task.done():
            remaining = (self._deadline or 0) - self.clock.mono()
            if remaining <= 0:
                break
            await asyncio.wait([task], timeout=min(remaining, 0.25))
        if not task.done():
            task.cancel()  # whatever it held is still in our in-progress lists: returned below
            await asyncio.wait([task], timeout=1.0)

    async def _flush_logs(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            log.flush()

    async def _breaker_probe(self) -> None:
        """While the circuit is open, probe GET /health after the cooldown; half-open on success.
        Otherwise watch for a hung sidecar (the policy is in breaker.py's docstring). A tick that
        raises is logged and the loop goes on: a dead probe would leave the circuit open for good
        while /healthz still said 200."""
        while True:
            await asyncio.sleep(0.2)
            try:
                await self._breaker_probe_tick()
            except Exception as exc:  # the loop must outlive any one tick
                tick_failed("breaker_probe", exc)

    async def _breaker_probe_tick(self) -> None:
        connect_timeout = self.config.sidecar_connect_timeout
        hang_after = 2 * connect_timeout
        b = self.breaker
        if b.cooldown_over():
            if await self.sidecar.health():
                b.half_open()
                self.fetcher.wake()
            else:
                b.probe_failed("health check failed")
        elif (b.state != "open" and self.sidecar.stalled(hang_after)
              and self.clock.mono() >= self._next_hang_probe):
            self._next_hang_probe = self.clock.mono() + hang_after
            if not await self.sidecar.responsive(connect_timeout):
                await self._sidecar_hung(hang_after)

    async def _sidecar_hung(self, hang_after: float) -> None:
        """Abandon every /perform still waiting: requeue its job for free, then cancel the request."""
        waiting = self.sidecar.outstanding
        works = [w for w in list(self.manager.busy.values()) if w.task in waiting and not w.abandoned]
        self.breaker.trip(f"sidecar hung: no answer for {hang_after:g} s, GET /health unanswered")
        if not works:
            return
        for w in works:
            w.abandoned = True
        log.error("sidecar_hung", requeued=len(works), jids=[w.env.jid for w in works][:50])
        # stop them first, if the sidecar still answers (a hung one may not: the closed request
        # connections then stop them once it wakes up, see the sidecar's DisconnectWatch); they
        # stay in our in-progress list meanwhile, so a crash here loses nothing
        await self.sidecar.cancel([w.env.jid for w in works], grace=0.5, timeout=1.0)
        # the oldest job ends next in line
        await self.broker.bulk_requeue([(w.queue, w.env.raw) for w in reversed(works)])
        for _ in works:
            self.metrics.requeued("sidecar_hung")
        tasks = list({id(w.task): w.task for w in works if w.task is not None}.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=3.0)

    @property
    def ready(self) -> tuple[bool, str]:
        if self.stopping:
            return False, "stopping"
        if not self.health.ok:
            return False, "redis unavailable"
        if self.breaker.state == "open":
            return False, "sidecar circuit open"
        return True, "ok"


async def _amain(config: Config, sources: dict[str, str] | None = None) -> int:
    launcher = Launcher(config, sources=sources)
    launcher.install_signals()
    return await launcher.run()


def settle_heap() -> None:
    """Freeze what the imports and the setup made, before the first job. CPython's oldest-generation
    collection walks every tracked object: about 47,000 of them here, 24-31 ms on the project's
    machine, during which no job is fetched or answered (latency spikes of 30-50 ms every few
    seconds at 500 jobs/s). Frozen objects are never walked again; the jobs' own garbage still is."""
    gc.collect()
    gc.freeze()


def run(config: Config, sources: dict[str, str] | None = None) -> int:
    """Entry point used by the CLI: uvloop, JSON logs, run until stopped."""
    import uvloop

    configure(config.log_level, config.log_format)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_amain(config, sources))


def _failure(task: asyncio.Task[Any]) -> str | None:
    """What ended a finished task: the exception's repr, or None (returned, or cancelled)."""
    if task.cancelled():
        return None
    exc = task.exception()
    return repr(exc)[:500] if exc is not None else None
