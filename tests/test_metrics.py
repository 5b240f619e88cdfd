"""/metrics, /healthz and /readyz on the worker's HTTP port, and the JSON log lines, against the real
``fastworker`` command: exact counter values after a known workload, queue-wide gauges read from Redis
at most once a second, readiness that follows Redis and the sidecar's circuit breaker."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.procs import Worker, free_port, ruby_json, wait_until


# -- helpers ------------------------------------------------------------------------------------------


def get(port: int, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers.get("Content-Type", "")


def wait_http(w: Worker) -> None:
    w.wait_event("http_listening")


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    status, body, ctype = get(port, "/metrics")
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def val(m: dict, name: str, **labels: str) -> float:
    return m[(name, frozenset(labels.items()))]


def readyz(port: int) -> tuple[int, dict]:
    status, body, _ = get(port, "/readyz")
    return status, json.loads(body)


def processed(r: redis.Redis) -> int:
    return int(r.get("stat:processed") or 0)


class PrivateRedis:
    """A redis-server of our own on a free loopback port (so a test may stop it)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        wait_until(lambda: _ping(client), 10, what="private redis")
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


def _ping(c: redis.Redis) -> bool:
    try:
        return bool(c.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture
def private_redis():
    srv = PrivateRedis()
    yield srv
    srv.stop()


# -- exact counts after a known workload ---------------------------------------------------------------

AJ_WRAPPER = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"


def test_metrics_after_a_known_workload(redis_url, r, stub, worker):
    ruby_json(redis_url, f"""
      3.times {{ |i| Sidekiq::Client.push("class" => "HardJob", "queue" => "idle", "args" => [i]) }}
      Sidekiq::Client.push("class" => "HardJob", "args" => [1], "at" => Time.now.to_f + 3600)
      5.times {{ |i| Sidekiq::Client.push("class" => "HardJob", "args" => [i]) }}
      2.times {{ |i| Sidekiq::Client.push("class" => "HardJob", "queue" => "critical", "args" => [i]) }}
      3.times {{ |i| Sidekiq::Client.push("class" => "FailJob", "args" => ["no #{{i}}"]) }}
      Sidekiq::Client.push("class" => "KillJob", "args" => [])
      Sidekiq::Client.push("class" => "{AJ_WRAPPER}", "wrapped" => "MyAjJob",
                           "args" => [{{"job_class" => "MyAjJob", "arguments" => []}}])
      puts [].to_json""")
    r.lpush("queue:default", b"{not json")
    w = worker("-c", "3", "-q", "critical,default", "--heartbeat-interval", "1")
    wait_until(lambda: processed(r) >= 12 and int(r.get("stat:failed") or 0) >= 4, 20, what="the workload")
    time.sleep(1.1)  # the queue-wide snapshot may be up to a second old
    m = scrape(w.http_port)

    def job(name: str, queue: str, worker_: str) -> float:
        return val(m, name, queue=queue, worker=worker_)

    assert job("sidekiq_jobs_executed_total", "default", "HardJob") == 5
    assert job("sidekiq_jobs_success_total", "default", "HardJob") == 5
    assert job("sidekiq_jobs_failed_total", "default", "HardJob") == 0
    assert job("sidekiq_jobs_executed_total", "critical", "HardJob") == 2
    assert job("sidekiq_jobs_executed_total", "default", "FailJob") == 3
    assert job("sidekiq_jobs_failed_total", "default", "FailJob") == 3
    assert job("sidekiq_jobs_success_total", "default", "FailJob") == 0
    assert job("sidekiq_jobs_failed_total", "default", "KillJob") == 1
    # ActiveJob: labelled with the wrapped class, as yabeda-sidekiq does
    assert job("sidekiq_jobs_success_total", "default", "MyAjJob") == 1
    assert not [k for k in m if dict(k[1]).get("worker") == AJ_WRAPPER]
    # histograms: one runtime and one latency observation per executed job
    assert job("sidekiq_job_runtime_seconds_count", "default", "HardJob") == 5
    assert val(m, "sidekiq_job_runtime_seconds_bucket", queue="default", worker="HardJob", le="+Inf") == 5
    assert val(m, "sidekiq_job_runtime_seconds_bucket", queue="default", worker="HardJob", le="21600.0") == 5
    assert job("sidekiq_job_latency_seconds_count", "critical", "HardJob") == 2
    assert 0 < job("sidekiq_job_latency_seconds_sum", "default", "HardJob") < 5 * 60
    # the sidecar calls by outcome, the dead jobs (KillJob and the unparseable payload)
    assert val(m, "fastworker_sidecar_calls_total", outcome="done") == 8
    assert val(m, "fastworker_sidecar_calls_total", outcome="failed") == 4
    assert val(m, "fastworker_sidecar_call_duration_seconds_count", outcome="done") == 8
    assert val(m, "fastworker_jobs_dead_total") == 2
    # every requeue reason is there before the first requeue (the dashboard reads 0, not no data)
    assert val(m, "fastworker_jobs_requeued_total", reason="sidecar_unavailable") == 0
    assert val(m, "fastworker_jobs_requeued_total", reason="sidecar_hung") == 0
    # queue-wide gauges, as Sidekiq::Stats would report them
    assert val(m, "sidekiq_jobs_waiting_count", queue="idle") == 3
    assert val(m, "sidekiq_jobs_waiting_count", queue="default") == 0
    assert val(m, "sidekiq_jobs_waiting_count", queue="critical") == 0
    assert 1.0 <= val(m, "sidekiq_queue_latency", queue="idle") < 120
    assert val(m, "sidekiq_queue_latency", queue="default") == 0
    assert val(m, "sidekiq_jobs_scheduled_count") == 1
    assert val(m, "sidekiq_jobs_retry_count") == 3
    assert val(m, "sidekiq_jobs_dead_count") == 2
    assert val(m, "sidekiq_active_processes") == 1
    assert val(m, "sidekiq_concurrency") == 3
    assert val(m, "sidekiq_active_workers_count") == 0
    assert val(m, "sidekiq_available_workers") == 3
    assert val(m, "sidekiq_saturation") == 0
    # this process
    assert val(m, "fastworker_concurrency_limit") == 3
    assert val(m, "fastworker_jobs_in_flight") == 0
    assert val(m, "fastworker_breaker_state", state="closed") == 1
    assert val(m, "fastworker_redis_up") == 1
    assert val(m, "fastworker_ready") == 1
    assert val(m, "fastworker_jobs_fetched_total") == 13
    ident = w.events("startup")[0]["identity"]
    assert val(m, "fastworker_info", identity=ident, version=__import__("fastworker").__version__) == 1
    assert val(m, "process_resident_memory_bytes") > 1e6
    assert val(m, "fastworker_heartbeats_total") >= 1 and val(m, "fastworker_redis_rtt_seconds") > 0
    assert abs(val(m, "fastworker_heartbeat_timestamp_seconds") - time.time()) < 10


def test_busy_and_saturation_while_jobs_run(redis_url, r, stub, worker):
    w = worker("-c", "2", "--heartbeat-interval", "1")
    wait_http(w)
    ruby_json(redis_url, 'puts 2.times.map { Sidekiq::Client.push("class" => "SlowJob", "args" => [4]) }.to_json')
    wait_until(lambda: int(r.hget(w.events("startup")[0]["identity"], "busy") or 0) == 2, 10, 0.1, "busy == 2")
    time.sleep(1.1)
    m = scrape(w.http_port)
    assert val(m, "fastworker_jobs_in_flight") == 2
    assert val(m, "sidekiq_active_workers_count") == 2
    assert val(m, "sidekiq_available_workers") == 0
    assert val(m, "sidekiq_saturation") == 1
    # a quiet process counts as full even when idle (yabeda-sidekiq's rule)
    wait_until(lambda: processed(r) == 2, 10, what="the slow jobs")
    w.signal(20)  # SIGTSTP
    wait_until(lambda: r.hget(w.events("startup")[0]["identity"], "quiet") == b"true", 5, 0.1, "quiet")
    time.sleep(1.1)
    m = scrape(w.http_port)
    assert val(m, "sidekiq_active_workers_count") == 0
    assert val(m, "sidekiq_available_workers") == 0 and val(m, "fastworker_quiet") == 1


# -- the queue-wide numbers come from Redis at most once a second --------------------------------------


def test_queue_stats_are_read_at_most_once_a_second(private_redis, stub, tmp_path):
    c = private_redis.client()
    w = Worker(private_redis.url, stub.url, "-c", "2", log_path=tmp_path / "w.log")
    try:
        wait_http(w)
        c.config_resetstat()
        first = scrape(w.http_port)
        refreshes0 = val(first, "fastworker_queue_stats_refreshes_total")
        results: list[float] = []
        errors: list[BaseException] = []

        def hammer() -> None:
            try:
                for _ in range(15):
                    results.append(val(scrape(w.http_port), "fastworker_queue_stats_refreshes_total"))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        t0 = time.monotonic()
        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - t0
        assert not errors, errors
        assert len(results) == 60
        refreshes = max(results) - refreshes0
        assert refreshes <= elapsed + 1, (refreshes, elapsed)
        # what Redis saw agrees: three ZCARDs per refresh, and nobody else in this worker sends ZCARD
        zcards = c.info("commandstats").get("cmdstat_zcard", {}).get("calls", 0)
        assert zcards <= 3 * (refreshes + 1), (zcards, refreshes)
        # and the numbers are fresh within a second
        c.sadd("queues", "elsewhere")  # what Sidekiq's client does with every push
        c.lpush("queue:elsewhere", b'{"class":"HardJob","args":[],"jid":"a","enqueued_at":1.0}')
        time.sleep(1.1)
        assert val(scrape(w.http_port), "sidekiq_jobs_waiting_count", queue="elsewhere") == 1
    finally:
        w.kill()
        c.close()


async def test_concurrent_refreshes_share_one_redis_read(redis_url):
    """In-process: twenty scrapes arriving together cause one read; the next second, one more."""
    import redis.asyncio as aioredis

    from fastworker.breaker import Breaker
    from fastworker.broker import RedisHealth
    from fastworker.keys import Keys
    from fastworker.metrics import Metrics, ProcessView

    client = aioredis.Redis.from_url(redis_url)
    await client.lpush("queue:default", b'{"class":"A","args":[],"enqueued_at":1700000000.5}')
    breaker = Breaker()
    idle = ProcessView("host:1:abc", 0.0, in_flight=lambda: 0, capacity=lambda: 1, breaker=lambda: breaker,
                       fetched=lambda: 0, quiet=lambda: False, ready=lambda: (True, "ok"), recovered=lambda: (0, 0))
    m = Metrics(client, Keys(), ["default"], RedisHealth(), idle)
    reads = 0
    real = m.read_queue_stats

    async def counted():
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.05)
        return await real()

    m.read_queue_stats = counted
    try:
        await asyncio.gather(*(m.refresh() for _ in range(20)))
        assert reads == 1
        await asyncio.gather(*(m.refresh() for _ in range(20)))
        assert reads == 1  # still fresh
        await asyncio.sleep(1.05)
        await asyncio.gather(*(m.refresh() for _ in range(20)))
        assert reads == 2
        st = m.queue_stats
        assert st.waiting == {"default": 1}
        assert st.latency["default"] > 3600  # enqueued in 2023
        text = m.render().decode()
        assert 'sidekiq_jobs_waiting_count{queue="default"} 1.0' in text
        # hot-path counters (a Work-like object, Sidekiq 8 millisecond timestamps)
        env = types.SimpleNamespace(worker_class="W", enqueued_at=time.time() - 2.0, created_at=None)
        work = types.SimpleNamespace(queue="q", env=env)
        m.job_started(work, time.time())
        m.job_done(work, 0.02, True)
        m.job_done(work, 7.0, False)
        text = m.render().decode()
        assert 'sidekiq_jobs_executed_total{queue="q",worker="W"} 2.0' in text
        assert 'sidekiq_job_runtime_seconds_bucket{le="0.025",queue="q",worker="W"} 1.0' in text
        assert 'sidekiq_job_runtime_seconds_bucket{le="5.0",queue="q",worker="W"} 1.0' in text
        assert 'sidekiq_job_runtime_seconds_bucket{le="10.0",queue="q",worker="W"} 2.0' in text
        assert 'sidekiq_job_latency_seconds_bucket{le="1.0",queue="q",worker="W"} 0.0' in text
        assert 'sidekiq_job_latency_seconds_bucket{le="2.5",queue="q",worker="W"} 1.0' in text
        assert "_created" not in text
    finally:
        await client.aclose()


# -- health and readiness ------------------------------------------------------------------------------


def test_healthz_and_readyz_on_a_healthy_worker(redis_url, stub, worker):
    w = worker("-c", "1")
    wait_http(w)
    status, body, ctype = get(w.http_port, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok" and ctype.startswith("application/json")
    assert readyz(w.http_port) == (200, {"status": "ready"})
    assert get(w.http_port, "/nope")[0] == 404


def test_readyz_follows_the_sidecar_circuit_breaker(redis_url, r, stub, worker):
    w = worker("-c", "1", "--breaker-threshold", "1", "--breaker-cooldown", "1")
    wait_http(w)
    assert readyz(w.http_port)[0] == 200
    stub.mode(503)
    ruby_json(redis_url, 'puts [Sidekiq::Client.push("class" => "HardJob", "args" => [1])].to_json')
    wait_until(lambda: readyz(w.http_port)[0] == 503, 10, 0.05, "readyz 503")
    status, body = readyz(w.http_port)
    assert body == {"status": "not ready", "reason": "sidecar circuit open"}
    m = scrape(w.http_port)
    assert val(m, "fastworker_breaker_state", state="open") == 1
    assert val(m, "fastworker_ready") == 0
    assert val(m, "fastworker_jobs_requeued_total", reason="sidecar_unavailable") >= 1
    assert val(m, "fastworker_sidecar_calls_total", outcome="unavailable") >= 1
    assert get(w.http_port, "/healthz")[0] == 200  # alive all along
    stub.mode(None)
    wait_until(lambda: readyz(w.http_port)[0] == 200, 15, 0.05, "readyz 200 again")
    wait_until(lambda: processed(r) == 1, 15, what="the requeued job to run")
    m = scrape(w.http_port)
    assert val(m, "fastworker_breaker_transitions_total", state="open") >= 1
    assert val(m, "fastworker_breaker_transitions_total", state="half_open") >= 1


def test_readyz_and_the_heartbeat_follow_redis(private_redis, stub, tmp_path):
    w = Worker(private_redis.url, stub.url, "-c", "1", "--heartbeat-interval", "1", log_path=tmp_path / "w.log")
    try:
        wait_http(w)
        ident = w.wait_event("startup")[0]["identity"]
        assert readyz(w.http_port)[0] == 200
        private_redis.stop()
        wait_until(lambda: readyz(w.http_port)[0] == 503, 15, 0.1, "readyz 503 without Redis")
        assert readyz(w.http_port)[1] == {"status": "not ready", "reason": "redis unavailable"}
        assert get(w.http_port, "/healthz")[0] == 200
        m = scrape(w.http_port)  # still answers, from the last snapshot
        assert val(m, "fastworker_redis_up") == 0 and val(m, "fastworker_redis_errors_total") >= 1
        assert w.events("redis_connection_lost")
        private_redis.start()  # empty: the process record is gone and must come back
        wait_until(lambda: readyz(w.http_port)[0] == 200, 20, 0.1, "readyz 200 with Redis back")
        c = private_redis.client()
        wait_until(lambda: c.sismember("processes", ident) and c.hget(ident, "info"), 10, 0.1, "the record back")
        c.close()
        assert w.wait_event("heartbeat_restored", 5)
        assert w.events("redis_connection_back")
        assert w.proc.poll() is None
    finally:
        w.kill()


def test_readyz_says_stopping_while_draining(redis_url, r, stub, worker):
    w = worker("-c", "1", "--timeout", "10")
    wait_http(w)
    ruby_json(redis_url, 'puts [Sidekiq::Client.push("class" => "SlowJob", "args" => [3])].to_json')
    wait_until(lambda: stub.stats()["in_flight"] == 1, 10, what="the slow job")
    w.signal(15)
    w.wait_event("shutdown_begin")
    assert readyz(w.http_port) == (503, {"status": "not ready", "reason": "stopping"})
    assert w.wait(15) == 0
    assert processed(r) == 1


def test_http_port_zero_disables_the_endpoints(redis_url, stub, worker):
    w = worker("-c", "1", "--http-port", "0")
    w.wait_event("startup")
    assert w.events("http_disabled")
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{w.http_port}/healthz", timeout=1)


# -- logs ----------------------------------------------------------------------------------------------


def test_every_log_line_is_json_with_the_documented_fields(redis_url, r, stub, worker, tmp_path):
    ruby_json(redis_url, f"""
      2.times {{ Sidekiq::Client.push("class" => "HardJob", "args" => [1]) }}
      Sidekiq::Client.push("class" => "FailJob", "args" => ["kaboom"])
      Sidekiq::Client.push("class" => "KillJob", "args" => [])
      Sidekiq::Client.push("class" => "{AJ_WRAPPER}", "wrapped" => "MyAjJob", "args" => [{{}}])
      puts [].to_json""")
    w = worker("-c", "2", "--heartbeat-interval", "1", "--breaker-threshold", "1", "--breaker-cooldown", "0.5")
    wait_until(lambda: processed(r) >= 5, 20, what="the workload")
    stub.mode(503)
    ruby_json(redis_url, 'puts [Sidekiq::Client.push("class" => "HardJob", "args" => [2])].to_json')
    w.wait_event("breaker_open")
    stub.mode(None)
    wait_until(lambda: processed(r) >= 6, 20, what="the requeued job")
    r.lpush(f"{w.events('startup')[0]['identity']}-signals", "TTIN")
    w.wait_event("busy_dump")
    assert w.stop() == 0

    lines = [ln for ln in Path(w.log_path).read_text().splitlines() if ln.strip()]
    recs = [json.loads(ln) for ln in lines]  # every line, not just the ones that look like JSON
    for rec in recs:
        assert {"ts", "level", "event", "pid"} <= set(rec), rec
        assert rec["pid"] == w.pid and rec["level"] in ("debug", "info", "warn", "error")
        assert rec["ts"].endswith("Z") and rec["ts"][10] == "T"
    by = {}
    for rec in recs:
        by.setdefault(rec["event"], []).append(rec)
    for rec in by["job_start"]:
        assert {"jid", "class", "queue", "retry_count"} <= set(rec)
    for rec in by["job_done"]:
        assert {"jid", "class", "queue", "elapsed_ms", "retry_count"} <= set(rec)
        assert rec["elapsed_ms"] >= 0
    assert len(by["job_done"]) == 4  # 2 + AJ + the requeued one
    assert {rec["class"] for rec in by["job_done"]} == {"HardJob", "MyAjJob"}
    fails = {rec["class"]: rec for rec in by["job_fail"]}
    assert fails["FailJob"]["error_class"] == "RuntimeError" and fails["FailJob"]["error_message"] == "kaboom"
    assert {"jid", "queue", "elapsed_ms", "retry_count"} <= set(fails["FailJob"])
    assert by["retry_scheduled"][0]["class"] == "FailJob"
    assert [rec["class"] for rec in by["job_dead"]] == ["KillJob"]
    requeued = by["job_requeued"][0]
    assert requeued["sidecar_status"] == 503 and "503" in requeued["reason"]
    assert "unavailable" in requeued["reason"]  # a body excerpt comes along
    for event in ("breaker_open", "breaker_half_open", "startup", "heartbeat_registered", "http_listening",
                  "busy_dump", "shutdown_begin", "heartbeat_cleared", "shutdown_complete"):
        assert event in by, event
    assert by["breaker_open"][0]["level"] == "warn"


def test_text_log_format_and_level_filtering(redis_url, r, stub, worker):
    ruby_json(redis_url, """
      Sidekiq::Client.push("class" => "HardJob", "args" => [1])
      puts [Sidekiq::Client.push("class" => "FailJob", "args" => ["kaboom"])].to_json""")
    w = worker("-c", "1", "--log-format", "text", "--log-level", "warn")
    wait_until(lambda: processed(r) >= 2, 20, what="the jobs")
    assert w.stop() == 0
    lines = [ln for ln in Path(w.log_path).read_text().splitlines() if ln.strip()]
    assert lines and not any(ln.lstrip().startswith("{") for ln in lines)
    assert not any("job_start" in ln or "job_done" in ln or "startup" in ln for ln in lines)  # info: filtered
    (fail,) = [ln for ln in lines if "job_fail" in ln]
    assert " WARN " in fail and "class=FailJob" in fail and "error_message=kaboom" in fail


def test_a_taken_http_port_is_a_clear_startup_error(redis_url, stub, tmp_path):
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "fastworker", "--redis-url", redis_url, "--sidecar-url",
                              stub.url, "--http-host", "127.0.0.1", "--http-port", str(port)],
                             capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    recs = [json.loads(ln) for ln in res.stdout.splitlines() if ln.strip()]
    (failed,) = [rec for rec in recs if rec["event"] == "http_bind_failed"]
    assert failed["port"] == port and "in use" in failed["error_message"]
    assert any(rec["event"] == "crash" for rec in recs)


# -- the dashboard and the scrape config ----------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def test_the_dashboard_queries_only_metrics_that_exist(redis_url, r, stub, worker):
    import re

    dash = json.loads((ROOT / "deploy/grafana/fastworker.json").read_text())
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dash)
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"])
    used = {m for e in exprs for m in re.findall(r"\b((?:sidekiq|fastworker|process)_[a-z_]+)\b", e)}
    # what a worker exports (after one job, so the per-job families have samples) ...
    ruby_json(redis_url, 'puts [Sidekiq::Client.push("class" => "HardJob", "args" => [1])].to_json')
    w = worker("-c", "1")
    wait_until(lambda: processed(r) == 1, 10, what="a job")
    text = get(w.http_port, "/metrics")[1].decode()
    exported = set(re.findall(r"^# TYPE (\w+) ", text, re.M))  # families without samples yet too
    exported |= {n + s for n in exported for s in ("_bucket", "_sum", "_count")}
    exported |= {name for name, _ in scrape(w.http_port)}
    # ... and what the sidecar exports (sidecar/lib/fastworker/sidecar/metrics.rb)
    sidecar_src = (ROOT / "sidecar/lib/fastworker/sidecar/metrics.rb").read_text()
    sidecar = set(re.findall(r"(fastworker_sidecar_[a-z_]+)[ {]", sidecar_src))
    missing = sorted(u for u in used if u not in exported and u not in sidecar)
    assert not missing, missing
    assert len(used) > 25
    # every panel has a unique id and sits on the 24-column grid
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert all(0 <= p["gridPos"]["x"] and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dash["panels"])


def test_prometheus_scrapes_every_worker_replica_and_the_sidecar():
    import yaml

    cfg = yaml.safe_load((ROOT / "deploy/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    worker_sd = jobs["fastworker-worker"]["dns_sd_configs"][0]
    assert worker_sd == {"names": ["worker"], "type": "A", "port": 9394, "refresh_interval": "15s"}
    assert jobs["fastworker-sidecar"]["static_configs"][0]["targets"] == ["sidecar:3001"]
    assert all(j.get("metrics_path", "/metrics") == "/metrics" for j in jobs.values())
