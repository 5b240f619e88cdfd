"""bench/load.py's bookkeeping: what counts as lost, duplicated and retried, the paging through
GET /runs, and the last line make compose-test prints (the faults themselves run in
scripts/compose-test.sh against a real Docker engine)."""

from __future__ import annotations

import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import load  # noqa: E402

STATS = {"retry_size": 0, "dead_size": 0}


def _run(jid, status="performed", retry_count=None, at="2026-01-01T00:00:01.500Z", id_=0):
    return {"id": id_, "jid": jid, "status": status, "created_at": at,
            "middleware_context": {"retry_count": retry_count}}


def _load(jids, t=1767225600.0, phase="burst"):
    lo = load.Load(load.App("http://127.0.0.1:9"))
    lo.sent = {j: (t, phase) for j in jids}
    return lo


def test_lost_duplicated_and_retried_are_told_apart():
    lo = _load(["ok", "twice", "retried", "lost"])
    rows = [_run("ok"), _run("twice"), _run("twice"),
            _run("retried", status="failed"), _run("retried", retry_count=0), _run("stranger")]
    r = load.analyse(lo, rows, STATS, {"retry_size": 1, "dead_size": 0}, None)
    assert (r["enqueued"], r["done"], r["lost"], r["duplicated"], r["retried"]) == (4, 3, 1, 1, 1)
    assert r["lost_jids"] == ["lost"] and r["duplicated_jids"] == ["twice"]
    assert r["retry_set_growth"] == 1
    # enqueue at 00:00:00, first performed run at 00:00:01.5
    assert r["latency_s"]["burst"]["p50"] == 1.5


def test_the_last_line_has_the_issue_s_shape():
    lo = _load(["a", "b"])
    r = load.analyse(lo, [_run("a"), _run("a"), _run("b")], STATS, STATS, None)
    r["faults"] = 6
    line = load.summary_line("compose", r)
    assert line == "compose: 2 enqueued, 2 done, 0 lost, 1 duplicated, 6 faults"
    assert re.fullmatch(r"compose: (\d+) enqueued, \1 done, 0 lost, \d+ duplicated, \d+ faults", line)


def test_runs_pages_through_every_row():
    rows = [_run(f"j{i}", id_=i + 1) for i in range(2500)]
    seen = []

    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            q = parse_qs(urlparse(self.path).query)
            seen.append(q)
            after, limit = int(q["after_id"][0]), int(q["limit"][0])
            body = json.dumps([r for r in rows if r["id"] > after][:limit]).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        got = load.App(f"http://127.0.0.1:{srv.server_address[1]}").runs()
    finally:
        srv.shutdown()
        srv.server_close()
    assert [r["id"] for r in got] == list(range(1, 2501))
    assert [q["after_id"][0] for q in seen] == ["0", "1000", "2000"]


def test_the_local_stack_runs_what_compose_runs():
    import stack
    worker, sidecar = stack.compose_commands()
    import yaml
    services = yaml.safe_load((stack.ROOT / "docker-compose.yml").read_text())["services"]
    assert worker == services["worker"]["command"]
    assert sidecar == ["--threads", "10", "--workers", "2"]
    assert set(sidecar) <= set(services["sidecar"]["command"])
