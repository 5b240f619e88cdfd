"""Scheduler benchmark: moving due jobs, and the cost of a poll over a large future set.

    python bench/scheduler.py                      # a private redis-server on a free loopback port
    python bench/scheduler.py --redis-url redis://127.0.0.1:6379/12   # a DB of yours (FLUSHED)

Measures, with Sidekiq 6.4.1-shaped payloads (~230 bytes):
1. moving 100,000 due jobs from ``schedule`` to their queue: one scheduler process, then 4
   processes at once (as 4 workers would), checked afterwards: every job exactly once;
2. one poll of an idle scheduler (nothing due) over 1,000,000 future entries in ``schedule``,
   against the same poll over empty sets: wall time per poll and Redis's own usec per ZRANGE;
3. moving 10,000 due jobs that sit among those 1,000,000 future entries.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastworker.broker import RedisHealth  # noqa: E402
from fastworker.clock import REAL_CLOCK  # noqa: E402
from fastworker.keys import Keys  # noqa: E402
from fastworker.scheduler import Scheduler  # noqa: E402
from tests.helpers.sync_redis import SyncRedis  # noqa: E402


JID_BASE = os.urandom(8).hex()  # jids as SecureRandom.hex(12) makes them: hex, not digit runs


def payload(i: int, created: float) -> bytes:
    return orjson.dumps({"retry": True, "queue": "default", "args": [i, "some-argument", {"user_id": i * 7}],
                         "class": "HardJob", "jid": JID_BASE + f"{i:08x}", "created_at": created,
                         "tags": ["bench"], "backtrace": False})


def seed(r: SyncRedis, key: str, n: int, score: Callable[[int], float], start: int = 0) -> None:
    now = time.time()
    for lo in range(start, start + n, 10_000):
        hi = min(lo + 10_000, start + n)
        r.zadd(key, {payload(i, now - 60): score(i) for i in range(lo, hi)})


def scheduler(url: str) -> Scheduler:
    return Scheduler(aioredis.from_url(url), Keys(), RedisHealth(), REAL_CLOCK, poll_interval=1.0,
                     sidekiq_version="auto", dead_max_jobs=10_000, dead_timeout=15_552_000)


def _tick_process(url: str, go: Any, out: Any) -> None:
    async def run() -> dict[str, int]:
        s = scheduler(url)
        await s.redis.ping()
        go.wait()
        counts = await s.tick()
        await s.redis.aclose()
        return counts

    counts = asyncio.run(run())
    out.put((counts["schedule"], time.perf_counter()))


def move_due(url: str, r: SyncRedis, n: int, workers: int) -> float:
    """Seconds from the start signal until the last of ``workers`` scheduler processes is done."""
    r.flushdb()
    now = time.time()
    seed(r, "schedule", n, lambda i: now - 10 + i * 1e-6)
    ctx = multiprocessing.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_tick_process, args=(url, go, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # all connected and waiting
    t0 = time.perf_counter()
    go.set()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
    elapsed = max(t for _, t in results) - t0
    moved = sum(m for m, _ in results)
    assert moved == n and r.llen("queue:default") == n and r.zcard("schedule") == 0, (moved, r.llen("queue:default"))
    jids = {orjson.loads(m)["jid"] for m in r.lrange("queue:default", 0, -1)}
    assert len(jids) == n
    return elapsed


async def idle_polls(url: str, r: SyncRedis, polls: int) -> tuple[list[float], float]:
    s = scheduler(url)
    await s.redis.ping()
    r.config_resetstat()
    times = []
    for _ in range(polls):
        t0 = time.perf_counter()
        counts = await s.tick()
        times.append(time.perf_counter() - t0)
        assert counts == {"retry": 0, "schedule": 0}
    await s.redis.aclose()
    stats = r.info("commandstats").get("cmdstat_zrange", {})
    return times, float(stats.get("usec_per_call", 0.0))


def fmt_ms(xs: list[float]) -> str:
    xs = sorted(xs)
    return (f"median {statistics.median(xs) * 1000:.3f} ms, p99 {xs[int(len(xs) * 0.99) - 1] * 1000:.3f} ms, "
            f"max {xs[-1] * 1000:.3f} ms")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def main(url: str) -> None:
    r: SyncRedis = redis.Redis.from_url(url)
    print(f"redis {r.info('server')['redis_version']} at {url}; python {sys.version.split()[0]}; "
          f"{os.cpu_count()} CPUs")

    for workers in (1, 4):
        best = min([move_due(url, r, 100_000, workers) for _ in range(3)])
        print(f"move 100,000 due jobs, {workers} scheduler(s): {best:.3f} s  ({100_000 / best:,.0f} jobs/s, best of 3)")

    r.flushdb()
    empty, empty_us = await idle_polls(url, r, 500)
    print(f"idle poll, empty sets:              {fmt_ms(empty)}; redis {empty_us:.2f} us per ZRANGE")
    seed(r, "schedule", 1_000_000, lambda i: time.time() + 3600 + i)
    assert r.zcard("schedule") == 1_000_000
    big, big_us = await idle_polls(url, r, 500)
    print(f"idle poll, 1,000,000 future entries: {fmt_ms(big)}; redis {big_us:.2f} us per ZRANGE")

    now = time.time()
    seed(r, "schedule", 10_000, lambda i: now - 5 + i * 1e-6, start=2_000_000)
    s = scheduler(url)
    await s.redis.ping()
    t0 = time.perf_counter()
    counts = await s.tick()
    elapsed = time.perf_counter() - t0
    await s.redis.aclose()
    assert counts["schedule"] == 10_000 and r.zcard("schedule") == 1_000_000
    print(f"move 10,000 due among 1,000,000 future: {elapsed:.3f} s  ({10_000 / elapsed:,.0f} jobs/s)")
    r.flushdb()
    r.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", help="a Redis DB to FLUSH and use (default: a private redis-server)")
    args = ap.parse_args()
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    if args.redis_url:
        with runner:
            runner.run(main(args.redis_url))
        sys.exit(0)
    if not shutil.which("redis-server"):
        sys.exit("redis-server not found: pass --redis-url")
    port = free_port()
    srv = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                            "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        client.close()
        with runner:
            runner.run(main(f"redis://127.0.0.1:{port}/0"))
    finally:
        srv.terminate()
        srv.wait()
