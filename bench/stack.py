"""docker-compose.yml's topology as local processes, for bench/load.py without Docker:
its own redis-server (AOF, a free port; never the machine's shared one), the demo Rails app under
Puma, the sidecar and the worker, with the commands docker-compose.yml gives them (read from it:
one place says how the services run). The database is SQLite in the stack's directory (the
compose stack's PostgreSQL is a container; the machine's shared one is left alone).

    python bench/stack.py up [--dir DIR]      # prints the app URL; state in DIR/stack.json
    python bench/stack.py down [--dir DIR]    # TERM (drain), then KILL what is left; removes DIR
    python bench/stack.py run -- ARGS         # up, bench/load.py --app-url URL ARGS, down
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RAILS = ROOT / "examples/rails_app"
DEFAULT_DIR = Path(tempfile.gettempdir()) / "fastworker-stack"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"stack: {name} not healthy at {url} after {timeout:.0f} s")


def compose_commands() -> tuple[list[str], list[str]]:
    """The worker's arguments and the sidecar's tuning flags, as docker-compose.yml runs them."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    side = services["sidecar"]["command"]
    tuning = [a for flag in ("--threads", "--workers") if flag in side for a in (flag, side[side.index(flag) + 1])]
    return list(services["worker"]["command"]), tuning


def up(d: Path) -> dict:
    if (d / "stack.json").exists():
        raise SystemExit(f"stack: {d} holds a running stack; `stack.py down --dir {d}` first")
    d.mkdir(parents=True, exist_ok=True)
    ports = {"redis": free_port(), "app": free_port(), "sidecar": free_port(), "worker": free_port()}
    redis_url = f"redis://127.0.0.1:{ports['redis']}/0"
    env = dict(os.environ, REDIS_URL=redis_url, RAILS_ENV="production", RACK_ENV="production",
               SECRET_KEY_BASE="stack-not-secret", DATABASE_URL=f"sqlite3:{d / 'demo.sqlite3'}",
               FASTWORKER_SIDECAR_SECRET=os.environ.get("FASTWORKER_SIDECAR_SECRET") or secrets.token_urlsafe(48))
    env.pop("FASTWORKER_SIDECAR_SECRET_FILE", None)
    worker_args, sidecar_tuning = compose_commands()
    pids: dict[str, int] = {}
    state: dict[str, Any] = {"dir": str(d), "ports": ports, "pids": pids, "app_url": f"http://127.0.0.1:{ports['app']}"}

    def start(name: str, cmd: list[str], cwd: Path = ROOT, **extra: str) -> None:
        out = open(d / f"{name}.log", "ab")
        p = subprocess.Popen(cmd, cwd=cwd, env=dict(env, **extra), stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)  # its own group: `down` signals it, nothing else
        pids[name] = p.pid
        (d / "stack.json").write_text(json.dumps(state))

    try:
        start("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(ports["redis"]), "--dir", str(d),
                        "--appendonly", "yes", "--save", ""])
        subprocess.run(["ruby", "bin/rails", "db:prepare"], cwd=RAILS, env=env, check=True, capture_output=True,
                       timeout=180)
        start("app", ["puma", "-b", f"tcp://127.0.0.1:{ports['app']}", "-t", "5:5", "config.ru"], cwd=RAILS)
        start("sidecar", ["ruby", "sidecar/bin/fastworker-sidecar", "--rails-root", str(RAILS),
                          "--port", str(ports["sidecar"]), *sidecar_tuning])
        wait_http(f"http://127.0.0.1:{ports['sidecar']}/health", 180, "sidecar")
        start("worker", [sys.executable, "-m", "fastworker", *worker_args],
              FASTWORKER_SIDECAR_URL=f"http://127.0.0.1:{ports['sidecar']}",
              FASTWORKER_HTTP_PORT=str(ports["worker"]), FASTWORKER_TAG="stack")
        wait_http(f"http://127.0.0.1:{ports['worker']}/healthz", 60, "worker")
        wait_http(state["app_url"] + "/health", 120, "app")
    except BaseException:
        down(d)
        raise
    return state


def down(d: Path, grace: float = 35) -> None:
    state_file = d / "stack.json"
    if state_file.exists():
        pids = json.loads(state_file.read_text())["pids"]
        # the worker first (it drains into a live sidecar and Redis), then the rest
        order = [n for n in ("worker", "sidecar", "app", "redis") if n in pids]
        for name in order:
            try:
                os.killpg(pids[name], signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                try:  # reap it if it is our child (`run`): a zombie would still count as alive
                    os.waitpid(pids[name], os.WNOHANG)
                except ChildProcessError:
                    pass
                try:
                    os.killpg(pids[name], 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
            else:
                try:
                    os.killpg(pids[name], signal.SIGKILL)
                except ProcessLookupError:
                    pass
    shutil.rmtree(d, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("action", choices=["up", "down", "run"])
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    argv = list(sys.argv[1:] if argv is None else argv)
    rest = argv[argv.index("--") + 1:] if "--" in argv else []  # for run: bench/load.py's arguments
    args = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.action == "up":
        print(up(args.dir)["app_url"])
        return 0
    if args.action == "down":
        down(args.dir)
        return 0
    t = time.monotonic()
    state = up(args.dir)
    print(f"stack: up in {time.monotonic() - t:.0f} s", file=sys.stderr)
    try:
        return subprocess.run([sys.executable, str(ROOT / "bench/load.py"), "--label", "stack",
                               "--app-url", state["app_url"], *rest]).returncode
    finally:
        t = time.monotonic()
        down(args.dir)
        print(f"stack: down in {time.monotonic() - t:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
