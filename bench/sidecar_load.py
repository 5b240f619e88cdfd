"""Load the Ruby sidecar with no-op Sidekiq::Worker jobs: requests/s and sidecar CPU per request.

    python bench/sidecar_load.py                      # starts the sidecar on examples/rails_app
    python bench/sidecar_load.py --threads 10 --connections 10 --duration 10 --rails-env production
    python bench/sidecar_load.py --url http://127.0.0.1:3001 --pid 1234   # an already running sidecar
    python bench/sidecar_load.py --client wrk     # wrk (apt-get install wrk) instead of aiohttp
    python bench/sidecar_load.py --client wrk --batch 8   # POST /perform_batch, 8 jobs per request

Each connection is one keep-alive connection POSTing /perform with a NoopWorker payload shaped
like Sidekiq 6.4.1's (unique jid per request, Idempotency-Key header), back to back, like the
worker does. The default client is aiohttp (one Python process; on a 2-core machine it saturates
its core before the sidecar does); `--client wrk` uses wrk with a Lua script and leaves the
sidecar as the bottleneck. Sidecar CPU = utime+stime of the sidecar process (and its children, for
cluster mode) from /proc, over the measured window. Loopback only; bounded by --duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CLK_TCK = os.sysconf("SC_CLK_TCK")


def payload() -> tuple[bytes, str]:
    jid = secrets.token_hex(12)
    now = time.time()
    body = {"retry": True, "queue": "default", "args": [], "class": "NoopWorker", "jid": jid,
            "created_at": now, "enqueued_at": now}
    return json.dumps(body, separators=(",", ":")).encode(), jid


def cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` plus its live children (Puma cluster workers)."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / CLK_TCK


async def connection(session: aiohttp.ClientSession, url: str, stop_at: float, bodies: list[tuple[bytes, str]],
                     latencies: list[float], statuses: dict[int, int]) -> None:
    i = 0
    while time.monotonic() < stop_at:
        body, jid = bodies[i % len(bodies)]
        i += 1
        started = time.perf_counter()
        async with session.post(url, data=body, headers={"Content-Type": "application/json",
                                                         "Idempotency-Key": jid}) as resp:
            await resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
        latencies.append(time.perf_counter() - started)


async def run_load(url: str, pid: int, connections: int, duration: float, warmup: float) -> dict:
    bodies = [payload() for _ in range(5000)]
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        if warmup > 0:
            await asyncio.gather(*(connection(session, url, time.monotonic() + warmup, bodies, [], {})
                                   for _ in range(connections)))
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.gather(*(connection(session, url, t0 + duration, bodies, latencies, statuses)
                               for _ in range(connections)))
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
    elapsed = t1 - t0
    n = len(latencies)
    latencies.sort()
    done = statuses.get(200, 0)
    return {
        "requests": n, "statuses": statuses, "seconds": round(elapsed, 2),
        "requests_per_s": round(n / elapsed), "done_per_s": round(done / elapsed),
        "sidecar_cpu_percent": round(100 * (cpu1 - cpu0) / elapsed, 1),
        "sidecar_cpu_us_per_request": round(1e6 * (cpu1 - cpu0) / max(n, 1), 1),
        "p50_ms": round(1000 * latencies[n // 2], 2) if n else None,
        "p99_ms": round(1000 * latencies[min(n - 1, int(n * 0.99))], 2) if n else None,
    }


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
local batch = %(batch)d
request = function()
  local lines, keys = {}, {}
  for i = 1, batch do
    counter = counter + 1
    local jid = string.format("%%024d", counter)
    keys[i] = jid
    lines[i] = '{"retry":true,"queue":"default","args":[],"class":"NoopWorker","jid":"' .. jid ..
      '","created_at":1700000000.123456,"enqueued_at":1700000000.124}'
  end
  if batch == 1 then
    wrk.headers["Idempotency-Key"] = keys[1]
  else
    wrk.headers["Idempotency-Keys"] = table.concat(keys, ",")
  end
  return wrk.format(nil, nil, nil, table.concat(lines, "\\n"))
end
"""


def _found(pattern: str, text: str) -> re.Match[str]:
    m = re.search(pattern, text)
    if m is None:
        raise SystemExit(f"wrk printed no {pattern!r}:\n{text}")
    return m


def _wrk_ms(text: str) -> float:
    value, unit = _found(r"^([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, pid: int, connections: int, duration: float, warmup: float, wrk_threads: int,
            batch: int = 1) -> dict:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT % {"batch": batch})
    base = ["wrk", "-t", str(min(wrk_threads, connections)), "-c", str(connections), "-s", f.name, "--latency"]
    try:
        if warmup > 0:
            subprocess.run(base + ["-d", f"{max(1, int(warmup))}s", url], capture_output=True, check=True)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        out = subprocess.run(base + ["-d", f"{int(duration)}s", url], capture_output=True, text=True, check=True).stdout
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
    finally:
        os.unlink(f.name)
    n = int(_found(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    elapsed = t1 - t0
    rps = float(_found(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {
        "requests": n, "non_2xx": int(non_2xx.group(1)) if non_2xx else 0, "seconds": round(elapsed, 2),
        "requests_per_s": round(rps), "jobs_per_s": round(rps * batch),
        "sidecar_cpu_percent": round(100 * (cpu1 - cpu0) / elapsed, 1),
        "sidecar_cpu_us_per_request": round(1e6 * (cpu1 - cpu0) / max(n, 1), 1),
        "sidecar_cpu_us_per_job": round(1e6 * (cpu1 - cpu0) / max(n * batch, 1), 1),
        "p50_ms": _wrk_ms(_found(r"50%\s+(\S+)", out).group(1)),
        "p99_ms": _wrk_ms(_found(r"99%\s+(\S+)", out).group(1)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="an already running sidecar (then --pid is needed for CPU)")
    ap.add_argument("--pid", type=int, help="pid of that sidecar")
    ap.add_argument("--threads", type=int, default=10, help="sidecar --threads (default 10, the sidecar default)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--connections", type=int, default=None, help="client connections (default: threads x workers)")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--rails-env", default="production")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--job-log", action="store_true", help="FASTWORKER_SIDECAR_JOB_LOG=1 (Sidekiq's start/done lines)")
    ap.add_argument("--client", choices=("aiohttp", "wrk"), default="aiohttp")
    ap.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (default 1: leaves the other core to Ruby)")
    ap.add_argument("--batch", type=int, default=1, help="jobs per request; > 1 uses POST /perform_batch (wrk client)")
    args = ap.parse_args()
    if args.batch > 1 and args.client != "wrk":
        ap.error("--batch needs --client wrk")
    connections = args.connections or args.threads * args.workers

    sidecar = None
    if args.url:
        if not args.pid:
            ap.error("--url needs --pid")
        url, pid = args.url.rstrip("/"), args.pid
    else:
        from tests.helpers.rails import start_sidecar
        # unsigned load (wrk cannot sign): the sidecar runs without a secret, on loopback only;
        # the signature check costs a few microseconds per request (docs/design.md "Authentication")
        env = {"FASTWORKER_SIDECAR_JOB_LOG": "1" if args.job_log else "0", "RAILS_LOG_TO_STDOUT": "",
               "FASTWORKER_SIDECAR_SECRET": ""}
        sidecar = start_sidecar(args.redis_url, threads=args.threads, workers=args.workers,
                                rails_env=args.rails_env, env=env)
        url, pid = sidecar.url, sidecar.proc.pid
    try:
        if args.client == "wrk":
            path = "/perform_batch" if args.batch > 1 else "/perform"
            result = run_wrk(url + path, pid, connections, args.duration, args.warmup, args.wrk_threads, args.batch)
        else:
            result = asyncio.run(run_load(url + "/perform", pid, connections, args.duration, args.warmup))
    finally:
        if sidecar is not None:
            sidecar.stop()
    result.update({"threads": args.threads, "workers": args.workers, "connections": connections,
                   "rails_env": args.rails_env, "job_log": args.job_log, "client": args.client, "batch": args.batch})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
