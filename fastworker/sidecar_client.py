"""The sidecar client: one aiohttp ClientSession over a keep-alive connector sized to concurrency.

Duties:
1. ``perform(raw, jid)``: POST /perform with the job's original bytes and ``Idempotency-Key``;
   map the answer to Done, Failed (the job raised: spends a retry) or raise SidecarUnavailable
   (connection error, timeout, 5xx, 503/429: requeue for free).
2. ``exhausted(job, error, ...)``: POST /exhausted so Ruby runs sidekiq_retries_exhausted and the
   death handlers; returns the block's result ("discard" or None).
3. ``health()``: GET /health, used by the breaker's half-open probe and /readyz.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from .errors import SidecarUnavailable

_JSON = "application/json"


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


def _retry_after(resp: aiohttp.ClientResponse) -> float | None:
    value = resp.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class SidecarClient:
    def __init__(self, base_url: str, concurrency: int, connect_timeout: float = 5.0,
                 job_timeout: float = 0.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.perform_url = self.base_url + "/perform"
        self.concurrency = concurrency
        self.connect_timeout = connect_timeout
        self.job_timeout = job_timeout
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency + 4, limit_per_host=0,
                                         keepalive_timeout=60, enable_cleanup_closed=False,
                                         ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=self.job_timeout or None, sock_connect=self.connect_timeout,
                                        connect=None)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout,
                                             skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
                                             json_serialize=lambda o: orjson.dumps(o).decode())
        self._perform_headers = {"Content-Type": _JSON}

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    async def perform(self, raw: bytes, jid: str) -> Failed | None:
        """None when the job is done; Failed when it raised; raises SidecarUnavailable or BadJob."""
        assert self.session is not None
        headers = {"Content-Type": _JSON, "Idempotency-Key": jid}
        try:
            async with self.session.post(self.perform_url, data=raw, headers=headers) as resp:
                status = resp.status
                body = await resp.read()
                if status == 200:
                    return None
                if status == 422:
                    return _failed(body)
                if status == 400:
                    raise BadJob(_excerpt(body))
                raise SidecarUnavailable(f"sidecar answered {status}: {_excerpt(body)}", status,
                                         _retry_after(resp))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise SidecarUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def exhausted(self, job: dict[str, Any], error_class: str, error_message: str,
                        run_exhausted_block: bool = True) -> str | None:
        """Run sidekiq_retries_exhausted (unless told not to) and the death handlers in Ruby."""
        assert self.session is not None
        payload = orjson.dumps({"job": job, "error": {"class": error_class, "message": error_message},
                                "run_exhausted_block": run_exhausted_block})
        try:
            async with self.session.post(self.base_url + "/exhausted", data=payload,
                                         headers={"Content-Type": _JSON}) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise SidecarUnavailable(f"/exhausted answered {resp.status}: {_excerpt(body)}",
                                             resp.status, _retry_after(resp))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise SidecarUnavailable(f"{type(exc).__name__}: {exc}") from exc
        try:
            result = orjson.loads(body).get("result")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return result if result == "discard" else None

    async def health(self, timeout: float = 2.0) -> bool:
        if self.session is None:
            return False
        try:
            async with self.session.get(self.base_url + "/health",
                                        timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False


def _excerpt(body: bytes, n: int = 300) -> str:
    return body[:n].decode("utf-8", "replace")


def _failed(body: bytes) -> Failed:
    try:
        data = orjson.loads(body)
        if not isinstance(data, dict):
            raise ValueError
    except ValueError:
        # a 422 we cannot read still means the job raised: record what we have
        return Failed("Fastworker::SidecarError", f"unreadable 422 body: {_excerpt(body)}", None, None,
                      None, {})
    retry_in = data.get("retry_in")
    if not (retry_in in ("discard", "kill") or (isinstance(retry_in, int) and not isinstance(retry_in, bool))):
        retry_in = None
    bt = data.get("backtrace")
    return Failed(str(data.get("error_class") or "StandardError"), str(data.get("error_message") or ""),
                  bt if isinstance(bt, list) else None, retry_in, data.get("retry"), data)
