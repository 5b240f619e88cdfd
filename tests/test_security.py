"""Issue 12: only the worker can make the sidecar run code, only jobs run, and sizes are bounded.

Against the real things: the Rails sidecar (examples/rails_app) with a secret, the real Sidekiq
client, real Redis; the stub sidecar (which verifies signatures too) for the worker-only cases.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fastworker import signing
from tests.helpers import rails
from tests.helpers.procs import ROOT, TEST_SECRET, free_port, ruby_json, wait_until
from tests.test_rails_e2e import db, enqueue, events, rworker, sidecar  # noqa: F401 - fixtures

RUBY = rails.ruby_available()
needs_ruby = pytest.mark.skipif(not RUBY, reason="needs Debian's ruby with rails, sidekiq and puma")


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read() or b"null")


def signed(secret: str, body: bytes, path: str = "/perform", at: int | None = None, key: str = "") -> dict[str, str]:
    if at is None:
        return signing.Signer(secret.encode()).headers("POST", path, body, key)
    nonce = os.urandom(12).hex()
    mac = hmac.new(secret.encode(), signing.canonical("POST", path, str(at), nonce, key) + body, hashlib.sha256)
    return {signing.TIMESTAMP: str(at), signing.NONCE: nonce, signing.SIGNATURE: f"v1={mac.hexdigest()}"}


def plain_runs(db) -> int:  # noqa: ANN001
    return db.execute("SELECT COUNT(*) FROM job_runs WHERE kind = 'plain'").fetchone()[0]


# -- 1. authentication ---------------------------------------------------------------------------

@needs_ruby
def test_unsigned_badly_signed_stale_and_replayed_requests_run_nothing(sidecar, db):  # noqa: F811
    """Python signs (signing.py), Ruby verifies (auth.rb): the two must agree byte for byte."""
    body = json.dumps({"class": "PlainWorker", "args": ["sec", 1], "jid": "a" * 24, "retry": True}).encode()
    url = sidecar.url + "/perform"
    refusals = {
        "missing signature": {},
        "bad signature": signed("w" * 40, body),
        "stale": signed(TEST_SECRET, body, at=int(time.time()) - 120),
    }
    for reason, headers in refusals.items():
        status, answer = post(url, body, headers)
        assert (status, reason in answer["error"]) == (401, True), (reason, answer)
    assert plain_runs(db) == 0
    good = signed(TEST_SECRET, body)
    assert post(url, body, good)[0] == 200
    assert plain_runs(db) == 1
    status, answer = post(url, body, good)  # the same request again, inside the window
    assert (status, answer["error"]) == (401, "unauthorized: replayed request")
    assert plain_runs(db) == 1, "the replay ran nothing"


@needs_ruby
def test_health_is_open_but_says_nothing_sensitive(sidecar):  # noqa: F811
    with urllib.request.urlopen(sidecar.url + "/health", timeout=5) as resp:
        body = json.loads(resp.read())
    assert sorted(body) == ["batch", "batch_max", "max_body", "pipeline", "protocol", "status"]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(sidecar.url + "/metrics", timeout=5)
    err.value.close()
    assert err.value.code == 401


def test_a_worker_with_the_wrong_secret_runs_nothing(redis_url, r, stub, worker):
    """The stub checks signatures as the sidecar does: 401, the job is requeued, never run."""
    jids = ruby_json(redis_url, 'puts [Sidekiq::Client.push("class" => "HardJob", "args" => [1])].to_json')
    w = worker("-c", "1", "--breaker-threshold", "100", env={"FASTWORKER_SIDECAR_SECRET": "z" * 40})
    wait_until(lambda: stub.stats()["unauthorized"] >= 2, 20, what="401s")
    assert stub.stats()["count"] == 0
    assert any("401" in str(e.get("sidecar_status")) for e in w.events("job_requeued"))
    w.stop()
    assert r.lrange("queue:default", 0, -1) and json.loads(r.lrange("queue:default", 0, -1)[0])["jid"] == jids[0]


def _fastworker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("FASTWORKER_SIDECAR_SECRET")}
    return subprocess.run([sys.executable, "-m", "fastworker", *args], cwd=ROOT, env={**full, **env},
                          capture_output=True, text=True, timeout=60)


def test_the_worker_refuses_a_short_secret_naming_the_variable(tmp_path: Path):
    done = _fastworker(env={"FASTWORKER_SIDECAR_SECRET": "short-secret"})
    assert done.returncode == 2
    assert "FASTWORKER_SIDECAR_SECRET: the secret must be at least 32 bytes, got 12" in done.stderr
    assert "short-secret" not in done.stderr
    path = tmp_path / "secret"
    path.write_text("tiny\n")
    done = _fastworker(env={"FASTWORKER_SIDECAR_SECRET_FILE": str(path)})
    assert done.returncode == 2 and "FASTWORKER_SIDECAR_SECRET_FILE" in done.stderr


# -- 2. safe defaults ------------------------------------------------------------------------------

def test_the_worker_http_endpoints_need_a_secret_off_loopback():
    done = _fastworker("--http-host", "0.0.0.0", env={})
    assert done.returncode == 2
    assert "--http-host 0.0.0.0" in done.stderr and "FASTWORKER_SIDECAR_SECRET" in done.stderr
    from fastworker.config import Config
    assert Config().http_host == "127.0.0.1"


@needs_ruby
def test_a_sidecar_on_0000_without_a_secret_does_not_start():
    env = {k: v for k, v in rails.app_env("redis://127.0.0.1:1/0").items() if not k.startswith("FASTWORKER_SIDECAR_SECRET")}
    done = subprocess.run(["ruby", str(rails.SIDECAR_BIN), "--rails-root", str(rails.RAILS_ROOT), "--bind", "0.0.0.0",
                           "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "FASTWORKER_SIDECAR_SECRET" in done.stderr


# -- 3. only jobs run ------------------------------------------------------------------------------

@needs_ruby
def test_a_non_job_class_is_never_instantiated_and_goes_to_the_dead_set(db, rworker, r):  # noqa: F811
    enqueue('puts Sidekiq::Client.push("class" => "PlainPerformer", "args" => [1], "retry" => 5).to_json')
    enqueue('puts Sidekiq::Client.push("class" => "Kernel", "args" => ["exit!"]).to_json')
    w = rworker("-c", "1")
    dead = wait_until(lambda: len(r.zrange("dead", 0, -1)) == 2 and r.zrange("dead", 0, -1), 30, 0.1, "dead entries")
    entries = {json.loads(m)["class"]: json.loads(m) for m in dead}
    assert "PlainPerformer is never run: it is not a Sidekiq job class" in entries["PlainPerformer"]["error_message"]
    assert "Kernel is never run" in entries["Kernel"]["error_message"]
    assert entries["PlainPerformer"]["args"] == [1] and "retry_count" not in entries["PlainPerformer"]
    assert r.zcard("retry") == 0, "no retry is spent on a job that can never run"
    assert events(db, "instantiated") == []
    assert db.execute("SELECT COUNT(*) FROM job_runs WHERE kind = 'plain_performer'").fetchone()[0] == 0
    assert w.proc.poll() is None


# -- 4. limits -------------------------------------------------------------------------------------

def test_a_20mb_job_is_dead_lettered_unsent_and_the_worker_goes_on(redis_url, r, stub, worker):
    jids = ruby_json(redis_url, """
      big = Sidekiq::Client.push("class" => "HardJob", "args" => ["x" * (20 * 1024 * 1024)])
      small = Sidekiq::Client.push("class" => "HardJob", "args" => [2])
      puts [big, small].to_json""")
    w = worker("-c", "2")
    wait_until(lambda: int(r.get("stat:processed") or 0) >= 1 and r.zcard("dead") == 1, 30, what="dead + next job")
    [member] = r.zrange("dead", 0, -1)
    entry = json.loads(member)
    assert entry["jid"] == jids[0]
    assert entry["error_class"] == "Fastworker::PayloadTooLarge"
    assert "over the 5242880-byte limit" in entry["error_message"]
    assert r.zcard("retry") == 0
    assert [rec["jid"] for rec in stub.stats()["records"]] == [jids[1]], "the big one was never sent"
    assert any("payload too large" in e["reason"] for e in w.events("job_dead"))
    assert w.proc.poll() is None


def test_the_worker_takes_the_sidecars_smaller_limit(redis_url, r, stub, worker):
    """A /health that advertises max_body lowers the worker's own limit (a 413 would be refused too)."""
    from fastworker import limits
    assert limits.agreed(5_000_000, {"max_body": 1000}) == 1000
    assert limits.agreed(5_000_000, {"max_body": True}) == 5_000_000
    ruby_json(redis_url, 'puts [Sidekiq::Client.push("class" => "HardJob", "args" => ["y" * 2000])].to_json')
    worker("-c", "1", "--max-job-bytes", "1500")
    wait_until(lambda: r.zcard("dead") == 1, 20, what="dead entry")
    assert stub.stats()["count"] == 0
