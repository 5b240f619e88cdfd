"""The process record, read back with Sidekiq 6.4.1's own API (sidekiq-compat.md §10 items 5-8, 26,
27, 30): ProcessSet, Workers and the signals list, against the real ``fastworker`` command and the
STUB sidecar (``SlowJob`` sleeps args[0] seconds)."""

from __future__ import annotations

import json
import socket
import time

from tests.helpers.procs import ruby, ruby_json, wait_until

PROCESSES = """
  ps = Sidekiq::ProcessSet.new
  rows = ps.map { |p|
    {identity: p.identity, hostname: p["hostname"], pid: p["pid"], tag: p.tag, concurrency: p["concurrency"],
     queues: p.queues, labels: p.labels, started_at: p["started_at"], stopping: p.stopping?, busy: p["busy"],
     beat: p["beat"], rss: p["rss"], rtt_us: p["rtt_us"], ttl: Sidekiq.redis { |c| c.ttl(p.identity) }}
  }
  puts({procs: rows, total_concurrency: ps.total_concurrency, size: ps.size}.to_json)
"""

WORKERS = """
  ws = Sidekiq::Workers.new
  rows = []
  ws.each { |process, tid, work| rows << [process, tid, work] }
  puts({size: ws.size, rows: rows}.to_json)
"""


def processes(redis_url: str) -> dict:
    return ruby_json(redis_url, PROCESSES)


def workers(redis_url: str) -> dict:
    return ruby_json(redis_url, WORKERS)


def push(redis_url: str, klass: str, args: list, queue: str = "default") -> str:
    return ruby_json(redis_url, f"""
      puts [Sidekiq::Client.push("class" => {json.dumps(klass)}, "queue" => {json.dumps(queue)},
                                 "args" => JSON.parse({json.dumps(json.dumps(args))}))].to_json""")[0]


def identity_of(w) -> str:
    return w.wait_event("startup")[0]["identity"]


def test_registration_as_sidekiq_processset_sees_it(redis_url, r, stub, worker):
    t0 = time.time()
    w = worker("-c", "7", "-q", "critical", "-q", "default", "--tag", "billing", "--label", "blue",
               "--label", "canary")
    ident = identity_of(w)
    # the first beat happens before the fetcher starts, so the record is there at "startup"
    assert r.sismember("processes", ident)
    got = processes(redis_url)
    assert got["size"] == 1 and got["total_concurrency"] == 7
    (p,) = got["procs"]
    assert p["identity"] == ident
    host, pid, nonce = ident.split(":")
    assert p["hostname"] == socket.gethostname() == host
    assert p["pid"] == w.pid == int(pid)
    assert len(nonce) == 12 and int(nonce, 16) >= 0
    assert p["tag"] == "billing"
    assert p["labels"] == ["blue", "canary"]
    assert p["queues"] == ["critical", "default"]
    assert p["concurrency"] == 7
    assert t0 - 1 <= p["started_at"] <= time.time()
    assert p["stopping"] is False
    assert p["busy"] == 0
    assert 50 <= p["ttl"] <= 60
    # the raw record, for readers newer than 6.4.1: concurrency field (8.1.2+), info extras (7.x/8.x)
    h = r.hgetall(ident)
    assert h[b"quiet"] == b"false" and h[b"concurrency"] == b"7"
    info = json.loads(h[b"info"])
    assert info["weights"] == [{"critical": 0, "default": 0}]
    assert info["capsules"] == {"default": {"concurrency": 7, "mode": "strict",
                                            "weights": {"critical": 0, "default": 0}}}
    assert info["embedded"] is False and info["version"].startswith("fastworker ")


def test_weighted_queues_are_reported_as_sidekiq_reports_them(redis_url, r, stub, worker):
    w = worker("-c", "2", "-q", "critical:3,default:1")
    info = json.loads(r.hget(identity_of(w), "info"))
    assert info["queues"] == ["critical", "default"]
    assert info["weights"] == [{"critical": 3, "default": 1}]
    assert info["capsules"]["default"]["mode"] == "weighted"


def test_heartbeat_every_five_seconds_keeps_the_record_alive(redis_url, r, stub, worker):
    w = worker("-c", "2")  # default interval: 5 s, TTL 60 s
    ident = identity_of(w)
    beats = [float(r.hget(ident, "beat"))]
    ttls = [r.ttl(ident)]
    deadline = time.monotonic() + 14
    while len(beats) < 3 and time.monotonic() < deadline:
        b = float(r.hget(ident, "beat"))
        if b != beats[-1]:
            beats.append(b)
        ttls.append(r.ttl(ident))
        time.sleep(0.1)
    assert len(beats) == 3, beats
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert all(4.0 <= g <= 7.0 for g in gaps), gaps
    assert all(50 <= t <= 60 for t in ttls), sorted(set(ttls))
    (p,) = processes(redis_url)["procs"]
    assert p["rss"] > 1000  # KB: a Python process is never under a megabyte
    assert p["rtt_us"] > 0
    assert 50 <= p["ttl"] <= 60
    assert abs(p["beat"] - time.time()) < 6


def test_a_running_job_is_listed_by_sidekiq_workers(redis_url, r, stub, worker):
    w = worker("-c", "3", "--heartbeat-interval", "1")
    ident = identity_of(w)
    jid = push(redis_url, "SlowJob", [4])
    got = wait_until(lambda: (x := workers(redis_url))["size"] == 1 and x, 10, 0.1, "Workers.size == 1")
    ((process, tid, work),) = got["rows"]
    assert process == ident
    assert work["queue"] == "default"
    assert isinstance(work["run_at"], int) and abs(work["run_at"] - time.time()) < 10
    assert work["payload"]["jid"] == jid and work["payload"]["class"] == "SlowJob"
    assert work["payload"]["args"] == [4]
    # both busy hashes (6.4.1 reads :workers, 6.5+ :work), the payload kept as the job's own string
    original = stub.stats()["records"][0]["raw"]
    for key in (f"{ident}:work", f"{ident}:workers"):
        entry = json.loads(r.hget(key, tid))
        assert entry == {"queue": "default", "payload": original, "run_at": work["run_at"]}
        assert 0 < r.ttl(key) <= 60
    assert int(r.hget(ident, "busy")) == 1
    # the job ends: the entry is gone within a beat
    wait_until(lambda: int(r.get("stat:processed") or 0) == 1, 10, what="the slow job to finish")
    wait_until(lambda: workers(redis_url)["size"] == 0, 5, 0.2, "Workers.size == 0")
    assert not r.exists(f"{ident}:work") and not r.exists(f"{ident}:workers")
    assert int(r.hget(ident, "busy")) == 0


def test_quiet_via_the_api_stops_fetching_but_finishes_the_running_job(redis_url, r, stub, worker):
    w = worker("-c", "2", "--heartbeat-interval", "1")
    ident = identity_of(w)
    push(redis_url, "SlowJob", [3])
    wait_until(lambda: stub.stats()["in_flight"] == 1, 10, what="the slow job to start")
    ruby(redis_url, "Sidekiq::ProcessSet.new.each { |p| p.quiet! }")
    wait_until(lambda: processes(redis_url)["procs"][0]["stopping"], 5, 0.2, "stopping? == true")
    assert w.events("remote_signal")[0]["signal"] == "TSTP"
    push(redis_url, "HardJob", [1])
    wait_until(lambda: int(r.get("stat:processed") or 0) == 1, 10, what="the in-flight job to complete")
    time.sleep(1.5)
    assert r.llen("queue:default") == 1  # not fetched while quiet
    assert stub.stats()["count"] == 1
    assert w.proc.poll() is None  # the process stays
    got = processes(redis_url)
    assert [p["identity"] for p in got["procs"]] == [ident] and got["procs"][0]["stopping"]
    # then stop! ends it, and the record goes
    ruby(redis_url, "Sidekiq::ProcessSet.new.each { |p| p.stop! }")
    assert w.wait(15) == 0
    assert w.events("shutdown_begin")[0]["source"] == "TERM"
    assert processes(redis_url)["size"] == 0
    assert ruby(redis_url, f'puts Sidekiq.redis {{ |c| c.exists?("{ident}:workers") }}').strip() == "false"
    assert not r.exists(f"{ident}:work")


def test_stop_via_the_api_shuts_down_gracefully(redis_url, r, stub, worker):
    w = worker("-c", "2", "--heartbeat-interval", "1")
    ident = identity_of(w)
    push(redis_url, "SlowJob", [1])
    wait_until(lambda: stub.stats()["in_flight"] == 1, 10, what="the slow job to start")
    ruby(redis_url, "Sidekiq::ProcessSet.new.first.stop!")
    assert w.wait(15) == 0
    assert int(r.get("stat:processed") or 0) == 1  # the running job was allowed to finish
    assert not r.sismember("processes", ident)
    assert processes(redis_url)["size"] == 0
    assert ruby(redis_url, f'puts Sidekiq.redis {{ |c| c.exists?("{ident}:workers") }}').strip() == "false"
    assert w.events("heartbeat_cleared")


def test_ttin_through_the_signals_list_logs_the_busy_jobs_and_nothing_else(redis_url, r, stub, worker):
    w = worker("-c", "2", "--heartbeat-interval", "1")
    ident = identity_of(w)
    jid = push(redis_url, "SlowJob", [3])
    wait_until(lambda: stub.stats()["in_flight"] == 1, 10, what="the slow job to start")
    ruby(redis_url, "Sidekiq::ProcessSet.new.first.dump_threads")
    dump = w.wait_event("busy_job", 5)
    assert dump[0]["jid"] == jid and dump[0]["class"] == "SlowJob" and dump[0]["queue"] == "default"
    assert w.events("busy_dump")[0]["count"] == 1
    r.lpush(f"{ident}-signals", "NOPE")
    assert w.wait_event("signal_ignored", 5)[0]["signal"] == "NOPE"
    # neither quieted nor stopped: a new job still runs
    push(redis_url, "HardJob", [2])
    wait_until(lambda: int(r.get("stat:processed") or 0) == 2, 10, what="both jobs")
    assert w.proc.poll() is None
    assert not w.events("quiet") and not w.events("shutdown_begin")
    assert r.hget(ident, "quiet") == b"false"


def test_clean_shutdown_removes_the_process_and_busy_hashes(redis_url, r, stub, worker):
    w = worker("-c", "2", "--heartbeat-interval", "1", "--timeout", "1")
    ident = identity_of(w)
    push(redis_url, "SlowJob", [30])
    wait_until(lambda: r.exists(f"{ident}:work"), 10, what="the busy hash")
    w.signal(15)
    assert w.wait(10) == 0
    assert not r.sismember("processes", ident)
    assert not r.exists(f"{ident}:work") and not r.exists(f"{ident}:workers")


def test_a_namespace_prefixes_every_key_but_not_the_identity_in_processes(redis_url, r, stub, worker):
    w = worker("-c", "1", "--heartbeat-interval", "1", "--namespace", "legacy")
    ident = identity_of(w)
    r.sadd("legacy:queues", "default")
    r.lpush("legacy:queue:default", json.dumps({"class": "SlowJob", "args": [3], "jid": "ab" * 12,
                                                "queue": "default", "enqueued_at": time.time()}))
    wait_until(lambda: r.exists(f"legacy:{ident}:work"), 10, 0.1, "the busy hash under the namespace")
    assert r.smembers("legacy:processes") == {ident.encode()}  # values are never prefixed
    assert json.loads(r.hget(f"legacy:{ident}", "info"))["identity"] == ident
    assert r.exists(f"legacy:{ident}:workers")
    assert not r.exists("processes") and not r.exists(ident)
    r.lpush(f"legacy:{ident}-signals", "TSTP")
    wait_until(lambda: r.hget(f"legacy:{ident}", "quiet") == b"true", 5, 0.1, "quiet through the namespaced list")


RUBY_SETTINGS = """
Sidekiq.configure_server do |config|
  config.options[:queues] = %w[from_ruby default]
  config.options[:concurrency] = 3
  config.options[:tag] = "ruby-tag"
  config.options[:labels] = ["ruby-label"]
end
"""


def test_settings_made_in_ruby_show_in_processset(redis_url, r, stub, worker, tmp_path):
    """configure_server blocks, read by Sidekiq's code in `fastworker-sidecar --print-config`, reach the
    worker (--sidekiq-config print) and the process record Sidekiq's API reads."""
    import shutil
    from pathlib import Path

    from tests.helpers.rails import ruby_available

    import pytest

    if not ruby_available():
        pytest.skip("needs ruby with rails, sidekiq and puma")
    root = Path(__file__).resolve().parents[1]
    app = tmp_path / "app"
    shutil.copytree(root / "sidecar" / "test" / "dummy", app, ignore=shutil.ignore_patterns("tmp", "log"))
    (app / "config" / "initializers" / "zz_settings.rb").write_text(RUBY_SETTINGS)
    command = f"ruby {root / 'sidecar' / 'bin' / 'fastworker-sidecar'} --print-config"
    w = worker("--sidekiq-config", "print", "-r", str(app),
               env={"FASTWORKER_PRINT_CONFIG_COMMAND": command})
    ident = identity_of(w)
    (p,) = processes(redis_url)["procs"]
    assert p["identity"] == ident
    assert (p["tag"], p["labels"], p["queues"], p["concurrency"]) == ("ruby-tag", ["ruby-label"],
                                                                     ["from_ruby", "default"], 3)
    config_line = w.wait_event("config")[0]
    assert config_line["sources"]["concurrency"] == "fastworker-sidecar --print-config: concurrency"
