"""The scheduler: moves due jobs from ``retry`` and ``schedule`` to their queues (Sidekiq's
scheduled.rb, Poller and Enq).

Duties:
1. Poll at a random interval in [0.5, 1.5) x ``poll_interval`` (1 s on average by default, so a
   due job is in its queue within ~1.5 s). The spread keeps processes started together from
   polling in step (scheduled.rb#random_poll_interval); every process polls, none coordinates.
2. Each poll, for ``retry`` then ``schedule``: read up to BATCH due members with
   ``ZRANGE key -inf now BYSCORE LIMIT 0 BATCH`` (O(log N + due): a million future entries cost
   one cheap read), give each a fresh ``enqueued_at`` in the job's own format, and move the batch
   in one MOVE_DUE call. Repeat while a batch comes back full (and leave a set to another
   process that took a whole batch first: it goes on until nothing is due).
3. MOVE_DUE pushes a member only if it is still due and its own ZREM removed it, so any number of
   processes can run this at once and each job is moved exactly once. Removal and push are one
   atomic script: unlike Sidekiq's ZREM-then-Client.push, a crash in between cannot lose a job.
4. The job is re-written as Sidekiq's Client.push would write it: every key kept with its JSON
   type (integers of any size too), ``enqueued_at`` = now (float seconds, or integer ms for a
   Sidekiq 8 payload), and ``retry`` / ``queue`` / ``jid`` / ``created_at`` filled in only when
   missing (normalize_item's defaults: ``retry`` true, queue "default").
4a. When the app has client middleware (the sidecar's /health says so), the due members go
   through it first, as Sidekiq's poller pushes them with Sidekiq::Client (POST /client_push):
   the sidecar answers what to push where, or that a middleware dropped the job (it is then only
   removed, as Sidekiq drops it), or that one raised (the job goes to the dead set with the
   reason; Sidekiq would lose it). With the sidecar unreachable, the members stay in (or go back
   to) their set until it answers: a scheduled job never skips the app's middleware.
   The members are taken first (CLAIM_DUE, into ``fastworker:pushing:<set>`` for PUSH_LEASE
   seconds), so that of several processes polling at once only one runs the middleware on a job,
   as Sidekiq's poller runs it after its own ZREM. Members whose lease ended (their scheduler
   died holding them) go back to their set, due, at the next poll of any process.
5. A member that cannot be a job (not JSON, not an object, no class, no args array, a bad
   queue) goes to the dead set, trimmed as Sidekiq trims it, with the reason logged. Sidekiq
   would raise after the ZREM and lose it.
6. Quiet (TSTP) or shutdown: finish the batch in hand, then stop polling.
7. A Redis error goes to ``health`` (which logs the outage once); the next poll tries again.
   Any other error is logged and the loop goes on.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable
from typing import Any

from . import core, scripts
from .broker import REDIS_ERRORS, RedisHealth
from .clock import Clock
from .errors import SidecarUnavailable
from .keys import Keys
from .log import log
from .poll_loop import PollLoop
from .jobjson import dump_job, load_job
from .retry import dead_member_for

BATCH = 500
PUSH_LEASE = 60.0  # seconds: longer than a /client_push may take (its control timeout)


class BadMember(ValueError):
    """A sorted-set member that is not a runnable job; the message is the reason."""


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "float", type(None): "null"}.get(type(value), type(value).__name__)


def prepare(raw: bytes, now: float, version: str = "auto") -> tuple[str, bytes]:
    """The queue and the JSON to push for a due member; BadMember when it cannot be a job.

    ``version`` is the configured Sidekiq flavour: "8" writes integer milliseconds, "6"/"7"
    float seconds, "auto" follows the job (an integer ``created_at``, else ``enqueued_at``,
    means a Sidekiq 8 payload).
    """
    try:
        job = load_job(raw)
    except (ValueError, RecursionError) as exc:
        raise BadMember(f"invalid JSON: {exc}") from None
    if type(job) is not dict:
        raise BadMember(f"payload is not a JSON object (got {_kind(job)})")
    klass = job.get("class")
    if type(klass) is not str or not klass:
        raise BadMember(f"missing or invalid 'class' (got {_kind(klass) if 'class' in job else 'nothing'})")
    if type(job.get("args")) is not list:
        raise BadMember(f"'args' must be an array (got {_kind(job['args']) if 'args' in job else 'nothing'})")
    queue = job.get("queue", "default")
    if type(queue) is not str or not queue:
        raise BadMember(f"invalid 'queue' (got {_kind(queue)})")

    if version == "auto":
        ms = core.ms_timestamps(job.get("created_at"), job.get("enqueued_at"))
    else:
        ms = version == "8"
    stamp: float | int = int(now * 1000) if ms else now

    # Client#normalize_item fills these in when absent (default_job_options first, as its
    # defaults.merge(item) orders them); everything else stays as it was
    job = {"retry": job.get("retry", True), "queue": queue, **job}
    if job.get("jid") is None:
        job["jid"] = secrets.token_hex(12)
    if job.get("created_at") is None:
        job["created_at"] = stamp
    job["enqueued_at"] = stamp
    try:
        return queue, dump_job(job)
    except ValueError as exc:
        raise BadMember(f"cannot be written back as JSON: {exc}") from None


class Scheduler(PollLoop):
    name = "scheduler"

    def __init__(self, redis: Any, keys: Keys, health: RedisHealth, clock: Clock, *, poll_interval: float,
                 sidekiq_version: str, dead_max_jobs: int, dead_timeout: int, metrics: Any = None,
                 sidecar: Any = None, batch: int = BATCH, rand: Callable[[], float] = random.random) -> None:
        super().__init__()
        self.redis = redis
        self.keys = keys
        self.health = health
        self.clock = clock
        self.metrics = metrics
        self.sidecar = sidecar  # for the app's client middleware (duty 4a)
        self.poll_interval = float(poll_interval)
        self.version = str(sidekiq_version)
        self.dead_max_jobs = dead_max_jobs
        self.dead_timeout = dead_timeout
        self.batch = batch
        self.rand = rand
        self.sets = ((self.keys.retry, "retry"), (self.keys.schedule, "schedule"))
        self._move = self.redis.register_script(scripts.MOVE_DUE)
        self._claim = self.redis.register_script(scripts.CLAIM_DUE)
        self._kill = self.redis.register_script(scripts.KILL_FROM_SET)
        # running totals (for metrics and tests)
        self.polls = 0
        self.moved = 0
        self.killed = 0

    # -- the loop (PollLoop: start, quiet, stop; a quiet process neither enqueues scheduled jobs
    #    nor moves retries) -----------------------------------------------------------------

    def interval(self) -> float:
        """Seconds to the next poll: uniform in [0.5, 1.5) x poll_interval."""
        return self.poll_interval * (0.5 + self.rand())

    async def poll(self) -> int:
        """One poll with its errors handled; returns how many jobs moved."""
        t0 = self.clock.mono()
        try:
            counts = await self.tick()
        except REDIS_ERRORS as exc:
            self.health.failed("scheduler", exc)
            return 0
        except Exception as exc:  # a bug or an unexpected reply must not end scheduling for good
            log.error("scheduler_error", error_class=type(exc).__name__, error_message=str(exc)[:500])
            return 0
        self.health.succeeded()
        self.polls += 1
        moved = sum(counts.values())
        if moved:
            log.info("scheduled_enqueued", **counts, elapsed_ms=round((self.clock.mono() - t0) * 1000, 3))
        return moved

    async def tick(self) -> dict[str, int]:
        """Move everything due now from retry, then schedule. Redis errors propagate."""
        counts: dict[str, int] = {}
        for key, name in self.sets:
            moved = 0
            if self.sidecar is not None and self.sidecar.client_middleware:
                await self._reclaim(key, name, self.clock.now())
            while not self._done:
                now = self.clock.now()
                due = await self.redis.zrange(key, "-inf", repr(now), byscore=True, offset=0, num=self.batch)
                n = await self._enqueue(key, name, due, now) if due else 0
                moved += n
                if len(due) < self.batch:
                    break
                if n == 0:
                    # another process took the whole batch first: it goes on until nothing is
                    # due, so racing it would only parse the same members twice
                    break
            counts[name] = moved
        return counts

    async def _enqueue(self, key: str, name: str, members: list[bytes], now: float) -> int:
        bad: list[tuple[bytes, str]] = []
        good: list[tuple[bytes, str, bytes]] = []
        for raw in members:
            try:
                queue, job = prepare(raw, now, self.version)
            except BadMember as exc:
                bad.append((raw, str(exc)))
                continue
            good.append((raw, queue, job))
        moves: list[Any] = []
        source, limit = key, now  # where MOVE_DUE takes the members from, and up to which score
        refused: list[tuple[bytes, str]] = []  # taken, and a client middleware raised
        try:
            if good and self.sidecar is not None and await self._through_middleware(self.sidecar):
                source, limit = self.keys.pushing(name), now + PUSH_LEASE
                moves = await self._through_client_push(self.sidecar, key, source, limit,
                                                        [raw for raw, _, _ in good], now, refused)
                good = []
        except SidecarUnavailable as exc:
            log.warn("scheduled_waiting_for_sidecar", set=name, jobs=len(good), error_message=str(exc)[:300])
            good, moves = [], []
        for raw, queue, job in good:
            moves += (raw, "q", self.keys.queue(queue), queue, job)
        moved = 0
        if moves:
            moved = int(await self._move(keys=[source, self.keys.queues], args=[repr(limit), *moves]))
            self.moved += moved
        for raw, reason in bad:
            await self._kill_bad(key, name, raw, reason, now)
        for raw, reason in refused:
            await self._kill_bad(source, name, raw, reason, now)
        return moved

    async def _through_client_push(self, sidecar: Any, key: str, pushing: str, lease: float,
                                   members: list[bytes], now: float, refused: list[tuple[bytes, str]]) -> list[Any]:
        """Take ``members`` (the ones still due and not taken by another process), run the app's
        client middleware on them and return their MOVE_DUE quintuples. Anything that stops it
        half-way (the sidecar unavailable, a shutdown) puts them back into ``key``, due."""
        taken = list(await self._claim(keys=[key, pushing], args=[repr(now), repr(lease), *members]))
        if not taken:
            return []
        try:
            answers = await sidecar.client_push(taken)
            moves: list[Any] = []
            for raw, answer in zip(taken, answers, strict=True):
                moves += self._move_for(raw, answer, refused)
            return moves
        except BaseException:
            await self._give_back(key, pushing, taken, now, lease)
            raise

    async def _give_back(self, key: str, pushing: str, members: list[bytes], now: float, limit: float) -> None:
        moves = [part for raw in members for part in (raw, "z", key, repr(now), raw)]
        await self._move(keys=[pushing, self.keys.queues], args=[repr(limit), *moves])

    async def _reclaim(self, key: str, name: str, now: float) -> None:
        """Members whose lease ended in ``key``'s pushing set (their scheduler died holding them)
        go back to ``key``, due, where this poll takes them again."""
        pushing = self.keys.pushing(name)
        expired = await self.redis.zrange(pushing, "-inf", repr(now), byscore=True, offset=0, num=self.batch)
        if expired:
            await self._give_back(key, pushing, expired, now, now)
            log.warn("scheduled_lease_expired", set=name, jobs=len(expired))

    async def _through_middleware(self, sidecar: Any) -> bool:
        """Does the app have client middleware? Asks the sidecar until it has answered once; an
        unknown answer means wait (the jobs stay in their set), never skip the middleware."""
        if sidecar.client_middleware is None:
            await sidecar.health()
        if sidecar.client_middleware is None:
            raise SidecarUnavailable("the sidecar has not said whether the app has client middleware")
        return bool(sidecar.client_middleware)

    def _move_for(self, raw: bytes, answer: dict[str, Any], bad: list[tuple[bytes, str]]) -> list[Any]:
        """MOVE_DUE's quintuple for one member, from the sidecar's answer for it."""
        job = answer.get("job")
        if answer.get("dropped") is True:
            return [raw, "x", "", "", ""]
        if isinstance(answer.get("error"), str):
            bad.append((raw, f"client middleware raised: {answer['error']}"))
            return []
        if isinstance(job, str) and isinstance(answer.get("queue"), str) and answer["queue"]:
            return [raw, "q", self.keys.queue(answer["queue"]), answer["queue"], job]
        if isinstance(job, str) and isinstance(answer.get("at"), (int, float)):
            return [raw, "z", self.keys.schedule, repr(float(answer["at"])), job]
        raise SidecarUnavailable(f"/client_push answer not understood: {str(answer)[:200]}")

    async def _kill_bad(self, key: str, name: str, raw: bytes, reason: str, now: float) -> None:
        """Into the dead set (only if this process removed it from ``key``): see retry.dead_member_for."""
        n = await self._kill(keys=[key, self.keys.dead],
                             args=[repr(now), repr(now - self.dead_timeout), self.dead_max_jobs, raw,
                                   dead_member_for(raw, None, reason, now)])
        if n:
            self.killed += 1
            log.error("job_dead", set=name, reason=reason, payload=raw[:200].decode("utf-8", "replace"))
            if self.metrics is not None:
                self.metrics.dead()
