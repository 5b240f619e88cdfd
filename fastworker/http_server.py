"""The worker's HTTP endpoints (design.md "Worker HTTP endpoints") on ``--http-host``/``--http-port``.

* ``GET /healthz`` - liveness: 200 while the event loop answers (this handler runs on it) and no
  background loop (fetch, heartbeat, scheduler, recoverer, hooks, lifecycle, the breaker probe...)
  has died behind our back; 503 naming the loops otherwise, so an orchestrator restarts the process.
* ``GET /readyz``  - readiness, from the launcher's ``ready``: 200 when Redis answers, the sidecar's
  circuit is not open and the process is not stopping; else 503 with the reason as JSON.
* ``GET /metrics`` - Prometheus text format; the queue-wide numbers are at most a second old and
  read from Redis at most once a second however often it is scraped (metrics.py).

Port 0 disables the server. Access logs are off (a scrape every few seconds is not an event).
A loop-lag probe (a 0.5 s ticker) feeds ``fastworker_event_loop_lag_seconds`` and /healthz.

The server is a few lines over asyncio streams (GET and HEAD, keep-alive, Content-Length bodies),
not aiohttp.web: importing aiohttp costs the worker about 9.5 MB of memory (PSS) for three
read-only endpoints.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson

from .exposition import Family, GaugeFamily
from .log import log

TICK = 0.5
IDLE_TIMEOUT = 75.0  # seconds a keep-alive connection may sit idle (longer than a scrape interval)
MAX_HEAD = 16 * 1024
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}

Reply = tuple[int, str, bytes]  # status, content type, body
JSON_TYPE = "application/json"


def _json(status: int, body: dict[str, Any]) -> Reply:
    return status, JSON_TYPE, orjson.dumps(body)


class HttpServer:
    """``ready`` and ``dead_loops`` are the launcher's live answers for /readyz and /healthz;
    ``metrics`` serves /metrics (None: 404)."""

    def __init__(self, host: str, port: int, ready: Callable[[], tuple[bool, str]],
                 dead_loops: Callable[[], list[dict[str, Any]]], metrics: Any = None) -> None:
        self.host = host
        self.port = port
        self.ready = ready
        self.dead_loops = dead_loops
        self.metrics_source = metrics
        self.loop_lag = 0.0
        self.max_loop_lag = 0.0
        self._server: asyncio.AbstractServer | None = None
        self._routes: dict[str, Callable[[], Awaitable[Reply]]] = {
            "/healthz": self.healthz, "/readyz": self.readyz, "/metrics": self.metrics}
        self._ticker: asyncio.Task[None] | None = None
        if metrics is not None:
            metrics.add_collector(self._lag_metrics)

    # -- component contract ----------------------------------------------------------------------

    async def start(self) -> None:
        if not self.port:
            log.info("http_disabled")
            return
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True,
                                                      limit=MAX_HEAD)
        except OSError as exc:
            log.error("http_bind_failed", host=self.host, port=self.port, error_class=type(exc).__name__,
                      error_message=str(exc))
            raise
        self._ticker = asyncio.get_running_loop().create_task(self._tick())
        log.info("http_listening", host=self.host, port=self.port)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The loop's task, watched by the launcher (/healthz names a loop that died)."""
        return self._ticker

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        if self._server is not None:
            self._server.close()
            self._server = None

    # -- HTTP/1.1 ------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    async with asyncio.timeout(IDLE_TIMEOUT):
                        head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    await self._reply(writer, "GET", _json(400, {"error": "bad request line"}), False)
                    return
                method, target, version = parts
                length = headers.get("content-length", "0")
                if not length.isdigit() or int(length) > MAX_HEAD:
                    await self._reply(writer, method, _json(400, {"error": "bad Content-Length"}), False)
                    return
                if int(length):
                    await reader.readexactly(int(length))  # a body nobody asked for: read past it
                keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                if not await self._reply(writer, method, await self._route(method, target.split("?", 1)[0]), keep):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _route(self, method: str, path: str) -> Reply:
        handler = self._routes.get(path)
        if handler is None:
            return _json(404, {"error": "not found"})
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": "use GET"})
        return await handler()

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, method: str, reply: Reply, keep: bool) -> bool:
        status, ctype, body = reply
        close = "" if keep else "Connection: close\r\n"
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'OK')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\n{close}\r\n")
        writer.write(head.encode("latin-1") + (b"" if method == "HEAD" else body))
        await writer.drain()
        return keep

    # -- handlers ------------------------------------------------------------------------------

    async def healthz(self) -> Reply:
        dead = self.dead_loops()
        if dead:  # a loop ended although nobody asked it to: alive, but a part of it does not work
            names = ", ".join(str(d["loop"]) for d in dead)
            return _json(503, {"status": "unhealthy", "reason": f"{names} loop stopped", "loops": dead,
                               "error": dead[0]["error"]})
        return _json(200, {"status": "ok", "loop_lag_ms": round(self.loop_lag * 1000, 3)})

    async def readyz(self) -> Reply:
        ready, reason = self.ready()
        if ready:
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "not ready", "reason": reason})

    async def metrics(self) -> Reply:
        m = self.metrics_source
        if m is None:
            return _json(404, {"error": "metrics are not available (fastworker.metrics missing)"})
        await m.refresh()
        from .metrics import CONTENT_TYPE
        return 200, CONTENT_TYPE, m.render()

    # -- loop lag ------------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            t0 = time.monotonic()
            await asyncio.sleep(TICK)
            self.loop_lag = max(0.0, time.monotonic() - t0 - TICK)
            if self.loop_lag > self.max_loop_lag:
                self.max_loop_lag = self.loop_lag

    def _lag_metrics(self) -> Iterator[Family]:
        yield GaugeFamily("fastworker_event_loop_lag_seconds",
                          "How late the last 0.5 s timer fired (event loop responsiveness).",
                          value=self.loop_lag)
        yield GaugeFamily("fastworker_event_loop_lag_max_seconds", "Largest event loop lag seen.",
                          value=self.max_loop_lag)
