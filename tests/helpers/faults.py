"""Fault-injection helpers shared by tests/test_faults.py, tests/test_breaker.py, tests/test_sentinel.py
and bench/chaos.py: a private redis-server that can be killed and restarted, a stub sidecar whose
execution records survive its own death, a heartbeat stand-in, a Sidekiq-format job loader and the
per-jid execution count every fault test ends with.

Never touches the shared Redis on 6379: every server here is our own, on a free port, with its data
directory in a temporary directory.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest
import redis

from tests.helpers.procs import ROOT, Worker, free_port, wait_http, wait_until, with_secret
from tests.helpers.sync_redis import SyncRedis



# -- Redis ---------------------------------------------------------------------------------------


class PrivateRedis:
    """redis-server on a free port; AOF with fsync on every write, so a restart keeps every write it
    acknowledged (the tests count jobs exactly)."""

    def __init__(self, dir: Path, port: int | None = None, extra: Iterable[str] = ()) -> None:
        self.dir = Path(dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = list(extra)
        self.proc: subprocess.Popen | None = None
        self.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> SyncRedis:
        return redis.Redis(port=self.port, db=db, socket_timeout=5)

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
               "--save", "", "--appendonly", "yes", "--appendfsync", "always", *self.extra]
        self._log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        r = self.client()
        try:
            wait_until(lambda: _ping(r), 15, 0.02, f"redis-server on {self.port}")
        finally:
            r.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        self._log.close()

    def restart(self, down_for: float = 1.0, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        time.sleep(down_for)
        self.start()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _ping(r: SyncRedis) -> bool:
    try:
        return bool(r.ping())
    except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):  # LOADING is a ResponseError
        return False


# -- the sidecar -------------------------------------------------------------------------------

_FILE_STUB = r"""
import os, sys, time
sys.path.insert(0, sys.argv[3])
import orjson
from tests.helpers import stub_sidecar as s

fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
_orig = s.Stub._perform  # every job, alone or in a batch

class _Req:
    def __init__(self, raw, headers):
        self._raw = raw
        self.headers = headers
    async def read(self):
        return self._raw

async def perform(self, request):
    raw = await request.read()
    if self.mode_status is None:
        try:
            job = orjson.loads(raw)
            rec = {"jid": job.get("jid"), "t": time.time(), "retry_count": job.get("retry_count"),
                   "pid": os.getpid()}
        except Exception:
            rec = None
        if rec is not None:
            os.write(fd, orjson.dumps(rec) + b"\n")  # one write per line: O_APPEND keeps lines whole
    return await _orig(self, _Req(raw, request.headers))

s.Stub._perform = perform
sys.argv = [sys.argv[0], "--port", sys.argv[1]] + sys.argv[4:]
s.main()
"""


class FileStub:
    """The STUB sidecar, with every execution also appended to a file, so counts survive the
    sidecar being killed and restarted (on the same port)."""

    def __init__(self, records: Path, port: int | None = None, batch: bool = True) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.records = Path(records)
        self.batch = batch
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        extra = [] if self.batch else ["--no-batch"]
        self.proc = subprocess.Popen([sys.executable, "-c", _FILE_STUB, str(self.port), str(self.records),
                                      str(ROOT), *extra], cwd=ROOT, env=with_secret(dict(os.environ)))
        wait_http(self.url + "/health", proc=self.proc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if sig == signal.SIGTERM:
                os.kill(self.proc.pid, signal.SIGCONT)  # in case it was stopped
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def mode(self, status: int | None, retry_after: float | None = None) -> None:
        body = json.dumps({"status": status, "retry_after": retry_after}).encode()
        urllib.request.urlopen(urllib.request.Request(self.url + "/_mode", data=body), timeout=5).read()

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/_stats", timeout=5) as resp:
            return json.loads(resp.read())

    def executions(self) -> list[dict[str, Any]]:
        if not self.records.exists():
            return []
        out = []
        # complete lines only: the stub may be half-way through appending the last one
        for line in self.records.read_bytes().split(b"\n")[:-1]:
            if line.strip():
                out.append(json.loads(line))
        return out

    def counts(self) -> Counter[str]:
        return Counter(rec["jid"] for rec in self.executions())


# -- heartbeat stand-in -----------------------------------------------------------------------


# -- jobs ------------------------------------------------------------------------------------------


def make_job(klass: str = "HardJob", args: list[Any] | None = None, queue: str = "default",
             jid: str | None = None) -> dict[str, Any]:
    """A job as Sidekiq's client writes it (no retry_count: the job has never failed)."""
    now = time.time()
    return {"class": klass, "args": args if args is not None else [], "retry": True, "queue": queue,
            "jid": jid or secrets.token_hex(12), "created_at": now, "enqueued_at": now}


def push(r: SyncRedis, jobs: list[dict[str, Any]]) -> list[str]:
    """LPUSH like Sidekiq::Client (oldest at the right end, popped first); returns the jids in order."""
    p = r.pipeline(transaction=False)
    for job in jobs:
        p.sadd("queues", job["queue"])
        p.lpush(f"queue:{job['queue']}", json.dumps(job))
    p.execute()
    return [job["jid"] for job in jobs]


def readyz(worker: Any, timeout: float = 2.0) -> int | None:
    """HTTP status of the worker's /readyz, or None if nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/readyz", timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def scrape_text(worker: Any, timeout: float = 5.0) -> str:
    """The worker's /metrics page."""
    with urllib.request.urlopen(f"http://127.0.0.1:{worker.http_port}/metrics", timeout=timeout) as resp:
        return resp.read().decode()


def has_http_server() -> bool:
    return importlib.util.find_spec("fastworker.http_server") is not None


def check_counts(counts: Counter[str], jids: list[str], may_repeat: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """Every jid ran; a jid ran twice only if it is in ``may_repeat``. Returns a summary."""
    lost = [j for j in jids if counts[j] == 0]
    dup = {j: n for j, n in counts.items() if n > 1}
    unexpected = {j: n for j, n in dup.items() if j not in may_repeat}
    assert not lost, f"{len(lost)} jobs never ran: {lost[:10]}"
    assert not unexpected, f"jobs ran more than once without a crash to explain it: {unexpected}"
    assert set(counts) <= set(jids), f"unknown jids ran: {set(counts) - set(jids)}"
    return {"jobs": len(jids), "executions": sum(counts.values()), "duplicated": len(dup)}


def jobs(n: int, klass: str = "SlowJob", seconds: float = 0.02, queue: str = "default") -> list[dict[str, Any]]:
    return [make_job(klass, [seconds] if klass == "SlowJob" else [], queue) for _ in range(n)]


def drained(rr: SyncRedis, queues: tuple[str, ...] = ("default",)) -> bool:
    return all(rr.llen(f"queue:{q}") == 0 for q in queues) and inprogress_total(rr) == 0


def no_retry_spent(rr: SyncRedis, stub: FileStub) -> None:
    assert rr.zcard("retry") == 0 and rr.zcard("dead") == 0
    assert all(rec["retry_count"] is None for rec in stub.executions())  # never failed, never counted


def queue_raws(r: SyncRedis, queue: str = "default") -> list[bytes]:
    return [x if isinstance(x, bytes) else x.encode() for x in r.lrange(f"queue:{queue}", 0, -1)]


def inprogress_total(r: SyncRedis) -> int:
    return sum(r.llen(k) for k in r.keys("fastworker:inprogress:*"))


# -- pytest fixtures (import them into a test module to use them) ------------------------------


@pytest.fixture
def predis(tmp_path: Path) -> Iterator[PrivateRedis]:
    srv = PrivateRedis(tmp_path / "redis")
    yield srv
    srv.stop(signal.SIGKILL)


@pytest.fixture
def rr(predis: PrivateRedis) -> Iterator[SyncRedis]:
    c = predis.client()
    yield c
    c.close()


@pytest.fixture
def fstub(tmp_path: Path) -> Iterator[FileStub]:
    s = FileStub(tmp_path / "executions.jsonl")
    yield s
    s.stop(signal.SIGKILL)


class Procs:
    """Starts workers against the private Redis and the file stub; kills leftovers at the end."""

    def __init__(self, tmp_path: Path, predis: PrivateRedis, stub: FileStub, ttl: int) -> None:
        self.tmp_path = tmp_path
        self.redis_url = predis.url()
        self.stub = stub
        self.ttl = ttl
        self.workers: list[Worker] = []
        self.ports: set[int] = {stub.port}

    def worker(self, *args: str, name: str = "w") -> Worker:
        argv = ["--process-ttl", str(self.ttl), "--heartbeat-interval", "1", "--breaker-cooldown", "0.5",
                "--log-level", "info", *args]
        attempt = 0
        while True:
            suffix = f"-{attempt}" if attempt else ""
            w = Worker(self.redis_url, self.stub.url, *argv,
                       log_path=self.tmp_path / f"{name}-{len(self.workers)}{suffix}.log")
            if w.http_port not in self.ports:  # free_port() may hand out a port twice in a row
                break
            w.kill()
            attempt += 1
        self.ports.add(w.http_port)
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            w.kill()


@pytest.fixture
def procs(tmp_path: Path, predis: PrivateRedis, fstub: FileStub) -> Iterator[Procs]:
    p = Procs(tmp_path, predis, fstub, ttl=3)
    yield p
    p.close()


