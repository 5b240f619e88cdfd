"""A sidecar in cluster mode (one Puma worker per core): the worker's requests spread over the Puma
workers, and none is refused while the other idles. The demo Rails app's PidWorker counts, per
Puma worker process, the jobs it ran; Ruby's Sidekiq client enqueues."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import REDIS_BASE, TEST_DB
from tests.helpers import rails
from tests.helpers.procs import ruby_json, wait_until

URL = f"{REDIS_BASE}/{TEST_DB}"
pytestmark = [pytest.mark.rails, pytest.mark.ruby]


@pytest.fixture(scope="module")
def cluster() -> Iterator[rails.Sidecar]:
    yield from rails.serve(URL, threads=5, workers=2)


def test_jobs_spread_over_the_puma_workers_with_none_refused(redis_url, r, worker, cluster):
    ruby_json(redis_url, 'puts 400.times.map { Sidekiq::Client.push("class" => "PidWorker", "args" => ["spread"]) }.to_json')
    w = worker("-c", "10", sidecar_url=cluster.url)
    wait_until(lambda: int(r.get("stat:processed") or 0) >= 400, 60, what="400 jobs")
    per_pid = {pid.decode(): int(n) for pid, n in r.hgetall("spread").items()}
    assert len(per_pid) == 2 and sum(per_pid.values()) == 400, per_pid
    assert min(per_pid.values()) >= 100, per_pid  # both Puma workers took a fair share
    assert w.events("job_requeued") == []  # no 503 at capacity from one worker while the other idled


def test_slow_jobs_use_every_slot_of_both_puma_workers(redis_url, r, worker, cluster):
    ruby_json(redis_url, 'puts 30.times.map { Sidekiq::Client.push("class" => "PidWorker", "args" => ["slow", 0.5]) }.to_json')
    w = worker("-c", "10", sidecar_url=cluster.url)
    wait_until(lambda: int(r.get("stat:processed") or 0) >= 30, 30, what="30 slow jobs")
    per_pid = {pid.decode(): int(n) for pid, n in r.hgetall("slow").items()}
    assert len(per_pid) == 2 and min(per_pid.values()) >= 10, per_pid
    assert w.events("job_requeued") == []


def test_exhaustion_hooks_reach_the_puma_worker_that_holds_the_live_exception(redis_url, r, worker, cluster):
    """Each exhausted job's hooks go to the Puma worker that ran it: both hooks get its own
    exception object (its attribute and cause), whichever worker that was."""
    db = rails.clean_db()
    try:
        tenants = [f"t{i}" for i in range(12)]
        rails.rails_json(f"puts {tenants!r}.map {{ |t| TenantWorker.perform_async(t) }}.to_json", URL)
        worker("-c", "10", sidecar_url=cluster.url)
        wait_until(lambda: db.execute("SELECT COUNT(*) FROM job_events WHERE event = 'death'").fetchone()[0] == 12,
                   30, 0.1, "12 death handlers")
        rows = db.execute("SELECT event, details FROM job_events WHERE event IN ('exhausted', 'death')").fetchall()
        seen = [json.loads(row["details"]) for row in rows]
        assert len(seen) == 24 and sorted(str(d["tenant"]) for d in seen) == sorted(tenants * 2)
        assert {d["cause"] for d in seen} == {"billing said no"}
    finally:
        db.close()


def test_every_puma_worker_reads_the_workers_settings_from_sidekiqs_options(redis_url, r, worker):
    """Issue 11, point 6, in a cluster: /lifecycle reaches one Puma worker, and the worker gives
    the others its settings too ("settings"), so the app's Ruby code reads them in every one.
    Its own sidecar: the module's one still counts the other tests' workers as live for a while,
    and the largest settings of the live workers win."""
    with rails.start_sidecar(URL, threads=5, workers=2) as cluster:
        w = worker("-c", "6", "--max-retries", "7", "-t", "9", sidecar_url=cluster.url)
        w.wait_event("startup")
        keys = [f"options:seen:{i}" for i in range(60)]
        ruby_json(redis_url, f"puts {keys!r}.map {{ |k| Sidekiq::Client.push('class' => 'SettingsWorker', 'args' => [k]) }}.to_json")
        wait_until(lambda: all(r.exists(k) for k in keys), 30, 0.1, "60 SettingsWorker jobs")
        seen = [json.loads(r.get(k)) for k in keys]
        assert len({s["pid"] for s in seen}) == 2, "the jobs ran in one Puma worker only"
        assert {(s["concurrency"], s["max_retries"], s["timeout"]) for s in seen} == {(6, 7, 9)}
        assert {s["redis_pool_size"] for s in seen} == {6 + 5}, "each Puma worker's 6.4.1 pool follows -c"
        assert w.stop() == 0


def test_workers_sharing_a_full_sidecar_back_off_without_opening_the_breaker(redis_url, r, worker, cluster):
    """Two workers of 10 before one sidecar of 10 slots (compose's `--scale worker=N` before one
    sidecar): the sidecar answers 503 at capacity to the surplus. That is backpressure from a live
    sidecar, not an outage: each refused job goes back to its queue, its token waits a moment, and
    no worker's circuit breaker opens (an open breaker stops fetching and says the sidecar is down)."""
    workers = [worker("-c", "10", sidecar_url=cluster.url) for _ in range(2)]
    # both fetching before the jobs come: one worker alone never overfills the sidecar
    wait_until(lambda: r.scard("processes") == 2, 30, what="two process records")
    ruby_json(redis_url, 'puts 80.times.map { Sidekiq::Client.push("class" => "PidWorker", "args" => ["full", 0.2]) }.to_json')
    wait_until(lambda: int(r.get("stat:processed") or 0) >= 80, 60, what="80 jobs")
    ran = r.hgetall("full")
    assert sum(int(n) for n in ran.values()) == 80, ran
    requeued = [e for w in workers for e in w.events("job_requeued")]
    assert requeued, "the sidecar was never full: the test did not test anything"
    assert [e for w in workers for e in w.events("breaker_open")] == []
    assert {e["reason"] for e in requeued} == {"sidecar at capacity"}, requeued
