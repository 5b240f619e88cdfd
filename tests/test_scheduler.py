"""The scheduler against a real Redis (DB 15, flushed per test): table-style initial state ->
one tick (or the running loop) -> wanted state. Moves are checked byte by byte; the end-to-end
proofs with Sidekiq's own API are in test_sidekiq_api.py, speed in bench/scheduler.py."""

from __future__ import annotations

import asyncio
import io
import json
import re
import time

import orjson
import pytest
import redis.asyncio as aioredis

from fastworker import scheduler as sched_mod
from fastworker.broker import RedisHealth
from fastworker.errors import SidecarUnavailable
from fastworker.keys import Keys
from fastworker.log import log
from fastworker.scheduler import Scheduler, prepare
from tests.helpers.procs import free_port

NOW = 1_700_000_000.5
PAST = NOW - 10
FUTURE = NOW + 3600


class FixedClock:
    def __init__(self, now: float = NOW) -> None:
        self.t = now

    def now(self) -> float:
        return self.t

    def mono(self) -> float:
        return time.monotonic()


def make(url: str, clock=None, namespace: str = "", batch: int = sched_mod.BATCH, **config) -> Scheduler:
    cfg = dict(poll_interval=1.0, sidekiq_version="auto", dead_max_jobs=10_000, dead_timeout=180 * 86400)
    cfg.update(config)
    return Scheduler(aioredis.from_url(url), Keys(namespace), RedisHealth(), clock or FixedClock(), batch=batch,
                     **cfg)


@pytest.fixture
async def made(redis_url):
    """make(...) for this test's DB; every client is closed at the end."""
    out: list[Scheduler] = []

    def factory(**kw) -> Scheduler:
        s = make(kw.pop("url", redis_url), **kw)
        out.append(s)
        return s

    yield factory
    for s in out:
        await s.stop()
        await s.redis.aclose()


@pytest.fixture
def logs():
    """The JSON log lines written during the test."""
    buf = io.BytesIO()
    saved = {name: getattr(log, name) for name in ("stream", "level", "format", "info_on", "debug_on")}
    log.stream, log.format, log.level, log.info_on, log.debug_on = buf, "json", 20, True, False

    def lines(event=None):
        log.flush()
        recs = [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]
        return [r for r in recs if event is None or r["event"] == event]

    yield lines
    for name, value in saved.items():
        setattr(log, name, value)


def job(i, queue="default", **extra) -> bytes:
    body = {"retry": True, "queue": queue, "class": "HardJob", "args": [i], "jid": f"{i:024x}",
            "created_at": 1_699_999_000.25}
    body.update(extra)
    return orjson.dumps(body)


# -- moves ----------------------------------------------------------------------------------------

async def test_tick_moves_due_members_of_retry_then_schedule_and_leaves_future_ones(r, made):
    r.zadd("retry", {job(1): PAST, job(2, "critical"): NOW, job(3): FUTURE})
    r.zadd("schedule", {job(4): PAST - 5, job(5, "low"): PAST, job(6): NOW + 0.001})
    s = made()
    assert await s.tick() == {"retry": 2, "schedule": 2}
    assert [orjson.loads(m)["jid"] for m in r.zrange("retry", 0, -1)] == [f"{3:024x}"]
    assert [orjson.loads(m)["jid"] for m in r.zrange("schedule", 0, -1)] == [f"{6:024x}"]
    # LPUSH in due order: the retry (moved first) is the next one popped from the right
    assert [orjson.loads(m)["args"][0] for m in r.lrange("queue:default", 0, -1)] == [4, 1]
    assert [orjson.loads(m)["args"][0] for m in r.lrange("queue:critical", 0, -1)] == [2]
    assert [orjson.loads(m)["args"][0] for m in r.lrange("queue:low", 0, -1)] == [5]
    assert r.smembers("queues") == {b"default", b"critical", b"low"}
    assert await s.tick() == {"retry": 0, "schedule": 0}  # nothing twice


async def test_moved_job_keeps_every_key_and_type_and_gets_a_fresh_enqueued_at(r, made):
    raw = (b'{"retry":3,"queue":"default","args":[1,"x",{"k":"\xc3\xa9"},123456789012345678901234567890,1.0,null,'
           b'true],"class":"HardJob","jid":"a1b2c3d4e5f6a1b2c3d4e5f6","created_at":1699999000.25,"tags":["t"],'
           b'"bid":"B","custom":{"n":2.50,"z":false},"retry_count":2,"failed_at":1699999100.5,'
           b'"error_message":"boom","error_class":"RuntimeError","enqueued_at":1699999001.0}')
    r.zadd("retry", {raw: PAST})
    await made().tick()
    out = r.lindex("queue:default", 0)
    assert b"123456789012345678901234567890" in out and b"1.0,null,true" in out
    before, after = json.loads(raw), json.loads(out)
    assert list(after) == list(before)  # same keys, same order
    assert after.pop("enqueued_at") == NOW
    before.pop("enqueued_at")
    assert after == before
    for k, v in before.items():
        assert type(after[k]) is type(v), k
    assert type(after["custom"]["n"]) is float and type(after["args"][4]) is float


@pytest.mark.parametrize("created, enqueued, version, want", [
    (1_699_999_000.25, None, "auto", NOW),                      # Sidekiq <= 7: float seconds
    (1_699_999_000_250, None, "auto", int(NOW * 1000)),         # Sidekiq 8: integer ms
    (None, 1_699_999_000_250, "auto", int(NOW * 1000)),         # no created_at: judged by enqueued_at
    (1_699_999_000.25, None, "8", int(NOW * 1000)),             # forced flavours
    (1_699_999_000_250, None, "7", NOW),
])
async def test_enqueued_at_is_written_in_the_jobs_own_format(r, made, created, enqueued, version, want):
    body = {"class": "HardJob", "args": [], "queue": "default", "jid": "j" * 24}
    if created is not None:
        body["created_at"] = created
    if enqueued is not None:
        body["enqueued_at"] = enqueued
    r.zadd("schedule", {orjson.dumps(body): PAST})
    await made(sidekiq_version=version).tick()
    got = orjson.loads(r.lindex("queue:default", 0))
    assert got["enqueued_at"] == want and type(got["enqueued_at"]) is type(want)
    assert got.get("created_at", want) == (created if created is not None else want)


async def test_missing_retry_queue_jid_and_created_at_are_filled_in_as_client_push_does(r, made):
    r.zadd("schedule", {b'{"class":"HardJob","args":[7]}': PAST, b'{"class":"HardJob","args":[8],"retry":2}': PAST})
    await made().tick()
    got = orjson.loads(r.lindex("queue:default", 1))
    # normalize_item: default_job_options ({"retry" => true, "queue" => "default"}) merged under the job
    assert list(got)[:2] == ["retry", "queue"] and got["retry"] is True
    assert orjson.loads(r.lindex("queue:default", 0))["retry"] == 2
    assert got["queue"] == "default" and re.fullmatch(r"[0-9a-f]{24}", got["jid"])
    assert got["created_at"] == NOW and got["enqueued_at"] == NOW
    assert r.smembers("queues") == {b"default"}


async def test_a_namespace_prefixes_every_key_but_no_value(r, made):
    r.zadd("ns:schedule", {job(1, "low"): PAST})
    r.zadd("schedule", {job(2): PAST})  # another app's: not ours
    await made(namespace="ns").tick()
    assert r.llen("ns:queue:low") == 1 and r.smembers("ns:queues") == {b"low"}
    assert r.zcard("schedule") == 1 and not r.exists("queue:default")


# -- batches and cost -----------------------------------------------------------------------------

def spy(s: Scheduler) -> dict:
    """Count the scheduler's Redis reads and what they returned."""
    seen = {"zrange": 0, "returned": 0}
    real = s.redis.zrange

    async def zrange(*a, **kw):
        out = await real(*a, **kw)
        seen["zrange"] += 1
        seen["returned"] += len(out)
        return out

    s.redis.zrange = zrange
    return seen


async def test_a_poll_reads_only_due_members_however_many_future_ones_there_are(r, made):
    p = r.pipeline(transaction=False)
    for start in range(0, 50_000, 5_000):
        p.zadd("schedule", {job(i): FUTURE + i for i in range(start, start + 5_000)})
    p.execute()
    r.zadd("schedule", {job(900_000 + i): PAST for i in range(3)})
    s = made()
    seen = spy(s)
    assert await s.tick() == {"retry": 0, "schedule": 3}
    assert seen == {"zrange": 2, "returned": 3}  # one read per set, due members only
    assert r.zcard("schedule") == 50_000


async def test_due_jobs_beyond_one_batch_are_all_moved_in_one_poll(r, made):
    r.zadd("schedule", {job(i): PAST - i * 0.001 for i in range(1_234)})
    r.zadd("retry", {job(10_000 + i): PAST for i in range(20)})
    s = made(batch=500)
    seen = spy(s)
    assert await s.tick() == {"retry": 20, "schedule": 1_234}
    assert seen == {"zrange": 1 + 3, "returned": 1_254}  # 20 | 500 + 500 + 234
    assert r.llen("queue:default") == 1_254 and r.zcard("schedule") == 0


async def test_many_schedulers_at_once_move_each_job_exactly_once(redis_url, r, made):
    good = [job(i, queue=("a", "b", "c")[i % 3]) for i in range(3_000)]
    bad = [b"{broken %d" % i for i in range(30)]
    r.zadd("schedule", {m: PAST - i * 0.0001 for i, m in enumerate(good + bad)})
    r.zadd("retry", {job(50_000 + i): PAST for i in range(500)})
    schedulers = [made(batch=100) for _ in range(8)]
    results = await asyncio.gather(*(s.tick() for s in schedulers))
    assert sum(c["schedule"] for c in results) == 3_000
    assert sum(c["retry"] for c in results) == 500
    assert sum(s.killed for s in schedulers) == 30
    jids = [orjson.loads(m)["jid"] for q in ("a", "b", "c", "default") for m in r.lrange(f"queue:{q}", 0, -1)]
    assert len(jids) == 3_500 and len(set(jids)) == 3_500
    assert sorted(r.zrange("dead", 0, -1)) == sorted(bad)
    assert r.zcard("schedule") == 0 and r.zcard("retry") == 0


async def test_a_member_rescheduled_after_it_was_read_is_not_moved(r, made):
    s = made()
    raw = job(1)
    r.zadd("schedule", {raw: FUTURE})  # e.g. SortedEntry#reschedule between the read and the move
    assert await s._enqueue("schedule", "schedule", [raw], NOW) == 0
    assert r.zscore("schedule", raw) == FUTURE and not r.exists("queue:default")
    r.zrem("schedule", raw)  # taken by someone else
    assert await s._enqueue("schedule", "schedule", [raw], NOW) == 0
    assert not r.exists("queue:default")


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, reason", [
    (b"{not json", "invalid JSON"),
    (b"\xff\xfe{}", "invalid JSON"),
    (b"[1,2]", "not a JSON object (got array)"),
    (b'"just a string"', "not a JSON object (got string)"),
    (b'{"args":[]}', "'class'"),
    (b'{"class":"","args":[]}', "'class'"),
    (b'{"class":"HardJob","args":"x"}', "'args' must be an array"),
    (b'{"class":"HardJob"}', "'args' must be an array"),
    (b'{"class":"HardJob","args":[],"queue":null}', "invalid 'queue'"),
    (b'{"class":"HardJob","args":[],"queue":""}', "invalid 'queue'"),
    (b'{"class":"HardJob","args":[NaN]}', "invalid JSON"),
    (b'{"class":"HardJob","args":[1e400]}', "invalid JSON"),
])
@pytest.mark.parametrize("zset", ["schedule", "retry"])
async def test_a_member_that_is_not_a_job_goes_to_the_dead_set_with_the_reason(r, made, logs, raw, reason, zset):
    r.zadd(zset, {raw: PAST, job(1): PAST})
    s = made()
    assert (await s.tick())[zset] == 1  # the good one still moves
    [(member, score)] = r.zrange("dead", 0, -1, withscores=True)
    assert score == NOW
    if raw.startswith((b"[", b'"')):  # JSON Sidekiq's API could not list: wrapped, raw text kept
        wrapped = json.loads(member)
        assert wrapped["args"] == [raw.decode()] and reason in wrapped["error_message"]
        assert wrapped["class"] == "Fastworker::InvalidPayload" and wrapped["retry"] is False
    else:
        assert member == raw  # as Sidekiq stores it
    assert r.zcard(zset) == 0 and r.llen("queue:default") == 1
    dead = logs("job_dead")
    assert len(dead) == 1 and dead[0]["set"] == zset and reason in dead[0]["reason"]


async def test_bad_members_are_trimmed_into_the_dead_set_as_sidekiq_trims_it(r, made):
    old = NOW - 180 * 86400
    p = r.pipeline(transaction=False)
    p.zadd("dead", {b"ancient": old - 1, b"exactly-180-days": old})
    for start in range(0, 10_000, 2_500):
        p.zadd("dead", {f"seed{i}".encode(): NOW - 1000 + i * 0.01 for i in range(start, start + 2_500)})
    p.execute()
    r.zadd("schedule", {b"{bad": PAST})
    await made().tick()
    assert r.zcard("dead") == 9_999  # ZREMRANGEBYRANK 0 -10000 keeps 9,999
    assert r.zscore("dead", b"{bad") == NOW
    assert r.zscore("dead", b"ancient") is None and r.zscore("dead", b"exactly-180-days") is None


# -- the loop ------------------------------------------------------------------------------------

async def test_interval_is_uniform_around_the_average():
    s = make("redis://127.0.0.1:6379/15", poll_interval=2.0)
    try:
        s.rand = lambda: 0.0
        assert s.interval() == 1.0
        s.rand = lambda: 0.999999
        assert 2.99 < s.interval() < 3.0
    finally:
        await s.redis.aclose()


async def test_the_loop_moves_jobs_as_they_fall_due_and_survives_bad_input(r, made, logs):
    clock = FixedClock(NOW)
    s = made(clock=clock, poll_interval=0.02)
    await s.start()
    r.zadd("schedule", {job(1): NOW + 5, b"{garbage": NOW + 1})
    await asyncio.sleep(0.2)
    assert r.llen("queue:default") == 0  # not due yet
    clock.t = NOW + 2
    await wait_for(lambda: r.zcard("dead") == 1)
    clock.t = NOW + 6
    # the log line follows the Lua call that moved the job, so wait for it rather than the list
    await wait_for(lambda: logs("scheduled_enqueued"))
    assert r.llen("queue:default") == 1
    assert s._task is not None and not s._task.done()
    assert logs("scheduled_enqueued")[-1]["schedule"] == 1
    assert "invalid JSON" in logs("job_dead")[0]["reason"]


async def test_quiet_stops_scheduling(r, made):
    s = made(poll_interval=0.02)
    await s.start()
    r.zadd("schedule", {job(1): PAST})
    await wait_for(lambda: r.llen("queue:default") == 1)
    s.quiet()
    await asyncio.wait_for(asyncio.shield(s._task), 2)  # the loop has ended
    polls = s.polls
    r.zadd("schedule", {job(2): PAST})
    await asyncio.sleep(0.2)
    assert r.zcard("schedule") == 1 and r.llen("queue:default") == 1 and s.polls == polls


async def test_stop_interrupts_the_sleep(made):
    s = made(poll_interval=60)
    await s.start()
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await s.stop()
    assert time.monotonic() - t0 < 1.0
    assert s.polls == 1


async def test_redis_errors_are_reported_and_the_loop_goes_on(made):
    s = made(url=f"redis://127.0.0.1:{free_port()}/0", poll_interval=0.02)
    await s.start()
    await wait_for(lambda: s.health.errors >= 3, timeout=10)
    assert not s.health.ok and s.polls == 0
    assert s._task is not None and not s._task.done()


async def test_redis_back_marks_health_ok(r, made):
    s = made(poll_interval=0.02)
    s.health.failed("test", ConnectionError("down"))
    await s.start()
    await wait_for(lambda: s.health.ok)


async def test_an_unexpected_error_is_logged_and_the_loop_goes_on(r, made, logs):
    r.set("schedule", "not a zset")  # WRONGTYPE on every poll of that set
    r.zadd("retry", {job(1): PAST})
    s = made(poll_interval=0.02)
    await s.start()
    await wait_for(lambda: len(logs("scheduler_error")) >= 2)
    assert "WRONGTYPE" in logs("scheduler_error")[0]["error_message"]
    assert r.llen("queue:default") == 1  # retry is polled first, and still works


# -- the app's client middleware (the sidecar's /client_push) ------------------------------------

class MiddlewareSidecar:
    """What the scheduler asks of the sidecar client: whether the app has client middleware
    (``None`` until /health answered) and, per due member, what its middleware made of it."""

    def __init__(self, middleware: bool | None, answer=None, fail: bool = False) -> None:
        self.client_middleware = middleware
        self.answer = answer or (lambda job: {"queue": job["queue"], "job": orjson.dumps(job).decode()})
        self.fail = fail
        self.pushed: list[list[bytes]] = []
        self.health_calls = 0

    async def health(self) -> bool:
        self.health_calls += 1
        return False

    async def client_push(self, members: list[bytes]) -> list[dict]:
        self.pushed.append(members)
        if self.fail:
            raise SidecarUnavailable("connection refused")
        return [self.answer(orjson.loads(m)) for m in members]


def with_sidecar(s: Scheduler, sidecar: MiddlewareSidecar) -> Scheduler:
    s.sidecar = sidecar
    return s


def middleware(job: dict) -> dict:
    """An app's client middleware: tags the job, reroutes one, drops one, raises for one, delays one."""
    arg = job["args"][0]
    if arg == "drop":
        return {"dropped": True}
    if arg == "boom":
        return {"error": "RuntimeError: tenant unknown"}
    if arg == "later":
        return {"at": FUTURE, "job": orjson.dumps({**job, "tagged": True}).decode()}
    queue = "critical" if arg == "reroute" else job["queue"]
    return {"queue": queue, "job": orjson.dumps({**job, "queue": queue, "tagged": True}).decode()}


async def test_due_members_go_through_the_apps_client_middleware_before_they_are_pushed(r, made):
    members = {orjson.dumps({"class": "HardJob", "args": [a], "queue": "default", "jid": a, "retry": True}): PAST
               for a in ("plain", "reroute", "drop", "boom", "later")}
    r.zadd("schedule", members)
    sidecar = MiddlewareSidecar(True, middleware)
    await with_sidecar(made(), sidecar).tick()
    assert sorted(sidecar.pushed[0]) == sorted(members)  # the original members, as the poller loads them
    assert [orjson.loads(j)["jid"] for j in r.lrange("queue:default", 0, -1)] == ["plain"]
    assert [orjson.loads(j)["jid"] for j in r.lrange("queue:critical", 0, -1)] == ["reroute"]
    assert all(orjson.loads(j)["tagged"] for q in ("default", "critical") for j in r.lrange(f"queue:{q}", 0, -1))
    assert r.smembers("queues") == {b"default", b"critical"}
    # a middleware that set "at": back to the schedule set, at that time
    [(later, score)] = r.zrange("schedule", 0, -1, withscores=True)
    assert orjson.loads(later)["jid"] == "later" and orjson.loads(later)["tagged"] and score == FUTURE
    # dropped: gone, as Sidekiq drops it; raised: the dead set with the reason (Sidekiq loses it)
    [dead] = r.zrange("dead", 0, -1)
    assert orjson.loads(dead)["jid"] == "boom"


async def test_without_client_middleware_the_sidecar_is_not_asked(r, made):
    r.zadd("retry", {b'{"class":"HardJob","args":[1],"queue":"default","retry":true}': PAST})
    sidecar = MiddlewareSidecar(False)
    await with_sidecar(made(), sidecar).tick()
    assert sidecar.pushed == [] and r.llen("queue:default") == 1


@pytest.mark.parametrize("known,fail", [(True, True), (None, False)])
async def test_due_members_wait_in_their_set_while_the_middleware_cannot_run(r, made, logs, known, fail):
    """The sidecar unreachable, or not yet known to have no middleware: nothing moves, nothing is
    lost, and the next poll tries again."""
    member = b'{"class":"HardJob","args":[1],"queue":"default","retry":true}'
    r.zadd("retry", {member: PAST})
    sidecar = MiddlewareSidecar(known, fail=fail)
    s = with_sidecar(made(), sidecar)
    assert await s.poll() == 0
    assert r.zrange("retry", 0, -1) == [member] and r.llen("queue:default") == 0 and r.zcard("dead") == 0
    assert [e["set"] for e in logs("scheduled_waiting_for_sidecar")] == ["retry"]
    assert sidecar.health_calls == (1 if known is None else 0)
    sidecar.client_middleware, sidecar.fail = True, False
    assert await s.poll() == 1 and r.llen("queue:default") == 1


class SlowMiddleware(MiddlewareSidecar):
    """Its middleware takes a while: every scheduler has read the due members before any answer."""

    async def client_push(self, members: list[bytes]) -> list[dict]:
        await asyncio.sleep(0.05)
        return await super().client_push(members)


async def test_of_several_processes_polling_at_once_one_runs_the_middleware_on_a_job(r, made):
    """Sidekiq's poller runs the client middleware after its own ZREM, so once per job however many
    processes poll. Before, every scheduler that read a due member ran the middleware on it (an APM
    span, a uniqueness lock taken twice) and only the push was de-duplicated."""
    members = [job(i) for i in range(40)]
    r.zadd("schedule", {m: PAST for m in members})
    sidecar = SlowMiddleware(True)
    schedulers = [with_sidecar(made(), sidecar) for _ in range(4)]
    results = await asyncio.gather(*(s.tick() for s in schedulers))
    seen = [m for call in sidecar.pushed for m in call]
    assert sorted(seen) == sorted(members)  # each member through the middleware once
    assert sum(c["schedule"] for c in results) == 40 and r.llen("queue:default") == 40
    assert r.zcard("schedule") == 0 and r.zcard("fastworker:pushing:schedule") == 0


async def test_members_a_dead_scheduler_held_go_back_when_their_lease_ends(r, made, logs):
    held = job(7)
    r.zadd("fastworker:pushing:retry", {held: NOW - 1})  # taken, and its process died before pushing
    r.zadd("fastworker:pushing:schedule", {job(8): NOW + 30})  # still leased to a live process
    sidecar = MiddlewareSidecar(True)
    assert await with_sidecar(made(), sidecar).tick() == {"retry": 1, "schedule": 0}
    assert sidecar.pushed == [[held]]  # through the middleware, then pushed
    assert [orjson.loads(j)["jid"] for j in r.lrange("queue:default", 0, -1)] == [f"{7:024x}"]
    assert r.zcard("fastworker:pushing:retry") == 0 and r.zcard("fastworker:pushing:schedule") == 1
    assert [e["jobs"] for e in logs("scheduled_lease_expired")] == [1]


async def test_members_taken_for_an_unreachable_sidecar_go_back_to_their_set(r, made):
    member = job(3)
    r.zadd("retry", {member: PAST})
    s = with_sidecar(made(), MiddlewareSidecar(True, fail=True))
    assert await s.poll() == 0
    assert r.zrange("retry", 0, -1) == [member] and r.zcard("fastworker:pushing:retry") == 0
    assert r.zscore("retry", member) <= NOW  # due at once


# -- prepare (pure) ------------------------------------------------------------------------------

def test_prepare_returns_the_queue_and_compact_json():
    queue, out = prepare(b'{"class":"A","args":[],"queue":"q1","jid":"x","created_at":1.5}', NOW)
    assert queue == "q1"
    # the key order of normalize_item's defaults.merge(item): retry and queue first
    assert out == (b'{"retry":true,"queue":"q1","class":"A","args":[],"jid":"x","created_at":1.5,'
                   b'"enqueued_at":1700000000.5}')


async def wait_for(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


# -- in the worker process ------------------------------------------------------------------------

def test_a_quiet_worker_process_stops_scheduling(r, stub, worker):
    import signal

    from tests.helpers.procs import wait_until
    w = worker("-c", "1", "--poll-interval", "0.1")
    w.wait_event("startup")
    r.zadd("schedule", {job(1): time.time() - 1})
    wait_until(lambda: r.zcard("schedule") == 0, 5, what="the first move")
    w.signal(signal.SIGTSTP)
    w.wait_event("quiet")
    time.sleep(0.3)  # a poll already under way finishes
    r.zadd("schedule", {job(2): time.time() - 1})
    r.zadd("retry", {job(3): time.time() - 1})
    time.sleep(1.0)  # ten poll intervals
    assert r.zcard("schedule") == 1 and r.zcard("retry") == 1
    assert w.proc.poll() is None
    assert w.stop() == 0
