"""The worker end to end: Ruby's Sidekiq 6.4.1 client enqueues, ``fastworker`` runs the jobs against
the STUB sidecar (tests/helpers/stub_sidecar.py), and Redis and Sidekiq's API show the result."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.helpers.procs import ruby, ruby_json, wait_until


def push(redis_url: str, ruby_code: str) -> list[str]:
    """Enqueue with the real Sidekiq client; the snippet prints the jids as JSON."""
    return ruby_json(redis_url, ruby_code)


def processed(r: redis.Redis) -> int:
    return int(r.get("stat:processed") or 0)


def test_every_job_runs_exactly_once_with_its_original_bytes(redis_url, r, stub, worker):
    jids = push(redis_url, """
      jids = 200.times.map { |i| Sidekiq::Client.push("class" => "HardJob", "args" => [i, "x", {"k" => "é"}]) }
      puts jids.to_json""")
    originals = {json.loads(raw)["jid"]: raw.decode() for raw in r.lrange("queue:default", 0, -1)}
    assert sorted(originals) == sorted(jids)
    w = worker("-c", "10")
    wait_until(lambda: processed(r) >= 200, 20, what="200 jobs processed")
    records = stub.stats()["records"]
    assert sorted(rec["jid"] for rec in records) == sorted(jids)  # each exactly once
    for rec in records:
        assert rec["raw"] == originals[rec["jid"]]  # byte-identical
        assert rec["key"] == rec["jid"]  # Idempotency-Key header
    assert r.llen("queue:default") == 0
    assert w.stop() == 0
    assert r.keys("fastworker:inprogress:*") == []


def test_fifo_within_a_queue(redis_url, r, stub, worker):
    jids = push(redis_url, """
      puts 30.times.map { |i| Sidekiq::Client.push("class" => "HardJob", "args" => [i]) }.to_json""")
    worker("-c", "1")
    wait_until(lambda: processed(r) >= 30, 20, what="30 jobs")
    assert [rec["jid"] for rec in stub.stats()["records"]] == jids


def test_strict_order_across_queues(redis_url, r, stub, worker):
    push(redis_url, """
      d = 40.times.map { |i| Sidekiq::Client.push("class" => "HardJob", "queue" => "default", "args" => [i]) }
      c = 40.times.map { |i| Sidekiq::Client.push("class" => "HardJob", "queue" => "critical", "args" => [i]) }
      puts (c + d).to_json""")
    worker("--queues", "critical,default", "-c", "3")
    wait_until(lambda: processed(r) >= 80, 20, what="80 jobs")
    queues = [json.loads(rec["raw"])["queue"] for rec in stub.stats()["records"]]
    assert queues == ["critical"] * 40 + ["default"] * 40


def test_repeated_q_flags_are_strict_in_order(redis_url, r, stub, worker):
    push(redis_url, """
      a = 10.times.map { Sidekiq::Client.push("class" => "HardJob", "queue" => "low", "args" => []) }
      b = 10.times.map { Sidekiq::Client.push("class" => "HardJob", "queue" => "high", "args" => []) }
      puts (a + b).to_json""")
    worker("-q", "high", "-q", "low", "-c", "1")
    wait_until(lambda: processed(r) >= 20, 20, what="20 jobs")
    queues = [json.loads(rec["raw"])["queue"] for rec in stub.stats()["records"]]
    assert queues == ["high"] * 10 + ["low"] * 10


def test_weighted_queues_share_by_weight_and_never_starve(redis_url, r, stub, worker):
    # both queues stay full for the first 1,200 jobs: critical would need 3,000 x 4/3
    pipe = r.pipeline(transaction=False)
    for q in ("critical", "default"):
        for i in range(2500):
            pipe.lpush(f"queue:{q}", json.dumps({"class": "HardJob", "args": [i], "queue": q,
                                                 "jid": f"{q[0]}{i:023x}", "retry": True}))
    pipe.execute()
    worker("--queues", "critical:3,default:1", "-c", "4")
    wait_until(lambda: processed(r) >= 1200, 60, what="1200 jobs")
    records = stub.stats()["records"][:1200]
    share = sum(1 for rec in records if json.loads(rec["raw"])["queue"] == "critical") / len(records)
    assert 0.70 <= share <= 0.80, share  # 75 % expected; binomial sd over 1200 draws is 1.25 %
    assert 1 - share >= 0.15  # the weight-1 queue is never starved


def test_peak_concurrency_at_the_sidecar_never_exceeds_c(redis_url, r, stub, worker):
    push(redis_url, """
      puts 40.times.map { Sidekiq::Client.push("class" => "SlowJob", "args" => [0.15]) }.to_json""")
    worker("-c", "5")
    wait_until(lambda: processed(r) >= 40, 30, what="40 slow jobs")
    stats = stub.stats()
    assert stats["count"] == 40
    assert stats["peak"] == 5  # all tokens were used, and never more


@pytest.mark.parametrize("bad, reason", [
    (b"{not json", "invalid JSON"),
    (b"[1,2]", "not a JSON object"),
    (b'{"args":[]}', "class"),
    (b'{"class":"HardJob","args":"x"}', "args"),
])
def test_malformed_payload_goes_to_dead_with_reason_and_worker_goes_on(redis_url, r, stub, worker, bad, reason):
    r.lpush("queue:default", bad)
    jids = push(redis_url, 'puts 3.times.map { Sidekiq::Client.push("class" => "HardJob", "args" => [1]) }.to_json')
    w = worker("-c", "2")
    wait_until(lambda: processed(r) >= 3, 20, what="the good jobs")
    [member] = r.zrange("dead", 0, -1)
    dead = w.wait_event("job_dead")
    assert reason in dead[0]["reason"]
    assert sorted(rec["jid"] for rec in stub.stats()["records"]) == sorted(jids)
    assert w.proc.poll() is None  # still running
    # Sidekiq's own API lists the entry: the raw string (as Sidekiq stores it), or for JSON that
    # is not an object (which that API cannot list) a record carrying the raw text and the reason
    listed = ruby_json(redis_url, """
      e = Sidekiq::DeadSet.new.to_a
      puts({size: e.size, args: e.first.args, err: e.first["error_message"]}.to_json)""")
    assert listed["size"] == 1
    if bad.startswith(b"["):
        assert listed["args"] == [bad.decode()] and reason in listed["err"]
    else:
        assert member == bad
        assert listed["args"] == ([bad.decode()] if bad == b"{not json" else json.loads(bad)["args"])


def test_term_mid_job_requeues_byte_identical_at_the_head(redis_url, r, stub, worker):
    push(redis_url, 'puts [Sidekiq::Client.push("class" => "SlowJob", "args" => [30])].to_json')
    original = r.lindex("queue:default", -1)
    w = worker("-c", "1", "--timeout", "1")
    wait_until(lambda: stub.stats()["in_flight"] == 1, 10, what="the slow job to start")
    push(redis_url, 'puts [Sidekiq::Client.push("class" => "HardJob", "args" => [2])].to_json')
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0
    assert time.monotonic() - t0 < 1 + 4
    assert r.lindex("queue:default", -1) == original  # next one popped, same bytes
    assert r.llen("queue:default") == 2  # the other job is back too, nothing lost
    assert r.zcard("retry") == 0
    assert r.keys("fastworker:inprogress:*") == []
    assert w.events("shutdown_complete")


def test_kill_9_mid_job_leaves_the_job_in_redis(redis_url, r, stub, worker):
    push(redis_url, 'puts [Sidekiq::Client.push("class" => "SlowJob", "args" => [30])].to_json')
    original = r.lindex("queue:default", -1)
    w = worker("-c", "1")
    wait_until(lambda: stub.stats()["in_flight"] == 1, 10, what="the slow job to start")
    w.signal(signal.SIGKILL)
    w.wait(5)
    lists = r.keys("fastworker:inprogress:*")
    assert len(lists) == 1
    assert r.lrange(lists[0], 0, -1) == [original]


def test_failure_writes_a_sidekiq_retry_entry(redis_url, r, stub, worker):
    jid = push(redis_url, 'puts [Sidekiq::Client.push("class" => "FailJob", "args" => ["kaboom"])].to_json')[0]
    worker("-c", "1")
    wait_until(lambda: r.zcard("retry") == 1, 10, what="the retry entry")
    entry = ruby_json(redis_url, """
      e = Sidekiq::RetrySet.new.first
      puts({jid: e.jid, count: e.item["retry_count"], cls: e.item["error_class"], msg: e.item["error_message"],
            failed_at: e.item["failed_at"].class.name, delay: e.at.to_f - e.item["failed_at"],
            queue: e.queue}.to_json)""")
    assert entry["jid"] == jid and entry["count"] == 0 and entry["cls"] == "RuntimeError"
    assert entry["msg"] == "kaboom" and entry["failed_at"] == "Float" and entry["queue"] == "default"
    assert 15 <= entry["delay"] < 25


def test_sidecar_outage_requeues_without_spending_a_retry(redis_url, r, stub, worker):
    stub.mode(503)
    jid = push(redis_url, 'puts [Sidekiq::Client.push("class" => "HardJob", "args" => [1])].to_json')[0]
    w = worker("-c", "1", "--breaker-cooldown", "0.5")
    w.wait_event("job_requeued")
    raw = wait_until(lambda: r.lindex("queue:default", -1), 5, what="the job back in its queue")
    assert "retry_count" not in json.loads(raw)
    stub.mode(None)
    wait_until(lambda: processed(r) >= 1, 20, what="the job to run once the sidecar is back")
    assert [rec["jid"] for rec in stub.stats()["records"]] == [jid]
    assert r.zcard("retry") == 0 and r.zcard("dead") == 0


def test_stats_are_counted_as_sidekiq_counts_them(redis_url, r, stub, worker):
    push(redis_url, """
      5.times { Sidekiq::Client.push("class" => "HardJob", "args" => []) }
      2.times { Sidekiq::Client.push("class" => "FailJob", "args" => ["x"]) }
      puts [].to_json""")
    worker("-c", "3")
    wait_until(lambda: processed(r) >= 7 and int(r.get("stat:failed") or 0) >= 2, 10, what="stats")
    stats = ruby_json(redis_url, """
      s = Sidekiq::Stats.new
      h = Sidekiq::Stats::History.new(1)
      day = Time.now.utc.strftime("%Y-%m-%d")
      puts({processed: s.processed, failed: s.failed, hp: h.processed[day], hf: h.failed[day],
            ttl: Sidekiq.redis { |c| c.ttl("stat:processed:#{day}") }}.to_json)""")
    assert stats["processed"] == 7 and stats["failed"] == 2
    assert stats["hp"] == 7 and stats["hf"] == 2
    assert stats["ttl"] > 4 * 365 * 86400


def test_a_pushed_job_is_picked_up_at_once_by_an_idle_worker(redis_url, r, stub, worker):
    w = worker("-c", "2")
    startup = w.wait_event("startup")[0]
    # what the imports and the setup made is frozen before the first job: a full collection that
    # walked it (~30 ms) would stall every job in flight (launcher.settle_heap)
    assert startup["frozen_objects"] > 10_000
    time.sleep(1.0)  # idle: every queue empty, wakers blocked
    lags = []
    for i in range(5):
        t0 = time.time()
        r.lpush("queue:default", json.dumps({"class": "HardJob", "args": [i], "jid": f"{i:024x}", "queue": "default"}))
        wait_until(lambda: len(stub.stats()["records"]) > i, 5, 0.002, "pickup")
        lags.append(stub.stats()["records"][i]["t"] - t0)
    # no polling interval in the way (Sidekiq's BRPOP is immediate too); figures are in bench/
    assert max(lags) < 0.25, lags


@contextlib.contextmanager
def _worker_on_private_redis(tmp_path: Any, stub: Any) -> Iterator[tuple[redis.Redis, Any]]:
    """A started worker (two queues, -c 5) on a redis-server of its own: every command Redis
    counts is this worker's (or the test's)."""
    from tests.helpers.faults import PrivateRedis
    from tests.helpers.procs import Worker
    srv = PrivateRedis(tmp_path / "redis")
    r = srv.client()
    try:
        w = Worker(srv.url(), stub.url, "-q", "critical,default", "-c", "5", log_path=tmp_path / "w.log")
        try:
            w.wait_event("startup")
            yield r, w
        finally:
            w.kill()
    finally:
        r.close()
        srv.stop(signal.SIGKILL)


def test_an_idle_worker_sends_few_redis_commands(tmp_path, stub):
    with _worker_on_private_redis(tmp_path, stub) as (r, _):
        time.sleep(3)
        before = int(r.info("stats")["total_commands_processed"])
        time.sleep(5)
        after = int(r.info("stats")["total_commands_processed"])
        per_s = (after - before - 1) / 5
        # heartbeat 8 commands / 5 s, scheduler 2 ZRANGE / s (due jobs start within 1 s), a
        # blocking waker per queue / 5 s: ~4.5/s. Idle Sidekiq 6.4 sends more (10 processors
        # each BRPOP every 2 s, plus heartbeat and poller); busy polling would send hundreds.
        assert per_s <= 6, per_s


def test_a_trickle_of_jobs_costs_one_blocking_take_each_and_a_burst_goes_back_to_batch_fetches(tmp_path, stub):
    """An idle worker woken by one job does not follow it with a fetch that finds nothing: the
    waker's BLMOVE takes the next one (as Sidekiq's BRPOP would). A burst is fetched in batches."""
    def job(i: int) -> str:
        return json.dumps({"class": "HardJob", "args": [i], "jid": f"{i:024x}", "queue": "default"})

    with _worker_on_private_redis(tmp_path, stub) as (r, _):
        def calls(cmd: str) -> int:
            return int(r.info("commandstats").get(f"cmdstat_{cmd}", {}).get("calls", 0))

        time.sleep(1.0)
        lmoves = calls("lmove")  # the fetch script moves jobs with LMOVE, one per queue it tries
        for i in range(10):
            r.lpush("queue:default", job(i))
            wait_until(lambda: processed(r) >= i + 1, 5, 0.002, f"job {i}")
            time.sleep(0.05)
        assert calls("lmove") - lmoves <= 2, "a fetch followed each lone job"
        blmoves = calls("blmove")
        r.lpush("queue:default", *[job(100 + i) for i in range(60)])
        wait_until(lambda: processed(r) >= 70, 10, 0.005, "the burst")
        # one at a time would be 60; each moment the burst leaves the worker idle costs one per queue
        assert calls("blmove") - blmoves <= 20, "the burst was taken one BLMOVE at a time"
        assert sorted(rec["jid"] for rec in stub.stats()["records"]) == sorted(
            [f"{i:024x}" for i in range(10)] + [f"{100 + i:024x}" for i in range(60)])


def test_uses_uvloop_and_the_compiled_core(redis_url, stub, worker):
    w = worker("-c", "1")
    start = w.wait_event("startup")[0]
    assert start["loop"].startswith("uvloop")
    import os
    assert start["core"] == ("py" if os.environ.get("FASTWORKER_NO_EXTENSIONS") else "c")


def test_hiredis_parser_is_in_use():
    import asyncio

    from fastworker.redis_url import connect

    async def go():
        client = connect("redis://127.0.0.1:6379/15", max_connections=2)
        conn = await client.connection_pool.get_connection()
        try:
            return type(conn._parser).__name__
        finally:
            await client.connection_pool.release(conn)
            await client.aclose()

    assert asyncio.run(go()) == "_AsyncHiredisParser"


def test_tstp_quiets_in_flight_jobs_finish_and_new_ones_wait(redis_url, r, stub, worker):
    push(redis_url, 'puts [Sidekiq::Client.push("class" => "SlowJob", "args" => [1])].to_json')
    w = worker("-c", "2")
    wait_until(lambda: stub.stats()["in_flight"] == 1, 10, what="the slow job to start")
    w.signal(signal.SIGTSTP)
    w.wait_event("quiet")
    later = push(redis_url, 'puts [Sidekiq::Client.push("class" => "HardJob", "args" => [1])].to_json')[0]
    wait_until(lambda: processed(r) == 1, 10, what="the in-flight job to finish")
    time.sleep(1.0)
    assert [json.loads(x)["jid"] for x in r.lrange("queue:default", 0, -1)] == [later]  # not fetched
    assert stub.stats()["count"] == 1 and w.proc.poll() is None  # still up, as Sidekiq stays up
    assert w.stop() == 0
    assert r.llen("queue:default") == 1


def test_a_job_past_job_timeout_spends_a_retry_instead_of_looping(redis_url, r, stub, worker):
    jid = push(redis_url, 'puts [Sidekiq::Client.push("class" => "SlowJob", "args" => [5])].to_json')[0]
    worker("-c", "1", "--job-timeout", "0.5")
    member = wait_until(lambda: r.zrange("retry", 0, -1), 10, what="the retry entry")[0]
    entry = json.loads(member)
    assert entry["jid"] == jid and entry["error_class"] == "Fastworker::JobTimeout"
    assert entry["retry_count"] == 0 and "--job-timeout" in entry["error_message"]
    assert r.llen("queue:default") == 0  # not requeued for free
