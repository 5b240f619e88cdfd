"""Pipelined /perform_batch requests against the real Rails sidecar (examples/rails_app).

Puma 5.x reads a body that arrived together with the next request into one rack.input and drops
the next request; the sidecar mends that (sidecar/lib/fastworker/sidecar/puma_pipelining.rb), so
the worker can keep two batches in flight on one connection and one Puma thread takes them in
turn. Jobs are enqueued with the real Sidekiq client; the worker's share is checked with the
stats Sidekiq's API reads."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from fastworker import signing
from tests.conftest import REDIS_BASE, TEST_DB
from tests.helpers import rails
from tests.helpers.procs import ruby_json, wait_until

URL = f"{REDIS_BASE}/{TEST_DB}"
pytestmark = [pytest.mark.rails, pytest.mark.ruby]


@pytest.fixture(scope="module")
def sidecar() -> Iterator[rails.Sidecar]:
    yield from rails.serve(URL, threads=10)


def batch_request(jobs: list[bytes]) -> bytes:
    body = b"\n".join(jobs)
    keys = ",".join(json.loads(j)["jid"] for j in jobs)
    headers = {"Content-Type": "application/x-ndjson", "Idempotency-Keys": keys}
    secret = signing.load_secret(os.environ)
    if secret:
        headers.update(signing.Signer(secret).headers("POST", "/perform_batch", body, keys))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST /perform_batch HTTP/1.1\r\nHost: sidecar\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def noop(i: int) -> bytes:
    return json.dumps({"class": "NoopWorker", "args": [i], "jid": uuid.uuid4().hex[:24], "queue": "default",
                       "retry": True, "created_at": time.time(), "enqueued_at": time.time()}).encode()


def read_answers(sock: socket.socket, count: int) -> list[tuple[int, list]]:
    buf, out = b"", []
    deadline = time.monotonic() + 20
    while len(out) < count:
        assert time.monotonic() < deadline, f"only {len(out)} of {count} answers: {buf[:300]!r}"
        head_end = buf.find(b"\r\n\r\n")
        if head_end >= 0:
            head = buf[:head_end].decode("latin-1").split("\r\n")
            length = next(int(h.split(":")[1]) for h in head if h.lower().startswith("content-length:"))
            if len(buf) >= head_end + 4 + length:
                out.append((int(head[0].split()[1]), json.loads(buf[head_end + 4:head_end + 4 + length])))
                buf = buf[head_end + 4 + length:]
                continue
        buf += sock.recv(65536)
    return out


def test_the_sidecar_advertises_pipelining(sidecar):
    status, body = sidecar.health()
    assert status == 200 and body["pipeline"] == 2


def test_batches_written_together_on_one_connection_each_get_their_answer(sidecar):
    """Three batches in ONE write: before the mend the first answer held "bad_request" items (the
    next requests read as its body) and the others never came."""
    batches = [[noop(10 * b + i) for i in range(3)] for b in range(3)]
    with socket.create_connection(("127.0.0.1", sidecar.port), timeout=20) as sock:
        sock.sendall(b"".join(batch_request(b) for b in batches))
        answers = read_answers(sock, 3)
        for (status, items), batch in zip(answers, batches):
            assert status == 200
            assert [i["status"] for i in items] == ["done"] * 3
            assert [i["jid"] for i in items] == [json.loads(j)["jid"] for j in batch]
        sock.sendall(batch_request([noop(99)]))  # the connection is still in step
        assert read_answers(sock, 1)[0][1][0]["status"] == "done"


def test_the_worker_pipelines_its_batches_with_every_job_counted(redis_url, r, worker, sidecar):
    """At -c 10 against one Puma process the worker keeps two batches of at most 5 in flight on
    one connection; every job is counted once, none requeued, none failed."""
    ruby_json(redis_url, 'puts 3000.times.map { |i| Sidekiq::Client.push("class" => "NoopWorker", "args" => [i]) }.to_json')
    w = worker("-c", "10", sidecar_url=sidecar.url)
    wait_until(lambda: int(r.get("stat:processed") or 0) >= 3000, 90, what="3000 jobs")
    assert int(r.get("stat:failed") or 0) == 0 and r.llen("queue:default") == 0
    assert w.events("job_requeued") == []
    [startup] = w.events("startup")
    assert (startup["sidecar_pipeline"], startup["batch_size"]) == (2, 5)
    stats = ruby_json(redis_url, 's = Sidekiq::Stats.new; puts({processed: s.processed, failed: s.failed, retry: s.retry_size, dead: s.dead_size}.to_json)')
    assert stats == {"processed": 3000, "failed": 0, "retry": 0, "dead": 0}
