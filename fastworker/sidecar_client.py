"""The sidecar client: one aiohttp ClientSession over a keep-alive connector sized to concurrency.

Duties:
1. ``perform(raw, jid)``: POST /perform with the job's original bytes and ``Idempotency-Key``;
   map the answer to Done, Failed (the job raised: spends a retry) or raise SidecarUnavailable
   (connection error, timeout, 5xx, 503/429: requeue for free).
2. ``exhausted(job, error, ...)``: POST /exhausted so Ruby runs sidekiq_retries_exhausted and the
   death handlers; returns the block's result ("discard" or None).
3. ``health()``: GET /health, used by the breaker's half-open probe and /readyz.
Every request carries the signature headers when a secret is set (signing.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from . import limits
from .errors import SidecarUnavailable

_JSON = "application/json"


@dataclass(slots=True)
class Done:
    """perform returned (200); ``runtime_ms`` as the sidecar measured it (None if not reported)."""

    runtime_ms: float | None


@dataclass(slots=True)
class Failed:
    """The job raised (422)."""

    error_class: str
    error_message: str
    backtrace: list[str] | None
    retry_in: int | str | None
    class_retry: Any  # the class's sidekiq_options retry, reported when the payload lacks "retry"
    body: dict[str, Any]


class BadJob(Exception):
    """The sidecar says the body is not a runnable job (400)."""


class JobTimedOut(Exception):
    """A request outlived --job-timeout: the job's fault, not the sidecar's (it spends a retry,
    as a job that raised; requeueing it for free would loop forever)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds

    def failure(self) -> "Failed":
        return Failed("Fastworker::JobTimeout", f"the job ran longer than --job-timeout ({self.seconds:g} s)",
                      None, None, None, {})


FAST_MS = 0.5  # a class whose jobs take less than this in Ruby is batched
BATCH_MAX = 8


class RuntimeTable:
    """Per job class, an exponentially weighted mean of the runtime the sidecar reports."""

    __slots__ = ("_ewma",)

    def __init__(self) -> None:
        self._ewma: dict[str, float] = {}

    def observe(self, klass: str, runtime_ms: float | None) -> None:
        if runtime_ms is None:
            return
        old = self._ewma.get(klass)
        self._ewma[klass] = runtime_ms if old is None else old * 0.8 + runtime_ms * 0.2

    def fast(self, klass: str) -> bool:
        value = self._ewma.get(klass)
        return value is not None and value < FAST_MS


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class SidecarClient:
    def __init__(self, base_url: str, concurrency: int, connect_timeout: float = 5.0,
                 job_timeout: float = 0.0, signer: Any = None, max_body: int = limits.MAX_BODY) -> None:
        self.base_url = base_url.rstrip("/")
        self.signer = signer  # signing.Signer, or None when no secret is set
        self.max_body = self.max_body_configured = max_body  # lowered to what /health advertises
        self.perform_url = self.base_url + "/perform"
        self.concurrency = concurrency
        self.connect_timeout = connect_timeout
        self.job_timeout = job_timeout
        self.session: aiohttp.ClientSession | None = None
        self.batch_max = 1  # raised when GET /health says the sidecar accepts /perform_batch
        # for the hang watchdog (breaker.py): the task of each /perform(_batch) awaiting its answer,
        # with when it was sent, and when the last answer of any kind arrived (monotonic)
        self.outstanding: dict[asyncio.Task[Any] | None, float] = {}
        self.last_answer = time.monotonic()

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency + 4, limit_per_host=0,
                                         keepalive_timeout=60, enable_cleanup_closed=False,
                                         ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=self.job_timeout or None, sock_connect=self.connect_timeout,
                                        connect=None)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                             skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                                             json_serialize=lambda o: orjson.dumps(o).decode())

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def _post(self, url: str, data: bytes, headers: dict[str, str]) -> tuple[int, bytes, Any]:
        """POST on the shared session: (status, body, headers). A connection error or timeout
        raises SidecarUnavailable. While it waits, the request counts for the hang watchdog."""
        assert self.session is not None
        task = asyncio.current_task()
        started = self.outstanding[task] = time.monotonic()
        try:
            async with self.session.post(url, data=data, headers=self._signed("POST", url, data, headers)) as resp:
                body = await resp.read()
                self.last_answer = time.monotonic()
                return resp.status, body, resp.headers
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            if (isinstance(exc, asyncio.TimeoutError) and self.job_timeout
                    and time.monotonic() - started >= self.job_timeout * 0.99):
                raise JobTimedOut(self.job_timeout) from exc
            raise SidecarUnavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self.outstanding.pop(task, None)

    async def perform(self, raw: bytes, jid: str) -> Done | Failed | BadJob:
        """Done or Failed (the job raised, or ran past --job-timeout) or BadJob (400); raises
        SidecarUnavailable."""
        try:
            status, body, headers = await self._post(self.perform_url, raw,
                                                     {"Content-Type": _JSON, "Idempotency-Key": jid})
        except JobTimedOut as exc:
            return exc.failure()
        if status == 200:
            return _done(body)
        if status == 422:
            return _failed(body)
        if status in (400, 413):  # 413: over the sidecar's size limit, it can never run there
            return BadJob(_reason(body))
        raise SidecarUnavailable(f"sidecar answered {status}: {_excerpt(body)}", status, _retry_after(headers))

    async def perform_batch(self, raws: list[bytes], jids: list[str]) -> list[Done | Failed | BadJob | SidecarUnavailable]:
        """POST /perform_batch: the jobs' original bytes, one per line (compact JSON has no raw
        newline), and ``Idempotency-Keys: jid1,jid2,...`` in the same order; the answer is one result
        object per job, in order. A job the sidecar did not
        attempt (draining) comes back as SidecarUnavailable; a failed request raises it."""
        if sum(map(len, raws)) + len(raws) > self.max_body:  # each job fits, together they do not
            return await limits.one_by_one(self, raws, jids)
        try:
            status, body, headers = await self._post(
                self.base_url + "/perform_batch", b"\n".join(raws),
                {"Content-Type": "application/x-ndjson", "Idempotency-Keys": ",".join(jids)})
        except JobTimedOut as exc:
            return [exc.failure() for _ in raws]
        if status != 200:
            raise SidecarUnavailable(f"sidecar answered {status}: {_excerpt(body)}", status, _retry_after(headers))
        try:
            items = orjson.loads(body)
            if not isinstance(items, list) or len(items) != len(raws):
                raise ValueError("wrong length")
        except ValueError as exc:
            raise SidecarUnavailable(f"unreadable /perform_batch answer: {exc}: {_excerpt(body)}") from exc
        out: list[Done | Failed | BadJob | SidecarUnavailable] = []
        for item in items:
            st = item.get("status") if isinstance(item, dict) else None
            if st == "done":
                rt = item.get("runtime_ms")
                out.append(Done(rt if isinstance(rt, (int, float)) else None))
            elif st == "failed":
                out.append(_failed_from(item))
            elif st == "bad_request":
                out.append(BadJob(str(item.get("error"))))
            else:
                out.append(SidecarUnavailable(f"not attempted: {item.get('reason') or st}"))
        return out

    async def exhausted(self, job: dict[str, Any], failure: Failed,
                        run_exhausted_block: bool = True) -> str | None:
        """Run sidekiq_retries_exhausted (unless told not to) and the death handlers in Ruby."""
        from .retry import dump_job  # integers beyond 64 bits survive

        error: dict[str, Any] = {"class": failure.error_class, "message": failure.error_message}
        if failure.backtrace is not None:
            error["backtrace"] = failure.backtrace
        if failure.body.get("stage") is not None:
            error["stage"] = failure.body["stage"]
        payload = dump_job({"job": job, "error": error, "run_exhausted_block": run_exhausted_block})
        # a hang here is a hang too: the watchdog sends the job back to its queue
        status, body, headers = await self._post(self.base_url + "/exhausted", payload, {"Content-Type": _JSON})
        if status != 200:
            raise SidecarUnavailable(f"/exhausted answered {status}: {_excerpt(body)}", status, _retry_after(headers))
        try:
            result = orjson.loads(body).get("result")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return result if result == "discard" else None

    def _signed(self, method: str, url: str, body: bytes = b"", headers: dict[str, str] | None = None) -> dict[str, str]:
        headers = headers or {}
        if self.signer is None:
            return headers
        key = headers.get("Idempotency-Key") or headers.get("Idempotency-Keys") or ""
        return {**headers, **self.signer.headers(method, urlsplit(url).path, body, key)}

    def stalled(self, after: float) -> bool:
        """A request has waited longer than ``after`` seconds and nothing at all came back meanwhile."""
        if not self.outstanding:
            return False
        now = time.monotonic()
        return now - min(self.outstanding.values()) > after and now - self.last_answer > after

    async def responsive(self, timeout: float) -> bool:
        """Does GET /health get an answer, of any status (503 while draining counts), in time?"""
        if self.session is None:
            return False
        try:
            async with self.session.get(self.base_url + "/health", headers=self._signed("GET", self.base_url + "/health"),
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                await resp.read()
                return True
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def health(self, timeout: float = 2.0) -> bool:
        """GET /health; also learns whether the sidecar accepts /perform_batch."""
        if self.session is None:
            return False
        try:
            async with self.session.get(self.base_url + "/health", headers=self._signed("GET", self.base_url + "/health"),
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                body = await resp.read()
                if resp.status != 200:
                    return False
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False
        try:
            info = orjson.loads(body)
            self.batch_max = BATCH_MAX if isinstance(info, dict) and info.get("batch") else 1
            self.max_body = limits.agreed(self.max_body_configured, info)
        except ValueError:
            self.batch_max = 1
        return True


def _reason(body: bytes) -> str:
    """The sidecar's own words for a refusal ({"error": ...}), else the raw excerpt."""
    try:
        error = orjson.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    return error[:1000] if isinstance(error, str) else _excerpt(body)


def _excerpt(body: bytes, n: int = 300) -> str:
    return body[:n].decode("utf-8", "replace")


_DONE_UNKNOWN = Done(None)


def _done(body: bytes) -> Done:
    try:
        rt = orjson.loads(body).get("runtime_ms")
    except (ValueError, AttributeError):
        return _DONE_UNKNOWN
    return Done(rt) if isinstance(rt, (int, float)) else _DONE_UNKNOWN


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
