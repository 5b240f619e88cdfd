"""The load test: jobs enqueued through the demo app's HTTP endpoint (POST /enqueue), a burst and a
fixed rate, while faults are applied to the running stack; then every execution is read back from
the app (GET /runs pages through the JobRun rows, one per execution) and counted per jid, as
bench/chaos.py does against local processes.

    python bench/load.py --app-url http://127.0.0.1:3000                      # burst + rate, no faults
    python bench/load.py --app-url URL --compose "docker-compose -p P -f docker-compose.yml" \\
        --faults redis,kill,sidecar,scale,rolling,stop                         # the compose faults

Reported: throughput of the burst, enqueue → done latency percentiles per phase (so each fault's
effect shows), lost (enqueued, never performed), duplicated (performed more than once), retries
spent (an execution that saw a retry_count, a failed attempt, or retry/dead sets that grew) and
enqueue errors (a POST the app refused while Redis was away: never enqueued, so never lost).
The last line is ``<label>: N enqueued, N done, 0 lost, D duplicated, F faults``; the exit status
is 1 when a job was lost or a retry was spent on infrastructure.

Bounded: the rate runs only while a phase runs, every wait has a deadline, and it stops by itself.
Traffic goes only to the app URL given (loopback) and to the docker engine for the faults.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from datetime import datetime

# kinds whose job records its execution (JobRun): a noop job would leave nothing to count
MIX = ("plain", "model", "kwargs", "money")
FAULTS = ("redis", "kill", "sidecar", "scale", "rolling", "stop")


def log(msg: str) -> None:
    print(f"load: {msg}", file=sys.stderr, flush=True)


class App:
    """The demo app's HTTP surface."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _req(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return json.loads(resp.read())

    def enqueue(self, kind: str, count: int, **opts) -> list[str]:
        return self._req("POST", "/enqueue", {"kind": kind, "count": count, **opts})["jids"]

    def healthy(self) -> bool:
        try:
            return self._req("GET", "/health").get("status") == "ok"
        except (OSError, ValueError, urllib.error.HTTPError):
            return False

    def stats(self) -> dict:
        return self._req("GET", "/stats")

    def runs(self) -> list[dict]:
        """Every JobRun row, in id order, 1000 a page."""
        rows: list[dict] = []
        while True:
            after = rows[-1]["id"] if rows else 0
            page = self._req("GET", f"/runs?after_id={after}&limit=1000")
            rows += page
            if len(page) < 1000:
                return rows


class Load:
    """What was enqueued, when and in which phase; a rate loop in a thread."""

    def __init__(self, app: App, mix=MIX):
        self.app = app
        self.mix = mix
        self.sent: dict[str, tuple[float, str]] = {}  # jid -> (enqueue time, phase)
        self.errors: Counter[str] = Counter()          # phase -> refused POSTs
        self.phase = "start"
        self._lock = threading.Lock()
        self._n = 0
        self._rate_stop = threading.Event()
        self._paused = threading.Event()
        self._thread: threading.Thread | None = None

    def post(self, count: int, kind: str | None = None, **opts) -> int:
        kind = kind or self.mix[self._n % len(self.mix)]
        self._n += 1
        t = time.time()
        phase = self.phase
        try:
            jids = self.app.enqueue(kind, count, **opts)
        except (OSError, ValueError, urllib.error.HTTPError):
            with self._lock:
                self.errors[phase] += 1
            return 0
        with self._lock:
            for jid in jids:
                self.sent[jid] = (t, phase)
        return len(jids)

    def burst(self, jobs: int, per_request: int = 50, **kw) -> float:
        t0 = time.time()
        left = jobs
        while left > 0:
            left -= max(self.post(min(per_request, left), **kw), 1)
        return t0

    def start_rate(self, per_second: float, per_request: int = 2) -> None:
        def loop():
            interval = per_request / per_second
            nxt = time.monotonic()
            while not self._rate_stop.is_set():
                if not self._paused.is_set():
                    self.post(per_request)
                nxt += interval
                self._rate_stop.wait(max(0.0, nxt - time.monotonic()))
        self._thread = threading.Thread(target=loop, name="rate", daemon=True)
        self._thread.start()

    def pause(self, paused: bool) -> None:
        (self._paused.set if paused else self._paused.clear)()

    def stop_rate(self) -> None:
        self._rate_stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def wait_done(self, deadline: float) -> list[dict]:
        """Poll until every enqueued jid has a performed run, or the deadline passes."""
        while True:
            rows = self.app.runs()
            done = {r["jid"] for r in rows if r["status"] == "performed"}
            missing = len(set(self.sent) - done)
            if missing == 0 or time.monotonic() > deadline:
                return rows
            log(f"waiting for {missing} jobs")
            time.sleep(2)


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def analyse(load: Load, rows: list[dict], stats0: dict, stats1: dict, burst: tuple[float, int] | None):
    by_jid: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_jid[r["jid"]].append(r)
    sent = load.sent
    performed = {j: [r for r in rs if r["status"] == "performed"] for j, rs in by_jid.items()}
    done = [j for j in sent if performed.get(j)]
    lost = [j for j in sent if not performed.get(j)]
    dup = [j for j in sent if len(performed.get(j, ())) > 1]  # a failed attempt then a success is a retry
    retried = [j for j in sent if any(
        r["status"] != "performed" or (r.get("middleware_context") or {}).get("retry_count") is not None
        for r in by_jid.get(j, ()))]
    latency: dict[str, list[float]] = defaultdict(list)
    for j in done:
        t, phase = sent[j]
        latency[phase].append(min(_ts(r["created_at"]) for r in performed[j]) - t)
    out = {
        "enqueued": len(sent), "done": len(done), "lost": len(lost), "duplicated": len(dup),
        "retried": len(retried), "enqueue_errors": dict(load.errors),
        "retry_set_growth": stats1["retry_size"] - stats0["retry_size"],
        "dead_set_growth": stats1["dead_size"] - stats0["dead_size"],
        "lost_jids": lost[:10], "duplicated_jids": dup[:10],
        "latency_s": {p: {"n": len(v), "p50": round(pct(v, .5), 3), "p95": round(pct(v, .95), 3),
                          "p99": round(pct(v, .99), 3), "max": round(max(v), 3)}
                      for p, v in latency.items()},
    }
    if burst:
        t0, n = burst
        ends = sorted(min(_ts(r["created_at"]) for r in performed[j]) for j in done if sent[j][1] == "burst")
        if ends:
            out["burst_jobs_per_s"] = round(len(ends) / max(ends[-1] - t0, 1e-3), 1)
    dup_phases = Counter(sent[j][1] for j in dup)
    out["duplicated_by_phase"] = dict(dup_phases)
    return out


class Compose:
    """The faults, applied with the compose command the caller names (its project and files)."""

    def __init__(self, command: str, grace: int = 35):
        self.cmd = shlex.split(command)
        self.grace = grace

    def run(self, *args: str, check: bool = True, quiet: bool = False) -> str:
        t = time.monotonic()
        res = subprocess.run(self.cmd + list(args), capture_output=True, text=True, timeout=300)
        if not quiet:
            log(f"$ compose {' '.join(args)}  ({time.monotonic() - t:.1f} s)")
        if check and res.returncode:
            raise RuntimeError(f"{' '.join(args)}: {res.stderr.strip()[-800:]}")
        return res.stdout

    def ids(self, service: str) -> list[str]:
        return self.run("ps", "-q", service, quiet=True).split()

    @staticmethod
    def inspect(cid: str, fmt: str) -> str:
        return subprocess.run(["docker", "inspect", "-f", fmt, cid], capture_output=True, text=True).stdout.strip()

    def wait_healthy(self, service: str, count: int | None = None, timeout: float = 120) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            ids = self.ids(service)
            health = [self.inspect(c, "{{.State.Health.Status}}") for c in ids]
            if ids and all(h == "healthy" for h in health) and (count is None or len(ids) == count):
                return ids
            if time.monotonic() > deadline:
                raise RuntimeError(f"{service}: not healthy after {timeout:.0f} s: {health}")
            time.sleep(1)

    def scale(self, n: int) -> None:
        # --no-recreate: the running replicas stay; --timeout: a removed one drains (> --timeout 25 s)
        self.run("up", "-d", "--no-deps", "--no-recreate", "--timeout", str(self.grace),
                 "--scale", f"worker={n}", "worker")
        self.wait_healthy("worker", n)


def run_faults(load: Load, app: App, compose: Compose, faults: list[str], hold: float) -> int:
    applied = 0

    def phase(name: str) -> None:
        load.phase = name
        log(f"phase {name}")

    for fault in faults:
        phase(fault)
        time.sleep(hold / 2)  # load before the fault, under the same label
        if fault == "redis":
            compose.run("restart", "redis")
            compose.wait_healthy("redis")
        elif fault == "kill":
            # jobs in flight die with it: slow ones (2 s) in its slots; the sidecar still finishes
            # them, and the recoverer puts them back once the dead worker's record expires, so
            # they run twice (at-least-once: counted as duplicated, never lost)
            load.post(10, kind="slow", seconds=2)
            time.sleep(0.5)
            cid = compose.ids("worker")[0]
            restarts = compose.inspect(cid, "{{.RestartCount}}")
            os.kill(int(compose.inspect(cid, "{{.State.Pid}}")), signal.SIGKILL)  # a crash: no drain
            deadline = time.monotonic() + 60
            while compose.inspect(cid, "{{.RestartCount}}") == restarts and time.monotonic() < deadline:
                time.sleep(0.5)
            compose.wait_healthy("worker")  # the restart policy brought it back
        elif fault == "sidecar":
            compose.run("restart", "-t", str(compose.grace), "sidecar")
            compose.wait_healthy("sidecar")
        elif fault == "scale":
            compose.scale(3)
            time.sleep(hold / 2)
            compose.scale(1)
        elif fault == "rolling":
            # each replica replaced by a new one, one at a time: the new one is healthy before the
            # old one drains (TERM: stops fetching, finishes its jobs) and goes; two replicas
            # here, so each step also shows that the other one carries the load meanwhile
            compose.scale(2)
            for old in compose.ids("worker"):
                compose.scale(3)
                t = time.monotonic()
                subprocess.run(["docker", "stop", "-t", str(compose.grace), old], check=True, capture_output=True)
                subprocess.run(["docker", "rm", old], check=True, capture_output=True)
                log(f"replaced worker {old[:12]} (drained in {time.monotonic() - t:.1f} s)")
            compose.scale(1)
        elif fault == "stop":
            # jobs in flight: slow ones (1.5 s each) fill the worker's slots as the stack stops
            load.post(30, kind="slow", seconds=1.5)
            time.sleep(1)
            load.pause(True)
            compose.run("stop", "-t", str(compose.grace))
            compose.run("up", "-d")
            for service in ("redis", "postgres", "app", "sidecar", "worker"):
                compose.wait_healthy(service)
            load.pause(False)
        else:
            raise SystemExit(f"unknown fault {fault!r}; one of {', '.join(FAULTS)}")
        applied += 1
        time.sleep(hold / 2)
    phase("after")
    return applied


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--app-url", default="http://127.0.0.1:3000")
    ap.add_argument("--burst", type=int, default=1000, help="jobs enqueued at once at the start")
    ap.add_argument("--rate", type=float, default=20, help="jobs per second during the phases")
    ap.add_argument("--duration", type=float, default=10, help="seconds of rate load per phase")
    ap.add_argument("--compose", help="the compose command of the stack (project and files), for --faults")
    ap.add_argument("--faults", default="", help=f"comma-separated, in order: {','.join(FAULTS)}")
    ap.add_argument("--wait", type=float, default=120, help="seconds to wait for the last jobs")
    ap.add_argument("--label", default="load", help="first word of the last line")
    ap.add_argument("--json", help="also write the report to this file")
    args = ap.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    if faults and not args.compose:
        ap.error("--faults needs --compose")
    app = App(args.app_url)
    deadline = time.monotonic() + 120
    while not app.healthy():
        if time.monotonic() > deadline:
            raise SystemExit(f"{args.app_url}: the app is not healthy")
        time.sleep(1)
    compose = Compose(args.compose) if args.compose else None
    if compose:  # `up -d` waits only for what others depend on: the workers' own health too
        for service in ("redis", "postgres", "app", "sidecar", "worker"):
            compose.wait_healthy(service)
    load = Load(app)
    stats0 = app.stats()
    load.phase = "burst"
    t0 = load.burst(args.burst)
    log(f"burst: {len(load.sent)} jobs enqueued in {time.time() - t0:.1f} s")
    load.phase = "rate"
    load.start_rate(args.rate)
    time.sleep(args.duration)
    applied = 0
    try:
        if faults and compose is not None:  # --faults needs --compose (checked above)
            applied = run_faults(load, app, compose, faults, args.duration)
            time.sleep(args.duration / 2)
    finally:
        load.stop_rate()
    rows = load.wait_done(time.monotonic() + args.wait)
    report = analyse(load, rows, stats0, app.stats(), (t0, args.burst))
    report["faults"] = applied
    print(json.dumps(report, indent=1), file=sys.stderr)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    print("\n".join(f"  {p:>8}: n={v['n']:5d} p50={v['p50']:.3f}s p95={v['p95']:.3f}s p99={v['p99']:.3f}s "
                    f"max={v['max']:.3f}s" for p, v in report["latency_s"].items()), file=sys.stderr)
    bad = report["lost"] or report["retried"] or report["retry_set_growth"] > 0 or report["dead_set_growth"] > 0
    print(summary_line(args.label, report))
    return 1 if bad else 0


def summary_line(label: str, report: dict) -> str:
    return (f"{label}: {report['enqueued']} enqueued, {report['done']} done, {report['lost']} lost, "
            f"{report['duplicated']} duplicated, {report['faults']} faults")


if __name__ == "__main__":
    sys.exit(main())
