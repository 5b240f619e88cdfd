"""Sidekiq's own answer: the server configuration as Sidekiq's code resolved it, taken from the sidecar.

Duties:
1. Ask for it: ``GET <sidecar>/config`` (the sidecar ran Sidekiq::CLI#setup_options, the YAML and the
   app's ``configure_server`` blocks), or run ``fastworker-sidecar --print-config`` for a worker with no
   sidecar running beside it. ``--sidekiq-config`` picks the way:
   * ``auto`` (default): ask the sidecar; a sidecar still booting is waited for (``--config-wait``), one
     that is not there or has no /config (an older sidecar) means the Python reader (config.py) is used;
   * ``sidecar``: ask the sidecar and wait for it; no answer within ``--config-wait`` is an error;
   * ``print``: run the ``--print-config`` command (``FASTWORKER_PRINT_CONFIG_COMMAND``, default
     ``fastworker-sidecar --print-config``) with ``-r ROOT`` and ``-e ENV``;
   * ``file``: never ask; the Python YAML/ERB reader only.
2. Turn the answer into a configuration layer (field -> raw value, source) for config.py, which places it
   below fastworker's own flags and FASTWORKER_* variables and above everything else (docs/design.md,
   "Configuration sources").
3. Know the app's Sidekiq version without Ruby (``Gemfile.lock``), for the version defaults (config.py).

Standard library only (http.client, subprocess): this runs before the event loop exists.
"""

from __future__ import annotations

import http.client
import json
import os
import shlex
import socket
import subprocess
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

__all__ = ["SidekiqAnswer", "SidecarConfigError", "answer_layer", "app_sidekiq_version", "ask"]

SidekiqAnswer = Mapping[str, Any]


class SidecarConfigError(Exception):
    """The configuration could not be had from Sidekiq's side when it was required."""


# The answer's structured keys -> Config fields. Whatever else Sidekiq holds as plain data comes in
# "options" and is read through config.py's YAML key table, exactly as if it came from the file.
_FIELDS = {
    "queues": "queues",
    "concurrency": "concurrency",
    "timeout": "timeout",
    "tag": "tag",
    "labels": "labels",
    "max_retries": "max_retries",
    "dead_max_jobs": "dead_max_jobs",
    "dead_timeout_in_seconds": "dead_timeout",
    "redis_url": "redis_url",
    "namespace": "namespace",
    "environment": "environment",
    "config_file": "config_file",
    "capsules": "capsules",
}
_SIDEKIQ_DEFAULT_SCHEDULED_POLL = 5  # DEFAULTS[:average_scheduled_poll_interval] in 6.4.1 through 8.x


def answer_layer(answer: SidekiqAnswer, yaml_keys: Mapping[str, str]) -> dict[str, tuple[object, str]]:
    """field -> (raw value, source label) from Sidekiq's answer; values that Sidekiq left unset (null)
    are absent, so the next layer down (or fastworker's default) decides them."""
    label = answer.get("_source", "sidecar")
    out: dict[str, tuple[object, str]] = {}
    options = dict(answer.get("options") or {})
    # fastworker polls every second by default (design.md); Sidekiq's 5 s default is not a choice the
    # app made, so only a value the app set moves it
    if options.get("average_scheduled_poll_interval") == _SIDEKIQ_DEFAULT_SCHEDULED_POLL:
        options.pop("average_scheduled_poll_interval")
    for key, raw in options.items():
        field = yaml_keys.get(key)
        if field is not None and raw is not None and key != "verbose":
            out[field] = (raw, f"{label}: Sidekiq option :{key}")
    if options.get("verbose") and "log_level" not in out:
        out["log_level"] = ("debug", f"{label}: Sidekiq option :verbose")
    for key, field in _FIELDS.items():
        raw = answer.get(key)
        if raw is not None and raw != "":
            out[field] = (raw, f"{label}: {key}")
    return out


def sidekiq_major(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except (TypeError, ValueError):
        return None


def app_sidekiq_version(rails_root: str | None) -> str | None:
    """The sidekiq gem version locked in ``<root>/Gemfile.lock`` (``    sidekiq (7.2.4)``), or None."""
    path = os.path.join(rails_root or ".", "Gemfile.lock")
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("    sidekiq (") and line.rstrip().endswith(")"):
                    return line.strip()[len("sidekiq ("):-1]
    except OSError:
        return None
    return None


# -- asking ------------------------------------------------------------------------------------------------


def ask(mode: str, sidecar_url: str, wait: float, rails_root: str | None, environment: str | None,
        env: Mapping[str, str], signer: Any = None) -> SidekiqAnswer | None:
    """Sidekiq's answer, or None when ``mode`` allows the Python reader instead. ``signer``
    (signing.Signer) signs the request: the answer holds the Redis URL with its password, so a
    sidecar with a secret gives it only to a signed request."""
    if mode == "file":
        return None
    if mode == "print":
        return _print_config(rails_root, environment, env)
    deadline = time.monotonic() + wait
    while True:
        try:
            status, body = _get(sidecar_url, "/config", timeout=max(1.0, min(5.0, wait)), signer=signer)
        except OSError as exc:
            if mode == "auto":
                return None  # no sidecar listening (yet): the Python reader decides
            reason = f"{type(exc).__name__}: {exc}"
        else:
            if status == 200:
                answer = json.loads(body)
                answer["_source"] = f"sidecar {sidecar_url}/config"
                return answer
            if status == 404 and mode == "auto":
                return None  # an older sidecar without /config
            reason = f"HTTP {status}"
        if time.monotonic() >= deadline:
            if mode == "auto":
                return None
            raise SidecarConfigError(f"--sidekiq-config sidecar: no configuration from {sidecar_url}/config "
                                     f"within {wait:g} s ({reason})")
        time.sleep(0.25)


def _get(base: str, path: str, timeout: float, signer: Any = None) -> tuple[int, bytes]:
    parts = urlsplit(base)
    if parts.scheme == "unix":
        conn: http.client.HTTPConnection = _UnixConnection(parts.path, timeout)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
    try:
        full = (parts.path.rstrip("/") if parts.scheme != "unix" else "") + path
        conn.request("GET", full, headers=signer.headers("GET", full, b"", "") if signer is not None else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def _print_config(rails_root: str | None, environment: str | None, env: Mapping[str, str]) -> SidekiqAnswer:
    command = shlex.split(env.get("FASTWORKER_PRINT_CONFIG_COMMAND") or "fastworker-sidecar --print-config")
    command += ["--rails-root", rails_root or "."]
    if environment:
        command += ["--environment", environment]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=dict(env), timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SidecarConfigError(f"--sidekiq-config print: cannot run {shlex.join(command)}: {exc}") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise SidecarConfigError(f"--sidekiq-config print: {shlex.join(command)} exited {done.returncode}: {tail}")
    try:
        answer = json.loads(lines[-1])
    except ValueError:
        raise SidecarConfigError(f"--sidekiq-config print: no JSON on the last line of {command[0]}'s output") from None
    answer["_source"] = "fastworker-sidecar --print-config"
    return answer
