"""End to end with the real things: the demo Rails app enqueues with Sidekiq's client (bin/rails
runner, a rake task, its HTTP endpoint) -> Redis -> ``fastworker`` -> the Ruby sidecar running the
app -> the jobs' effects in the app's database (examples/rails_app, RAILS_ENV=test, SQLite)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REDIS_BASE, TEST_DB
from tests.helpers import rails
from tests.helpers.procs import free_port, ruby_json, wait_http, wait_until

URL = f"{REDIS_BASE}/{TEST_DB}"


@pytest.fixture(scope="module")
def sidecar() -> Iterator[rails.Sidecar]:
    yield from rails.serve(URL, threads=8)


@pytest.fixture
def db(redis_url) -> Iterator[sqlite3.Connection]:
    conn = rails.clean_db()
    yield conn
    conn.close()


@pytest.fixture
def rworker(worker, sidecar):
    """fastworker against the real sidecar; scheduler polling fast so retries come back quickly."""
    def start(*args: str):
        return worker("-q", "default,low", "--poll-interval", "0.2", *args, sidecar_url=sidecar.url)
    return start


def runs(db: sqlite3.Connection, kind: str) -> list[dict]:
    rows = [dict(r) for r in db.execute("SELECT * FROM job_runs WHERE kind = ? ORDER BY id", (kind,))]
    for r in rows:
        r["args"] = json.loads(r.pop("args_json") or "null")
        r["middleware_context"] = json.loads(r["middleware_context"] or "null")
        r["details"] = json.loads(r["details"] or "null")
    return rows


def events(db: sqlite3.Connection, event: str) -> list[dict]:
    rows = [dict(r) for r in db.execute("SELECT * FROM job_events WHERE event = ? ORDER BY id", (event,))]
    for r in rows:
        r["details"] = json.loads(r["details"] or "null")
    return rows


def enqueue(snippet: str) -> dict:
    """Run Ruby inside the demo app (its Sidekiq client) and return the JSON it prints."""
    return rails.rails_json(snippet, URL)


def test_each_plain_and_activejob_kind_runs_with_what_sidekiq_gives_it(db, rworker):
    jids = enqueue("""
      w = Widget.create!(name: "gear")
      puts({plain: DemoEnqueuer.enqueue("plain", 1, label: "hello").first,
            model: WidgetJob.perform_later(w).provider_job_id, widget_id: w.id,
            kwargs: KeywordJob.perform_later(name: "kw", count: 3, tags: ["a"]).provider_job_id,
            money: MoneyJob.perform_later(Money.new(1999, "EUR")).provider_job_id}.to_json)""")
    rworker("-c", "4")
    wait_until(lambda: all(runs(db, k) for k in ("plain", "model", "kwargs", "money")), 30, 0.1, "four job kinds")

    plain = runs(db, "plain")[0]
    assert plain["jid"] == jids["plain"] and plain["job_class"] == "PlainWorker"
    assert plain["args"] == ["hello", 0]
    ctx = plain["middleware_context"]  # the app's server middleware ran around perform
    assert ctx["middleware"] == "Demo::RecordingMiddleware" and ctx["queue"] == "default"
    assert ctx["jid"] == ctx["worker_jid"] == jids["plain"]
    assert plain["idempotency_key"] == jids["plain"]

    model = runs(db, "model")[0]
    assert model["jid"] == jids["model"] and model["provider_job_id"] == jids["model"]
    assert model["model_id"] == jids["widget_id"]  # GlobalID deserialised to the record
    assert model["details"] == {"widget_name": "gear", "widget_class": "Widget"}
    assert model["middleware_context"]["class"] == "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"
    assert model["middleware_context"]["wrapped"] == "WidgetJob"

    kw = runs(db, "kwargs")[0]
    assert kw["details"] == {"name": "kw", "count": 3, "tags": ["a"]}  # keyword arguments
    money = runs(db, "money")[0]
    assert money["details"] == {"class": "Money", "cents": 1999, "currency": "EUR"}  # custom serializer


def test_a_flaky_job_fails_twice_then_succeeds_through_sidekiq_retries(db, rworker, r):
    jid = enqueue('puts DemoEnqueuer.enqueue("flaky", 1, failures: 2).first.to_json')
    rworker("-c", "2")
    wait_until(lambda: any(x["status"] == "performed" for x in runs(db, "flaky")), 40, 0.2, "the third attempt")
    attempts = runs(db, "flaky")
    assert [a["status"] for a in attempts] == ["failed", "failed", "performed"]
    assert {a["jid"] for a in attempts} == {jid}
    assert [a["middleware_context"]["retry_count"] for a in attempts] == [None, 0, 1]
    errors = events(db, "error")  # Sidekiq's error handlers, with Sidekiq's context hash
    assert len(errors) == 2 and errors[0]["error_class"] == "FlakyWorker::Flake"
    assert errors[0]["details"]["context"] == "Job raised exception"
    assert r.zcard("retry") == 0


def test_sidekiq_options_retry_queue_and_backtrace(db, rworker, redis_url):
    jid = enqueue('puts DemoEnqueuer.enqueue("options", 1).first.to_json')
    rworker("-c", "1")
    wait_until(lambda: runs(db, "options"), 20, 0.1, "the options job")
    entry = wait_until(lambda: ruby_json(redis_url, """
      e = Sidekiq::RetrySet.new.first
      puts(e && {jid: e.jid, queue: e.queue, bt: e.error_backtrace, cls: e["error_class"]}.to_json || "null")"""),
                       20, 0.5, "the retry entry")
    assert entry["jid"] == jid and entry["queue"] == "low"  # retry_queue
    assert entry["cls"] == "OptionsWorker::Failure"
    assert 1 <= len(entry["bt"]) <= 5 and "options_worker.rb" in entry["bt"][0]  # backtrace: 5, cleaned


def test_sidekiq_retry_in_sets_the_delay(db, rworker, r):
    jid = enqueue('puts DemoEnqueuer.enqueue("retry_in", 1, mode: "delay").first.to_json')
    rworker("-c", "1")
    member, score = wait_until(lambda: r.zrange("retry", 0, -1, withscores=True), 20, 0.1, "retry entry")[0]
    job = json.loads(member)
    assert job["jid"] == jid
    delay = score - job["failed_at"]
    assert 10 <= delay < 20  # the block said 10 * (count + 1), plus Sidekiq's jitter (rand(10) * 1)


def test_exhausted_job_runs_its_block_then_the_death_handlers_and_lands_in_the_dead_set(db, rworker, redis_url):
    jid = enqueue('puts DemoEnqueuer.enqueue("exhausted", 1).first.to_json')
    rworker("-c", "1")
    wait_until(lambda: events(db, "death"), 20, 0.1, "the death handler")
    exhausted = events(db, "exhausted")
    assert len(exhausted) == 1 and exhausted[0]["jid"] == jid  # exactly once
    assert exhausted[0]["details"]["error_message_in_job"] == "exhausted worker gives up"  # msg with error fields
    assert events(db, "death")[0]["jid"] == jid
    dead = ruby_json(redis_url, 'd = Sidekiq::DeadSet.new.first; puts({jid: d.jid, cls: d["error_class"]}.to_json)')
    assert dead == {"jid": jid, "cls": "RuntimeError"}


def test_exhaustion_hooks_get_the_live_exception_in_sidekiqs_order(db, rworker, redis_url):
    """JobRetry#retries_exhausted: the block (the job not yet in the dead set), the dead-set write,
    then the death handlers (the job there); both hooks get the job's own exception object, its
    attribute and its cause intact, not a stand-in rebuilt from the class name and message."""
    jid = enqueue('puts TenantWorker.perform_async("acme").to_json')
    rworker("-c", "1")
    wait_until(lambda: events(db, "death"), 20, 0.1, "the death handler")
    [block], [death] = events(db, "exhausted"), events(db, "death")
    assert block["jid"] == death["jid"] == jid
    for hook in (block, death):
        assert hook["error_class"] == "TenantError" and hook["error_message"] == "tenant acme is suspended"
        assert (hook["details"]["tenant"], hook["details"]["cause"]) == ("acme", "billing said no")
    assert block["details"]["in_dead_set"] is False and death["details"]["in_dead_set"] is True
    dead = ruby_json(redis_url, 'd = Sidekiq::DeadSet.new.first; puts({jid: d.jid, cls: d["error_class"]}.to_json)')
    assert dead == {"jid": jid, "cls": "TenantError"}


def test_hooks_after_a_sidecar_restart_get_the_exception_it_sealed(db, worker):
    """The Puma process that ran the job dies before its hooks run (killed inside the first
    sidekiq_retries_exhausted call): the hooks wait, and the restarted sidecar runs them with the
    job's own exception object, unsealed from the 422 answer the worker kept, not a stand-in
    rebuilt from the class name and message."""
    port = free_port()
    first = rails.start_sidecar(URL, port=port)
    try:
        jid = enqueue('puts TenantWorker.perform_async("acme", "crash-once").to_json')
        w = worker("-c", "1", sidecar_url=first.url)
        wait_until(lambda: first.proc.poll() is not None, 20, 0.1, "the sidecar killed in the first hook")
    finally:
        first.stop()
    second = rails.start_sidecar(URL, port=port)
    try:
        wait_until(lambda: events(db, "death"), 40, 0.2, "the death handler after the restart")
        [block], [death] = events(db, "exhausted"), events(db, "death")
        assert block["jid"] == death["jid"] == jid
        for hook in (block, death):
            assert (hook["details"]["tenant"], hook["details"]["cause"]) == ("acme", "billing said no")
        assert block["details"]["in_dead_set"] is False and death["details"]["in_dead_set"] is True
        assert w.stop() == 0
    finally:
        second.stop()


def test_activejob_hooks_and_retry_on(db, rworker, r):
    enqueue("""
      puts [DemoEnqueuer.enqueue("aj_hooks", 1).first, DemoEnqueuer.enqueue("retry_on", 1, failures: 1).first].to_json""")
    rworker("-c", "2")
    # retry_on re-enqueues through ActiveJob (a new Sidekiq job, via the schedule set) and succeeds
    wait_until(lambda: any(x["status"] == "performed" for x in runs(db, "retry_on")), 40, 0.2, "retry_on success")
    assert [x["details"]["executions"] for x in runs(db, "retry_on")] == [1, 2]
    # aj_hooks: retry: 1, sidekiq_retry_in 1 s, then sidekiq_retries_exhausted on the ActiveJob class
    wait_until(lambda: events(db, "exhausted"), 40, 0.2, "AjHooksJob exhausted")
    assert events(db, "exhausted")[0]["job_class"] == "AjHooksJob"
    assert len(runs(db, "aj_hooks")) == 2


def test_unknown_class_is_a_retried_name_error(db, rworker, r):
    enqueue('puts Sidekiq::Client.push("class" => "NoSuchJob", "args" => []).to_json')
    rworker("-c", "1")
    member = wait_until(lambda: r.zrange("retry", 0, -1), 20, 0.1, "retry entry")[0]
    assert json.loads(member)["error_class"] == "NameError"
    assert r.zcard("dead") == 0


def test_an_invalid_json_job_reaches_the_dead_set_and_the_apps_error_handlers(db, rworker, r):
    """Sidekiq's Processor#process: handle_exception(ex, {context: "Invalid JSON for job", jobstr:})
    and the raw string into the morgue; the demo app's error handler records a JobEvent."""
    r.sadd("queues", "default")
    r.lpush("queue:default", b'{"class": "NoopWorker", "args": [')
    rworker("-c", "1")
    [event] = wait_until(lambda: events(db, "error"), 20, 0.1, "the app's error handler")
    assert event["error_class"] == "JSON::ParserError"
    assert event["details"]["context"] == "Invalid JSON for job"
    assert r.zrange("dead", 0, -1) == [b'{"class": "NoopWorker", "args": [']


def test_enqueue_from_a_rake_task(db, rworker):
    out = subprocess.run(["ruby", "bin/rake", "demo:enqueue[plain,3]"], cwd=rails.RAILS_ROOT,
                         env=rails.app_env(URL), capture_output=True, text=True, timeout=120, check=True)
    jids = json.loads(out.stdout.strip().splitlines()[-1])["jids"]
    rworker("-c", "2")
    wait_until(lambda: len(runs(db, "plain")) == 3, 20, 0.1, "three plain jobs")
    assert sorted(x["jid"] for x in runs(db, "plain")) == sorted(jids)


def test_enqueue_over_the_apps_http_endpoint(db, rworker):
    port = free_port()
    app = subprocess.Popen(["puma", "-b", f"tcp://127.0.0.1:{port}", "-t", "2:2", "config.ru"], cwd=rails.RAILS_ROOT,
                           env=rails.app_env(URL), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 60, app)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/enqueue", method="POST",
                                     data=json.dumps({"kind": "plain", "count": 2}).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            jids = json.loads(resp.read())["jids"]
        rworker("-c", "2")
        wait_until(lambda: len(runs(db, "plain")) == 2, 20, 0.1, "two plain jobs")
        assert sorted(x["jid"] for x in runs(db, "plain")) == sorted(jids)
    finally:
        app.terminate()
        app.wait(20)


def test_the_sidecar_under_the_teams_own_puma(db, worker, tmp_path):
    """sidecar/config.ru, for a team that runs its own Puma: the same wiring as fastworker-sidecar
    (wiring.rb): the door the secret locks, the drain, pipelined batches; jobs run through it."""
    port = free_port()
    env = rails.app_env(URL, extra={"RAILS_ROOT": str(rails.RAILS_ROOT), "FASTWORKER_SIDECAR_THREADS": "4"})
    log = open(tmp_path / "puma.log", "wb")
    puma = subprocess.Popen(["puma", "-b", f"tcp://127.0.0.1:{port}?low_latency=true", "-t", "6:6",
                             str(rails.ROOT / "sidecar/config.ru")],
                            cwd=rails.RAILS_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        side = rails.Sidecar(puma, port, tmp_path / "puma.log", log)
        wait_until(lambda: side.health()[0] == 200, 60, 0.1, "the sidecar under puma")
        health = side.health()[1]
        assert health["pipeline"] == 2 and health["batch"] is True and health["capacity"] == 4
        try:
            urllib.request.urlopen(urllib.request.Request(side.url + "/perform", data=b"{}", method="POST"), timeout=5)
            unsigned = 200
        except urllib.error.HTTPError as exc:
            unsigned = exc.code
        assert unsigned == 401
        jids = enqueue('puts DemoEnqueuer.enqueue("plain", 6).to_json')
        worker("-c", "4", sidecar_url=side.url)
        wait_until(lambda: len(runs(db, "plain")) == 6, 30, 0.1, "six plain jobs")
        assert sorted(x["jid"] for x in runs(db, "plain")) == sorted(jids)
    finally:
        puma.terminate()
        puma.wait(30)
        log.close()


def test_slow_job_runs_in_parallel_up_to_the_concurrency(db, rworker):
    enqueue('puts DemoEnqueuer.enqueue("slow", 4, seconds: 1).to_json')
    t0 = time.monotonic()
    rworker("-c", "4")
    wait_until(lambda: len(runs(db, "slow")) == 4, 30, 0.1, "four slow jobs")
    assert time.monotonic() - t0 < 1 * 4  # four 1 s sleeps ran side by side in the sidecar's threads
    assert all(x["details"]["slept"] >= 0.99 for x in runs(db, "slow"))


def test_the_demo_app_on_postgresql(redis_url, worker):
    pg = "postgres://postgres@127.0.0.1:5432/fastworker_e2e"
    rails.prepare_db(URL, database_url=pg)
    rails.rails_runner("JobRun.delete_all; Widget.delete_all", URL, database_url=pg)
    s = rails.start_sidecar(URL, threads=4, database_url=pg)
    try:
        jids = rails.rails_json("""
          w = Widget.create!(name: "pg")
          puts [DemoEnqueuer.enqueue("plain", 3), WidgetJob.perform_later(w).provider_job_id].flatten.to_json""",
                                URL, database_url=pg)
        worker("-c", "4", sidecar_url=s.url)
        got = wait_until(lambda: (lambda rows: len(rows) == 4 and rows)(rails.rails_json(
            "puts JobRun.order(:id).map { |r| [r.jid, r.kind, r.model_id.present?] }.to_json", URL, database_url=pg)),
            60, 0.5, "four jobs recorded in PostgreSQL")
        assert sorted(j for j, _, _ in got) == sorted(jids)
        assert [has_model for _, kind, has_model in got if kind == "model"] == [True]
    finally:
        s.stop()
