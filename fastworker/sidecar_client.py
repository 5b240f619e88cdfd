"""The sidecar client: the sidecar protocol over keep-alive connections (sidecar_http.py).

Duties:
1. ``perform(raw, jid)``: POST /perform with the job's original bytes and ``Idempotency-Key``;
   map the answer to Done, Failed (the job raised: spends a retry) or raise SidecarUnavailable
   (connection error, timeout, 5xx, 503/429: requeue for free; a 503 at capacity is marked
   ``busy``, backpressure from a live sidecar).
2. ``exhausted(job, error, ..., phase)``: POST /exhausted so Ruby runs sidekiq_retries_exhausted
   ("block") or the death handlers ("death"); returns the block's result ("discard" or None).
3. ``perform_batch(raws, jids)``: several jobs in one POST /perform_batch, one outcome each;
4. ``health()``: GET /health, used by the breaker's half-open probe and /readyz; it also learns
   what the sidecar offers (batches, how many processes serve it, its body limit).
5. ``cancel(jids)``: POST /cancel, so a job the worker gives back (hard shutdown, hang watchdog,
   --job-timeout) stops running in the sidecar (Sidekiq::Shutdown in its thread) before it is
   requeued; ``lifecycle(event, ...)``: POST /lifecycle (startup/quiet/shutdown/beat), which fires
   the app's Sidekiq lifecycle events. /lifecycle goes over one dedicated keep-alive connection, so
   that in a Puma cluster it keeps reaching the same sidecar process; ``announce`` gives the
   other processes the worker's settings. None of them counts for the hang watchdog, and a
   failure is reported, never raised.
6. ``client_push(members)``: POST /client_push, due retry and schedule members through the app's
   client middleware as Sidekiq's poller pushes them; ``client_middleware`` says (from /health)
   whether the app has any, None until the sidecar first answered.
Every request carries the signature headers when a secret is set (signing.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from . import limits
from .batching import MAX_BATCH, Offer
from .errors import SidecarUnavailable
from .jobjson import dump_job
from .log import log
from .outcome import BadJob, Done, Failed, NotAttempted, Outcomes
from .sidecar_http import Response, SidecarHTTP, TransportError

_JSON = "application/json"
CANCEL_GRACE = 3.0  # seconds the sidecar waits for a cancelled job's ensure blocks (Drain::HARD_STOP_GRACE)
LIFECYCLE_TIMEOUT = 10.0  # the app's :startup / :shutdown blocks run inside the request
HOOKS_TIMEOUT = 30.0  # the app's retries_exhausted block or death handlers run inside the request
CLIENT_PUSH_TIMEOUT = 10.0  # the app's client middleware runs inside the request (500 jobs at most)
# The sidecar's refusal when every job slot of the process is taken (Drain#admit); the worker
# backs off instead of counting it against the sidecar (processor.py, "at capacity")
AT_CAPACITY = "at_capacity"
BUSY_REASON = "sidecar at capacity"


class JobTimedOut(Exception):
    """A request outlived --job-timeout: the job's fault, not the sidecar's (it spends a retry,
    as a job that raised; requeueing it for free would loop forever)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds

    def failure(self) -> Failed:
        return Failed("Fastworker::JobTimeout", f"the job ran longer than --job-timeout ({self.seconds:g} s)",
                      None, None, None, {})


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _ran(headers: Any) -> float | None:
    """x-fastworker-ran-ms, in seconds (None when absent or unreadable)."""
    value = headers.get("x-fastworker-ran-ms")
    if not value:
        return None
    try:
        return max(0.0, float(value)) / 1000
    except ValueError:
        return None


def _waiting(headers: Any) -> bool:
    """x-fastworker-waiting: the sidecar found the batch's jobs waiting (it runs them at once)."""
    return headers.get("x-fastworker-waiting") == "1"


class SidecarClient:
    def __init__(self, base_url: str, concurrency: int, connect_timeout: float = 5.0,
                 job_timeout: float = 0.0, signer: Any = None, max_body: int = limits.MAX_BODY) -> None:
        self.base_url = base_url.rstrip("/")
        self.signer = signer  # signing.Signer, or None when no secret is set
        self.max_body = self.max_body_configured = max_body  # lowered to what /health advertises
        self.concurrency = concurrency
        self.connect_timeout = connect_timeout
        self.job_timeout = job_timeout
        self.http: SidecarHTTP | None = None
        self.control: SidecarHTTP | None = None  # one connection for /cancel and /lifecycle
        self.offer = Offer()  # what GET /health advertises: /perform_batch, the sidecar's processes
        self.client_middleware: bool | None = None  # the app has client middleware (None: not known yet)
        # for the hang watchdog (breaker.py): the task of each /perform(_batch) awaiting its answer,
        # with when it was sent, and when the last answer of any kind arrived (monotonic)
        self.outstanding: dict[asyncio.Task[Any] | None, float] = {}
        self.last_answer = time.monotonic()

    async def start(self) -> None:
        # room for every job's request plus the health probes beside them
        self.http = SidecarHTTP(self.base_url, self.concurrency + 4, self.connect_timeout,
                                probe=("/health", lambda: self._signed("GET", "/health")))
        self.control = SidecarHTTP(self.base_url, 1, self.connect_timeout)

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
            self.http = None
        if self.control is not None:
            await self.control.close()
            self.control = None

    async def _post(self, path: str, data: bytes, headers: dict[str, str],
                    control_timeout: float | None = None, pipelined: bool = False,
                    jids: list[str] | None = None, prefer_pid: str | None = None) -> Response:
        """POST: the answer. A connection error or timeout raises SidecarUnavailable (JobTimedOut
        past --job-timeout, for a job request: ``jids`` given). While it waits, the request counts for
        the hang watchdog; a control request (``control_timeout`` given) does not."""
        if control_timeout is not None:
            # /lifecycle on its own connection (one sidecar process sees a worker's whole
            # lifecycle), unless it is for one process (announce); /cancel beside the jobs'
            # requests, never queued behind a slow /lifecycle
            http = self.control if path == "/lifecycle" and prefer_pid is None else self.http
            if http is None:
                raise SidecarUnavailable("client closed")
            try:
                async with asyncio.timeout(control_timeout):  # waiting for a free connection too
                    return await http.request("POST", path, data, self._signed("POST", path, data, headers),
                                              prefer_pid=prefer_pid)
            except TimeoutError as exc:
                raise SidecarUnavailable(f"no answer within {control_timeout:g} s") from exc
            except TransportError as exc:
                raise SidecarUnavailable(f"{type(exc).__name__}: {exc}") from exc
        assert self.http is not None
        task = asyncio.current_task()
        self.outstanding[task] = time.monotonic()
        request = self.http.request("POST", path, data, self._signed("POST", path, data, headers),
                                    None, pipelined, jobs=len(jids) if jids else 1)
        try:
            resp = await (request if not self.job_timeout or jids is None else self._cutting_off(request, jids))
            self.last_answer = time.monotonic()
            return resp
        except TransportError as exc:
            raise SidecarUnavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.outstanding.pop(task, None)

    async def _cutting_off(self, request: Any, jids: list[str]) -> Response:
        """``request``, cut off at --job-timeout: the jobs still running are stopped (POST /cancel)
        and the answer is awaited a little longer, so that it says which jobs finished in time
        (kept as they ended), which one was stopped ("shutdown": it timed out) and which never
        started (not attempted: requeued). Raises JobTimedOut only if no answer comes even then."""
        pending = asyncio.ensure_future(request)
        try:
            done, _ = await asyncio.wait({pending}, timeout=self.job_timeout)
            if not done:
                await self.cancel(jids)
                done, _ = await asyncio.wait({pending}, timeout=CANCEL_GRACE + 2.0)
                if not done:
                    raise JobTimedOut(self.job_timeout)
                resp = pending.result()
                resp.cut_off = True
                return resp
            return pending.result()
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)

    async def _get(self, path: str, timeout: float) -> Response | None:
        """GET with a timeout; None when no answer came back."""
        if self.http is None:
            return None
        try:
            return await self.http.request("GET", path, headers=self._signed("GET", path), timeout=timeout)
        except TransportError:
            return None

    async def perform(self, raw: bytes, jid: str) -> Done | Failed | BadJob:
        """Done or Failed (the job raised, or ran past --job-timeout) or BadJob (400); raises
        SidecarUnavailable."""
        try:
            resp = await self._post("/perform", raw, {"Content-Type": _JSON, "Idempotency-Key": jid}, jids=[jid])
        except JobTimedOut as exc:
            return exc.failure()
        status, body, headers = resp.status, resp.body, resp.headers
        if resp.cut_off and status == 503 and _field(body, "status") == "shutdown":
            return JobTimedOut(self.job_timeout).failure()  # stopped at --job-timeout
        if status == 200:
            return _done(body)
        if status == 422:
            failure = _failed(body)
            failure.pid = headers.get("x-fastworker-pid")
            return failure
        if status in (400, 413):  # 413: over the sidecar's size limit, it can never run there
            return BadJob(_reason(body))
        raise _unavailable(status, body, headers)

    async def perform_batch(self, raws: list[bytes], jids: list[str]) -> Outcomes:
        """POST /perform_batch: the jobs' original bytes, one per line (compact JSON has no raw
        newline), and ``Idempotency-Keys: jid1,jid2,...`` in the same order; the answer is one result
        object per job, in order, and ``x-fastworker-ran-ms`` how long they ran in all (jobs that wait
        run at the same time there). A job the sidecar did not attempt (draining) or stopped comes
        back as NotAttempted; a failed request raises SidecarUnavailable."""
        if sum(map(len, raws)) + len(raws) > self.max_body:  # each job fits, together they do not
            return Outcomes(await limits.one_by_one(self, raws, jids))
        try:
            resp = await self._post("/perform_batch", b"\n".join(raws),
                                    {"Content-Type": "application/x-ndjson", "Idempotency-Keys": ",".join(jids)},
                                    pipelined=True, jids=jids)
        except JobTimedOut as exc:
            return Outcomes(exc.failure() for _ in raws)
        status, body, headers = resp.status, resp.body, resp.headers
        if status != 200:
            raise _unavailable(status, body, headers)
        try:
            items = orjson.loads(body)
            if not isinstance(items, list) or len(items) != len(raws):
                raise ValueError("wrong length")
        except ValueError as exc:
            raise SidecarUnavailable(f"unreadable /perform_batch answer: {exc}: {_excerpt(body)}") from exc
        ran = _ran(headers)
        # a sidecar that measures batches (ran) says when their jobs wait; an older one never does
        out = Outcomes(ran=ran, waiting=None if ran is None else _waiting(headers))
        for item in items:
            st = item.get("status") if isinstance(item, dict) else None
            if st == "done":
                rt = item.get("runtime_ms")
                out.append(Done(rt if isinstance(rt, (int, float)) else None, item.get("skipped") is True))
            elif st == "failed":
                failure = _failed_from(item)
                failure.pid = headers.get("x-fastworker-pid")
                out.append(failure)
            elif st == "bad_request":
                out.append(BadJob(str(item.get("error"))))
            elif st == "shutdown" and resp.cut_off:  # the one running at --job-timeout, stopped
                out.append(JobTimedOut(self.job_timeout).failure())
            elif item.get("reason") == AT_CAPACITY:
                out.append(NotAttempted(BUSY_REASON, 503, busy=True))
            else:
                out.append(NotAttempted(f"not attempted: {item.get('reason') or st}", interrupted=st == "shutdown"))
        return out

    async def exhausted(self, job: dict[str, Any], error: dict[str, Any], run_exhausted_block: bool = True,
                        phase: str = "all", pid: str | None = None) -> str | None:
        """One phase of an exhausted job's hooks in Ruby (hooks.py): "block" (sidekiq_retries_exhausted,
        unless told not to), "death" (the death handlers) or "all" (both); returns the block's result
        ("discard" or None). Raises SidecarUnavailable when it did not run, or got no answer in
        HOOKS_TIMEOUT (it is not a job's request: neither --job-timeout nor the hang watchdog apply).
        ``pid``: the sidecar process that ran the job, asked first (it holds the live exception)."""
        payload = dump_job({"job": job, "error": error, "run_exhausted_block": run_exhausted_block, "phase": phase})
        resp = await self._post("/exhausted", payload, {"Content-Type": _JSON}, control_timeout=HOOKS_TIMEOUT,
                                prefer_pid=pid)
        status, body, headers = resp.status, resp.body, resp.headers
        if status != 200:
            raise SidecarUnavailable(f"/exhausted answered {status}: {_excerpt(body)}", status, _retry_after(headers))
        return "discard" if _field(body, "result") == "discard" else None

    async def cancel(self, jids: list[str], grace: float = CANCEL_GRACE,
                     timeout: float | None = None) -> dict[str, Any] | None:
        """Ask the sidecar to stop these jobs (Sidekiq::Shutdown in their threads) and wait up to
        ``grace`` seconds for them to end. The answer ({"stopped","running","unknown"}), or None
        when the sidecar did not answer (then the closed request connections still stop them:
        the sidecar watches them)."""
        if not jids:
            return {"stopped": [], "running": [], "unknown": []}
        body = orjson.dumps({"jids": jids, "grace": grace})
        try:
            resp = await self._post("/cancel", body, {"Content-Type": _JSON},
                                    control_timeout=timeout if timeout is not None else grace + 2.0)
            if resp.status != 200:
                raise SidecarUnavailable(f"/cancel answered {resp.status}: {_excerpt(resp.body)}", resp.status)
            answer = orjson.loads(resp.body)
            return answer if isinstance(answer, dict) else None
        except (SidecarUnavailable, ValueError) as exc:
            log.warn("cancel_failed", jids=jids[:50], error_message=str(exc)[:300])
            return None

    async def report_invalid(self, raw: bytes) -> None:
        """Give a job the worker could not decode to the app's error handlers (POST /invalid: Ruby
        parses it again and reports its own error). Best effort: the job is in the dead set already."""
        try:
            resp = await self._post("/invalid", raw, {"Content-Type": _JSON}, control_timeout=LIFECYCLE_TIMEOUT)
            if resp.status != 200 and resp.status != 404:  # 404: a sidecar older than /invalid
                raise SidecarUnavailable(f"/invalid answered {resp.status}: {_excerpt(resp.body)}", resp.status)
        except SidecarUnavailable as exc:
            log.warn("invalid_job_not_reported", error_message=str(exc)[:300],
                     payload=raw[:200].decode("utf-8", "replace"))

    async def client_push(self, members: list[bytes]) -> list[dict[str, Any]]:
        """What to do with each due member after the app's client middleware, in order: {"queue",
        "job"}, {"at", "job"}, {"dropped"} or {"error"} (ClientPush in the sidecar). Raises
        SidecarUnavailable when no usable answer came: the members stay where they are."""
        body = orjson.dumps({"jobs": [m.decode("utf-8") for m in members]})
        resp = await self._post("/client_push", body, {"Content-Type": _JSON}, control_timeout=CLIENT_PUSH_TIMEOUT)
        if resp.status != 200:
            raise SidecarUnavailable(f"/client_push answered {resp.status}: {_excerpt(resp.body)}", resp.status,
                                     _retry_after(resp.headers))
        answers = _field(resp.body, "jobs")
        if not (isinstance(answers, list) and len(answers) == len(members)
                and all(isinstance(a, dict) for a in answers)):
            raise SidecarUnavailable(f"/client_push answered no list of {len(members)}: {_excerpt(resp.body)}")
        return answers

    async def lifecycle(self, event: str, identity: str, settings: dict[str, float], quiet: bool = False,
                        request_timeout: float = LIFECYCLE_TIMEOUT) -> bool:
        """Tell the sidecar this worker's lifecycle event; True once it took it. ``settings``
        (timeout, concurrency, max_retries): what the sidecar's drain timeout and Sidekiq options
        then follow."""
        body: dict[str, Any] = {"event": event, "identity": identity, "quiet": quiet, **settings}
        try:
            resp = await self._post("/lifecycle", orjson.dumps(body), {"Content-Type": _JSON},
                                    control_timeout=request_timeout)
        except SidecarUnavailable:
            return False
        if resp.status == 200:
            return True
        if 400 <= resp.status < 500 and resp.status != 429:
            # a sidecar without /lifecycle (or one that refuses this body): nothing to fire there
            log.warn("lifecycle_refused", lifecycle_event=event, status=resp.status, body=_excerpt(resp.body))
            return True
        return False

    async def announce(self, identity: str, settings: dict[str, float], gone: bool = False) -> None:
        """The settings to every other sidecar process (a Puma cluster): /lifecycle reaches one of
        them, and each keeps its own Sidekiq options and drain timeout. An event of its own
        ("settings"), which fires nothing there; ``gone``: this worker stopped, forget them. Best
        effort: the next beat sends them again."""
        if self.http is None or self.control is None or self.offer.processes <= 1:
            return
        reached = set(self.control.spread())
        body = orjson.dumps({"event": "settings", "identity": identity, "gone": gone, **settings})
        for pid in self.http.spread():
            if pid in reached:
                continue
            try:
                resp = await self._post("/lifecycle", body, {"Content-Type": _JSON},
                                        control_timeout=LIFECYCLE_TIMEOUT, prefer_pid=pid)
            except SidecarUnavailable:
                continue
            # a busy process's request may have gone to another one: that one has them now too
            reached.add(resp.headers.get("x-fastworker-pid") or pid)

    def _signed(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> dict[str, str]:
        headers = headers or {}
        if self.signer is None:
            return headers
        key = headers.get("Idempotency-Key") or headers.get("Idempotency-Keys") or ""
        full = self.http.prefix + path if self.http is not None else path
        return {**headers, **self.signer.headers(method, full, body, key)}

    def stalled(self, after: float) -> bool:
        """A request has waited longer than ``after`` seconds and nothing at all came back meanwhile."""
        if not self.outstanding:
            return False
        now = time.monotonic()
        return now - min(self.outstanding.values()) > after and now - self.last_answer > after

    async def responsive(self, timeout: float) -> bool:
        """Does GET /health get an answer, of any status (503 while draining counts), in time?"""
        return await self._get("/health", timeout) is not None

    async def health(self, timeout: float = 2.0) -> bool:
        """GET /health answered 200; also learns what the sidecar offers."""
        resp = await self._get("/health", timeout)
        if resp is None or resp.status != 200:
            return False
        try:
            info = orjson.loads(resp.body)
        except ValueError:
            info = None
        if not isinstance(info, dict):
            info = {}
        self.max_body = limits.agreed(self.max_body_configured, info)
        self.offer.batch_max = _positive(info.get("batch_max"), MAX_BATCH) if info.get("batch") else 1
        self.offer.processes = _positive(info.get("workers"), 1)
        self.offer.pipeline = _positive(info.get("pipeline"), 1)
        self.client_middleware = info.get("client_middleware") is True  # absent: a sidecar without any
        if self.http is not None:
            self.http.processes = self.offer.processes
            self.http.depth = self.offer.pipeline
            self.http.capacity = _positive(info.get("capacity"), 0) if "capacity" in info else 0
        return True

    def connections(self) -> dict[str, int]:
        """Open keep-alive connections per sidecar process (pid)."""
        return self.http.spread() if self.http is not None else {}

    async def warm(self) -> None:
        """Open connections to every sidecar process before the first jobs (cluster mode)."""
        if self.http is not None:
            await self.http.warm()


def _positive(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else default


def _unavailable(status: int, body: bytes, headers: Any) -> SidecarUnavailable:
    """A job request's answer that ran nothing: requeue for free. 503 at capacity is ``busy``;
    503 "shutdown" means the sidecar had started the job and stopped it."""
    if status == 503 and _field(body, "error") == AT_CAPACITY:
        return SidecarUnavailable(BUSY_REASON, status, busy=True)
    return SidecarUnavailable(f"sidecar answered {status}: {_excerpt(body)}", status, _retry_after(headers),
                              interrupted=status == 503 and _field(body, "status") == "shutdown")


def _field(body: bytes, name: str) -> Any:
    """One field of a JSON object answer; None when the body is not one."""
    try:
        return orjson.loads(body).get(name)
    except (ValueError, AttributeError):
        return None


def _reason(body: bytes) -> str:
    """The sidecar's own words for a refusal ({"error": ...}), else the raw excerpt."""
    error = _field(body, "error")
    return error[:1000] if isinstance(error, str) else _excerpt(body)


def _excerpt(body: bytes, n: int = 300) -> str:
    return body[:n].decode("utf-8", "replace")


_DONE_UNKNOWN = Done(None)


def _done(body: bytes) -> Done:
    try:
        data = orjson.loads(body)
        rt = data.get("runtime_ms")
    except (ValueError, AttributeError):
        return _DONE_UNKNOWN
    return Done(rt if isinstance(rt, (int, float)) else None, data.get("skipped") is True)



def _failed(body: bytes) -> Failed:
    try:
        data = orjson.loads(body)
        if not isinstance(data, dict):
            raise ValueError
    except ValueError:
        # a 422 we cannot read still means the job raised: record what we have
        return Failed("Fastworker::SidecarError", f"unreadable 422 body: {_excerpt(body)}", None, None,
                      None, {})
    return _failed_from(data)


def _failed_from(data: dict[str, Any]) -> Failed:
    retry_in = data.get("retry_in")
    if not (retry_in in ("discard", "kill") or (isinstance(retry_in, int) and not isinstance(retry_in, bool))):
        retry_in = None
    bt = data.get("backtrace")
    return Failed(str(data.get("error_class") or "StandardError"), str(data.get("error_message") or ""),
                  bt if isinstance(bt, list) else None, retry_in, data.get("retry"), data)
