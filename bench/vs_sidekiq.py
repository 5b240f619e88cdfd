"""fastworker + sidecar against the real Sidekiq 6.4.1, on the same Rails app and the same jobs.

Every figure that matters is a ratio of servers run back to back on the same jobs in one run: these
machines are shared and noisy, and absolute figures drift within minutes (../shared/anchors.md).

Setups (--machine):
  one    Sidekiq: one process at -c 10. fastworker: one worker at -c 10 before a single-mode
         sidecar of 10 threads.
  whole  Sidekiq: one process per core. fastworker: ONE worker at -c 10 x cores before a sidecar
         with one Puma worker per core, 10 threads each.
  --processes N sets the process / Puma worker count directly; --concurrency sets the 10.

Modes:
  throughput (default)  N no-op jobs are enqueued with Sidekiq's client (push_bulk) and moved
      aside before the server starts (--kind wait: jobs that sleep 0.2 ms, as one quick query
      waits, then RPUSH; --kind redis: jobs that only RPUSH, one quick round trip).
      --kind worker|activejob|both|wait|redis and --log info|warn|both run
      every combination; within one the servers run back to back on the same jobs (sidekiq,
      fastworker, then the stub with --stub), and a ratio line follows. Once every server process
      has written its process record, --warmup W jobs are released into the queue and run (so the
      worker's batching is engaged), then the N jobs are released at once (RENAME); timing runs
      from that release to the last of them. --repeat R runs R such rounds, and the ratio line
      compares each server's medians. CPU is user+sys of
      every server-side process (Sidekiq; or the worker, the sidecar master and its Puma workers);
      peak RSS is the sum of their VmHWM; peak PSS is the largest sum of their Pss, sampled every
      0.5 s, which counts copy-on-write pages shared by forked Puma workers once.
  --stub  adds fastworker against the Python stub sidecar (no Ruby) on the same jobs, and prints
      the worker's CPU per job against the real sidecar and against the stub (goal: <= 1.5x).
  --latency  LatencyWorker jobs pushed at a steady --rate for --seconds into a booted, idle
      server; each records its start time minus the enqueued_at it carries. Prints p50/p90/p99/max
      and the p50 and p99 ratios. --rate half first measures Sidekiq's peak on LatencyWorker jobs
      (a throughput run of --jobs, default 20,000) and runs both servers at half of it.
  --slow  200 SleepWorker jobs of 50 ms: wall time and the most that ran at once, from the start
      and end times the jobs record; both servers must reach their concurrency (exit 1 if not).
  --quick  for CI: Sidekiq::Worker, one process, WARN and INFO, 20,000 jobs after a 3,000-job
      warm-up, three rounds (the medians); prints only the ratio lines. About 70 s. One round
      of 5,000 jobs lasted a third of a second, and a single stall swung its ratio 0.77-1.14x.

Output: one JSON line per server run and a JSON ratio record per combination, plus a human ratio
line; --json prints only the JSON, --quick only the ratio lines (as JSON with --json).
--log info keeps the per-job start/done lines of both servers (Sidekiq's default); --log warn turns
them off in both. The app is bench/app (Rails 6.1, no database). The script flushes its Redis DB.

    python bench/vs_sidekiq.py --redis-url redis://127.0.0.1:6379/11 --jobs 100000 --kind both --log both
    python bench/vs_sidekiq.py --redis-url redis://127.0.0.1:6379/11 --jobs 50000 --machine whole --stub
    python bench/vs_sidekiq.py --redis-url redis://127.0.0.1:6379/11 --latency --rate half --seconds 10
    python bench/vs_sidekiq.py --redis-url redis://127.0.0.1:6379/11 --slow --machine whole
    python bench/vs_sidekiq.py --redis-url redis://127.0.0.1:6379/11 --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import orjson
import redis

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "bench/app"
sys.path.insert(0, str(ROOT))
from tests.helpers.procs import StubSidecar, free_port, wait_http, wait_until, with_secret  # noqa: E402
from tests.helpers.sync_redis import SyncRedis  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
QUEUE = "queue:default"
SLOW_JOBS, SLOW_MS = 200, 50
WAIT_MS = 0.2  # --kind wait: a job that waits about as long as one quick database query, then RPUSHes


# --- what the server-side processes cost -------------------------------------------------------

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


def proc_kb(pids: list[int], file: str, field: str) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1])
                    break
        except OSError:
            pass
    return total


def hwm_mb(pids: list[int]) -> float:
    return proc_kb(pids, "status", "VmHWM:") / 1024


def pss_mb(pids: list[int]) -> float:
    return proc_kb(pids, "smaps_rollup", "Pss:") / 1024


class PeakPss(threading.Thread):
    """The largest summed PSS of a server's processes at one instant, sampled every 0.5 s.

    Summed RSS counts the pages forked Puma workers share with their master once per process;
    PSS splits each shared page among its sharers, so the sum counts it once.
    """

    def __init__(self, srv: Server) -> None:
        super().__init__(daemon=True)
        self.srv, self.peak, self.done = srv, 0.0, threading.Event()
        self.start()

    def run(self) -> None:
        while True:
            self.peak = max(self.peak, pss_mb(self.srv.pids()))
            if self.done.wait(0.5):
                return

    def finish(self) -> float:
        self.done.set()
        self.join()
        return max(self.peak, pss_mb(self.srv.pids()))


# --- jobs and servers --------------------------------------------------------------------------

ENQUEUE_RB = """
  Dir.chdir(ENV["BENCH_APP"]); require "./config/environment"
  ENV["BENCH_BATCHES"].split.each do |batch|
    staged, n = batch.split("="); n = Integer(n)
    next if n.zero?
    while n > 0
      k = [n, 10_000].min
      case ENV["BENCH_KIND"]
      when "worker" then Sidekiq::Client.push_bulk("class" => NoopWorker, "args" => Array.new(k) { [] })
      when "activejob"  # what ActiveJob's Sidekiq adapter pushes for NoopJob.perform_later
        Sidekiq::Client.push_bulk("class" => ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper,
          "wrapped" => "NoopJob", "queue" => "default", "args" => Array.new(k) { [NoopJob.new.serialize] })
      when "latency", "redis" # redis: the same jobs timed for throughput (their lag is not read)
        Sidekiq::Client.push_bulk("class" => LatencyWorker,
          "args" => Array.new(k) { [Process.clock_gettime(Process::CLOCK_REALTIME)] })
      when "sleep"
        Sidekiq::Client.push_bulk("class" => SleepWorker, "args" => Array.new(k) { [Integer(ENV["BENCH_SLEEP_MS"])] })
      when "wait"
        Sidekiq::Client.push_bulk("class" => SleepWorker, "args" => Array.new(k) { [Float(ENV["BENCH_WAIT_MS"])] })
      else raise "unknown kind #{ENV["BENCH_KIND"]}"
      end
      n -= k
    end
    Sidekiq.redis { |c| c.rename("queue:default", staged) } unless staged == "queue:default"
  end"""


def enqueue(redis_url: str, kind: str, batches: dict[str, int]) -> None:
    """Push each batch with Sidekiq's client, as the app would, then move it aside to the staged
    list named by its key ("queue:default" leaves it in the queue)."""
    env = dict(os.environ, REDIS_URL=redis_url, BENCH_LOG_LEVEL="warn", BENCH_APP=str(APP), BENCH_KIND=kind,
               BENCH_BATCHES=" ".join(f"{k}={n}" for k, n in batches.items()), BENCH_SLEEP_MS=str(SLOW_MS),
               BENCH_WAIT_MS=str(WAIT_MS))
    res = subprocess.run(["ruby", "-e", ENQUEUE_RB], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True)
    if res.returncode:  # redis-rb's deprecation notices on every push_bulk are noise, unless it failed
        raise SystemExit(f"enqueue {kind} failed ({res.returncode}):\n{res.stderr}")


def unix_health(path: str, proc: subprocess.Popen) -> bool:
    """GET /health over the sidecar's Unix socket answered 200."""
    if proc.poll() is not None:
        raise AssertionError(f"the sidecar exited with {proc.returncode} before {path} answered")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1)
            sock.connect(path)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


class Server:
    """One server setup under test: "sidekiq", "fastworker" (real sidecar) or "stub" (fastworker
    before the Python stub sidecar). start(), wait_ready(), pids(), stop()."""

    def __init__(self, name: str, a: argparse.Namespace, log: str) -> None:
        self.name, self.redis_url, self.log, self.c, self.n = name, a.redis_url, log, a.concurrency, a.processes
        self.transport = getattr(a, "transport", "tcp")
        self.procs: list[subprocess.Popen] = []
        self.worker_pid: int | None = None  # the fastworker process, for its own CPU and /metrics
        self.http_port = 0
        # one secret for the worker and either sidecar (the stub starts with the same one)
        self.env = with_secret(dict(os.environ, REDIS_URL=a.redis_url, BENCH_LOG_LEVEL=log, RAILS_ENV="production",
                                    MALLOC_ARENA_MAX="2"))

    def start(self) -> None:
        out = subprocess.DEVNULL
        if self.name == "sidekiq":
            for _ in range(self.n):
                self.procs.append(subprocess.Popen(["sidekiq", "-r", str(APP), "-c", str(self.c), "-q", "default"],
                                                   env=self.env, stdout=out, stderr=out, cwd=APP))
            return
        if self.name == "stub":
            stub = StubSidecar(record=False)
            self.procs.append(stub.proc)
            url = stub.url
        else:
            if self.transport == "unix":  # a sidecar on the same host: a shared socket file, as in a pod
                path = os.path.join(tempfile.mkdtemp(prefix="fw-bench-"), "sidecar.sock")
                url, listen = f"unix://{path}", ["--socket", path]
            else:
                port = free_port()
                url, listen = f"http://127.0.0.1:{port}", ["--port", str(port)]
            side = subprocess.Popen(["ruby", str(ROOT / "sidecar/bin/fastworker-sidecar"), "--rails-root", str(APP),
                                     *listen, "--threads", str(self.c), "--workers", str(self.n)],
                                    env=self.env, stdout=out, stderr=out)
            self.procs.append(side)
            if self.transport == "unix":
                wait_until(lambda: unix_health(path, side), 120, 0.05, f"{url}/health")
            else:
                wait_http(f"{url}/health", 120, side)
        # one worker for the whole sidecar: its concurrency covers every Puma worker's threads
        self.http_port = free_port()
        worker = subprocess.Popen(
            [sys.executable, "-m", "fastworker", "--redis-url", self.redis_url, "--sidecar-url", url,
             "-c", str(self.c * self.n), "--http-host", "127.0.0.1", "--http-port", str(self.http_port),
             "--log-level", self.log],
            env=self.env, stdout=out, stderr=out, cwd=ROOT)
        self.procs.append(worker)
        self.worker_pid = worker.pid

    def wait_ready(self, r: SyncRedis) -> None:
        """Booted and fetching: each Sidekiq process, or the worker, has written its process record
        (the sidecar answered /health before the worker started). Identities are host:pid:nonce,
        for both servers; a record of any other process means a stray server on this Redis DB,
        which would take jobs and spoil every count."""
        ours = {p.pid for p in self.procs} if self.name == "sidekiq" else {self.worker_pid}

        def ready() -> bool:
            for p in self.procs:
                if p.poll() is not None:
                    raise AssertionError(f"{self.name}: a process exited with {p.returncode} during boot")
            idents = [i.decode() if isinstance(i, bytes) else i for i in r.smembers("processes")]
            pids = {int(ident.split(":")[-2]) for ident in idents}
            if pids - ours:
                raise SystemExit(f"another server has a process record in {self.redis_url}: {sorted(pids - ours)}")
            return pids == ours
        wait_until(ready, 120, 0.05, f"{self.name} process records")

    def refusals(self) -> dict:
        """From the worker's /metrics: jobs the sidecar refused (503, e.g. at capacity) and breaker
        openings. Either one stalls the worker, so a run with them measures the stall, not the pace."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        found = {}
        for key, pattern in (("sidecar_unavailable", r'^fastworker_sidecar_calls_total{outcome="unavailable"} (\S+)'),
                             ("breaker_opens", r'^fastworker_breaker_transitions_total{state="open"} (\S+)')):
            m = re.search(pattern, text, re.M)
            found[key] = round(float(m.group(1))) if m else 0
        return found

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
                p.wait()


def label(a: argparse.Namespace, *parts: str) -> str:
    setup = "one" if a.processes == 1 else "whole" if a.processes == CORES else f"{a.processes}proc"
    return "/".join([*parts, setup])


def ratio_of(num: float, den: float) -> float | None:
    return round(num / den, 2) if den else None  # None: too few jobs for a CPU tick, say


def times(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}x"


# --- throughput --------------------------------------------------------------------------------

def processed(r: SyncRedis) -> int:
    return int(r.get("stat:processed") or 0)


def run_batch(r: SyncRedis, name: str, staged: str, n: int) -> None:
    """Release a staged batch of n jobs into the queue at once (RENAME wakes blocked fetches) and
    wait until the server is through it."""
    base = processed(r)
    r.rename(staged, QUEUE)
    if name == "sidekiq":
        # Sidekiq writes stat:processed only at its 5 s heartbeat, so its progress is what left the
        # queue (at most -c jobs per process are still running, as at the start: it cancels out)
        wait_until(lambda: r.llen(QUEUE) == 0, 900, 0.005, "queue drained")
    else:
        # fastworker fetches ahead but flushes the counter as jobs finish: its progress is what finished
        wait_until(lambda: processed(r) - base >= n, 900, 0.005, "jobs processed")


def throughput(a: argparse.Namespace, name: str, kind: str, log: str) -> dict:
    r: SyncRedis = redis.Redis.from_url(a.redis_url)
    r.flushdb()
    enqueue(a.redis_url, kind, {"bench:warmup": a.warmup, "bench:timed": a.jobs})
    if r.llen("bench:timed") != a.jobs:
        raise SystemExit(f"staged {r.llen('bench:timed')} of {a.jobs} jobs: another server on {a.redis_url}?")
    srv = Server(name, a, log)
    srv.start()
    pss = PeakPss(srv)
    try:
        # jobs wait staged until every process is up: timing from the first fetch would count the
        # boot of a second Sidekiq process against Sidekiq
        srv.wait_ready(r)
        if a.warmup:
            run_batch(r, name, "bench:warmup", a.warmup)
        t0 = time.monotonic()
        cpu0 = cpu_of(srv.pids())
        w0 = cpu_of([srv.worker_pid]) if srv.worker_pid else 0.0
        run_batch(r, name, "bench:timed", a.jobs)
        elapsed = time.monotonic() - t0
        pids = srv.pids()
        cpu = cpu_of(pids) - cpu0
        wcpu = cpu_of([srv.worker_pid]) - w0 if srv.worker_pid else 0.0
        rss = hwm_mb(pids)
        peak_pss = pss.finish()
        refused = srv.refusals() if srv.worker_pid else {}
    finally:
        srv.stop()
    res = {"server": name, "kind": kind, "log": log, "jobs": a.jobs, "warmup": a.warmup,
           "processed": processed(r), "processes": a.processes, "concurrency": a.concurrency,
           "jobs_per_s": round(a.jobs / elapsed), "cpu_us_per_job": round(cpu / a.jobs * 1e6, 1),
           "peak_rss_mb": round(rss, 1), "peak_pss_mb": round(peak_pss, 1)}
    if srv.worker_pid:
        res["worker_cpu_us_per_job"] = round(wcpu / a.jobs * 1e6, 1)
        res.update(refused)
    return res


def stalls(run: dict) -> str:
    if not (run.get("breaker_opens") or run.get("sidecar_unavailable")):
        return ""
    return (f" [{run['server']}: sidecar refused {run.get('sidecar_unavailable', 0):,} jobs (503),"
            f" breaker opened {run.get('breaker_opens', 0)}x]")


def throughput_ratio(a: argparse.Namespace, name: str, runs: dict[str, dict]) -> tuple[dict, list[str]]:
    sk, fw, st = runs.get("sidekiq"), runs.get("fastworker"), runs.get("stub")
    rec: dict = {"ratio": name, "jobs": a.jobs, "warmup": a.warmup, "processes": a.processes}
    for key in ("jobs_per_s", "cpu_us_per_job", "worker_cpu_us_per_job", "peak_pss_mb", "peak_rss_mb"):
        rec[key] = {s: run[key] for s, run in runs.items() if key in run}
    lines = []
    if sk and fw:
        rec["throughput_x"] = ratio_of(fw["jobs_per_s"], sk["jobs_per_s"])
        rec["cpu_per_job_x"] = ratio_of(fw["cpu_us_per_job"], sk["cpu_us_per_job"])
        rec["pss_x"] = ratio_of(fw["peak_pss_mb"], sk["peak_pss_mb"])
        lines.append(
            f"ratio {name}: fastworker {fw['jobs_per_s']:,.0f} jobs/s vs sidekiq {sk['jobs_per_s']:,.0f} jobs/s"
            f" = {times(rec['throughput_x'])}; CPU/job {fw['cpu_us_per_job']:.0f} vs {sk['cpu_us_per_job']:.0f} us;"
            f" worker CPU/job {fw['worker_cpu_us_per_job']:.0f} us; peak PSS {fw['peak_pss_mb']:.0f} vs"
            f" {sk['peak_pss_mb']:.0f} MB = {times(rec['pss_x'])} (summed RSS {fw['peak_rss_mb']:.0f} vs"
            f" {sk['peak_rss_mb']:.0f} MB){stalls(fw)}")
    if fw and st:
        rec["worker_cpu_real_vs_stub_x"] = ratio_of(fw["worker_cpu_us_per_job"], st["worker_cpu_us_per_job"])
        line = (f"worker CPU {name}: {fw['worker_cpu_us_per_job']:.0f} us/job before the sidecar vs"
                f" {st['worker_cpu_us_per_job']:.0f} before the stub = {times(rec['worker_cpu_real_vs_stub_x'])}"
                f" (goal <= 1.5x); stub run {st['jobs_per_s']:,.0f} jobs/s")
        if sk:
            line += f"; sidekiq CPU/job {sk['cpu_us_per_job']:.0f} us"
        line += stalls(fw) + stalls(st)
        lines.append(line)
    return rec, lines


def median_run(runs: list[dict]) -> dict:
    """One run's record with each measured figure replaced by its median over the rounds."""
    out = dict(runs[0])
    for key, value in out.items():
        if key in ("sidecar_unavailable", "breaker_opens"):
            out[key] = max(run[key] for run in runs)  # a stall in any round must show
        elif isinstance(value, float | int) and key not in ("jobs", "warmup", "processes", "concurrency"):
            out[key] = statistics.median(run[key] for run in runs)
    return out


def throughput_mode(a: argparse.Namespace) -> None:
    for kind in a.kinds:
        for log in a.logs:
            rounds: dict[str, list[dict]] = {name: [] for name in a.server_list}
            for _ in range(a.repeat):  # servers alternate within each round, so each ratio is close in time
                for name in a.server_list:
                    rounds[name].append(throughput(a, name, kind, log))
                    show_run(a, rounds[name][-1])
            runs = {name: median_run(rs) for name, rs in rounds.items()}
            rec, lines = throughput_ratio(a, label(a, kind, log), runs)
            show_ratio(a, dict(rec, rounds=a.repeat), lines)


# --- latency -----------------------------------------------------------------------------------

def push_steady(r: SyncRedis, rate: float, n: int) -> None:
    """LPUSH n LatencyWorker jobs, as Sidekiq's client writes them, at `rate` per second. Due
    times are absolute, so a late push is followed by quicker ones rather than a slower rate."""
    t_start = time.monotonic()
    for i in range(n):
        delay = t_start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        now = time.time()
        r.lpush(QUEUE, orjson.dumps({"retry": True, "queue": "default", "class": "LatencyWorker", "args": [now],
                                     "jid": secrets.token_hex(12), "created_at": now, "enqueued_at": now}))


def pct(sorted_ms: list[float], p: float) -> float:
    return round(sorted_ms[max(0, math.ceil(p * len(sorted_ms)) - 1)], 2)  # nearest rank


def latency(a: argparse.Namespace, name: str, log: str, rate: float) -> dict:
    r: SyncRedis = redis.Redis.from_url(a.redis_url)
    r.flushdb()
    srv = Server(name, a, log)
    srv.start()
    try:
        srv.wait_ready(r)
        if a.warmup:
            push_steady(r, rate, a.warmup)
            wait_until(lambda: r.llen("bench:latency") >= a.warmup, 60 + a.warmup / rate, 0.01, "warm-up samples")
            r.delete("bench:latency")
        total = int(rate * a.seconds)
        cpu0 = cpu_of(srv.pids())
        w0 = cpu_of([srv.worker_pid]) if srv.worker_pid else 0.0
        push_steady(r, rate, total)
        wait_until(lambda: r.llen("bench:latency") >= total, 60 + a.seconds, 0.01, "latency samples")
        cpu = cpu_of(srv.pids()) - cpu0
        wcpu = cpu_of([srv.worker_pid]) - w0 if srv.worker_pid else 0.0
        refused = srv.refusals() if srv.worker_pid else {}
    finally:
        srv.stop()
    lags = sorted(float(v) * 1000 for v in r.lrange("bench:latency", 0, -1))
    return {"server": name, "log": log, "processes": a.processes, "rate_per_s": round(rate), "samples": len(lags),
            "p50_ms": pct(lags, 0.50), "p90_ms": pct(lags, 0.90), "p99_ms": pct(lags, 0.99),
            "max_ms": round(lags[-1], 2),
            "cpu_us_per_job": round(cpu / total * 1e6, 1),
            **({"worker_cpu_us_per_job": round(wcpu / total * 1e6, 1)} if srv.worker_pid else {}), **refused}


def latency_mode(a: argparse.Namespace) -> None:
    for log in a.logs:
        rate = a.rate
        if rate == "half":
            peak = throughput(a, "sidekiq", "latency", log)
            show_run(a, dict(peak, purpose="peak for --rate half"))
            rate = peak["jobs_per_s"] / 2
        runs = {name: latency(a, name, log, rate) for name in a.server_list if name != "stub"}
        for run in runs.values():
            show_run(a, run)
        name = label(a, "latency", log)
        rec: dict = {"ratio": name, "rate_per_s": round(rate), "seconds": a.seconds,
                     **{k: {s: run[k] for s, run in runs.items()} for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")}}
        lines = []
        fw, sk = runs.get("fastworker"), runs.get("sidekiq")
        if fw and sk:
            rec["p50_x"], rec["p99_x"] = ratio_of(fw["p50_ms"], sk["p50_ms"]), ratio_of(fw["p99_ms"], sk["p99_ms"])

            def ms(run: dict) -> str:
                return f"p50 {run['p50_ms']} / p90 {run['p90_ms']} / p99 {run['p99_ms']} / max {run['max_ms']} ms"
            lines.append(f"ratio {name} at {rate:,.0f} jobs/s: fastworker {ms(fw)} vs sidekiq {ms(sk)};"
                         f" p50 {times(rec['p50_x'])}, p99 {times(rec['p99_x'])}; CPU/job {fw['cpu_us_per_job']:.0f}"
                         f" vs {sk['cpu_us_per_job']:.0f} us (worker {fw['worker_cpu_us_per_job']:.0f}){stalls(fw)}")
        show_ratio(a, rec, lines)


# --- slow jobs ---------------------------------------------------------------------------------

def most_at_once(intervals: list[tuple[float, float]]) -> int:
    # an end sorts before a start at the same instant: a thread's next job is not an overlap
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def slow(a: argparse.Namespace, name: str, log: str) -> dict:
    r: SyncRedis = redis.Redis.from_url(a.redis_url)
    r.flushdb()
    enqueue(a.redis_url, "sleep", {"bench:timed": SLOW_JOBS})
    srv = Server(name, a, log)
    srv.start()
    try:
        srv.wait_ready(r)  # else the first Sidekiq process up takes jobs its siblings would share
        r.rename("bench:timed", QUEUE)
        wait_until(lambda: r.llen("bench:slow") >= SLOW_JOBS, 120, 0.01, "slow jobs")
        refused = srv.refusals() if srv.worker_pid else {}
    finally:
        srv.stop()
    spans = [(float(s), float(e)) for s, e in (v.split() for v in r.lrange("bench:slow", 0, -1))]
    slots = a.concurrency * a.processes
    return {"server": name, "log": log, "jobs": SLOW_JOBS, "sleep_ms": SLOW_MS, "slots": slots,
            "wall_s": round(max(e for _, e in spans) - min(s for s, _ in spans), 3),
            "ideal_wall_s": round(SLOW_JOBS * SLOW_MS / 1000 / slots, 3), "max_at_once": most_at_once(spans),
            **refused}


def slow_mode(a: argparse.Namespace) -> bool:
    ok = True
    for log in a.logs:
        runs = {name: slow(a, name, log) for name in a.server_list if name != "stub"}
        for run in runs.values():
            show_run(a, run)
        slots = a.concurrency * a.processes
        reached = all(run["max_at_once"] >= slots for run in runs.values())
        ok &= reached
        name = label(a, "slow", log)
        rec = {"ratio": name, "slots": slots, "reached": reached,
               **{k: {s: run[k] for s, run in runs.items()} for k in ("wall_s", "max_at_once")}}
        each = "; ".join(f"{s} {run['wall_s']:.2f} s wall, {run['max_at_once']} at once" for s, run in runs.items())
        show_ratio(a, rec, [f"ratio {name}: {SLOW_JOBS} x {SLOW_MS} ms jobs on {slots} slots: {each};"
                            f" ideal {SLOW_JOBS * SLOW_MS / 1000 / slots:.2f} s; all reach {slots}:"
                            f" {'yes' if reached else 'NO'}{''.join(stalls(run) for run in runs.values())}"])
    return ok


# --- output and options ------------------------------------------------------------------------

def show_run(a: argparse.Namespace, rec: dict) -> None:
    if not a.quick:
        print(json.dumps(rec), flush=True)


def show_ratio(a: argparse.Namespace, rec: dict, lines: list[str]) -> None:
    if a.json or not a.quick:
        print(json.dumps(rec), flush=True)
    if not a.json:
        for line in lines:
            print(line, flush=True)


def rate_arg(v: str) -> float | str:
    return v if v == "half" else float(v)


def options() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, help="timed jobs per run (default 100,000; 20,000 with --quick;"
                                             " 20,000 for the peak run of --rate half)")
    ap.add_argument("--warmup", type=int, help="jobs run before timing starts (default 0; 3,000 with --quick)")
    ap.add_argument("--kind", choices=["worker", "activejob", "both", "wait", "redis"], default="worker",
                    help="no-op Sidekiq::Worker or ActiveJob jobs (both: each), or wait: SleepWorker jobs"
                         f" of {WAIT_MS} ms and an RPUSH (jobs that mostly wait), or redis: LatencyWorker"
                         " jobs, one RPUSH each (a job with one quick round trip)")
    ap.add_argument("--log", choices=["info", "warn", "both"], default="warn")
    ap.add_argument("--machine", choices=["one", "whole"], default="one",
                    help=f"one process, or one per core ({CORES} here)")
    ap.add_argument("--processes", type=int, help="Sidekiq processes / sidecar Puma workers (overrides --machine)")
    ap.add_argument("--concurrency", type=int, default=10, help="Sidekiq -c / sidecar threads per process")
    ap.add_argument("--servers", default="sidekiq,fastworker")
    ap.add_argument("--transport", choices=["tcp", "unix"], default="tcp",
                    help="how the worker reaches the real sidecar: loopback TCP (the default) or a Unix socket")
    ap.add_argument("--stub", action="store_true", help="also fastworker before the Python stub sidecar")
    ap.add_argument("--repeat", type=int, help="throughput rounds per combination (default 1; 3 with --quick);"
                                               " the ratio line uses each server's medians")
    ap.add_argument("--latency", action="store_true")
    ap.add_argument("--slow", action="store_true")
    ap.add_argument("--rate", type=rate_arg, default=500.0, help="jobs/s for --latency, or 'half' of Sidekiq's peak")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    a = ap.parse_args()
    if a.quick:
        a.kind, a.log, a.machine, a.processes = "worker", "both", "one", None
    a.jobs = a.jobs or (20_000 if a.quick or a.latency else 100_000)
    a.repeat = a.repeat if a.repeat is not None else 3 if a.quick else 1
    if a.jobs <= 0 or a.repeat <= 0 or a.warmup is not None and a.warmup < 0:
        ap.error("--jobs and --repeat must be positive, --warmup not negative")
    a.warmup = a.warmup if a.warmup is not None else 3_000 if a.quick else 0
    a.processes = a.processes or (CORES if a.machine == "whole" else 1)
    a.kinds = ["worker", "activejob"] if a.kind == "both" else [a.kind]
    a.logs = ["warn", "info"] if a.log == "both" else [a.log]
    a.server_list = list(dict.fromkeys([s for s in a.servers.split(",") if s] + (["stub"] if a.stub else [])))
    unknown = set(a.server_list) - {"sidekiq", "fastworker", "stub"}
    if unknown:
        ap.error(f"--servers: unknown {', '.join(sorted(unknown))}")
    return a


def main() -> None:
    a = options()
    if a.latency:
        latency_mode(a)
    elif a.slow:
        sys.exit(0 if slow_mode(a) else 1)
    else:
        throughput_mode(a)


if __name__ == "__main__":
    main()
