"""The worker's HTTP endpoints (design.md "Worker HTTP endpoints") on ``--http-host``/``--http-port``.

* ``GET /healthz`` - liveness: 200 while the event loop answers (this handler runs on it) and the
  fetch loop has not died behind our back; 503 otherwise, so an orchestrator restarts the process.
* ``GET /readyz``  - readiness, from ``launcher.ready``: 200 when Redis answers, the sidecar's
  circuit is not open and the process is not stopping; else 503 with the reason as JSON.
* ``GET /metrics`` - Prometheus text format; the queue-wide numbers are at most a second old and
  read from Redis at most once a second however often it is scraped (metrics.py).

Port 0 disables the server. Access logs are off (a scrape every few seconds is not an event).
A loop-lag probe (a 0.5 s ticker) feeds ``fastworker_event_loop_lag_seconds`` and /healthz.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import orjson
from aiohttp import web
from prometheus_client.core import GaugeMetricFamily, Metric

from .log import log

TICK = 0.5


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class HttpServer:
    def __init__(self, launcher: Any) -> None:
        self.launcher = launcher
        self.host = launcher.config.http_host
        self.port = launcher.config.http_port
        self.loop_lag = 0.0
        self.max_loop_lag = 0.0
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        metrics = getattr(launcher, "metrics", None)
        if metrics is not None:
            metrics.add_collector(self._lag_metrics)

    # -- component contract ----------------------------------------------------------------------

    async def start(self) -> None:
        if not self.port:
            log.info("http_disabled")
            return
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port, reuse_address=True).start()
        except OSError as exc:
            await runner.cleanup()
            log.error("http_bind_failed", host=self.host, port=self.port, error_class=type(exc).__name__,
                      error_message=str(exc))
            raise
        self._runner = runner
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        log.info("http_listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ------------------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        L = self.launcher
        task = getattr(L, "fetch_task", None)
        if task is not None and task.done() and not (L.quiet or L.stopping):
            # the fetch loop ended although nobody asked it to: alive but useless
            exc = None if task.cancelled() else task.exception()
            return _json(503, {"status": "unhealthy", "reason": "fetch loop stopped",
                               "error": repr(exc) if exc else None})
        return _json(200, {"status": "ok", "loop_lag_ms": round(self.loop_lag * 1000, 3)})

    async def readyz(self, request: web.Request) -> web.Response:
        ready, reason = self.launcher.ready
        if ready:
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "not ready", "reason": reason})

    async def metrics(self, request: web.Request) -> web.Response:
        m = getattr(self.launcher, "metrics", None)
        if m is None:
            return _json(404, {"error": "metrics are not available (fastworker.metrics missing)"})
        await m.refresh()
        from .metrics import CONTENT_TYPE
        return web.Response(body=m.render(), headers={"Content-Type": CONTENT_TYPE})

    # -- loop lag ------------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(TICK)
            self.loop_lag = max(0.0, time.monotonic() - t0 - TICK)
            if self.loop_lag > self.max_loop_lag:
                self.max_loop_lag = self.loop_lag

    def _lag_metrics(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("fastworker_event_loop_lag_seconds",
                                "How late the last 0.5 s timer fired (event loop responsiveness).",
                                value=self.loop_lag)
        yield GaugeMetricFamily("fastworker_event_loop_lag_max_seconds", "Largest event loop lag seen.",
                                value=self.max_loop_lag)
