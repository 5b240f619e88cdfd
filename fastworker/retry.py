"""Sidekiq's retry policy (sidekiq-compat.md §4), as pure decisions; the processor does the I/O.

Given the job, what the sidecar reported and the clock, ``decide`` answers one of:
- ``RetryAt(member, score)``: write ``member`` (the job with its error fields) to the retry set;
- ``Dead(job, run_exhausted_block, to_dead_set)``: exhausted: ask the sidecar to run the hooks,
  then the dead set unless ``dead: false`` or the hooks said discard;
- ``Discard(job)``: drop it (``sidekiq_retry_in`` returned :discard); on Sidekiq 8 ``job`` carries
  ``discarded_at`` and the death handlers still run (8.x JobRetry#process_retry), else it is None.
"""

from __future__ import annotations

import base64
import json
import random
import secrets
import zlib
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

from . import core
from .clock import sidekiq_time
from .jobjson import dump_job, load_job, needs_exact
from .outcome import Failed

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
    job: dict[str, Any] | None = None  # 8.x: for the death handlers, with discarded_at


@dataclass(frozen=True, slots=True)
class Policy:
    max_retries: int = 25
    sidekiq_version: str = "auto"  # auto|6|7|8: the jitter formula and timestamp format


def encode_backtrace(lines: list[str], limit: Any) -> str:
    """base64(zlib(JSON lines)), strict base64 (every Sidekiq reader accepts it, §4.2)."""
    if isinstance(limit, int) and not isinstance(limit, bool):
        lines = lines[:limit]
    return base64.b64encode(zlib.compress(dump_job(lines))).decode("ascii")


def _truthy(value: Any) -> bool:
    """Ruby truthiness: only nil and false are false (0 is true)."""
    return value is not None and value is not False


def decide(env: Any, failure: Failed, fetched_queue: str, now: float, policy: Policy,
           rand: Callable[[], float] = random.random) -> RetryAt | Dead | Discard:
    """What Sidekiq's JobRetry does with a job that raised: retry it, kill it, or drop it."""
    # re-parse exactly when orjson would have turned a long integer into a float
    job: dict[str, Any] = load_job(env.raw) if needs_exact(env.raw) else dict(env.job)
    # JobRetry#local: a missing or null `retry` is taken from the class's sidekiq_options
    retry_opt = job.get("retry")
    if retry_opt is None:
        retry_opt = failure.class_retry
    ms = env.ms_timestamps if policy.sidekiq_version == "auto" else policy.sidekiq_version == "8"

    if not _truthy(retry_opt):
        # retry: false (or nil): no retry, no dead entry; JobRetry#global runs the death handlers
        # only, with the job as it was fetched (no error fields)
        return Dead(job, run_exhausted_block=False, to_dead_set=False)
    job["retry"] = retry_opt  # as JobRetry#local stores the class option it filled in
    count = _record_failure(job, env, failure, fetched_queue, sidekiq_time(now, ms))
    # exhausted comes first: Sidekiq does not consult sidekiq_retry_in (so no :discard) then
    if _exhausted(env, job, count, retry_opt, policy, now):
        # an error before the job instance existed (Sidekiq's "global" stage: unknown class, the
        # reloader) has no class whose sidekiq_retries_exhausted could run
        return Dead(job, run_exhausted_block=failure.body.get("stage") != "global", to_dead_set=env.dead)
    return _as_retry_in_says(job, env, failure, count, now, ms, rand)


def _record_failure(job: dict[str, Any], env: Any, failure: Failed, fetched_queue: str, stamp: float | int) -> int:
    """The fields JobRetry#local writes into the job; returns its new ``retry_count``."""
    # Ruby scrubs invalid text to U+FFFD; a lone surrogate is the JSON-side equivalent
    message = failure.error_message[:MESSAGE_LIMIT]
    message = message.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    job["queue"] = env.retry_queue or fetched_queue
    job["error_message"] = message
    job["error_class"] = failure.error_class
    if env.retry_count is not None:
        job["retried_at"] = stamp
        count = env.retry_count + 1
    else:
        job["failed_at"] = stamp
        count = 0
    job["retry_count"] = count
    if _truthy(env.backtrace) and failure.backtrace is not None:
        job["error_backtrace"] = encode_backtrace(failure.backtrace, env.backtrace)
    return count


def _exhausted(env: Any, job: dict[str, Any], count: int, retry_opt: Any, policy: Policy, now: float) -> bool:
    """No retry left: the count reached the limit, or ``retry_for``'s window is over."""
    max_retries = retry_opt if isinstance(retry_opt, int) and not isinstance(retry_opt, bool) else policy.max_retries
    exhausted = count >= max_retries
    if env.retry_for is not None:
        failed_at = core.to_epoch_seconds(job.get("failed_at"))
        if failed_at is not None:
            window_over = failed_at + env.retry_for < now
            # 8.1+: retry_for replaces the count; 7.1.3-8.0: either ends the retries
            exhausted = window_over if policy.sidekiq_version == "8" else (exhausted or window_over)
    return exhausted


def _as_retry_in_says(job: dict[str, Any], env: Any, failure: Failed, count: int, now: float, sidekiq8: bool,
                      rand: Callable[[], float]) -> RetryAt | Dead | Discard:
    """A retry left: the class's ``sidekiq_retry_in`` may discard or kill it, or set the delay."""
    retry_in = failure.retry_in
    if retry_in == "discard":
        if not sidekiq8:  # 7.x: "do nothing, job goes poof"
            return Discard()
        job["discarded_at"] = sidekiq_time(now, True)
        return Discard(job)
    if retry_in == "kill":
        return Dead(job, run_exhausted_block=True, to_dead_set=env.dead)
    jitter = core.retry_jitter(count, rand(), sidekiq8)
    if isinstance(retry_in, int) and retry_in > 0:
        delay = retry_in + jitter
    else:
        delay = core.retry_delay(count, jitter)
    return RetryAt(dump_job(job), now + delay, count, delay)


def dead_member_for(raw: bytes, queue: str | None, reason: str, now: float,
                    error_class: str | None = None) -> bytes:
    """What the dead set gets for a payload that cannot run.

    Invalid JSON, or an object that is not a runnable job, stays the raw string, as Sidekiq stores
    it (its API lists such an entry with the raw text as its args). Valid JSON that is not an
    object at all (an array, a string, a number) would make Sidekiq's API raise while listing the
    whole dead set, so it is wrapped in a job-shaped record that keeps the raw text as its only
    argument and the reason as its error message. A well-formed job that still cannot run (its
    class is not a job, it is over the size limit: the caller names an ``error_class``) keeps its
    payload and gains the error fields Sidekiq's retry writes, so the Web UI shows why it died.
    """
    try:
        parsed = json.loads(raw)
    except (ValueError, RecursionError):
        return raw
    if isinstance(parsed, dict):
        if error_class and isinstance(parsed.get("class"), str) and isinstance(parsed.get("args"), list):
            parsed.update({"error_class": error_class, "error_message": reason[:2000], "failed_at": now})
            try:
                return dump_job(parsed)
            except ValueError:
                return raw
        return raw
    return dump_job({"class": "Fastworker::InvalidPayload", "args": [raw.decode("utf-8", "replace")],
                     "queue": queue or "default", "jid": secrets.token_hex(12), "retry": False,
                     "created_at": now, "failed_at": now, "error_class": error_class or "Fastworker::PayloadError",
                     "error_message": reason})
