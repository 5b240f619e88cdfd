"""End-to-end throughput of fastworker: N no-op jobs, worker -> STUB sidecar (no Ruby).

Measures jobs/s (first fetch to last ack), the worker's CPU µs per job (user+sys from /proc),
and its peak RSS. The stub sidecar runs in its own process, so its CPU is not counted.

    python bench/throughput.py --jobs 100000 --concurrency 25
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.helpers.procs import StubSidecar, free_port, wait_until, with_secret  # noqa: E402
from tests.helpers.sync_redis import SyncRedis  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sidekiq_payload(i: int, now: float) -> bytes:
    """What Sidekiq 6.4.1's client writes for HardJob.perform_async(i, "x")."""
    return orjson.dumps({"retry": True, "queue": "default", "class": "NoopJob", "args": [i, "x"],
                         "jid": f"{i:024x}", "created_at": now, "enqueued_at": now})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=25)
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    ap.add_argument("--log-level", default="warn", help="info = per-job start/done lines, as Sidekiq's default")
    ap.add_argument("--sidecar-url", default=None, help="use a running sidecar instead of the stub")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    r: SyncRedis = redis.Redis.from_url(a.redis_url)
    r.flushdb()
    now = time.time()
    p = r.pipeline(transaction=False)
    for i in range(a.jobs):
        p.lpush("queue:default", sidekiq_payload(i, now))
        if i % 10_000 == 9_999:
            p.execute()
    p.execute()
    r.sadd("queues", "default")

    stub = None if a.sidecar_url else StubSidecar(record=False)
    url = a.sidecar_url if stub is None else stub.url
    log = open(os.devnull, "wb")
    w = subprocess.Popen([sys.executable, "-m", "fastworker", "--redis-url", a.redis_url, "--sidecar-url", url,
                          "-c", str(a.concurrency), "--http-port", str(free_port()), "--log-level", a.log_level],
                         cwd=ROOT, env=with_secret(dict(os.environ)), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: r.llen("queue:default") < a.jobs, 30, 0.001, "first fetch")
        t0 = time.monotonic()
        cpu0 = cpu_seconds(w.pid)
        wait_until(lambda: int(r.get("stat:processed") or 0) >= a.jobs, 600, 0.01, "all jobs done")
        elapsed = time.monotonic() - t0
        cpu = cpu_seconds(w.pid) - cpu0
        rss = peak_rss_mb(w.pid)
    finally:
        w.terminate()
        w.wait(30)
        if stub:
            stub.stop()
    res = {"jobs": a.jobs, "concurrency": a.concurrency, "log_level": a.log_level,
           "jobs_per_s": round(a.jobs / elapsed), "worker_cpu_us_per_job": round(cpu / a.jobs * 1e6, 1),
           "worker_peak_rss_mb": round(rss, 1), "elapsed_s": round(elapsed, 2)}
    print(json.dumps(res) if a.json else "\n".join(f"{k:>24}: {v}" for k, v in res.items()))


if __name__ == "__main__":
    main()
