"""Issue 12, item 5: TLS Redis and ACL users work end to end, and the password shows up nowhere.

Starts its own redis-server (Debian's 7.0) with a plain port and a TLS port (a self-signed
certificate made here with openssl, also used as the client certificate, since Redis asks for
one by default; the Ruby client, which sends none, is let in with `tls-auth-clients optional`) and
an ACL user with a password; the default user is switched off.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers import rails
from tests.helpers.procs import Worker, free_port, wait_until

PASSWORD = "Pw-3f9c1e7b-never-printed"
USER = "fastworker"
needs_tools = pytest.mark.skipif(not (shutil.which("redis-server") and shutil.which("openssl")),
                                 reason="needs redis-server and openssl")


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory) -> Iterator[dict]:
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "redis.crt", d / "redis.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    plain, tls = free_port(), free_port()
    acl = d / "users.acl"
    acl.write_text(f"user default off\nuser {USER} on >{PASSWORD} ~* &* +@all\n")
    proc = subprocess.Popen(["redis-server", "--port", str(plain), "--bind", "127.0.0.1", "--tls-port", str(tls),
                             "--tls-cert-file", str(crt), "--tls-key-file", str(key), "--tls-ca-cert-file", str(crt),
                             "--tls-auth-clients", "optional",
                             "--aclfile", str(acl), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(port=plain, username=USER, password=PASSWORD)
    wait_until(lambda: _pings(client), 10, 0.05, "redis-server")
    yield {"plain": plain, "tls": tls, "crt": str(crt), "key": str(key), "client": client}
    client.close()
    proc.terminate()
    proc.wait(10)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _job(jid: str) -> bytes:
    now = time.time()
    return json.dumps({"class": "HardJob", "args": [1], "jid": jid, "queue": "default", "retry": True,
                       "created_at": now, "enqueued_at": now}).encode()


@needs_tools
def test_acl_user_over_tls_end_to_end_and_the_password_shows_up_nowhere(secure_redis, stub, tmp_path: Path):
    r = secure_redis["client"]
    r.flushall()
    assert not _pings(redis.Redis(port=secure_redis["plain"])), "the default user is off: the ACL is in force"
    r.lpush("queue:default", _job("a" * 24), _job("b" * 24))
    url = f"rediss://{USER}:{PASSWORD}@127.0.0.1:{secure_redis['tls']}/0"
    w = Worker(url, stub.url, "-c", "2", "--redis-ca-file", secure_redis["crt"], "--redis-cert-file",
               secure_redis["crt"], "--redis-key-file", secure_redis["key"], "--heartbeat-interval", "0.5",
               log_path=tmp_path / "tls-worker.log")
    try:
        wait_until(lambda: int(r.get("stat:processed") or 0) >= 2, 20, what="both jobs over TLS")
        assert sorted(rec["jid"] for rec in stub.stats()["records"]) == ["a" * 24, "b" * 24]
        wait_until(lambda: r.smembers("processes"), 10, what="the process record")
        shown = [w.log_path.read_text()]
        for ident in r.smembers("processes"):
            shown.append(repr(r.hgetall(ident)))
        base = f"http://127.0.0.1:{w.http_port}"
        for path in ("/metrics", "/readyz", "/healthz"):
            with urllib.request.urlopen(base + path, timeout=5) as resp:
                shown.append(resp.read().decode())
        for text in shown:
            assert PASSWORD not in text
    finally:
        w.kill()


@needs_tools
def test_a_wrong_password_and_a_bad_url_never_print_the_password(secure_redis, tmp_path: Path):
    import os
    import sys

    from tests.helpers.procs import ROOT
    bad = subprocess.run([sys.executable, "-m", "fastworker", "--redis-url", f"redis://{USER}:{PASSWORD}@127.0.0.1:port/0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30, env=dict(os.environ))
    assert bad.returncode == 2 and "REDACTED" in bad.stderr and PASSWORD not in bad.stderr
    log = tmp_path / "wrong.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fastworker", "--redis-url",
                                 f"redis://{USER}:{PASSWORD}-wrong@127.0.0.1:{secure_redis['plain']}/0",
                                 "--http-port", "0"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            proc.wait(8)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert text.strip(), "it said something"
    assert PASSWORD not in text, text[-2000:]


@needs_tools
@pytest.mark.skipif(not rails.ruby_available(), reason="needs Debian's ruby with rails, sidekiq and puma")
def test_the_real_sidecar_and_its_jobs_reach_redis_as_the_acl_user_over_tls(secure_redis, tmp_path: Path):
    """The sidecar's own Sidekiq client (the jobs' ``Sidekiq.redis``, the app's initializer reading
    REDIS_URL) works over TLS as an ACL user, beside the worker; the job is enqueued with Ruby's
    Sidekiq client over the same URL, and the password shows in no log and no open endpoint."""
    r = secure_redis["client"]
    r.flushall()
    url = f"rediss://{USER}:{PASSWORD}@127.0.0.1:{secure_redis['tls']}/0"
    ruby_env = {"SSL_CERT_FILE": secure_redis["crt"]}  # OpenSSL's default store: redis-rb verifies the server
    rails.prepare_db(url)
    sidecar = rails.start_sidecar(url, threads=2, env=ruby_env)
    w = None
    try:
        w = Worker(url, f"http://127.0.0.1:{sidecar.port}", "-c", "2", "--redis-ca-file", secure_redis["crt"],
                   "--redis-cert-file", secure_redis["crt"], "--redis-key-file", secure_redis["key"],
                   log_path=tmp_path / "acl-worker.log")
        rails.rails_runner('PidWorker.perform_async("acl:pids"); PidWorker.perform_async("acl:pids")', url, env=ruby_env)
        counts = wait_until(lambda: (h := r.hgetall("acl:pids")) and sum(int(v) for v in h.values()) >= 2 and h,
                            60, 0.1, "both jobs' HINCRBY from inside the sidecar")
        assert sum(int(v) for v in counts.values()) == 2
        wait_until(lambda: int(r.get("stat:processed") or 0) == 2, 10, 0.05, "both acks")  # acks land after the job
        shown = [w.log_path.read_text(), sidecar.log(), json.dumps(sidecar.health()[1])]
        for text in shown:
            assert PASSWORD not in text
    finally:
        if w is not None:
            w.kill()
        sidecar.stop()


def _sentinel_conf(d: Path, port: int, secure_redis: dict, tls_port: bool) -> Path:
    """One sentinel watching the TLS master as the ACL user; itself plain, or TLS-only."""
    listen = f"port 0\ntls-port {port}\n" if tls_port else f"port {port}\n"
    conf = d / "sentinel.conf"
    conf.write_text(f"""{listen}bind 127.0.0.1
dir {d}
tls-replication yes
tls-cert-file {secure_redis['crt']}
tls-key-file {secure_redis['key']}
tls-ca-cert-file {secure_redis['crt']}
sentinel monitor mymaster 127.0.0.1 {secure_redis['tls']} 1
sentinel auth-user mymaster {USER}
sentinel auth-pass mymaster {PASSWORD}
""")
    return conf


@needs_tools
@pytest.mark.parametrize("scheme", ["redis+sentinel", "rediss+sentinel"])
def test_sentinel_to_a_tls_master_as_the_acl_user(secure_redis, stub, tmp_path: Path, scheme: str):
    """``redis+sentinel://user:password@sentinel/master/0`` with the TLS options: the sentinel
    names the TLS master, and the worker logs in there as the ACL user (before, the URL's user
    name was dropped and the master refused the password alone). ``rediss+sentinel://`` talks TLS
    to a sentinel that listens on TLS only."""
    r = secure_redis["client"]
    r.flushall()
    r.lpush("queue:default", _job("c" * 24), _job("d" * 24))
    port = free_port()
    d = tmp_path / "sentinel"
    d.mkdir()
    tls = scheme == "rediss+sentinel"
    conf = _sentinel_conf(d, port, secure_redis, tls_port=tls)
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    sentinel = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, **({"ssl": True, "ssl_ca_certs": secure_redis["crt"],
                                                            "ssl_certfile": secure_redis["crt"],
                                                            "ssl_keyfile": secure_redis["key"]} if tls else {}))
    w = None
    try:
        wait_until(lambda: _pings(sentinel) and sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                                                         "mymaster"), 10, 0.05, "the sentinel")
        url = f"{scheme}://{USER}:{PASSWORD}@127.0.0.1:{port}/mymaster/0"
        w = Worker(url, stub.url, "-c", "2", "--redis-ca-file", secure_redis["crt"], "--redis-cert-file",
                   secure_redis["crt"], "--redis-key-file", secure_redis["key"], log_path=tmp_path / "sentinel.log")
        wait_until(lambda: int(r.get("stat:processed") or 0) >= 2, 20, what="both jobs through the sentinel")
        assert {"c" * 24, "d" * 24} <= {rec["jid"] for rec in stub.stats()["records"]}
        assert PASSWORD not in w.log_path.read_text()
    finally:
        if w is not None:
            w.kill()
        sentinel.close()
        proc.kill()
        proc.wait(10)
