"""The demo Rails app (examples/rails_app) and the real Ruby sidecar, for end-to-end tests.

- ``prepare_db(redis_url)``: create the demo app's database and load its schema (offline).
- ``start_sidecar(redis_url)``: ``sidecar/bin/fastworker-sidecar`` on a free loopback port,
  returned once ``GET /health`` answers 200, as a ``Sidecar`` (``url``, ``proc``, ``stop()``).
- ``rails_runner(snippet, redis_url)``: run Ruby inside the demo app (``bin/rails runner``) and
  return its stdout; ``rails_json`` parses the last line of that stdout as JSON.

Everything defaults to RAILS_ENV=test (db/test.sqlite3), so tests never touch the development
database; pass ``database_url`` (e.g. ``postgres://postgres@127.0.0.1:5432/fastworker_e2e``)
to use PostgreSQL instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RAILS_ROOT = ROOT / "examples" / "rails_app"
SIDECAR_BIN = ROOT / "sidecar" / "bin" / "fastworker-sidecar"


def ruby_available() -> bool:
    """True when Debian's ruby with Rails and Sidekiq can run the demo app."""
    if shutil.which("ruby") is None:
        return False
    probe = subprocess.run(["ruby", "-e", 'require "rails"; require "sidekiq"; require "puma"'],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


def app_env(redis_url: str, database_url: str | None = None, rails_env: str = "test",
            extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"REDIS_URL": redis_url, "RAILS_ENV": rails_env, "RACK_ENV": rails_env})
    env.pop("DATABASE_URL", None)
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(extra or {})
    from tests.helpers.procs import with_secret
    return with_secret(env)


def _run(args: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(args, cwd=RAILS_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}\n--- stdout\n{done.stdout[-4000:]}"
                           f"\n--- stderr\n{done.stderr[-4000:]}")
    return done.stdout


def prepare_db(redis_url: str, database_url: str | None = None, rails_env: str = "test",
               timeout: float = 120) -> str:
    """Create the database if needed and load db/schema.rb when its tables are missing."""
    return _run(["ruby", "bin/rails", "db:prepare"], app_env(redis_url, database_url, rails_env), timeout)


def clean_db() -> Any:
    """A connection to the demo app's test database (SQLite) with its job tables emptied."""
    import sqlite3
    conn = sqlite3.connect(RAILS_ROOT / "db" / "test.sqlite3", timeout=10, isolation_level=None)
    conn.row_factory = sqlite3.Row
    for table in ("job_runs", "job_events", "widgets"):
        conn.execute(f"DELETE FROM {table}")
    return conn


def rails_runner(snippet: str, redis_url: str, database_url: str | None = None, rails_env: str = "test",
                 env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """Run `snippet` with `bin/rails runner` in the demo app; returns stdout (raises on failure)."""
    return _run(["ruby", "bin/rails", "runner", snippet], app_env(redis_url, database_url, rails_env, env), timeout)


def rails_json(snippet: str, redis_url: str, **kwargs: Any) -> Any:
    """`rails_runner` for a snippet that prints JSON (e.g. ``puts JobRun.all.to_json``)."""
    lines = [line for line in rails_runner(snippet, redis_url, **kwargs).splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"no output from snippet {snippet!r}")
    return json.loads(lines[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sidecar:
    """A running fastworker-sidecar process; its output goes to ``log_path``."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path, log_file: Any) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log_file = log_file

    def health(self, timeout: float = 2.0) -> tuple[int, Any]:
        """(status, body) of GET /health, signed as the worker signs it when a secret is set (an
        unsigned caller sees only the public fields); (0, None) when nothing answers."""
        try:
            with self._get("/health", timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, json.loads(exc.read() or b"null")
        except OSError:
            return 0, None

    def metrics(self, timeout: float = 5.0) -> str:
        """GET /metrics (signed), the Prometheus text."""
        with self._get("/metrics", timeout) as resp:
            return resp.read().decode()

    def _get(self, path: str, timeout: float) -> Any:
        from fastworker import signing
        secret = signing.load_secret(os.environ)
        headers = signing.Signer(secret).headers("GET", path, b"", "") if secret else {}
        return urllib.request.urlopen(urllib.request.Request(self.url + path, headers=headers), timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
        """TERM (drains running jobs), then KILL after `timeout`; returns the exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            return self.proc.returncode
        finally:
            if not self._log_file.closed:
                self._log_file.close()

    def __enter__(self) -> "Sidecar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_sidecar(redis_url: str, rails_root: Path | str = RAILS_ROOT, threads: int = 4, workers: int = 1,
                  database_url: str | None = None, rails_env: str = "test", env: dict[str, str] | None = None,
                  port: int | None = None, timeout: float = 60.0) -> Sidecar:
    """Start the sidecar for `rails_root` and wait until /health says 200."""
    port = port or _free_port()
    log_path = Path(tempfile.mkstemp(prefix=f"fastworker-sidecar-{port}-", suffix=".log")[1])
    log_file = open(log_path, "wb")  # closed by Sidecar.stop()
    cmd = ["ruby", str(SIDECAR_BIN), "--rails-root", str(rails_root), "--port", str(port),
           "--threads", str(threads), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=rails_root, env=app_env(redis_url, database_url, rails_env, env),
                            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    sidecar = Sidecar(proc, port, log_path, log_file)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sidecar.stop()
            raise RuntimeError(f"sidecar exited with {proc.returncode}:\n{sidecar.log()[-4000:]}")
        if sidecar.health()[0] == 200:
            return sidecar
        time.sleep(0.1)
    sidecar.stop(timeout=5)
    raise RuntimeError(f"sidecar not healthy after {timeout}s:\n{sidecar.log()[-4000:]}")


def serve(redis_url: str, **options: Any) -> Iterator[Sidecar]:
    """A module fixture's body: the demo app's database prepared, one sidecar for the module's
    tests (``options`` as start_sidecar takes them), stopped after them."""
    prepare_db(redis_url)
    s = start_sidecar(redis_url, **options)
    yield s
    s.stop()
