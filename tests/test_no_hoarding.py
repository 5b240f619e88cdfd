"""No hoarding: a job is fetched only when a token is free for it (Sidekiq fetches only for an idle
thread). Ruby's Sidekiq 6.4.1 client enqueues; ``fastworker`` runs the jobs against the STUB sidecar."""

from __future__ import annotations

import json

import redis

from tests.helpers.procs import ruby_json, wait_until


def in_progress(r: redis.Redis) -> int:
    return sum(r.llen(k) for k in r.keys("fastworker:inprogress:*"))


def test_a_busy_process_leaves_queued_jobs_in_redis_for_another(redis_url, r, stub, worker):
    ruby_json(redis_url, 'puts 10.times.map { Sidekiq::Client.push("class" => "SlowJob", "args" => [3]) }.to_json')
    worker("-c", "2", name="busy")
    wait_until(lambda: stub.stats()["in_flight"] == 2, 10, what="two slow jobs running")
    # nothing beyond its two tokens left the queue: the other 8 wait in Redis, not in this process
    assert r.llen("queue:default") == 8
    assert in_progress(r) == 2
    worker("-c", "4", name="idle")
    # another process runs them at once
    wait_until(lambda: stub.stats()["in_flight"] == 6, 2.0, what="the second process running four more")
    assert r.llen("queue:default") == 4


def test_a_new_critical_job_is_never_stuck_behind_fetched_default_jobs(redis_url, r, stub, worker):
    ruby_json(redis_url, 'puts 6.times.map { Sidekiq::Client.push("class" => "SlowJob", "args" => [1]) }.to_json')
    worker("--queues", "critical,default", "-c", "2")
    wait_until(lambda: stub.stats()["in_flight"] == 2, 10, what="two default jobs running")
    urgent = ruby_json(redis_url, 'puts [Sidekiq::Client.push("class" => "HardJob", "queue" => "critical", "args" => [])].to_json')[0]
    wait_until(lambda: int(r.get("stat:processed") or 0) >= 7, 20, what="all seven jobs")
    started = [json.loads(rec["raw"]) for rec in sorted(stub.stats()["records"], key=lambda rec: rec["t"])]
    # the first token to come free takes the critical job, before any default job still queued
    assert [j["jid"] for j in started].index(urgent) == 2
    assert [j["queue"] for j in started[3:]] == ["default"] * 4
