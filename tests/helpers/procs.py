"""Real processes for the tests: the fastworker command, the stub sidecar, Ruby's Sidekiq client."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# Every process the tests start shares this secret unless a test says otherwise, as users run it.
TEST_SECRET = os.environ.get("FASTWORKER_SIDECAR_SECRET") or "fastworker-test-secret-5f0c2a9d81e34b7c"


def with_secret(env: dict[str, str]) -> dict[str, str]:
    """``env`` plus the test secret, unless it sets a secret itself (an empty value means none)."""
    out = dict(env)
    if "FASTWORKER_SIDECAR_SECRET" not in out and not out.get("FASTWORKER_SIDECAR_SECRET_FILE"):
        out["FASTWORKER_SIDECAR_SECRET"] = TEST_SECRET
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, data: Any = None, timeout: float = 5.0) -> Any:
    body = None if data is None else json.dumps(data).encode()
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def wait_until(pred: Any, timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def wait_http(url: str, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    def up() -> bool:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return True
        except OSError:
            return False
    wait_until(up, timeout, 0.05, url)


class StubSidecar:
    """The Python STUB sidecar (tests/helpers/stub_sidecar.py) in its own process."""

    def __init__(self, record: bool = True, port: int | None = None, extra: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, str(ROOT / "tests/helpers/stub_sidecar.py"), "--port", str(self.port)]
        if record:
            cmd.append("--record")
        cmd.extend(extra or [])
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=with_secret({**os.environ, **(env or {})}))
        wait_http(self.url + "/health", proc=self.proc)

    def stats(self) -> dict[str, Any]:
        return http_json(self.url + "/_stats")

    def reset(self) -> None:
        http_json(self.url + "/_reset", {})

    def mode(self, status: int | None, retry_after: float | None = None, exhausted_status: int | None = None,
             exhausted_delay: float = 0.0) -> None:
        http_json(self.url + "/_mode", {"status": status, "retry_after": retry_after,
                                        "exhausted_status": exhausted_status, "exhausted_delay": exhausted_delay})

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Worker:
    """``fastworker`` as a user runs it, in its own process; its JSON log lines are kept."""

    def __init__(self, redis_url: str, sidecar_url: str, *args: str, log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self.http_port = free_port()
        argv = [sys.executable, "-m", "fastworker", "--redis-url", redis_url, "--sidecar-url", sidecar_url,
                "--http-host", "127.0.0.1", "--http-port", str(self.http_port), *args]
        full_env = with_secret({**os.environ, **(env or {})})
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=full_env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        out = []
        text = self.log_path.read_text(errors="replace")
        # the worker may be writing its last line this very moment: only whole lines count
        for line in text[:text.rfind("\n") + 1].splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            rec = json.loads(line)
            if name is None or rec.get("event") == name:
                out.append(rec)
        return out

    def wait_event(self, name: str, timeout: float = 10.0, count: int = 1) -> list[dict[str, Any]]:
        return wait_until(lambda: len(self.events(name)) >= count and self.events(name), timeout,
                          0.05, f"log event {name!r}")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


RUBY_PRELUDE = """
$stderr.reopen(File::NULL) unless ENV["RUBY_DEBUG"]
require "sidekiq"
require "sidekiq/api"
require "json"
Sidekiq.configure_client { |c| c.redis = { url: ENV.fetch("REDIS_URL") } }
Sidekiq.logger.level = Logger::WARN
"""


def ruby(redis_url: str, code: str, timeout: float = 60.0) -> str:
    """Run Ruby with Debian's sidekiq gem (the real client and Sidekiq::API) against ``redis_url``."""
    env = dict(os.environ, REDIS_URL=redis_url)
    res = subprocess.run(["ruby", "-e", RUBY_PRELUDE + code], capture_output=True, text=True, env=env,
                         timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(f"ruby failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res.stdout


def ruby_json(redis_url: str, code: str) -> Any:
    out = ruby(redis_url, code)
    return json.loads(out.strip().splitlines()[-1])
