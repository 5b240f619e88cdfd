"""The sidecar is a Sidekiq server inside (issue 10), with the real sidecar and the demo app:

- a job the worker gives back at its --timeout stops running in the sidecar (Sidekiq::Shutdown
  in its thread), so after a restart it runs to completion exactly once;
- the app's ``config.on`` lifecycle blocks fire: a sidekiq-cron-like thread started on
  ``:startup`` enqueues jobs that run; ``:heartbeat``, ``:quiet`` on TSTP, ``:shutdown`` on TERM.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_BASE, TEST_DB
from tests.helpers import rails
from tests.helpers.procs import ruby, ruby_json, wait_until

pytestmark = pytest.mark.skipif(not rails.ruby_available(), reason="needs Debian's ruby, rails, sidekiq")

URL = f"{REDIS_BASE}/{TEST_DB}"


@pytest.fixture
def db(redis_url) -> Iterator[sqlite3.Connection]:
    rails.prepare_db(URL)
    conn = rails.clean_db()
    yield conn
    conn.close()


def runs(db: sqlite3.Connection, kind: str) -> list[dict]:
    rows = [dict(r) for r in db.execute("SELECT * FROM job_runs WHERE kind = ? ORDER BY id", (kind,))]
    for r in rows:
        r["args"] = json.loads(r.pop("args_json") or "null")
    return rows


def test_a_job_cut_off_by_term_stops_in_the_sidecar_and_runs_exactly_once_after_restart(db, worker, r):
    with rails.start_sidecar(URL, threads=2) as sidecar:
        # the sidecar's drain timeout follows the worker's --timeout once the worker says hello
        w = worker("-q", "default", "-t", "3", sidecar_url=sidecar.url, name="first")
        wait_until(lambda: sidecar.health()[1].get("drain_timeout") == 3.0, 20, 0.1, "drain timeout 3")
        ruby(URL, 'Sidekiq::Client.push("class" => "SlowWorker", "args" => [6])')
        wait_until(lambda: sidecar.health()[1].get("in_flight") == 1, 20, 0.05, "the slow job running")
        started = time.monotonic()
        w.signal(signal.SIGTERM)
        assert w.wait(20) == 0
        assert r.llen("queue:default") == 1  # given back, byte-identical
        # it no longer runs in the sidecar: it never finishes there
        time.sleep(max(0.0, started + 7 - time.monotonic()))
        assert runs(db, "slow") == []
        assert sidecar.health()[1]["in_flight"] == 0
        assert [e["stopped"] for e in w.events("shutdown_cancelled")] == [1]
        # Sidekiq::Shutdown passes through Processor#stats: counted processed and failed
        assert (int(r.get("stat:processed") or 0), int(r.get("stat:failed") or 0)) == (1, 1)
        # after a restart it runs to completion, exactly once
        w2 = worker("-q", "default", "-t", "3", sidecar_url=sidecar.url, name="second")
        wait_until(lambda: len(runs(db, "slow")) == 1, 30, 0.1, "the slow job done")
        time.sleep(1.0)
        assert len(runs(db, "slow")) == 1 and r.llen("queue:default") == 0
        assert w2.stop() == 0
        assert (int(r.get("stat:processed") or 0), int(r.get("stat:failed") or 0)) == (2, 1)


def _lifecycle(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def test_lifecycle_blocks_fire_and_a_startup_scheduler_thread_enqueues_jobs_that_run(db, worker, r, tmp_path):
    log = tmp_path / "lifecycle.log"
    env = {"DEMO_LIFECYCLE_LOG": str(log), "DEMO_CRON_EVERY": "0.3"}
    with rails.start_sidecar(URL, threads=2, env=env) as sidecar:
        time.sleep(0.5)
        assert _lifecycle(log) == []  # booted, but no worker connected yet: no :startup
        w = worker("-q", "default", "--heartbeat-interval", "1", sidecar_url=sidecar.url)
        wait_until(lambda: "startup" in _lifecycle(log), 20, 0.05, ":startup")
        # the scheduler thread started on :startup enqueues with Sidekiq's client; the jobs run
        wait_until(lambda: len(runs(db, "plain")) >= 3, 20, 0.1, "cron jobs run")
        assert [x["args"][0] for x in runs(db, "plain")] == ["cron"] * len(runs(db, "plain"))
        wait_until(lambda: "heartbeat" in _lifecycle(log), 10, 0.05, ":heartbeat")
        assert "quiet" not in _lifecycle(log)
        w.signal(signal.SIGTSTP)
        wait_until(lambda: "quiet" in _lifecycle(log), 10, 0.05, ":quiet on TSTP")
        assert "shutdown" not in _lifecycle(log)
        w.signal(signal.SIGTERM)
        assert w.wait(20) == 0
        wait_until(lambda: "shutdown" in _lifecycle(log), 10, 0.05, ":shutdown on TERM")
        assert _lifecycle(log) == ["startup", "heartbeat", "quiet", "shutdown"]
        # the scheduler stopped on :shutdown: nothing more is enqueued
        queued = r.llen("queue:default")
        time.sleep(1.0)
        assert r.llen("queue:default") == queued


def test_the_worker_tells_its_lifecycle_and_cancels_before_it_requeues(worker, stub, r):
    """Against the stub: startup before any job, quiet and shutdown at TERM, then at --timeout
    the unfinished job is cancelled in the sidecar before it goes back to its queue."""
    w = worker("-q", "default", "-t", "1")
    w.wait_event("lifecycle_event")
    ruby(URL, 'Sidekiq::Client.push("class" => "SlowJob", "args" => [5])')
    wait_until(lambda: stub.stats()["in_flight"] == 1, 10, 0.05, "the slow job running")
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0
    calls = stub.stats()["control"]
    assert [(c["path"], c.get("event")) for c in calls] == [
        ("/lifecycle", "startup"), ("/lifecycle", "quiet"), ("/lifecycle", "shutdown"), ("/cancel", None)]
    assert calls[0]["timeout"] == 1.0 and calls[0]["identity"]
    assert len(calls[3]["jids"]) == 1
    names = [e["event"] for e in w.events()]
    assert names.index("shutdown_cancelled") < names.index("shutdown_requeued")
    assert r.llen("queue:default") == 1


def test_due_jobs_pass_through_the_apps_client_middleware_as_sidekiqs_poller_pushes_them(db, worker, r):
    """Scheduled and retried jobs, when due, go through the app's client middleware (the demo's
    TraceMiddleware): it tags them, reroutes one, drops one (never run, gone as under Sidekiq) and
    raises for one (the dead set and the error handlers; Sidekiq would lose it)."""
    with rails.start_sidecar(URL, threads=2, env={"DEMO_CLIENT_MIDDLEWARE": "1"}) as sidecar:
        assert sidecar.health()[1]["client_middleware"] is True
        ruby(URL, """
          at = Time.now.to_f + 1
          %w[plain veto reroute boom].each do |a|
            Sidekiq::Client.push("class" => "PlainWorker", "args" => [a, 1], "at" => at, "jid" => a.ljust(24, "0"))
          end
          # a retry as JobRetry writes it, already due
          job = {"class" => "PlainWorker", "args" => ["retried", 2], "queue" => "default", "retry" => true,
                 "jid" => "retried".ljust(24, "0"), "created_at" => Time.now.to_f - 60, "retry_count" => 0,
                 "error_class" => "RuntimeError", "error_message" => "once", "failed_at" => Time.now.to_f - 30}
          Sidekiq.redis { |c| c.zadd("retry", (Time.now.to_f - 1).to_s, Sidekiq.dump_json(job)) }
        """)
        w = worker("-q", "critical,default", "--poll-interval", "0.2", sidecar_url=sidecar.url)
        wait_until(lambda: len(runs(db, "plain")) >= 3, 20, 0.1, "the due jobs run")
        time.sleep(1.0)
        ran = {x["args"][0]: json.loads(x["middleware_context"]) for x in runs(db, "plain")}
        assert sorted(ran) == ["plain", "reroute", "retried"]
        assert {a: ctx["trace_id"] for a, ctx in ran.items()} == {a: "trace-" + a.ljust(24, "0") for a in ran}
        assert ran["reroute"]["queue"] == "critical" and ran["plain"]["queue"] == "default"
        # the middleware saw each due job once, with the queue the poller pushes it to
        seen = sorted(x.decode() for x in r.lrange("demo:client_middleware", 0, -1))
        assert seen == sorted(f"{a.ljust(24, '0')} default" for a in ("plain", "veto", "reroute", "boom", "retried"))
        state = ruby_json(URL, """
          puts JSON.generate("scheduled" => Sidekiq::ScheduledSet.new.size, "retry" => Sidekiq::RetrySet.new.size,
            "queued" => Sidekiq::Queue.all.sum(&:size), "dead" => Sidekiq::DeadSet.new.map(&:jid))
        """)
        assert state == {"scheduled": 0, "retry": 0, "queued": 0, "dead": ["boom".ljust(24, "0")]}
        [event] = [dict(e) for e in db.execute("SELECT * FROM job_events WHERE event = 'error'")]
        assert event["jid"] == "boom".ljust(24, "0") and event["error_message"] == "tenant unknown"
        assert w.stop() == 0


def test_a_batch_cut_off_at_job_timeout_keeps_what_finished_and_requeues_what_never_started(db, worker, r):
    """--job-timeout on a /perform_batch: the job running at the deadline is stopped and spends a
    retry (Fastworker::JobTimeout); the jobs of the batch that finished stay done and the ones that
    never started are requeued and run, none of them marked failed."""
    with rails.start_sidecar(URL, threads=8) as sidecar:
        w = worker("-q", "default", "-c", "8", "--job-timeout", "1", sidecar_url=sidecar.url)
        ruby(URL, 'Sidekiq::Client.push_bulk("class" => "HangWorker", "args" => Array.new(400) { [0] })')
        wait_until(lambda: r.llen("queue:default") == 0, 20, 0.05, "the warm-up jobs taken")
        assert 'endpoint="perform_batch"' in sidecar.metrics(), "HangWorker runs in batches"
        jids = ruby_json(URL, 'puts Sidekiq::Client.push_bulk("class" => "HangWorker", '
                              '"args" => [[0], [0], [3], [0], [0], [0], [0], [0]]).to_json')
        stalled = jids[2]
        entry = wait_until(lambda: r.zrange("retry", 0, -1), 15, 0.05, "the stalled job's retry entry")
        time.sleep(1.5)
        assert [json.loads(m)["jid"] for m in r.zrange("retry", 0, -1)] == [stalled]
        assert json.loads(entry[0])["error_class"] == "Fastworker::JobTimeout"
        done = {e["jid"] for e in w.events("job_done")}
        assert set(jids) - {stalled} <= done and r.llen("queue:default") == 0
        assert w.stop() == 0


def test_the_apps_ruby_code_reads_the_workers_settings_from_sidekiqs_options(db, worker, r):
    """Issue 11, point 6: flags given to the worker only (not to the sidecar, not in sidekiq.yml)
    are what `Sidekiq.options` says inside the jobs, as in the Sidekiq server they replace."""
    with rails.start_sidecar(URL, threads=2) as sidecar:
        w = worker("-q", "default", "-c", "3", "--max-retries", "7", "-t", "9", sidecar_url=sidecar.url)
        wait_until(lambda: sidecar.health()[1].get("drain_timeout") == 9.0, 20, 0.1, "the worker's hello")
        ruby(URL, 'Sidekiq::Client.push("class" => "SettingsWorker", "args" => ["options:seen"])')
        seen = wait_until(lambda: r.get("options:seen"), 20, 0.05, "SettingsWorker ran")
        # 6.4.1 sizes its server pool -c + 5 (RedisConnection.create); the app's `config.redis =`
        # built it at boot, before the worker said its -c
        assert json.loads(seen) | {"pid": None} == {"concurrency": 3, "max_retries": 7, "timeout": 9,
                                                    "redis_pool_size": 3 + 5, "pid": None}
        assert w.stop() == 0
