"""Nothing lost (issue 6): crash recovery, sidecar and Redis outages, shutdown under load, many workers.

Part 1 drives the Recoverer's ``tick()`` directly against a private Redis (table-like: initial
state -> wanted state). Part 2 runs real processes: ``fastworker`` workers, the STUB sidecar (whose
executions are appended to a file, so the count survives killing it) and a private redis-server
that the tests kill and restart. Each fault test ends by counting executions per jid: none lost,
a duplicate only where a crash made it unavoidable, ``retry_count`` never touched by infrastructure.
The shared Redis on 6379 is never used here.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from types import SimpleNamespace
from typing import Any

import pytest
import redis

from fastworker import recoverer as recoverer_mod
from fastworker.broker import Broker, RedisHealth
from fastworker.config import Config
from fastworker.keys import Keys
from fastworker.recoverer import Recoverer, held_jobs
from tests.helpers.faults import (check_counts, drained, fstub, has_http_server, inprogress_total, scrape_text,  # noqa: F401
                                  jobs, make_job, no_retry_spent, predis, procs, push, queue_raws, readyz, rr)
from tests.helpers.procs import wait_until

# -------------------------------------------------------------------------------------------------
# Part 1: the recoverer, one tick at a time
# -------------------------------------------------------------------------------------------------


class FakeFetcher:
    """What the recoverer asks of the fetch loop: the jobs it holds."""

    def __init__(self) -> None:
        self.in_hand: list[tuple[str, bytes]] = []

    def held(self) -> list[bytes]:
        return [raw for _, raw in self.in_hand]


def fake_launcher(url: str, identity: str = "me:1:aaa", ttl: int = 60, limit: int = 3,
                  queues: tuple[str, ...] = ("default",)) -> Any:
    import redis.asyncio as aioredis
    client = aioredis.Redis.from_url(url)
    keys = Keys()
    health = RedisHealth()
    broker = Broker(client, client, keys, identity, list(queues), health)
    cfg = Config(process_ttl=ttl, heartbeat_interval=1, poison_pill_limit=limit, queues=[(q, 0) for q in queues])
    busy: dict[str, Any] = {}
    return SimpleNamespace(config=cfg, redis=client, keys=keys, identity=identity, health=health, broker=broker,
                           stopping=False, queue_names=list(queues), metrics=None,
                           manager=SimpleNamespace(busy=busy), fetcher=FakeFetcher())


def register_dead(r: redis.Redis, identity: str, jobs_by_queue: dict[str, list[bytes]], age: float = 120,
                  heartbeat: bool = False) -> None:
    """A process that registered ``age`` seconds ago and holds these jobs in its in-progress lists
    (newest first, as the fetch leaves them)."""
    r.hset("fastworker:processes", identity, repr(time.time() - age))
    r.sadd(f"fastworker:inprogress-queues:{identity}", *jobs_by_queue)
    for q, raws in jobs_by_queue.items():
        for raw in raws:
            r.lpush(f"fastworker:inprogress:{identity}:{q}", raw)
    if heartbeat:
        r.hset(identity, "beat", time.time())
        r.expire(identity, 60)


def raw_job(jid: str, queue: str = "default") -> bytes:
    return json.dumps({"class": "HardJob", "args": [jid], "jid": jid, "queue": queue, "retry": True}).encode()


def recoverer(L: Any) -> Recoverer:
    """The Recoverer as the launcher builds it, for a fake_launcher."""
    c = L.config
    return Recoverer(L.redis, L.broker, L.keys, L.identity, L.health, queue_names=L.queue_names,
                     process_ttl=c.process_ttl, heartbeat_interval=c.heartbeat_interval,
                     poison_pill_limit=c.poison_pill_limit, dead_max_jobs=c.dead_max_jobs, dead_timeout=c.dead_timeout,
                     held=lambda: held_jobs(L.manager, L.fetcher, L.broker), stopping=lambda: L.stopping,
                     metrics=L.metrics)


async def run_tick(launcher: Any, rec: Recoverer | None = None) -> tuple[Recoverer, int]:
    rec = rec or recoverer(launcher)
    rec._script = launcher.redis.register_script(recoverer_mod.scripts.RECOVER)
    moved = await rec.tick()
    return rec, moved


async def test_dead_process_jobs_go_back_to_the_head_of_their_queues(predis, rr):
    rr.lpush("queue:default", raw_job("waiting"))
    register_dead(rr, "dead:1:x", {"default": [raw_job("a"), raw_job("b")], "low": [raw_job("c", "low")]})
    L = fake_launcher(predis.url())
    await L.broker.register()
    _, moved = await run_tick(L)
    assert moved == 3
    # the oldest fetched (a) is next in line, then b, then the job that was waiting
    assert [json.loads(x)["jid"] for x in rr.lrange("queue:default", 0, -1)] == ["waiting", "b", "a"]
    assert [json.loads(x)["jid"] for x in rr.lrange("queue:low", 0, -1)] == ["c"]
    assert rr.keys("fastworker:inprogress:dead*") == []
    assert not rr.hexists("fastworker:processes", "dead:1:x")
    assert not rr.exists("fastworker:inprogress-queues:dead:1:x")
    assert rr.hget("fastworker:recovered", "a") == b"1"
    assert 0 < rr.ttl("fastworker:recovered") <= recoverer_mod.RECOVERED_TTL
    await L.redis.aclose()


async def test_live_or_young_processes_are_left_alone(predis, rr):
    register_dead(rr, "alive:1:x", {"default": [raw_job("a")]}, heartbeat=True)
    register_dead(rr, "young:1:x", {"default": [raw_job("b")]}, age=5)
    L = fake_launcher(predis.url(), ttl=60)
    await L.broker.register()
    _, moved = await run_tick(L)
    assert moved == 0
    assert rr.llen("fastworker:inprogress:alive:1:x:default") == 1
    assert rr.llen("fastworker:inprogress:young:1:x:default") == 1
    assert rr.hexists("fastworker:processes", "alive:1:x") and rr.hexists("fastworker:processes", "young:1:x")
    await L.redis.aclose()


async def test_two_recoverers_racing_move_each_job_once(predis, rr):
    raws = [raw_job(f"j{i}") for i in range(200)]
    register_dead(rr, "dead:2:x", {"default": raws})
    a = fake_launcher(predis.url(), identity="a:1:x")
    b = fake_launcher(predis.url(), identity="b:1:x")
    ra, rb = recoverer(a), recoverer(b)
    for rec, L in ((ra, a), (rb, b)):
        rec._script = L.redis.register_script(recoverer_mod.scripts.RECOVER)
    got = await asyncio.gather(ra.recover("dead:2:x"), rb.recover("dead:2:x"))
    assert sorted(got) == [0, 200]
    assert sorted(rr.lrange("queue:default", 0, -1)) == sorted(raws)
    await a.redis.aclose()
    await b.redis.aclose()


async def test_a_poison_pill_goes_to_the_dead_set_after_the_limit(predis, rr):
    pill = raw_job("pill")
    L = fake_launcher(predis.url(), limit=3)
    await L.broker.register()
    rec = None
    for crash in range(1, 5):
        register_dead(rr, f"dead:{crash}:x", {"default": [pill]})
        rec, moved = await run_tick(L, rec)
        if crash <= 3:
            assert moved == 1 and rr.lrange("queue:default", 0, -1) == [pill], crash
            rr.delete("queue:default")  # the next process fetches it and dies again
    assert moved == 0 and rr.llen("queue:default") == 0
    dead = rr.zrange("dead", 0, -1, withscores=True)
    assert len(dead) == 1
    entry = json.loads(dead[0][0])
    assert entry["jid"] == "pill" and entry["error_class"] == "Fastworker::PoisonPill"
    assert "3" in entry["error_message"] and abs(dead[0][1] - time.time()) < 10
    assert {k: v for k, v in entry.items() if k not in ("error_class", "error_message", "failed_at")} == \
        json.loads(pill)  # otherwise the job as it was
    assert not rr.hexists("fastworker:recovered", "pill")
    await L.redis.aclose()


async def test_an_undecodable_poison_pill_goes_to_the_dead_set_as_its_raw_string(predis, rr):
    bad = b'{"jid":"badpill","class":'
    L = fake_launcher(predis.url(), limit=1)
    await L.broker.register()
    rr.hset("fastworker:recovered", "badpill", 1)  # counted once already; cjson cannot read it anyway
    register_dead(rr, "dead:9:x", {"default": [bad]})
    await run_tick(L)
    assert rr.lrange("queue:default", 0, -1) == [bad]  # no jid to count: back to its queue, never dropped
    await L.redis.aclose()


async def test_the_dead_set_is_trimmed_as_sidekiq_trims_it(predis, rr):
    rr.zadd("dead", {f"old{i}": time.time() - 10 for i in range(5)})
    L = fake_launcher(predis.url(), limit=1)
    L.config = Config(process_ttl=60, heartbeat_interval=1, poison_pill_limit=1, dead_max_jobs=4)
    await L.broker.register()
    rr.hset("fastworker:recovered", "p", 1)
    register_dead(rr, "dead:8:x", {"default": [raw_job("p")]})
    await run_tick(L)
    assert rr.zcard("dead") == 3  # ZREMRANGEBYRANK 0 -4 keeps max - 1, as Sidekiq's
    assert json.loads(rr.zrange("dead", -1, -1)[0])["jid"] == "p"
    await L.redis.aclose()


async def test_a_lost_registration_is_restored(predis, rr):
    L = fake_launcher(predis.url())
    await run_tick(L)
    assert rr.hexists("fastworker:processes", "me:1:aaa")
    assert rr.smembers("fastworker:inprogress-queues:me:1:aaa") == {b"default"}
    await L.redis.aclose()


async def test_no_one_is_judged_dead_right_after_a_redis_outage(predis, rr):
    register_dead(rr, "dead:3:x", {"default": [raw_job("a")]})
    L = fake_launcher(predis.url())
    rec = recoverer(L)
    rec._script = L.redis.register_script(recoverer_mod.scripts.RECOVER)
    rec._errors_seen = 0
    L.health.failed("fetch", ConnectionError("gone"))
    L.health.succeeded()
    assert await rec.tick() == 0  # heartbeats could not be written while Redis was away: wait
    rec._hold_until = 0
    assert await rec.tick() == 1
    await L.redis.aclose()


async def test_own_orphans_are_requeued_and_held_jobs_are_not(predis, rr, monkeypatch):
    monkeypatch.setattr(recoverer_mod, "ORPHAN_AGE", 0.2)
    L = fake_launcher(predis.url())
    await L.broker.register()
    mine = "fastworker:inprogress:me:1:aaa:default"
    orphan, running, in_hand, acking = raw_job("orphan"), raw_job("running"), raw_job("hand"), raw_job("ack")
    rr.lpush(mine, orphan, running, in_hand, acking)
    L.manager.busy["t1"] = SimpleNamespace(env=SimpleNamespace(raw=running))
    L.fetcher.in_hand = [("default", in_hand)]
    monkeypatch.setattr(L.broker, "held", lambda: [acking])
    rec = recoverer(L)
    rec._sweep_until = time.monotonic() + 60  # as after a Redis error
    await run_tick(L, rec)
    assert rr.llen("queue:default") == 0  # seen once: maybe a fetch reply still on its way
    await asyncio.sleep(0.3)
    await run_tick(L, rec)
    assert rr.lrange("queue:default", 0, -1) == [orphan]
    assert sorted(rr.lrange(mine, 0, -1)) == sorted([running, in_hand, acking])
    await L.redis.aclose()


# -------------------------------------------------------------------------------------------------
# Part 2: real processes
# -------------------------------------------------------------------------------------------------


def test_kill_9_during_slow_jobs_then_another_worker_recovers_them(procs, predis, rr, fstub):
    jids = push(rr, jobs(8, seconds=1.5) + jobs(40, seconds=0.01))
    a = procs.worker("-c", "4", name="a")
    wait_until(lambda: fstub.stats()["in_flight"] == 4, 15, what="4 slow jobs running")
    in_flight_at_kill = set(fstub.counts())
    a.signal(signal.SIGKILL)
    a.wait(5)
    t_kill = time.monotonic()
    assert inprogress_total(rr) >= 4  # reliable fetch: the jobs are still in Redis
    b = procs.worker("-c", "4", name="b")
    got = b.wait_event("jobs_recovered", timeout=20)[0]
    assert got["count"] >= 4 and got["identity"] == a.events("startup")[0]["identity"]
    if has_http_server():  # counted once: the recoverer's own count, not that plus a metrics call
        assert f"fastworker_jobs_recovered_total {float(got['count'])}" in scrape_text(b)
    assert time.monotonic() - t_kill < procs.ttl + 6  # within the TTL (+ one tick and the start)
    wait_until(lambda: drained(rr) and sum(fstub.counts().values()) >= len(jids), 30, what="all jobs")
    summary = check_counts(fstub.counts(), jids, may_repeat=in_flight_at_kill)
    # only what was running when the process died, or had just finished with its ack not yet landed
    assert summary["duplicated"] <= 2 * 4
    no_retry_spent(rr, fstub)
    assert not rr.hexists("fastworker:processes", a.events("startup")[0]["identity"])
    assert b.stop() == 0


def test_a_job_that_keeps_killing_its_process_ends_in_the_dead_set(procs, predis, rr, fstub):
    pill = make_job("SlowJob", [60])
    push(rr, [pill])
    for n in range(2):
        w = procs.worker("-c", "1", "--poison-pill-limit", "1", name=f"p{n}")
        wait_until(lambda: fstub.stats()["in_flight"] == 1, 20, what="the pill running")
        w.signal(signal.SIGKILL)
        w.wait(5)
        fstub.stop(signal.SIGKILL)  # forget the orphaned request
        fstub.start()
    last = procs.worker("-c", "1", "--poison-pill-limit", "1", name="last")
    ev = last.wait_event("job_dead", timeout=20)[0]
    assert ev["jid"] == pill["jid"] and "poison pill" in ev["reason"]
    entry = json.loads(rr.zrange("dead", 0, -1)[0])
    assert entry["jid"] == pill["jid"] and entry["error_class"] == "Fastworker::PoisonPill"
    assert rr.llen("queue:default") == 0 and inprogress_total(rr) == 0
    assert fstub.counts()[pill["jid"]] == 2


def test_sidecar_stopped_and_restarted_under_load(procs, predis, rr, fstub):
    jids = push(rr, jobs(300, seconds=0.01))
    w = procs.worker("-c", "4")
    wait_until(lambda: len(fstub.executions()) >= 50, 20, what="50 jobs")
    fstub.stop()  # graceful: running jobs finish, new connections are refused
    w.wait_event("breaker_open", timeout=10)
    time.sleep(1.0)
    if has_http_server():
        assert readyz(w) == 503
    backlog = rr.llen("queue:default")
    time.sleep(1.0)
    assert rr.llen("queue:default") == backlog  # circuit open: nothing fetched, the jobs wait in Redis
    fstub.start()
    w.wait_event("breaker_closed", timeout=15)
    wait_until(lambda: drained(rr), 30, what="the backlog")
    events = [e["event"] for e in w.events() if e["event"].startswith("breaker_")]
    assert events[:3] == ["breaker_open", "breaker_half_open", "breaker_closed"]
    check_counts(fstub.counts(), jids)  # a graceful sidecar stop duplicates nothing
    no_retry_spent(rr, fstub)
    if has_http_server():
        wait_until(lambda: readyz(w) == 200, 5, what="ready again")


def test_sidecar_killed_under_load(procs, predis, rr, fstub):
    jids = push(rr, jobs(200, seconds=0.05))
    w = procs.worker("-c", "4")
    wait_until(lambda: len(fstub.executions()) >= 30, 20, what="30 jobs")
    fstub.stop(signal.SIGKILL)
    started_before_kill = set(fstub.counts())
    w.wait_event("breaker_open", timeout=10)
    fstub.start()
    wait_until(lambda: drained(rr), 40, what="the backlog")
    summary = check_counts(fstub.counts(), jids, may_repeat=started_before_kill)
    assert summary["duplicated"] <= 4  # at most the requests the sidecar died in the middle of
    no_retry_spent(rr, fstub)


def test_sigstopped_sidecar_is_detected_and_slow_jobs_are_not(procs, predis, rr, fstub):
    slow = make_job("SlowJob", [4.0])
    jids = push(rr, [slow] + jobs(60, seconds=0.2))
    w = procs.worker("-c", "4", "--sidecar-connect-timeout", "0.5")
    wait_until(lambda: len(fstub.executions()) >= 12, 20, what="some jobs")
    fstub.pause()
    hung = w.wait_event("sidecar_hung", timeout=10)[0]
    assert 1 <= hung["requeued"] <= 4
    assert w.events("breaker_open")[0]["reason"].startswith("sidecar hung")
    if has_http_server():
        assert readyz(w) == 503
    time.sleep(1.0)
    fstub.resume()
    w.wait_event("breaker_closed", timeout=15)
    wait_until(lambda: drained(rr), 60, what="the backlog")
    # a stopped sidecar may still run what it had received once it resumes: at least once
    check_counts(fstub.counts(), jids, may_repeat=set(hung["jids"]))
    no_retry_spent(rr, fstub)
    # the 4 s job ran with a healthy sidecar beside it: never taken for a hang
    assert w.events("sidecar_hung")[0] == hung and len(w.events("sidecar_hung")) == 1


def test_redis_restarted_under_load(procs, predis, rr, fstub):
    jids = push(rr, jobs(400, seconds=0.01))
    w = procs.worker("-c", "4")
    wait_until(lambda: len(fstub.executions()) >= 60, 20, what="60 jobs")
    predis.stop()
    w.wait_event("redis_connection_lost", timeout=10)
    if has_http_server():
        wait_until(lambda: readyz(w) == 503, 5, what="not ready while Redis is away")
    time.sleep(1.5)
    assert w.proc.poll() is None  # no crash
    predis.start()
    w.wait_event("redis_connection_back", timeout=20)
    rr2 = predis.client()
    wait_until(lambda: drained(rr2), 60, what="the rest of the jobs")
    check_counts(fstub.counts(), jids)  # no acked job ran again, none lost
    no_retry_spent(rr2, fstub)
    if has_http_server():
        wait_until(lambda: readyz(w) == 200, 5, what="ready again")
    assert w.stop() == 0
    rr2.close()


def test_term_under_load_requeues_what_is_still_running(procs, predis, rr, fstub):
    long = [make_job("SlowJob", [30]) for _ in range(2)]
    push(rr, long)
    jids = push(rr, jobs(200, seconds=0.02))
    w = procs.worker("-c", "4", "--timeout", "2")
    wait_until(lambda: len(fstub.executions()) >= 20, 20, what="some jobs")
    originals = {json.dumps(j).encode() for j in long}
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    if has_http_server():
        # readiness is off from the start of the drain (a request racing the signal itself may
        # still see 200, so ask until the worker has taken the signal, within a fraction of a second)
        assert wait_until(lambda: readyz(w, timeout=1) in (503, None), 1.0, 0.05, "readiness off")
    assert w.wait(15) == 0
    assert time.monotonic() - t0 < 2 + 4
    assert originals <= set(queue_raws(rr))  # the long jobs are back, byte-identical
    assert inprogress_total(rr) == 0 and rr.zcard("retry") == 0
    events = [e["event"] for e in w.events()]
    assert events.index("shutdown_begin") < events.index("shutdown_hard") < events.index("shutdown_complete")
    # a new worker finishes the rest: nothing lost
    w2 = procs.worker("-c", "8")
    wait_until(lambda: all(fstub.counts()[j] for j in jids), 30, what="all but the long jobs")
    check_counts(fstub.counts(), jids + [j["jid"] for j in long], may_repeat={j["jid"] for j in long})
    w2.signal(signal.SIGKILL)


def test_second_term_shortens_the_wait(procs, predis, rr, fstub):
    push(rr, [make_job("SlowJob", [30]) for _ in range(2)])
    w = procs.worker("-c", "2", "--timeout", "25")
    wait_until(lambda: fstub.stats()["in_flight"] == 2, 15, what="2 long jobs")
    w.signal(signal.SIGTERM)
    w.wait_event("shutdown_begin", timeout=5)
    time.sleep(0.5)
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert time.monotonic() - t0 < 3
    assert w.events("shutdown_hurry")
    assert rr.llen("queue:default") == 2 and inprogress_total(rr) == 0


@pytest.mark.parametrize("n", [2, 3])
def test_many_workers_run_each_job_exactly_once(procs, predis, rr, fstub, n):
    ws = [procs.worker("-c", "3", name=f"w{i}") for i in range(n)]
    for w in ws:
        w.wait_event("startup", timeout=15)
    jids = push(rr, jobs(100, klass="HardJob") + jobs(200, seconds=0.03))
    wait_until(lambda: drained(rr), 40, what="all jobs")
    wait_until(lambda: sum(fstub.counts().values()) >= len(jids), 10, what="all executions")
    check_counts(fstub.counts(), jids)  # exactly once
    busy = [len([e for e in w.events("job_done")]) for w in ws]
    assert all(b > 0 for b in busy), busy  # every worker took part
    for w in ws:
        assert w.stop() == 0


def test_three_workers_one_killed_at_least_once(procs, predis, rr, fstub):
    ws = [procs.worker("-c", "3", name=f"w{i}") for i in range(3)]
    for w in ws:
        w.wait_event("startup", timeout=15)
    jids = push(rr, jobs(300, seconds=0.1))
    wait_until(lambda: len(fstub.executions()) >= 60, 20, what="60 jobs")
    ws[0].signal(signal.SIGKILL)
    ws[0].wait(5)
    before = set(fstub.counts())
    recovered = wait_until(lambda: ws[1].events("jobs_recovered") + ws[2].events("jobs_recovered"), 20,
                           what="a survivor recovers")
    assert len(recovered) == 1  # claimed once
    wait_until(lambda: drained(rr), 40, what="all jobs")
    summary = check_counts(fstub.counts(), jids, may_repeat=before)
    assert summary["duplicated"] <= 2 * 3  # running at the kill, or done with the ack not yet landed
    no_retry_spent(rr, fstub)


def test_a_redis_outage_longer_than_the_ttl_makes_no_one_look_dead(procs, predis, rr, fstub):
    ws = [procs.worker("-c", "3", name=f"w{i}") for i in range(2)]
    for w in ws:
        w.wait_event("startup", timeout=15)
    jids = push(rr, jobs(300, seconds=0.03))
    wait_until(lambda: len(fstub.executions()) >= 30, 20, what="30 jobs")
    predis.stop()
    time.sleep(procs.ttl + 3)  # every heartbeat key expires meanwhile
    predis.start()
    rr2 = predis.client()
    wait_until(lambda: drained(rr2), 60, what="all jobs")
    # the recoverers waited for live processes to beat again before judging anyone dead
    assert [e for w in ws for e in w.events("jobs_recovered")] == []
    assert [e for w in ws for e in w.events("registration_restored")] == []
    check_counts(fstub.counts(), jids)
    no_retry_spent(rr2, fstub)
    rr2.close()
