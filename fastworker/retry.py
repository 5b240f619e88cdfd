"""Sidekiq's retry policy (sidekiq-compat.md §4), as pure decisions; the processor does the I/O.

Given the job, what the sidecar reported and the clock, ``decide`` answers one of:
- ``RetryAt(member, score)``: write ``member`` (the job with its error fields) to the retry set;
- ``Dead(job, run_exhausted_block, to_dead_set)``: exhausted: ask the sidecar to run the hooks,
  then the dead set unless ``dead: false`` or the hooks said discard;
- ``Discard()``: drop it (``sidekiq_retry_in`` returned :discard).
"""

from __future__ import annotations

import base64
import random
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from . import core
from .clock import sidekiq_time
from .sidecar_client import Failed

MESSAGE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class RetryAt:
    member: bytes
    score: float
    count: int
    delay: float


@dataclass(frozen=True, slots=True)
class Dead:
    job: dict[str, Any]
    run_exhausted_block: bool  # False for retry: false (Sidekiq's global: death handlers only)
    to_dead_set: bool  # False for retry: false and dead: false


@dataclass(frozen=True, slots=True)
class Discard:
    pass


@dataclass(frozen=True, slots=True)
class Policy:
    max_retries: int = 25
    sidekiq_version: str = "auto"  # auto|6|7|8: the jitter formula and timestamp format


def encode_backtrace(lines: list[str], limit: Any) -> str:
    """base64(zlib(JSON lines)), strict base64 (every Sidekiq reader accepts it, §4.2)."""
    if isinstance(limit, int) and not isinstance(limit, bool):
        lines = lines[:limit]
    return base64.b64encode(zlib.compress(orjson.dumps(lines))).decode("ascii")


def _truthy(value: Any) -> bool:
    """Ruby truthiness: only nil and false are false (0 is true)."""
    return value is not None and value is not False


def decide(env: Any, failure: Failed, fetched_queue: str, now: float, policy: Policy,
           rand: Callable[[], float] = random.random) -> RetryAt | Dead | Discard:
    job: dict[str, Any] = dict(env.job)
    retry_opt = job["retry"] if "retry" in job else failure.class_retry
    ms = env.ms_timestamps if policy.sidekiq_version == "auto" else policy.sidekiq_version == "8"
    sidekiq8 = ms

    # lone surrogates cannot be written as UTF-8 JSON; Ruby would have scrubbed them already
    message = failure.error_message[:MESSAGE_LIMIT].encode("utf-8", "replace").decode("utf-8")
    job["queue"] = env.retry_queue or fetched_queue
    job["error_message"] = message
    job["error_class"] = failure.error_class

    if not _truthy(retry_opt):
        # retry: false (or nil): no retry, no dead entry; death handlers only (JobRetry#global)
        return Dead(job, run_exhausted_block=False, to_dead_set=False)

    stamp = sidekiq_time(now, ms)
    if env.retry_count is not None:
        job["retried_at"] = stamp
        count = env.retry_count + 1
    else:
        job["failed_at"] = stamp
        count = 0
    job["retry_count"] = count
    if _truthy(env.backtrace) and failure.backtrace is not None:
        job["error_backtrace"] = encode_backtrace(failure.backtrace, env.backtrace)

    max_retries = retry_opt if isinstance(retry_opt, int) and not isinstance(retry_opt, bool) else policy.max_retries
    exhausted = count >= max_retries
    if env.retry_for is not None:
        failed_at = core.to_epoch_seconds(job.get("failed_at"))
        if failed_at is not None:
            window_over = failed_at + env.retry_for < now
            # 8.1+: retry_for replaces the count; 7.1.3-8.0: either ends the retries
            exhausted = window_over if policy.sidekiq_version == "8" else (exhausted or window_over)

    retry_in = failure.retry_in
    if retry_in == "discard":
        return Discard()
    if exhausted or retry_in == "kill":
        return Dead(job, run_exhausted_block=True, to_dead_set=env.dead)

    jitter = core.retry_jitter(count, rand(), sidekiq8)
    if isinstance(retry_in, int) and retry_in > 0:
        delay = retry_in + jitter
    else:
        delay = core.retry_delay(count, jitter)
    return RetryAt(orjson.dumps(job), now + delay, count, delay)

