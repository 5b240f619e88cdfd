"""Pickup latency of an idle worker: LPUSH -> the STUB sidecar receives the job.

The worker sits idle (every queue empty, its wakers blocked on BLMOVE); a job is pushed every
--gap seconds and the stub records when it arrives. Prints p50/p99/max in milliseconds.

    python bench/pickup.py --jobs 200
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import os  # noqa: E402

from tests.helpers.procs import StubSidecar, free_port, wait_until, with_secret  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--gap", type=float, default=0.02)
    ap.add_argument("--queues", default="critical,default")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    a = ap.parse_args()
    r = redis.Redis.from_url(a.redis_url)
    r.flushdb()
    stub = StubSidecar(record=True)
    w = subprocess.Popen([sys.executable, "-m", "fastworker", "--redis-url", a.redis_url, "--sidecar-url", stub.url,
                          "-q", a.queues, "-c", "5", "--http-port", str(free_port()), "--log-level", "warn"],
                         cwd=ROOT, env=with_secret(dict(os.environ)), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)  # started and idle
        queue = a.queues.split(",")[-1].split(":")[0]
        pushed = {}
        for i in range(a.jobs):
            jid = f"{i:024x}"
            pushed[jid] = time.time()
            r.lpush(f"queue:{queue}", orjson.dumps({"class": "HardJob", "args": [i], "jid": jid, "queue": queue,
                                                     "retry": True, "created_at": pushed[jid],
                                                     "enqueued_at": pushed[jid]}))
            time.sleep(a.gap)
        wait_until(lambda: len(stub.stats()["records"]) >= a.jobs, 30, 0.05, "all jobs")
        lags = sorted((rec["t"] - pushed[rec["jid"]]) * 1000 for rec in stub.stats()["records"])
    finally:
        w.terminate()
        w.wait(30)
        stub.stop()
    print(json.dumps({"jobs": len(lags), "queues": a.queues, "p50_ms": round(statistics.median(lags), 3),
                      "p99_ms": round(lags[int(len(lags) * 0.99) - 1], 3), "max_ms": round(lags[-1], 3)}))


if __name__ == "__main__":
    main()
