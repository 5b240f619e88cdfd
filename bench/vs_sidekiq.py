"""fastworker + sidecar against the real Sidekiq 6.4.1, on the same Rails app and the same jobs.

Throughput: N jobs are enqueued first (Sidekiq's client, push_bulk), then the server under test
starts; timing runs from its first fetch to the last job. CPU is user+sys of every server-side
process (Sidekiq; or fastworker plus the sidecar and its Puma workers); memory is the sum of their
peak RSS (VmHWM).
Latency: LatencyWorker jobs pushed at a steady rate while the server runs; each job records
start time minus the enqueued_at it carries, and the script prints p50/p99.

    python bench/vs_sidekiq.py --jobs 100000 --kind worker --log warn
    python bench/vs_sidekiq.py --jobs 50000 --kind activejob --log info --servers fastworker
    python bench/vs_sidekiq.py --latency --rate 500 --seconds 10
The app is bench/app (Rails 6.1, no database). --log info keeps the per-job start/done lines of
both servers (Sidekiq's default); --log warn turns them off in both.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson
import redis

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "bench/app"
sys.path.insert(0, str(ROOT))
from tests.helpers.procs import free_port, wait_http, wait_until  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> list[int]:
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            for child in Path(f"/proc/{pid}/task/{task}/children").read_text().split():
                out.extend(tree(int(child)))
    except OSError:
        pass
    return out


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / TICK
        except OSError:
            pass
    return total


def hwm_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def enqueue(redis_url: str, kind: str, n: int) -> None:
    ruby = f"""
      Dir.chdir({str(APP)!r}); require "./config/environment"
      n = {n}
      while n > 0
        k = [n, 10_000].min
        if {kind!r} == "worker"
          Sidekiq::Client.push_bulk("class" => NoopWorker, "args" => Array.new(k) {{ [] }})
        else
          Sidekiq::Client.push_bulk("class" => ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper,
            "wrapped" => "NoopJob", "queue" => "default", "args" => Array.new(k) {{ [NoopJob.new.serialize] }})
        end
        n -= k
      end"""
    subprocess.run(["ruby", "-e", ruby], check=True, env=dict(os.environ, REDIS_URL=redis_url, BENCH_LOG_LEVEL="warn"),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Server:
    """One server setup under test: start(), pids(), stop()."""

    def __init__(self, name: str, redis_url: str, log: str, concurrency: int, processes: int) -> None:
        self.name, self.redis_url, self.log, self.c, self.n = name, redis_url, log, concurrency, processes
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, REDIS_URL=redis_url, BENCH_LOG_LEVEL=log, RAILS_ENV="production",
                        MALLOC_ARENA_MAX="2")

    def start(self) -> None:
        out = subprocess.DEVNULL
        if self.name == "sidekiq":
            for _ in range(self.n):  # one Sidekiq process per core is the fair baseline
                self.procs.append(subprocess.Popen(["sidekiq", "-r", str(APP), "-c", str(self.c), "-q", "default"],
                                                   env=self.env, stdout=out, stderr=out, cwd=APP))
        else:
            port = free_port()
            side = subprocess.Popen(["ruby", str(ROOT / "sidecar/bin/fastworker-sidecar"), "--rails-root", str(APP),
                                     "--port", str(port), "--threads", str(self.c), "--workers", str(self.n)],
                                    env=self.env, stdout=out, stderr=out)
            self.procs.append(side)
            wait_http(f"http://127.0.0.1:{port}/health", 60, side)
            level = "info" if self.log == "info" else "warn"
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "fastworker", "--redis-url", self.redis_url, "--sidecar-url",
                 f"http://127.0.0.1:{port}", "-c", str(self.c * self.n), "--http-port", "0", "--log-level", level],
                env=self.env, stdout=out, stderr=out, cwd=ROOT))

    def pids(self) -> list[int]:
        return [pid for p in self.procs for pid in tree(p.pid)]

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(40)
            except subprocess.TimeoutExpired:
                p.kill()


def throughput(a: argparse.Namespace, name: str) -> dict:
    r = redis.Redis.from_url(a.redis_url)
    r.flushdb()
    enqueue(a.redis_url, a.kind, a.jobs)
    assert r.llen("queue:default") == a.jobs
    srv = Server(name, a.redis_url, a.log, a.concurrency, a.processes)
    srv.start()
    try:
        wait_until(lambda: r.llen("queue:default") < a.jobs, 120, 0.001, "first fetch")
        t0 = time.monotonic()
        pids = srv.pids()
        cpu0 = cpu_of(pids)
        py0 = cpu_of([srv.procs[-1].pid]) if name == "fastworker" else 0.0
        wait_until(lambda: r.llen("queue:default") == 0, 900, 0.005, "queue drained")
        if name == "fastworker":  # fastworker's counters are flushed continuously
            wait_until(lambda: int(r.get("stat:processed") or 0) >= a.jobs, 60, 0.005, "all processed")
        elapsed = time.monotonic() - t0
        pids = srv.pids()
        cpu = cpu_of(pids) - cpu0
        py = cpu_of([srv.procs[-1].pid]) - py0 if name == "fastworker" else 0.0
        mem = hwm_mb(pids)
    finally:
        srv.stop()
    done = int(r.get("stat:processed") or 0)
    return {"server": name, "kind": a.kind, "log": a.log, "jobs": a.jobs, "processed": done,
            "processes": a.processes, "concurrency": a.concurrency,
            "jobs_per_s": round(a.jobs / elapsed), "cpu_us_per_job": round(cpu / a.jobs * 1e6, 1),
            "peak_rss_mb": round(mem, 1),
            **({"worker_cpu_us_per_job": round(py / a.jobs * 1e6, 1)} if name == "fastworker" else {})}


def latency(a: argparse.Namespace, name: str) -> dict:
    r = redis.Redis.from_url(a.redis_url)
    r.flushdb()
    srv = Server(name, a.redis_url, a.log, a.concurrency, a.processes)
    srv.start()
    try:
        time.sleep(8 if name == "sidekiq" else 2)  # boot
        total = int(a.rate * a.seconds)
        t_start = time.monotonic()
        for i in range(total):
            due = t_start + i / a.rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            now = time.time()
            r.lpush("queue:default", orjson.dumps({"retry": True, "queue": "default", "class": "LatencyWorker",
                                                   "args": [now], "jid": secrets.token_hex(12),
                                                   "created_at": now, "enqueued_at": now}))
        wait_until(lambda: r.llen("bench:latency") >= total, 60, 0.01, "latency samples")
    finally:
        srv.stop()
    lags = sorted(float(x) * 1000 for x in r.lrange("bench:latency", 0, -1))
    return {"server": name, "rate_per_s": a.rate, "samples": len(lags), "p50_ms": round(statistics.median(lags), 2),
            "p99_ms": round(lags[int(len(lags) * 0.99) - 1], 2), "max_ms": round(lags[-1], 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--kind", choices=["worker", "activejob"], default="worker")
    ap.add_argument("--log", choices=["info", "warn"], default="warn")
    ap.add_argument("--concurrency", type=int, default=10, help="Sidekiq -c / sidecar threads per process")
    ap.add_argument("--processes", type=int, default=1, help="Sidekiq processes / sidecar Puma workers")
    ap.add_argument("--servers", default="sidekiq,fastworker")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--rate", type=float, default=500)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    a = ap.parse_args()
    for name in a.servers.split(","):
        res = latency(a, name) if a.latency else throughput(a, name)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
