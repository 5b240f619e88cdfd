"""The job path's Redis commands: every command a fetched job's life sends goes through here.

The other modules that write to Redis, each for its own duty (every Lua script lives in
scripts.py, every key name in keys.py): scheduler.py moves due ``retry``/``schedule`` members to
their queues, recoverer.py gives dead processes' in-progress lists back, heartbeat.py writes the
process record, busy hashes and 7.x/8.x job metrics. hooks.py goes through this module.

Duties:
1. fetch: move jobs atomically from ``queue:NAME`` into this process's in-progress list, many per
   round trip (Lua + LMOVE), in strict or per-slot weighted order; the same call carries the acks
   and stat counters queued since the last one, so a finished batch costs one round trip in all.
2. wait: with every queue empty, block on the queues (one BLMOVE per queue, straight into the
   in-progress list, on a connection of its own) instead of polling, so an idle worker sends a few
   commands a second and takes a pushed job within a millisecond.
3. ack: remove finished jobs from the in-progress list, together with the Sidekiq stat counters:
   carried by the next fetch, or flushed alone when no fetch carried them within ACK_LINGER
   (quiet, breaker open, every token busy); retried until it lands.
4. requeue / retry / kill: move a job out of the in-progress list to the head of its queue, the
   retry set or the dead set, in one MULTI each, retried until it lands.

A job is always in exactly one of: its queue, an in-progress list, the retry/schedule/dead set.
The in-progress list is what makes a crash survivable: the recoverer puts its jobs back.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis import exceptions as rexc

from . import scripts
from .clock import Backoff
from .keys import STATS_TTL, Keys
from .log import log

REDIS_ERRORS = (rexc.ConnectionError, rexc.TimeoutError, rexc.BusyLoadingError, rexc.TryAgainError,
                rexc.ReadOnlyError, rexc.ClusterDownError, OSError, ConnectionError)
ACK_LINGER = 0.002  # seconds queued acks wait for a fetch to carry them before flushing alone


class RedisHealth:
    """Shared view of whether Redis answers: read by /readyz and the logs."""

    __slots__ = ("ok", "down_since", "errors")

    def __init__(self) -> None:
        self.ok = True
        self.down_since: float | None = None
        self.errors = 0

    def failed(self, op: str, exc: BaseException) -> None:
        self.errors += 1
        if self.ok:
            self.ok = False
            self.down_since = time.monotonic()
            log.error("redis_connection_lost", op=op, error_class=type(exc).__name__, error_message=str(exc))

    def succeeded(self) -> None:
        if not self.ok:
            down = time.monotonic() - (self.down_since or time.monotonic())
            self.ok = True
            self.down_since = None
            log.info("redis_connection_back", downtime_ms=round(down * 1000))


async def until_ok(op: str, fn: Callable[[], Awaitable[Any]], health: RedisHealth,
                   stopping: Callable[[], bool] = lambda: False, max_delay: float = 5.0) -> Any:
    """Run ``fn`` until Redis accepts it, with capped exponential backoff and jitter.

    Gives up (re-raises) only once ``stopping()`` is true: the job is then still safe in the
    in-progress list, where the recoverer finds it.
    """
    backoff = Backoff(max_delay)
    while True:
        try:
            result = await fn()
        except REDIS_ERRORS as exc:
            health.failed(op, exc)
            if stopping():
                raise
            await asyncio.sleep(backoff.delay())
            continue
        health.succeeded()
        return result


_day_cache: tuple[int, str] = (-1, "")


def utc_day(now: float) -> str:
    global _day_cache
    hour = int(now) // 3600
    if _day_cache[0] != hour:
        _day_cache = (hour, time.strftime("%Y-%m-%d", time.gmtime(now)))
    return _day_cache[1]


def pack(parts: Sequence[bytes]) -> bytes:
    """One command in RESP, as redis-py's pack_command would write it for these bytes."""
    return b"".join([b"*%d\r\n" % len(parts)] + [b"$%d\r\n%s\r\n" % (len(p), p) for p in parts])


class HotConnection:
    """A connection of a pool kept checked out for one command sent once per batch or per wake-up.

    redis-py's ``execute_command`` (retries, an encoder pass per argument, pool checkout and
    release) costs about 30 µs of CPU per call on the project's machine; this sends the packed
    command itself. Calls are serialised on the connection; a call that fails or is cancelled
    half-way drops it, and the next call reconnects (through the pool's own connection class: TLS,
    ACL and Sentinel included).
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._conn: Any = None
        self._lock = asyncio.Lock()
        self._dropping: set[asyncio.Task[None]] = set()

    async def call(self, packed: bytes, script: str | None = None, replies: int = 1) -> Any:
        """Send ``packed`` and read its reply; ``script``: the source to load on NOSCRIPT (the
        packed command is then sent again). ``replies`` > 1: ``packed`` holds that many pipelined
        commands, and their replies come back as a list."""
        async with self._lock:
            if self._conn is None:
                self._conn = await self._pool.get_connection()
            conn = self._conn
            try:
                try:
                    await conn.send_packed_command(packed, check_health=False)
                    if replies > 1:  # an error reply mid-way would leave the rest unread: drop it then
                        return [await conn.read_response() for _ in range(replies)]
                    return await conn.read_response()
                except rexc.NoScriptError:
                    if script is None:
                        raise
                    await conn.send_command("SCRIPT", "LOAD", script)
                    await conn.read_response()
                    await conn.send_packed_command(packed, check_health=False)
                    return await conn.read_response()
            except rexc.ResponseError:
                if replies == 1:
                    raise  # the connection is still in step
                self._discard(conn)
                raise
            except BaseException:
                # a reply may still be on its way: never reuse the stream
                self._discard(conn)
                raise

    def _discard(self, conn: Any) -> None:
        """Dropped without awaiting here, so a cancellation (shutdown) cannot leave it half-closed
        for the next call."""
        self._conn = None
        task = asyncio.get_running_loop().create_task(self._drop(conn))
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    async def _drop(self, conn: Any) -> None:
        try:
            await conn.disconnect(nowait=True)
        finally:
            await self._pool.release(conn)

    async def close(self) -> None:
        if self._dropping:
            await asyncio.wait(self._dropping, timeout=1.0)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._pool.release(conn)


class HotScript:
    """One Lua script on a connection of its own (EVALSHA, the script loaded only on NOSCRIPT)."""

    def __init__(self, redis: Any, source: str) -> None:
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest().encode()
        self._conn = HotConnection(redis.connection_pool)

    async def __call__(self, keys: Sequence[bytes | str], args: Sequence[bytes | int]) -> Any:
        parts = [b"EVALSHA", self._sha, b"%d" % len(keys)]
        parts += [k if isinstance(k, bytes) else k.encode() for k in keys]
        parts += [a if isinstance(a, bytes) else b"%d" % a for a in args]
        return await self._conn.call(pack(parts), self._source)

    async def close(self) -> None:
        await self._conn.close()


class Broker:
    def __init__(self, redis: Any, blocking_redis: Any, keys: Keys, identity: str,
                 queues: Sequence[str], health: RedisHealth | None = None) -> None:
        self.redis = redis
        self.blocking_redis = blocking_redis
        self.keys = keys
        self.identity = identity
        self.queues = list(queues)
        self.health = health or RedisHealth()
        self.stopping = False
        self._ack_fetch_script = HotScript(redis, scripts.ACK_FETCH)
        self._waiting: dict[str, HotConnection] = {}  # the wakers' BLMOVE connections, by queue
        self._return_script = redis.register_script(scripts.RETURN_INPROGRESS)
        self._requeue_script = redis.register_script(scripts.REQUEUE)
        self._hooks_step_script = redis.register_script(scripts.HOOKS_STEP)
        self._hooks_claim_script = redis.register_script(scripts.HOOKS_CLAIM)
        self._queue_keys: list[str] = []
        for q in self.queues:
            self._queue_keys.append(keys.queue(q))
            self._queue_keys.append(keys.inprogress(identity, q))
        self._queue_index = {q: i + 1 for i, q in enumerate(self.queues)}
        self._inprogress = {q: keys.inprogress(identity, q) for q in self.queues}
        # acks and stat counters waiting for the next fetch (or flush)
        self._acks: list[tuple[str, bytes]] = []
        self._processed = 0
        self._failed = 0
        self._queued_at: float | None = None  # monotonic time the oldest waiting ack or count came
        self._flush_task: asyncio.Task[None] | None = None
        self._acks_inflight: list[tuple[str, bytes]] = []  # the acks of the call under way
        self._fetching: asyncio.Future[None] | None = None  # a fetch under way: the acks wait for the next

    def _stop_flag(self) -> bool:
        return self.stopping

    def inprogress_key(self, queue: str) -> str:
        key = self._inprogress.get(queue)
        if key is None:
            key = self._inprogress[queue] = self.keys.inprogress(self.identity, queue)
        return key

    async def register(self) -> None:
        """Record which in-progress lists this process owns, for the recoverer."""
        async def op() -> None:
            async with self.redis.pipeline(transaction=True) as p:
                p.hset(self.keys.fw_processes, self.identity, repr(time.time()))
                p.sadd(self.keys.inprogress_queues(self.identity), *self.queues)
                await p.execute()
        await until_ok("register", op, self.health)

    # -- fetch -------------------------------------------------------------------------------

    def view(self, queues: Sequence[str]) -> QueueView:
        """This broker, fetching from ``queues`` only (one capsule's fetch pool)."""
        return QueueView(self, queues)

    async def fetch(self, n: int, orders: bytes = b"", view: QueueView | None = None) -> list[tuple[str, bytes]]:
        """Land the queued acks and counters, and move up to ``n`` jobs into the in-progress lists,
        in one call; return the fetched (queue, raw) pairs.

        ``orders``: b"" for strict order, else ``n`` permutations of queue indexes (1-based bytes).
        Raises a Redis error on failure (the caller backs off); the acks then wait for the next call.
        """
        while self._fetching is not None:  # another capsule's fetch is under way: one call at a time
            await asyncio.shield(self._fetching)
        self._fetching = asyncio.get_running_loop().create_future()
        try:
            if view is None:
                flat = await self._ack_fetch(n, orders, self._queue_keys, self._queue_index)
            else:
                flat = await self._ack_fetch(n, orders, view.queue_keys, view.queue_index)
        finally:
            self._fetching.set_result(None)
            self._fetching = None
        queues = self.queues if view is None else view.queues
        return [(queues[flat[i] - 1], flat[i + 1]) for i in range(0, len(flat), 2)]

    async def _ack_fetch(self, n: int, orders: bytes, queue_keys: list[str] | None = None,
                         queue_index: dict[str, int] | None = None) -> list[Any]:
        acks, self._acks = self._acks, []
        processed, self._processed = self._processed, 0
        failed, self._failed = self._failed, 0
        queued_at, self._queued_at = self._queued_at, None
        day = utc_day(time.time())
        k = self.keys
        keys = [k.stat_processed, k.stat_processed_day(day), k.stat_failed, k.stat_failed_day(day)]
        keys += self._queue_keys if queue_keys is None else queue_keys
        args: list[int | bytes] = [n, orders, processed, failed, STATS_TTL, len(keys) // 2 - 2]
        index = self._queue_index if queue_index is None else queue_index
        for queue, raw in acks:
            i = index.get(queue)
            if i is None:  # a queue this process does not fetch from (never expected): its own pair
                index = dict(index)
                i = index[queue] = len(keys) // 2 - 1
                keys += (self.keys.queue(queue), self.inprogress_key(queue))
            args.append(i)
            args.append(raw)
        self._acks_inflight = acks
        try:
            return await self._ack_fetch_script(keys=keys, args=args)
        except BaseException:
            # not landed (or not known to have landed): the acks go with the next call; an ack that
            # did land is harmless to repeat, a counter counted twice is the price of never losing one
            self._acks[:0] = acks
            self._processed += processed
            self._failed += failed
            if queued_at is not None and (self._queued_at is None or queued_at < self._queued_at):
                self._queued_at = queued_at
            raise
        finally:
            self._acks_inflight = []

    async def wait_for_job(self, queue: str, timeout: float) -> tuple[bytes | None, int]:
        """Block until ``queue`` has a job (or ``timeout``), and take it; also how many jobs the
        queue holds after it (0 when it was the only one).

        One BLMOVE from the queue straight into this process's in-progress list: atomic, so the
        job is never outside Redis, and it saves the idle worker a second round trip. The LLEN is
        pipelined behind it on the same connection, so Redis answers it the moment the BLMOVE
        returns, in the same round trip.
        """
        conn = self._waiting.get(queue)
        if conn is None:  # a connection per queue: every waker blocks at the same time
            conn = self._waiting[queue] = HotConnection(self.blocking_redis.connection_pool)
        key = self.keys.queue(queue).encode()
        raw, left = await conn.call(pack([b"BLMOVE", key, self.inprogress_key(queue).encode(), b"RIGHT", b"LEFT",
                                          repr(float(timeout)).encode()]) + pack([b"LLEN", key]), replies=2)
        return raw, int(left)

    # -- ack and stats -----------------------------------------------------------------------

    def ack(self, queue: str, raw: bytes, processed: int = 1, failed: int = 0) -> None:
        """Queue the removal of a finished job from the in-progress list (and count it)."""
        self._acks.append((queue, raw))
        self._processed += processed
        self._failed += failed
        self._want_flush()

    def count(self, processed: int = 0, failed: int = 0) -> None:
        self._processed += processed
        self._failed += failed
        self._want_flush()

    def held(self) -> list[bytes]:
        """The jobs whose ack is queued or under way: finished, still in an in-progress list."""
        return [raw for _, raw in self._acks] + [raw for _, raw in self._acks_inflight]

    def _want_flush(self) -> None:
        if self._queued_at is None:
            self._queued_at = time.monotonic()
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        try:
            while True:
                # The token released with an ack wakes the fetch loop, whose next fetch carries the
                # ack: flush alone only acks that waited ACK_LINGER with no fetch under way (every
                # token busy, quiet, the breaker open, an idle queue). Two turns of the event loop
                # were too short once batches were pipelined (the next fetch was still being
                # prepared: 4 in 10 calls were lone ack flushes), and a fixed sleep still flushed
                # the acks of a batch that had just finished, right before its own fetch.
                while self._fetching is not None:
                    await self._fetching
                if not (self._acks or self._processed or self._failed):
                    break
                waited = time.monotonic() - (self._queued_at or 0.0)
                if waited < ACK_LINGER:  # the oldest waiting ack is fresh: a fetch may yet take it
                    await asyncio.sleep(ACK_LINGER - waited)
                    continue
                await until_ok("ack", lambda: self._ack_fetch(0, b""), self.health, self._stop_flag)
        finally:
            self._flush_task = None

    async def flush(self) -> None:
        """Wait until every queued ack and counter has landed (used at shutdown and by tests)."""
        while self._flush_task is not None:
            await asyncio.shield(self._flush_task)
        if self._acks or self._processed or self._failed:
            await until_ok("ack", lambda: self._ack_fetch(0, b""), self.health, self._stop_flag)

    # -- moves out of the in-progress list ---------------------------------------------------

    async def bulk_requeue(self, items: Sequence[tuple[str, bytes]]) -> None:
        if not items:
            return

        # one conditional move per job (scripts.REQUEUE): only a job still in the in-progress list goes
        # back, so a retry after a lost reply, or a race with the recoverer, never adds a second copy
        keys: list[str] = []
        index: dict[str, int] = {}
        args: list[int | bytes] = []
        for queue, raw in items:
            for key in (self.inprogress_key(queue), self.keys.queue(queue)):
                if key not in index:
                    keys.append(key)
                    index[key] = len(keys)
            args += (index[self.inprogress_key(queue)], index[self.keys.queue(queue)], raw)

        async def op() -> None:
            await self._requeue_script(keys=keys, args=args)

        await until_ok("requeue", op, self.health, self._stop_flag)

    async def return_inprogress(self, identity: str | None = None, queues: Sequence[str] | None = None) -> int:
        """Move every job left in an in-progress list back to the head of its queue.

        Used at the end of a clean shutdown (for this process) and by the recoverer (for a
        process whose heartbeat expired). Returns how many jobs moved.
        """
        identity = identity or self.identity
        if queues is None:
            queues = self.queues
        moved = 0
        for q in queues:
            moved += await self._return_script(keys=[self.keys.inprogress(identity, q), self.keys.queue(q)])
        return moved

    async def close(self) -> None:
        await self._ack_fetch_script.close()
        for conn in self._waiting.values():
            await conn.close()

    async def unregister(self) -> None:
        """Clean shutdown: our in-progress lists are empty, forget them."""
        async with self.redis.pipeline(transaction=True) as p:
            p.hdel(self.keys.fw_processes, self.identity)
            p.delete(self.keys.inprogress_queues(self.identity))
            await p.execute()

    async def retry(self, queue: str, raw: bytes, member: bytes, score: float,
                    processed: int = 1, failed: int = 1) -> None:
        """ZADD the retry entry and drop the job from the in-progress list, atomically."""
        async def op() -> None:
            async with self.redis.pipeline(transaction=True) as p:
                p.zadd(self.keys.retry, {member: score})
                p.lrem(self.inprogress_key(queue), 1, raw)
                await p.execute()

        await until_ok("retry", op, self.health, self._stop_flag)
        self.count(processed, failed)

    async def kill(self, queue: str | None, raw: bytes, member: bytes, now: float,
                   max_jobs: int, timeout: int, processed: int = 1, failed: int = 1) -> None:
        """Add to the dead set, trimmed as Sidekiq trims it (§4.6), and drop from in-progress."""
        async def op() -> None:
            async with self.redis.pipeline(transaction=True) as p:
                p.zadd(self.keys.dead, {member: now})
                p.zremrangebyscore(self.keys.dead, "-inf", now - timeout)  # inclusive, as DeadSet#kill
                p.zremrangebyrank(self.keys.dead, 0, -max_jobs)
                if queue is not None:
                    p.lrem(self.inprogress_key(queue), 1, raw)
                await p.execute()

        await until_ok("kill", op, self.health, self._stop_flag)
        self.count(processed, failed)

    # -- exhaustion hooks (hooks.py) ------------------------------------------------------------

    async def park_for_hooks(self, queue: str, raw: bytes, entry: bytes, at: float,
                             processed: int = 1, failed: int = 1) -> None:
        """A finished, exhausted job leaves the in-progress list for the hooks set, atomically: from
        now on it waits for its hooks there, and never runs again."""
        async def op() -> None:
            async with self.redis.pipeline(transaction=True) as p:
                p.zadd(self.keys.fw_hooks, {entry: at})
                p.lrem(self.inprogress_key(queue), 1, raw)
                await p.execute()

        await until_ok("park_for_hooks", op, self.health, self._stop_flag)
        self.count(processed, failed)

    async def hooks_step(self, entry: bytes, dead_member: bytes | None, now: float, max_jobs: int, timeout: int,
                         next_entry: bytes | None = None, next_at: float = 0.0) -> bool:
        """One step of an entry done (see scripts.HOOKS_STEP); False if another process did it."""
        async def op() -> Any:
            return await self._hooks_step_script(
                keys=[self.keys.fw_hooks, self.keys.dead],
                args=[entry, dead_member or b"", repr(now), repr(now - timeout), max_jobs, next_entry or b"",
                      repr(next_at)])

        return bool(await until_ok("hooks_step", op, self.health, self._stop_flag))

    async def claim_hooks(self, now: float, lease: float, n: int) -> list[bytes]:
        """Up to ``n`` due entries of the hooks set, leased to this process until ``now + lease``."""
        return list(await self._hooks_claim_script(keys=[self.keys.fw_hooks], args=[repr(now), repr(now + lease), n]))

    async def hooks_later(self, entry: bytes, at: float) -> None:
        """Try this entry again at ``at`` (the sidecar could not run its hooks)."""
        await self.redis.zadd(self.keys.fw_hooks, {entry: at}, xx=True)

    async def drop(self, queue: str, raw: bytes, processed: int = 1, failed: int = 1) -> None:
        """Remove a finished job that goes nowhere (retry: false, discard)."""
        self.ack(queue, raw, processed, failed)


class QueueView:
    """One capsule's side of the Broker: ``fetch`` moves jobs from its queues only; everything else
    (acks, requeues, the blocking wait, health) is the Broker's, so the Redis use stays in one place."""

    def __init__(self, broker: Broker, queues: Sequence[str]) -> None:
        self.broker = broker
        self.queues = list(queues)
        self.queue_keys: list[str] = []
        for q in self.queues:
            self.queue_keys += (broker.keys.queue(q), broker.inprogress_key(q))
        self.queue_index = {q: i + 1 for i, q in enumerate(self.queues)}

    async def fetch(self, n: int, orders: bytes = b"") -> list[tuple[str, bytes]]:
        return await self.broker.fetch(n, orders, self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.broker, name)
