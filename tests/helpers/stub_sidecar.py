"""A STUB sidecar: a small aiohttp server that speaks the sidecar protocol without Ruby.

For worker-only tests, fault injection and benchmarks; the real sidecar is sidecar/ (Rails).
Behaviour by the job's class:
  FailJob       -> 422 RuntimeError, message = args[0] (or "boom"); "backtrace": 3 fake lines
  SlowJob       -> sleeps args[0] seconds, then 200 (503 "shutdown" at once on a /cancel of its jid)
  KillJob       -> 422 with retry_in "kill";  DiscardJob -> 422 with retry_in "discard"
  RetryInJob    -> 422 with retry_in = args[0]
  DeepFailJob   -> 422 RuntimeError with a 12-line backtrace ("frame 0" ... "frame 11")
  LongMessageJob -> 422 whose message is 20,000 characters (non-ASCII, astral and U+FFFD mixed)
  BadBytesJob   -> 422 whose body carries invalid UTF-8 bytes in the message (not what Ruby sends)
  NoSuch*       -> 422 NameError "uninitialized constant ...", stage "global" (an unknown class)
  RuntimeJob    -> 200, reporting args[0] milliseconds as its Ruby runtime (a slow machine's no-op job)
  SkipJob       -> 200 with "skipped": true (a 7.3+ IterableJob interrupted and re-enqueued)
  WaitJob       -> 200; a /perform_batch of WaitJobs only answers x-fastworker-waiting: 1, as the
                   real sidecar answers a batch of jobs it found waiting (every batch answers
                   x-fastworker-ran-ms)
  anything else -> 200
A job with a "wrapped" class (ActiveJob) behaves as its wrapped class (FailJob wrapped fails).
--request-delay S adds S seconds to every /perform and /perform_batch request (a slow machine's
per-request overhead: HTTP, Rack, JSON).
Admin: GET /_stats -> {"count", "peak", "in_flight", "batches", "batch_sizes", "records": [{"jid", "raw",
"t", "key"}]} (records only with --record); peak counts jobs whose requests are in flight at once; POST /_mode {"status": 503, "retry_after": 2} makes /perform answer that status;
{"status": null} restores it. POST /_reset clears the records. /exhausted calls are recorded too.
With FASTWORKER_SIDECAR_SECRET(_FILE) set, /perform, /perform_batch and /exhausted verify the
worker's signature as the real sidecar does (fastworker/signing.py): 401 and nothing recorded
otherwise; /_stats counts the refusals ("unauthorized").
Run: python tests/helpers/stub_sidecar.py --port 3999 [--record]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import os
import sys
from pathlib import Path

import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fastworker import signing  # noqa: E402


class Stub:
    def __init__(self, record: bool) -> None:
        self.record = record
        self.count = 0
        self.in_flight = 0
        self.peak = 0
        self.records: list[dict] = []
        self.exhausted_calls: list[dict] = []
        self.control_calls: list[dict] = []  # /cancel and /lifecycle bodies, with "path"
        self.mode_status: int | None = None
        self.exhausted_status: int | None = None  # /exhausted answers this instead of running hooks
        self.exhausted_delay = 0.0  # seconds /exhausted takes (hooks that run long)
        self.cancellable: dict[str, asyncio.Event] = {}  # running SlowJobs a /cancel stops
        self.retry_after: float | None = None
        self.batches = 0
        self.batch_sizes: list[int] = []
        self.batch = True
        self.request_delay = 0.0
        secret = signing.load_secret(os.environ)
        self.verifier = signing.Verifier(secret) if secret else None
        self.unauthorized = 0

    @web.middleware
    async def auth(self, request: web.Request, handler):  # noqa: ANN001, ANN201
        if self.verifier is not None and request.path in ("/perform", "/perform_batch", "/exhausted"):
            refusal = self.verifier.check(request.method, request.path, request.headers, await request.read())
            if refusal is not None:
                self.unauthorized += 1
                return web.Response(status=401, body=orjson.dumps({"error": f"unauthorized: {refusal}"}),
                                    content_type="application/json")
        return await handler(request)

    async def perform(self, request: web.Request) -> web.Response:
        if self.request_delay:
            await asyncio.sleep(self.request_delay)
        return await self._perform(request)

    async def _perform(self, request: web.Request | _FakeRequest) -> web.Response:
        raw = await request.read()
        if self.mode_status is not None:
            headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
            return web.Response(status=self.mode_status, body=b'{"status":"unavailable"}', headers=headers)
        self.in_flight += 1
        if self.in_flight > self.peak:
            self.peak = self.in_flight
        try:
            try:
                job = orjson.loads(raw)
                klass = job["class"]
                args = job["args"]
            except Exception as exc:  # noqa: BLE001
                return web.Response(status=400, body=orjson.dumps({"error": str(exc)}))
            self.count += 1
            if self.record:
                self.records.append({"jid": job.get("jid"), "raw": raw.decode(), "t": time.time(),
                                     "key": request.headers.get("Idempotency-Key")})
            t0 = time.perf_counter()
            if isinstance(job.get("wrapped"), str):
                klass = job["wrapped"]
            failure = _other_failure(job, klass)
            if failure is not None:
                return web.Response(status=422, body=failure, content_type="application/json")
            if klass == "SlowJob":  # stops at a /cancel of its jid, as Sidekiq::Shutdown stops it
                stop = self.cancellable[job.get("jid")] = asyncio.Event()
                try:
                    await asyncio.wait_for(stop.wait(), float(args[0]))
                    return web.Response(status=503, body=orjson.dumps({"jid": job.get("jid"), "status": "shutdown"}),
                                        content_type="application/json")
                except TimeoutError:
                    pass
                finally:
                    self.cancellable.pop(job.get("jid"), None)
            elif klass in ("FailJob", "KillJob", "DiscardJob", "RetryInJob"):
                retry_in = {"KillJob": "kill", "DiscardJob": "discard"}.get(klass)
                if klass == "RetryInJob":
                    retry_in = args[0]
                body = {"jid": job.get("jid"), "status": "failed", "error_class": "RuntimeError",
                        "error_message": str(args[0]) if (args and klass == "FailJob") else "boom",
                        "backtrace": ["app/jobs/fail_job.rb:3:in `perform'", "lib/a.rb:1", "lib/b.rb:2"],
                        "retry_in": retry_in}
                return web.Response(status=422, body=orjson.dumps(body), content_type="application/json")
            runtime_ms = (time.perf_counter() - t0) * 1000
            if klass == "RuntimeJob":
                runtime_ms = float(args[0])
            done: dict[str, Any] = {"status": "done", "runtime_ms": runtime_ms}
            if klass == "SkipJob":  # a 7.3+ IterableJob that was interrupted and re-enqueued itself
                done["skipped"] = True
            return web.Response(body=orjson.dumps(done), content_type="application/json")
        finally:
            self.in_flight -= 1

    async def perform_batch(self, request: web.Request) -> web.Response:
        """Runs each line as its own /perform and answers one result object per job."""
        if self.mode_status is not None:
            return web.Response(status=self.mode_status, body=b'{"status":"unavailable"}')
        if self.request_delay:
            await asyncio.sleep(self.request_delay)
        out = []
        self.batches += 1
        started = time.perf_counter()
        keys = request.headers.get("Idempotency-Keys", "").split(",")
        lines = (await request.read()).split(b"\n")
        self.batch_sizes.append(len(lines))
        # the whole batch is in flight until it is answered: it holds that many of the worker's
        # tokens (each item adds itself while it runs)
        self.in_flight += len(lines) - 1
        try:
            items = [await self._perform(_FakeRequest(line, keys[i] if i < len(keys) else None))
                     for i, line in enumerate(lines)]
        finally:
            self.in_flight -= len(lines) - 1
        for resp in items:
            item = orjson.loads(resp.body)
            if resp.status == 400:
                item = {"status": "bad_request", "error": item.get("error")}
            out.append(item)
        headers = {"x-fastworker-ran-ms": f"{(time.perf_counter() - started) * 1000:.3f}"}
        if all(b'"class":"WaitJob"' in line for line in lines):
            headers["x-fastworker-waiting"] = "1"
        return web.Response(body=orjson.dumps(out), content_type="application/json", headers=headers)

    async def exhausted(self, request: web.Request) -> web.Response:
        if self.exhausted_status is not None:
            return web.Response(status=self.exhausted_status, body=b'{"status":"unavailable"}',
                                content_type="application/json")
        self.exhausted_calls.append(orjson.loads(await request.read()))
        if self.exhausted_delay:
            await asyncio.sleep(self.exhausted_delay)
        return web.Response(body=b'{"status":"done","result":null}', content_type="application/json")

    async def control(self, request: web.Request) -> web.Response:
        """/cancel and /lifecycle: recorded; the stub runs nothing it could stop or notify."""
        body = orjson.loads(await request.read())
        self.control_calls.append(dict(body, path=request.path))
        if request.path == "/cancel":
            jids = body.get("jids", [])
            stopped = [j for j in jids if j in self.cancellable]
            for j in stopped:
                self.cancellable[j].set()
            return web.Response(body=orjson.dumps({"stopped": stopped, "running": [],
                                                   "unknown": [j for j in jids if j not in stopped]}),
                                content_type="application/json")
        return web.Response(body=b'{"status":"ok"}', content_type="application/json")

    async def health(self, request: web.Request) -> web.Response:
        if self.mode_status is not None:
            return web.Response(status=503, body=b'{"status":"unavailable"}')
        # aiohttp's server answers pipelined requests in order, as the mended Puma does
        return web.Response(body=orjson.dumps({"status": "ok", "stub": True, "batch": self.batch,
                                               "pipeline": 2 if self.batch else 1}),
                            content_type="application/json")

    async def stats(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"count": self.count, "peak": self.peak, "batches": self.batches,
                                               "batch_sizes": self.batch_sizes, "in_flight": self.in_flight,
                                               "unauthorized": self.unauthorized,
                                               "records": self.records, "exhausted": self.exhausted_calls,
                                               "control": self.control_calls}),
                            content_type="application/json")

    async def mode(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.mode_status = body.get("status")
        self.retry_after = body.get("retry_after")
        self.exhausted_status = body.get("exhausted_status")
        self.exhausted_delay = body.get("exhausted_delay") or 0.0
        return web.Response(body=b"{}")

    async def reset(self, request: web.Request) -> web.Response:
        self.records.clear()
        self.exhausted_calls.clear()
        self.count = 0
        self.peak = 0
        self.batches = 0
        self.batch_sizes.clear()
        return web.Response(body=b"{}")


LONG_MESSAGE = "é😀\ufffdx" * 5_000  # 20,000 characters


def _other_failure(job: dict, klass: str) -> bytes | None:
    """422 bodies for the error-shape behaviours (unknown class, long or broken messages, deep traces)."""
    jid = job.get("jid")
    if klass.startswith("NoSuch"):
        return orjson.dumps({"jid": jid, "status": "failed", "error_class": "NameError",
                             "error_message": f"uninitialized constant {klass}", "retry_in": None,
                             "retry": job.get("retry"), "stage": "global",
                             "backtrace": ["lib/sidekiq/processor.rb:1"]})
    if klass == "DeepFailJob":
        return orjson.dumps({"jid": jid, "status": "failed", "error_class": "RuntimeError", "error_message": "deep",
                             "backtrace": [f"frame {i}" for i in range(12)], "retry_in": None, "stage": "local"})
    if klass == "LongMessageJob":
        return orjson.dumps({"jid": jid, "status": "failed", "error_class": "RuntimeError",
                             "error_message": LONG_MESSAGE, "backtrace": ["a.rb:1"], "retry_in": None,
                             "stage": "local"})
    if klass == "BadBytesJob":
        return (b'{"jid":' + orjson.dumps(jid) + b',"status":"failed","error_class":"RuntimeError",'
                b'"error_message":"bad \xff\xfe bytes ' + b"y" * 20_000 + b'","retry_in":null}')
    return None


class _FakeRequest:
    def __init__(self, raw: bytes, key: str | None) -> None:
        self._raw = raw
        self.headers: dict[str, str] = {"Idempotency-Key": key} if key else {}

    async def read(self) -> bytes:
        return self._raw


def make_app(record: bool, batch: bool = True, request_delay: float = 0.0) -> web.Application:
    stub = Stub(record)
    stub.batch = batch
    stub.request_delay = request_delay
    app = web.Application(middlewares=[stub.auth], client_max_size=64 * 1024 * 1024)
    app.router.add_post("/perform", stub.perform)
    app.router.add_post("/perform_batch", stub.perform_batch)
    app.router.add_post("/exhausted", stub.exhausted)
    app.router.add_post("/cancel", stub.control)
    app.router.add_post("/lifecycle", stub.control)
    app.router.add_get("/health", stub.health)
    app.router.add_get("/_stats", stub.stats)
    app.router.add_post("/_mode", stub.mode)
    app.router.add_post("/_reset", stub.reset)
    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--record", action="store_true")
    ap.add_argument("--no-batch", action="store_true", help="do not offer /perform_batch")
    ap.add_argument("--request-delay", type=float, default=0.0, help="seconds added to every job request")
    args = ap.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    web.run_app(make_app(args.record, not args.no_batch, args.request_delay), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
