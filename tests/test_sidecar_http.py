"""The keep-alive HTTP/1.1 transport to the sidecar (fastworker/sidecar_http.py), against small
raw-socket servers that answer the way Puma can: Content-Length or chunked bodies, Connection:
close, an idle connection closed by the server, no answer at all, and several processes behind one
address (told apart by x-fastworker-pid)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable

import pytest

from fastworker.sidecar_http import SidecarHTTP, TransportError, TransportTimeout


class Server:
    """A loopback HTTP server whose answer to each request is ``reply(conn_no, request_bytes)``."""

    def __init__(self, reply: Callable[[int, bytes], bytes | None]) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[tuple[int, bytes]] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self, unix: str | None = None) -> str:
        if unix:
            self.server = await asyncio.start_unix_server(self._serve, unix)
            return f"unix://{unix}"
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = self.connections
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append((n, head + body))
                out = self.reply(n, head + body)
                if out is None:
                    continue  # never answers
                if b"/slow" in head:
                    await asyncio.sleep(0.3)
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        for w in self.writers:
            w.close()
        self.server.close()


def ok(body: bytes = b"{}", extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


async def test_keep_alive_reuses_one_connection_and_sends_the_body_and_headers():
    srv = Server(lambda n, req: ok(b'{"a":1}', "x-fastworker-pid: 11\r\n"))
    http = SidecarHTTP(await srv.start(), limit=4, connect_timeout=1)
    for _ in range(5):
        resp = await http.request("POST", "/perform", b'{"jid":"x"}', {"Idempotency-Key": "x"})
        assert (resp.status, resp.body, resp.headers["x-fastworker-pid"]) == (200, b'{"a":1}', "11")
    assert srv.connections == 1
    first = srv.requests[0][1]
    assert first.startswith(b"POST /perform HTTP/1.1\r\n")
    assert b"Idempotency-Key: x\r\n" in first and first.endswith(b'\r\n\r\n{"jid":"x"}')
    await http.close()
    await srv.stop()


async def test_a_lone_request_takes_the_most_recently_used_connection():
    """Puma's thread waits a moment on the connection it just answered (its fast track): the next
    request on that connection skips the reactor's hand-off to another thread."""
    srv = Server(lambda n, req: ok(b"{}", "x-fastworker-pid: 11\r\n") if b"/slow" not in req else ok())
    http = SidecarHTTP(await srv.start(), limit=4, connect_timeout=1)
    # three at once open three connections; the fast two come back before the slow one
    await asyncio.gather(http.request("POST", "/slow"), http.request("POST", "/a"), http.request("POST", "/b"))
    assert srv.connections == 3
    slow_conn = next(n for n, req in srv.requests if b"/slow" in req)
    for _ in range(3):
        await http.request("POST", "/next")
    assert [n for n, req in srv.requests if b"/next" in req] == [slow_conn] * 3
    await http.close()
    await srv.stop()


async def test_a_request_can_ask_for_one_sidecar_process():
    """An exhausted job's hooks go to the process that ran it, which holds its live exception."""
    srv = Server(lambda n, req: ok(b"{}", f"x-fastworker-pid: {n}\r\n"))
    http = SidecarHTTP(await srv.start(), limit=4, connect_timeout=1)
    # three at once open three connections (the server names each its own "process")
    await asyncio.gather(http.request("POST", "/slow"), http.request("POST", "/a"), http.request("POST", "/b"))
    assert srv.connections == 3
    for pid in ("1", "3", "2"):
        resp = await http.request("POST", "/exhausted", prefer_pid=pid)
        assert resp.headers["x-fastworker-pid"] == pid
    await http.close()
    await srv.stop()


async def test_a_request_for_a_busy_process_waits_for_its_connection_to_come_back():
    """In a Puma cluster the process that ran the job may be busy with the next batch when its
    hooks go out: they wait for its connection instead of reaching another process, which would
    give them an exception rebuilt from the report."""
    srv = Server(lambda n, req: ok(b"{}", f"x-fastworker-pid: {n}\r\n"))
    http = SidecarHTTP(await srv.start(), limit=4, connect_timeout=1)
    http.processes = 2  # as /health advertises a cluster of two
    await asyncio.gather(http.request("POST", "/a"), http.request("POST", "/b"))  # processes 1 and 2
    busy = asyncio.ensure_future(http.request("POST", "/slow"))  # takes the most recent idle one
    await asyncio.sleep(0.05)
    slow_pid = str(next(n for n, req in srv.requests if b"/slow" in req))
    resp = await http.request("POST", "/exhausted", prefer_pid=slow_pid)
    assert resp.headers["x-fastworker-pid"] == slow_pid
    assert busy.done()  # it went out after the slow answer, on the same connection
    # a process with no connection left is not waited for
    resp = await http.request("POST", "/exhausted", prefer_pid="99")
    assert resp.status == 200
    await http.close()
    await srv.stop()


async def test_chunked_bodies_and_connection_close():
    def reply(n: int, req: bytes) -> bytes:
        if b"/chunked" in req:
            return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        return ok(b"bye", "connection: close\r\n")

    srv = Server(reply)
    http = SidecarHTTP(await srv.start(), limit=2, connect_timeout=1)
    assert (await http.request("GET", "/chunked")).body == b"abcde"
    assert (await http.request("GET", "/close")).body == b"bye"
    assert (await http.request("GET", "/chunked")).body == b"abcde"  # on a new connection
    assert srv.connections == 2
    await http.close()
    await srv.stop()


async def test_an_idle_connection_the_server_closed_is_not_reused():
    srv = Server(lambda n, req: ok())
    http = SidecarHTTP(await srv.start(), limit=2, connect_timeout=1)
    await http.request("GET", "/health")
    for w in srv.writers:
        w.close()  # as Puma does after persistent_timeout
    await asyncio.sleep(0.05)
    assert (await http.request("GET", "/health")).status == 200
    assert srv.connections == 2
    await http.close()
    await srv.stop()


async def test_refused_timed_out_and_cut_off_requests_raise_and_drop_the_connection():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    refused = SidecarHTTP(f"http://127.0.0.1:{port}", limit=1, connect_timeout=1)
    with pytest.raises(TransportError, match="cannot connect"):
        await refused.request("GET", "/health")

    srv = Server(lambda n, req: None if b"/hang" in req else ok())
    http = SidecarHTTP(await srv.start(), limit=2, connect_timeout=1)
    with pytest.raises(TransportTimeout):
        await http.request("POST", "/hang", b"x", timeout=0.2)
    # the late answer of a timed-out request can never be read as the next one's
    assert (await http.request("GET", "/health")).status == 200
    assert srv.connections == 2

    task = asyncio.ensure_future(http.request("POST", "/hang", b"x"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await http.request("GET", "/health")).status == 200
    assert srv.connections == 3
    await http.close()
    await srv.stop()


async def test_a_unix_socket_sidecar(tmp_path):
    path = str(tmp_path / "sidecar.sock")
    srv = Server(lambda n, req: ok(b"unix"))
    http = SidecarHTTP(await srv.start(unix=path), limit=1, connect_timeout=1)
    resp = await http.request("GET", "/health")
    assert resp.body == b"unix"
    assert srv.requests[0][1].startswith(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
    await http.close()
    await srv.stop()
    os.unlink(path)


async def test_requests_spread_over_the_sidecar_processes():
    """Two processes behind one address; a keep-alive connection stays with the process that
    accepted it (here connections 1 and 2 with pid 1, later ones with pid 2). While a request runs
    on pid 1, the next one goes to pid 2, not to the idle connection that also leads to pid 1."""
    def reply(n: int, req: bytes) -> bytes:
        return ok(b"{}", f"x-fastworker-pid: {1 if n <= 2 else 2}\r\n")

    srv = Server(reply)
    http = SidecarHTTP(await srv.start(), limit=8, connect_timeout=1)
    http.processes = 2
    await asyncio.gather(http.request("GET", "/health"), http.request("GET", "/health"))
    assert http.spread() == {"1": 2}
    slow = asyncio.ensure_future(http.request("POST", "/slow", b"x"))
    await asyncio.sleep(0.05)
    await http.request("POST", "/perform_batch", b"x")
    assert srv.requests[-1][0] == 3 and http.spread() == {"1": 2, "2": 1}
    await slow
    await http.close()
    await srv.stop()


async def test_a_batch_counts_its_jobs_against_its_process_slots():
    """A batch of jobs that wait runs them all at once, so it takes as many of its process's job
    slots as it has jobs, not one: while a batch of 10 holds every slot of pid 1, single jobs go
    to pid 2, even once pid 2 has more requests in flight than pid 1 (pid 1 would answer 503)."""
    def reply(n: int, req: bytes) -> bytes:
        return ok(b"{}", f"x-fastworker-pid: {1 if n <= 2 else 2}\r\n")

    srv = Server(reply)
    http = SidecarHTTP(await srv.start(), limit=8, connect_timeout=1)
    http.processes, http.capacity = 2, 10
    await asyncio.gather(*(http.request("GET", "/health") for _ in range(6)))
    assert http.spread() == {"1": 2, "2": 4}
    by_pid = {"1": [], "2": []}

    async def job(path: str, jobs: int) -> None:
        resp = await http.request("POST", path, b"x", jobs=jobs)
        by_pid[resp.headers["x-fastworker-pid"]].append(path)

    batch = asyncio.ensure_future(http.request("POST", "/perform_batch/slow", b"x", jobs=10, prefer_pid="1"))
    await asyncio.sleep(0.05)
    singles = [asyncio.ensure_future(job(f"/perform/slow/{i}", 1)) for i in range(3)]
    await asyncio.sleep(0.05)
    await asyncio.gather(*singles, job("/perform/next", 1))
    assert by_pid["1"] == [] and len(by_pid["2"]) == 4, by_pid
    await batch
    await http.close()
    await srv.stop()


async def test_a_connection_opened_mid_run_is_identified_before_it_carries_a_job():
    """A new connection lands on whichever process accepts it (Puma's workers share one socket),
    maybe on one whose slots are all taken, which would answer 503. So the probe goes first: here
    connection 2 reaches the full pid 1 and stays idle for later, and the job goes out on
    connection 3, which reached pid 2."""
    def reply(n: int, req: bytes) -> bytes:
        return ok(b"{}", f"x-fastworker-pid: {1 if n <= 2 else 2}\r\n")

    srv = Server(reply)
    http = SidecarHTTP(await srv.start(), limit=8, connect_timeout=1, probe=("/health", lambda: {"X-Probe": "1"}))
    http.processes, http.capacity = 2, 1
    slow = asyncio.ensure_future(http.request("POST", "/slow", b"x"))
    await asyncio.sleep(0.05)
    await http.request("POST", "/perform_batch", b"x")
    jobs = [(n, req.split(b" ")[1]) for n, req in srv.requests if req.startswith(b"POST")]
    assert jobs == [(1, b"/slow"), (3, b"/perform_batch")], jobs
    probes = [n for n, req in srv.requests if req.startswith(b"GET /health") and b"X-Probe: 1\r\n" in req]
    assert probes == [1, 2, 3]
    assert http.spread() == {"1": 2, "2": 1}
    await slow
    await http.close()
    await srv.stop()


async def test_pipelined_requests_share_one_connection_and_come_back_in_order():
    """With ``depth`` 2, a second pipelined request goes out on the connection whose first one is
    still running (the sidecar's Puma thread takes it the moment it has answered), and each caller
    gets its own answer. A request that is not pipelined never queues behind them."""
    def reply(n: int, req: bytes) -> bytes:
        return ok(req.rsplit(b"\r\n\r\n", 1)[1], "x-fastworker-pid: 7\r\n")

    srv = Server(reply)
    http = SidecarHTTP(await srv.start(), limit=8, connect_timeout=1)
    http.depth = 2
    await http.request("GET", "/health")  # the worker's connections are open before the jobs
    first = asyncio.ensure_future(http.request("POST", "/slow", b"b0", pipelined=True))
    await asyncio.sleep(0.05)
    second = await http.request("POST", "/perform_batch", b"b1", pipelined=True)
    assert ((await first).body, second.body) == (b"b0", b"b1")
    assert srv.connections == 1 and [n for n, _ in srv.requests] == [1, 1, 1]
    slow = asyncio.ensure_future(http.request("POST", "/slow", b"p", pipelined=True))
    await asyncio.sleep(0.05)
    alone = await http.request("POST", "/perform", b"alone")  # a slow job's own request
    assert alone.body == b"alone" and srv.requests[-1][0] == 2, [(n, r[:20]) for n, r in srv.requests]
    assert (await slow).body == b"p"
    await http.close()
    await srv.stop()


async def test_a_broken_pipelined_connection_fails_every_request_on_it():
    srv = Server(lambda n, req: None)  # takes the requests, never answers
    http = SidecarHTTP(await srv.start(), limit=4, connect_timeout=1)
    http.depth = 2
    tasks = []
    for _ in range(2):
        tasks.append(asyncio.ensure_future(http.request("POST", "/perform_batch", b"x", pipelined=True)))
        await asyncio.sleep(0.05)
    assert srv.connections == 1 and len(srv.requests) == 2
    for w in srv.writers:
        w.close()
    for t in tasks:
        with pytest.raises(TransportError):
            await t
    await http.close()
    await srv.stop()
