"""Crash recovery: puts the in-progress jobs of dead processes back on their queues (asynq recoverer.go).

Duties, one ``tick()`` every few seconds (at most ``process_ttl / 4``, jittered so that many workers
do not all look at once):
1. find the dead: every identity in ``fastworker:processes`` (identity -> registration epoch) other
   than ours, registered longer ago than ``process_ttl``, whose Sidekiq heartbeat key ``<identity>``
   (written with a TTL of ``process_ttl`` by the heartbeat) no longer exists;
2. recover each with ONE Lua call (scripts.RECOVER) that re-checks those conditions, claims the
   process (HDEL of its registration: only one recoverer ever finds it) and moves every job of its
   in-progress lists back to the head of its queue, all atomically. Two recoverers therefore never
   both move a job, and a recoverer that dies half-way leaves nothing claimed and unmoved;
3. poison pills: each recovery counts the job's jid in ``fastworker:recovered`` (HINCRBY, expiring
   after a day without recoveries); a job recovered more than ``poison_pill_limit`` times (it keeps
   killing the process that runs it) goes to the dead set instead, trimmed as Sidekiq trims it. The
   dead entry is the job with Sidekiq's error fields added (``error_class`` Fastworker::PoisonPill,
   ``error_message``, ``failed_at``), so the Web UI shows why; an undecodable job goes as its raw
   string;
4. keep our own registration: if ours vanished (another recoverer wrongly took us for dead, e.g.
   while Redis was away longer than the TTL), register again so a later crash of ours is recovered;
5. own orphans: a job in our in-progress lists that this process does not know about (not running,
   not in the fetcher's hand, no ack pending) for ``ORPHAN_AGE`` seconds is one whose fetch reply was
   lost (Redis died after moving it); it goes back to its queue (conditional move, never a copy).
   A lost reply always shows up here as a Redis error, so the lists are only read for a while after
   one: an idle healthy worker costs one HGETALL per tick.

Safety around Redis outages: heartbeats cannot be written while Redis is away, so right after one
(any Redis error seen by this process since the last tick) the recoverer waits two heartbeat
intervals before judging anyone dead, giving every live process time to beat again.
A failing tick is logged (once per outage) and the loop goes on.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import scripts
from .broker import REDIS_ERRORS, Broker, RedisHealth
from .keys import Keys
from .log import log
from .jobjson import dump_job, load_job

RECOVERED_TTL = 24 * 60 * 60  # the poison-pill counts live a day after the last recovery
MAX_INTERVAL = 15.0
# > redis_url.SOCKET_TIMEOUT (10 s) with a margin: a fetch whose jobs are still on their way to us has
# either delivered them or failed by then (an idle waker's BLMOVE answers the moment it moves a job)
ORPHAN_AGE = 15.0
POISON_CLASS = "Fastworker::PoisonPill"


def held_jobs(manager: Any, fetcher: Any, broker: Broker) -> set[bytes]:
    """Every job this process holds (duty 5): running, fetched and not yet started (or taken by an
    idle waker), or finished with its ack not yet landed."""
    known = {w.env.raw for w in list(manager.busy.values())}
    known.update(fetcher.held())
    known.update(broker.held())
    return known


class Recoverer:
    def __init__(self, redis: Any, broker: Broker, keys: Keys, identity: str, health: RedisHealth, *,
                 queue_names: Sequence[str], process_ttl: float, heartbeat_interval: float, poison_pill_limit: int,
                 dead_max_jobs: int, dead_timeout: int, held: Callable[[], set[bytes]],
                 stopping: Callable[[], bool], metrics: Any = None) -> None:
        self.redis = redis
        self.broker = broker
        self.health = health
        self.queue_names = list(queue_names)
        self.held = held  # held_jobs() of this process's manager, fetcher and broker
        self.is_stopping = stopping  # the launcher is stopping: no re-registration, no sweeping
        self.metrics = metrics
        self.ttl = float(process_ttl)
        self.limit = int(poison_pill_limit)
        self.dead_max_jobs = int(dead_max_jobs)
        self.dead_timeout = int(dead_timeout)
        self.interval = min(self.ttl / 4, MAX_INTERVAL)
        self.grace = 2 * float(heartbeat_interval)
        self.keys = keys
        self.identity = identity
        self._script: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._failing = False
        self._errors_seen = -1
        self._hold_until = 0.0  # monotonic: no judging others dead before this
        self._sweep_until = 0.0  # monotonic: look for orphans in our own lists until then
        self._orphans: dict[tuple[str, bytes], float] = {}  # (queue, raw) -> first seen unknown (mono)
        self.recovered = 0
        self.killed = 0

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The loop's task, watched by the launcher (/healthz names a loop that died)."""
        return self._task

    async def start(self) -> None:
        self._script = self.redis.register_script(scripts.RECOVER)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def quiet(self) -> None:
        """Quiet processes keep recovering: moving jobs back to queues is not fetching."""

    def stopping(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.tick()
                if self._failing:
                    self._failing = False
                    log.info("recoverer_back")
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                self._hold(exc)
            except Exception as exc:  # a bug must not end recovery for good
                log.error("recoverer_failed", error_class=type(exc).__name__, error_message=str(exc))
            # jittered, never longer than ttl / 4
            await asyncio.sleep(self.interval * (0.5 + 0.5 * random.random()))

    def _hold(self, exc: BaseException | None = None) -> None:
        self._hold_until = time.monotonic() + self.grace
        self._orphans.clear()
        if exc is not None and not self._failing:
            self._failing = True
            log.warn("recoverer_redis_error", error_class=type(exc).__name__, error_message=str(exc))

    # -- one pass --------------------------------------------------------------------------------

    async def tick(self) -> int:
        """One pass; returns how many jobs were moved out of dead processes' lists."""
        errors = self.health.errors
        if errors != self._errors_seen or not self.health.ok:
            if self._errors_seen != -1:
                self._hold()  # Redis was away since the last tick: let every live process beat first
                # a fetch whose reply was lost raised here too: look for orphans for a while
                self._sweep_until = time.monotonic() + 4 * ORPHAN_AGE
            self._errors_seen = errors
        registered = await self.redis.hgetall(self.keys.fw_processes)
        await self._keep_registration(registered)
        moved = 0
        if time.monotonic() >= self._hold_until:
            for identity in await self.dead_processes(registered):
                moved += await self.recover(identity)
        if self._orphans or time.monotonic() < self._sweep_until:
            await self._sweep_orphans()
        return moved

    async def _keep_registration(self, registered: dict[bytes, bytes]) -> None:
        if self.is_stopping() or self.broker.stopping:
            return
        if self.identity.encode() not in registered:
            log.warn("registration_restored", identity=self.identity)
            await self.broker.register()

    async def dead_processes(self, registered: dict[bytes, bytes] | None = None) -> list[str]:
        """Identities registered longer ago than the TTL whose heartbeat key has expired."""
        r = self.redis
        if registered is None:
            registered = await r.hgetall(self.keys.fw_processes)
        cutoff = time.time() - self.ttl
        old: list[str] = []
        for ident_b, at in registered.items():
            ident = ident_b.decode()
            if ident == self.identity:
                continue
            try:
                if float(at) > cutoff:
                    continue
            except ValueError:
                pass  # an unreadable registration is old enough
            old.append(ident)
        if not old:
            return []
        async with r.pipeline(transaction=False) as p:
            for ident in old:
                p.exists(self.keys.process(ident))
            alive = await p.execute()
        return [ident for ident, live in zip(old, alive, strict=True) if not live]

    async def recover(self, identity: str) -> int:
        """Claim ``identity`` and move its in-progress jobs; 0 if another recoverer got there first."""
        r = self.redis
        k = self.keys
        queues = sorted(q.decode() for q in await r.smembers(k.inprogress_queues(identity)))
        keys = [k.fw_processes, k.process(identity), k.inprogress_queues(identity), k.fw_recovered, k.dead]
        args: list[Any] = []
        now = time.time()
        for q in queues:
            lst = k.inprogress(identity, q)
            keys += [lst, k.queue(q)]
            for raw in await r.lrange(lst, 0, -1):
                jid, member = _dead_entry(raw, now, self.limit)
                args += [raw, jid, member]
        head = [identity, repr(now - self.ttl), repr(now), self.limit, RECOVERED_TTL,
                repr(now - self.dead_timeout), self.dead_max_jobs]
        result = await self._script(keys=keys, args=head + args)
        if result is None:
            return 0  # another recoverer claimed it, or it came back to life
        moved, dead = int(result[0]), int(result[1])
        dead_jids = [j.decode() for j in result[2:]]
        if moved or dead:
            log.warn("jobs_recovered", identity=identity, count=moved, dead=dead, queues=queues)
        else:
            log.info("dead_process_cleared", identity=identity)
        for jid in dead_jids:
            log.error("job_dead", jid=jid, reason=f"poison pill: in flight during more than {self.limit} "
                                                  "process crashes", identity=identity)
        self.recovered += moved
        self.killed += dead
        if self.metrics is not None and dead:  # the recovered and poison-pill counts are read from here
            for _ in range(dead):
                self.metrics.dead()
        return moved

    # -- our own lists ---------------------------------------------------------------------------

    async def _sweep_orphans(self) -> None:
        if self.is_stopping():
            self._orphans.clear()
            return
        async with self.redis.pipeline(transaction=False) as p:
            for q in self.queue_names:
                p.lrange(self.broker.inprogress_key(q), 0, -1)
            lists = await p.execute()
        known = self.held()  # after the read: whatever arrived meanwhile counts as known
        now = time.monotonic()
        seen: dict[tuple[str, bytes], float] = {}
        due: list[tuple[str, bytes]] = []
        for q, raws in zip(self.queue_names, lists, strict=True):
            for raw in raws:
                if raw in known:
                    continue
                first = self._orphans.get((q, raw), now)
                seen[(q, raw)] = first
                if now - first >= ORPHAN_AGE:
                    due.append((q, raw))
        self._orphans = seen
        if due:
            await self.broker.bulk_requeue(due)
            for item in due:
                self._orphans.pop(item, None)
            log.warn("orphans_requeued", count=len(due), reason="in our in-progress list but not held by "
                                                                 "this process (a fetch reply was lost)")


def _dead_entry(raw: bytes, now: float, limit: int) -> tuple[str, bytes]:
    """The jid and the dead-set member a poison pill would get (the raw string if undecodable)."""
    try:
        job = load_job(raw)
    except ValueError:
        return "", raw
    if not isinstance(job, dict):
        return "", raw
    jid = job.get("jid")
    job["error_class"] = POISON_CLASS
    job["error_message"] = (f"in flight during more than {limit} worker process crashes; "
                            "sent to the dead set by crash recovery")
    job["failed_at"] = now
    try:
        member = dump_job(job)
    except ValueError:
        member = raw
    return (jid if isinstance(jid, str) else ""), member
