"""Chaos run (issue 6): a steady load for ``--duration`` seconds while random faults hit every part,
then a drain and a count of executions per jid.

Setup, all private and on loopback: a redis-server on a free port (AOF, fsync on every write, data
in a temporary directory), the STUB sidecar (tests/helpers/stub_sidecar.py, each execution also
appended to a file so counts survive its death) and ``--workers`` fastworker processes on the
queues critical and default. An enqueuer pushes Sidekiq-format jobs at ``--rate`` per second (a
mix of short, medium and multi-second jobs); a push that fails while Redis is away is counted as
"ambiguous" (it may or may not have landed) and never retried, so every jid is pushed at most once.

Faults, one every ``--fault-interval`` seconds on average (exponential gaps):
  worker_kill9      kill -9 a worker, start a new one (its jobs come back through crash recovery)
  worker_term       TERM a worker (deploy), start a new one
  sidecar_restart   TERM the sidecar, start it again on the same port
  sidecar_kill9     kill -9 the sidecar, start it again
  sidecar_stop      SIGSTOP the sidecar for 3-8 s (a hang, not a refusal), then SIGCONT
  redis_restart     TERM redis-server, 1-3 s down, start it again (same data directory)
  redis_kill9       kill -9 redis-server, 1-3 s down, start it again

At the end: enqueuing stops, faults stop, the workers get up to ``--drain`` seconds to run the
rest, then stop. Printed: enqueued, ambiguous, executed, lost (must be 0), duplicated (a job run
twice: expected only after a worker or sidecar crash or hang), retry/dead set sizes and
retry_count changes (must be 0: no job fails here).

    python bench/chaos.py --duration 600 --workers 3 --concurrency 4 --rate 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

from tests.helpers.faults import FileStub, PrivateRedis  # noqa: E402
from tests.helpers.procs import Worker  # noqa: E402

QUEUES = ("critical", "default")
FAULTS = ("worker_kill9", "worker_term", "sidecar_restart", "sidecar_kill9", "sidecar_stop", "redis_restart",
          "redis_kill9")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Chaos:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.dir = Path(args.dir or tempfile.mkdtemp(prefix="fastworker-chaos-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.redis = PrivateRedis(self.dir / "redis")
        self.stub = FileStub(self.dir / "executions.jsonl")
        self.workers: list[Worker] = []
        self.retired: list[Worker] = []
        self.nstarted = 0
        self.enqueued: list[str] = []
        self.ambiguous: list[str] = []
        self.faults: list[tuple[float, str]] = []
        self.unexpected_exits: list[str] = []
        self._stop_load = threading.Event()
        self._lock = threading.Lock()

    # -- processes -------------------------------------------------------------------------------

    def start_worker(self) -> Worker:
        a = self.args
        w = Worker(self.redis.url(), self.stub.url, "-q", ",".join(QUEUES), "-c", str(a.concurrency),
                   "--process-ttl", str(a.process_ttl), "--heartbeat-interval", "1", "--timeout", "5",
                   "--breaker-cooldown", "1", "--sidecar-connect-timeout", "1",
                   log_path=self.dir / f"worker-{self.nstarted}.log")
        self.nstarted += 1
        self.workers.append(w)
        return w

    def check_workers(self) -> None:
        for w in list(self.workers):
            if w.proc.poll() is not None:
                self.unexpected_exits.append(f"worker {w.pid} exited with {w.proc.returncode}")
                say(f"!! worker {w.pid} exited unexpectedly ({w.proc.returncode}); starting another")
                self.workers.remove(w)
                self.retired.append(w)
                self.start_worker()

    # -- load ------------------------------------------------------------------------------------

    def job(self) -> dict:
        x = self.rng.random()
        if x < 0.10:
            klass, args = "HardJob", []
        elif x < 0.92:
            klass, args = "SlowJob", [round(self.rng.uniform(0.01, 0.2), 3)]
        else:
            klass, args = "SlowJob", [round(self.rng.uniform(1.0, 3.0), 3)]
        now = time.time()
        return {"class": klass, "args": args, "retry": True, "queue": self.rng.choice(QUEUES),
                "jid": secrets.token_hex(12), "created_at": now, "enqueued_at": now}

    def enqueue_loop(self) -> None:
        # no client-side retries: a push retried after a lost reply could land twice
        r = redis.Redis(port=self.redis.port, socket_timeout=2, socket_connect_timeout=1,
                        retry=Retry(NoBackoff(), 0))
        period = 1.0 / self.args.rate
        next_t = time.monotonic()
        while not self._stop_load.is_set():
            job = self.job()
            try:
                r.lpush(f"queue:{job['queue']}", json.dumps(job))
                with self._lock:
                    self.enqueued.append(job["jid"])
            except redis.RedisError:
                with self._lock:
                    self.ambiguous.append(job["jid"])  # may have landed: never pushed again
                time.sleep(0.2)
            next_t += period
            delay = next_t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_t = time.monotonic()
        r.close()

    # -- faults ----------------------------------------------------------------------------------

    def fault(self, kind: str) -> None:
        self.faults.append((time.time(), kind))
        rng = self.rng
        if kind in ("worker_kill9", "worker_term"):
            w = rng.choice(self.workers)
            self.workers.remove(w)
            self.retired.append(w)
            if kind == "worker_kill9":
                w.proc.kill()
                w.proc.wait()
            else:
                w.proc.send_signal(signal.SIGTERM)
            say(f"{kind}: worker {w.pid}")
            time.sleep(rng.uniform(0.0, 2.0))
            nw = self.start_worker()
            say(f"   started worker {nw.pid}")
            if kind == "worker_term":
                try:
                    code = w.proc.wait(30)
                    if code != 0:
                        self.unexpected_exits.append(f"worker {w.pid} exited {code} after TERM")
                except Exception:  # noqa: BLE001
                    self.unexpected_exits.append(f"worker {w.pid} did not exit within 30 s of TERM")
                    w.proc.kill()
        elif kind in ("sidecar_restart", "sidecar_kill9"):
            say(f"{kind}")
            self.stub.stop(signal.SIGTERM if kind == "sidecar_restart" else signal.SIGKILL)
            time.sleep(rng.uniform(0.5, 3.0))
            self.stub.start()
            say("   sidecar back")
        elif kind == "sidecar_stop":
            pause = rng.uniform(3.0, 8.0)
            say(f"sidecar_stop for {pause:.1f} s")
            self.stub.pause()
            time.sleep(pause)
            self.stub.resume()
            say("   sidecar resumed")
        elif kind in ("redis_restart", "redis_kill9"):
            down = rng.uniform(1.0, 3.0)
            say(f"{kind}: down {down:.1f} s")
            self.redis.restart(down_for=down, sig=signal.SIGTERM if kind == "redis_restart" else signal.SIGKILL)
            say("   redis back")

    # -- the run -----------------------------------------------------------------------------------

    def run(self) -> int:
        a = self.args
        say(f"chaos: {a.duration:.0f} s, {a.workers} workers x {a.concurrency}, {a.rate} jobs/s, "
            f"a fault every ~{a.fault_interval} s; files in {self.dir}")
        for _ in range(a.workers):
            self.start_worker()
        for w in self.workers:
            w.wait_event("startup", timeout=30)
        loader = threading.Thread(target=self.enqueue_loop, daemon=True)
        loader.start()
        t_end = time.monotonic() + a.duration
        next_fault = time.monotonic() + self.rng.expovariate(1 / a.fault_interval)
        while time.monotonic() < t_end:
            time.sleep(0.5)
            self.check_workers()
            if time.monotonic() >= next_fault and time.monotonic() < t_end - 5:
                self.fault(self.rng.choice(self.args.faults))
                next_fault = time.monotonic() + self.rng.expovariate(1 / a.fault_interval)
        self._stop_load.set()
        loader.join(10)
        say(f"load stopped: {len(self.enqueued)} enqueued, {len(self.ambiguous)} ambiguous; draining")
        return self.drain_and_report()

    def drain_and_report(self) -> int:
        r = self.redis.client()
        expected = set(self.enqueued)
        deadline = time.monotonic() + self.args.drain
        while time.monotonic() < deadline:
            self.check_workers()
            counts = self.stub.counts()
            waiting = sum(r.llen(f"queue:{q}") for q in QUEUES)
            inprog = sum(r.llen(k) for k in r.keys("fastworker:inprogress:*"))
            if waiting == 0 and inprog == 0 and all(counts[j] for j in expected):
                break
            time.sleep(1.0)
        for w in self.workers:
            w.proc.send_signal(signal.SIGTERM)
        for w in self.workers:
            try:
                w.proc.wait(30)
            except Exception:  # noqa: BLE001
                w.proc.kill()
        time.sleep(0.5)
        counts = self.stub.counts()
        execs = self.stub.executions()
        lost = sorted(j for j in expected if counts[j] == 0)
        dup = {j: n for j, n in counts.items() if n > 1}
        amb_ran = sum(1 for j in self.ambiguous if counts[j])
        unknown = set(counts) - expected - set(self.ambiguous)
        retry_changed = sum(1 for e in execs if e.get("retry_count") is not None)
        where: dict[str, Any] = {}
        if lost:
            raws = {}
            for key in [f"queue:{q}" for q in QUEUES] + r.keys("fastworker:inprogress:*"):
                k = key.decode() if isinstance(key, bytes) else key
                for raw in r.lrange(k, 0, -1):
                    raws[json.loads(raw)["jid"]] = k
            where = Counter(raws.get(j, "nowhere") for j in lost)
        # a job runs twice when a fault hit it in flight: attribute each duplicate to the fault
        # closest in time to its first execution (a stopped sidecar records a job only when it
        # resumes, so "closest", not "next"); details in duplicates.jsonl
        by_fault: Counter[str] = Counter()
        runs: dict[str, list[float]] = {}
        for e in execs:
            runs.setdefault(e["jid"], []).append(e["t"])
        with open(self.dir / "duplicates.jsonl", "w") as f:
            for j, ts in runs.items():
                if len(ts) < 2:
                    continue
                near = min(self.faults, key=lambda fk: abs(fk[0] - ts[0]), default=(None, "none"))
                by_fault[near[1]] += 1
                f.write(json.dumps({"jid": j, "runs": ts, "fault": near[1], "fault_t": near[0]}) + "\n")
        fault_counts = Counter(k for _, k in self.faults)
        say("done")
        print()
        print("chaos result")
        print(f"  duration            {self.args.duration:.0f} s, workers {self.args.workers} x "
              f"{self.args.concurrency}, rate {self.args.rate}/s")
        by_kind = ", ".join(f"{k} {n}" for k, n in sorted(fault_counts.items()))
        print(f"  faults              {len(self.faults)}: {by_kind}")
        print(f"  enqueued            {len(expected)}")
        print(f"  ambiguous pushes    {len(self.ambiguous)} (push failed while Redis was away; {amb_ran} of them ran)")
        print(f"  executed            {sum(1 for j in expected if counts[j])} jobs, {sum(counts.values())} executions")
        print(f"  lost                {len(lost)}" + (f"  where: {dict(where)}" if lost else ""))
        print(f"  duplicated          {len(dup)}" + (f"  after: {dict(by_fault)}" if dup else ""))
        print(f"  unknown jids run    {len(unknown)}")
        print(f"  retry set / dead    {r.zcard('retry')} / {r.zcard('dead')}")
        print(f"  retry_count changed {retry_changed}")
        print(f"  unexpected exits    {len(self.unexpected_exits)}" +
              (f": {self.unexpected_exits}" if self.unexpected_exits else ""))
        r.close()
        ok = not lost and not unknown and retry_changed == 0 and not self.unexpected_exits
        return 0 if ok else 1

    def close(self) -> None:
        for w in self.workers + self.retired:
            w.kill()
        self.stub.stop(signal.SIGKILL)
        self.redis.stop(signal.SIGKILL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load with faults")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rate", type=float, default=30.0, help="jobs enqueued per second")
    ap.add_argument("--fault-interval", type=float, default=15.0, help="mean seconds between faults")
    ap.add_argument("--process-ttl", type=int, default=6, help="worker --process-ttl (crash recovery delay)")
    ap.add_argument("--drain", type=float, default=180.0, help="seconds allowed for the final drain")
    ap.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset of: " + ", ".join(FAULTS))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--dir", default=None, help="where logs and data go (default: a new temp dir)")
    args = ap.parse_args()
    args.faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    bad = [f for f in args.faults if f not in FAULTS]
    if bad or not args.faults:
        ap.error(f"--faults: unknown {bad}; choose from {', '.join(FAULTS)}")
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "big")
    chaos = Chaos(args)
    print(f"seed {args.seed}", flush=True)
    try:
        return chaos.run()
    finally:
        chaos.close()


if __name__ == "__main__":
    sys.exit(main())
