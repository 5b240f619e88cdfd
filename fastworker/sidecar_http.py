"""HTTP/1.1 keep-alive transport to the sidecar: the smallest client that speaks what it needs.

Duties:
1. keep-alive connections to one sidecar, over TCP (``http://host:port``) or a Unix socket
   (``unix:///path/to.sock``), opened on demand up to ``limit`` and reused;
2. ``request(method, path, body, headers)`` -> ``Response(status, headers, body)``, reading
   Content-Length and chunked bodies; a connection the server marks ``Connection: close``, that
   broke, or whose request was cancelled or timed out half-way is closed, never reused;
3. spread the requests over the sidecar's processes (Puma workers): every answer names the process
   that wrote it (``x-fastworker-pid``), a request goes out on an idle connection to the process with
   the fewest jobs in flight and a free job slot (each process runs ``capacity`` at once and
   answers 503 beyond; a batch counts its jobs, which may all run at once), and a new connection
   is opened while a process the sidecar advertises has none, since a keep-alive connection stays
   with the process that accepted it; ``warm`` opens and identifies connections up front, so the
   first burst already spreads, and a connection opened later is identified (the ``probe``
   request) before it carries a job, since it may have landed on a process whose slots are all
   taken; a request for one process (``prefer_pid``: an exhausted job's hooks, where its live
   exception is) takes an idle connection to it, or waits up to PREFER_WAIT for a busy one to come
   back;
4. pipelining: a request sent with ``pipelined=True`` may go out on a connection that already has
   such requests in flight, up to ``depth`` (what the sidecar's /health advertises as ``pipeline``),
   so the sidecar process runs the next one the moment it has answered the last, on the same Puma
   thread; the answers come back in order. Only the batches of sub-millisecond jobs are sent so;
   a broken or timed-out pipelined request fails the others on its connection (their jobs go back
   to their queues);
5. failures are ``TransportError`` (could not connect, connection lost, timed out): the caller treats
   them as an unavailable sidecar.

Why not aiohttp's client: measured on the project's 2-core machine, one aiohttp POST costs about
90 µs of CPU in the worker against about 7 µs for this transport, and the worker sends one request
per batch of jobs. The worker's own endpoints are not aiohttp either (http_server.py): the worker
never imports it.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024  # a response head larger than this is not from the sidecar
# How long a request for one sidecar process (``prefer_pid``) waits for a busy connection to it to
# come back, before it takes another process: an exhausted job's hooks get the live exception only
# where the job ran, and a fast job's connection is back within milliseconds; a slow job's is not.
PREFER_WAIT = 2.0
PROBE_TIMEOUT = 2.0  # the answer to the probe that tells which process a new connection reached


class TransportError(Exception):
    """The request got no complete answer: connection refused, reset, closed, or timed out."""


class TransportTimeout(TransportError):
    """The whole request outlived its timeout (the connection was up)."""


class Response:
    __slots__ = ("status", "headers", "body", "cut_off")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # lower-cased names
        self.body = body
        self.cut_off = False  # it came after the caller stopped its jobs at their deadline


class _Conn(asyncio.Protocol):
    """One keep-alive connection; its requests in flight are answered in the order sent."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pid: str | None = None  # the sidecar process at the other end, once an answer named it
        self.closed = False
        self.in_flight = 0  # requests sent on it whose callers have not yet taken their answer
        self._buf = bytearray()
        self.waiters: deque[asyncio.Future[Response]] = deque()  # one per request in flight, in order
        self._head: tuple[int, dict[str, str], int] | None = None  # status, headers, body start

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(TransportError(f"connection lost: {exc}" if exc else "server closed the connection"))

    def eof_received(self) -> bool:
        self.closed = True
        self._fail(TransportError("server closed the connection"))
        return False

    def data_received(self, data: bytes) -> None:
        self._buf += data
        waiters = self.waiters
        while self._buf:
            if not waiters:  # bytes nobody asked for: the stream is out of step, drop the connection
                self.close()
                return
            try:
                response = self._parse()
            except (ValueError, IndexError) as exc:
                self._fail(TransportError(f"unreadable answer: {exc}"))
                self.close()
                return
            if response is None:
                return
            self._head = None
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(response)

    # -- requests ------------------------------------------------------------------------------

    def send(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        waiters, self.waiters = self.waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)

    def _parse(self) -> Response | None:
        buf = self._buf
        if self._head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD:
                    raise ValueError("response head too large")
                return None
            lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if not parts[0].startswith("HTTP/1."):
                raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            self._head = (int(parts[1]), headers, end + 4)
        status, headers, start = self._head
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, used = _dechunk(buf, start)
            if body is None:
                return None
        else:
            length = int(headers.get("content-length", "0"))
            if len(buf) - start < length:
                return None
            body, used = bytes(buf[start:start + length]), start + length
        del buf[:used]
        if headers.get("connection", "").lower() == "close":
            self.close()
        pid = headers.get("x-fastworker-pid")
        if pid:
            self.pid = pid
        return Response(status, headers, body)


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes | None, int]:
    out = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None, 0
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)  # no trailers expected: the empty line ends it
            return (bytes(out), end + 4) if end >= 0 else (None, 0)
        if len(buf) < pos + size + 2:
            return None, 0
        out += buf[pos:pos + size]
        pos += size + 2


class SidecarHTTP:
    """A pool of keep-alive connections to one sidecar URL."""

    def __init__(self, url: str, limit: int, connect_timeout: float,
                 probe: tuple[str, Callable[[], Mapping[str, str]]] | None = None) -> None:
        """``probe``: the path of a cheap GET whose answer names the process, and the headers to
        send with it, for telling which process a new connection reached (duty 3)."""
        parts = urlsplit(url)
        if parts.scheme == "unix":
            self.unix_path: str | None = parts.path
            self.host, self.port = "localhost", 0
            host_header = "localhost"
        elif parts.scheme == "http":
            self.unix_path = None
            self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
            host_header = parts.netloc
        else:
            raise ValueError(f"sidecar URL must be http:// or unix://, got {url!r}")
        self.prefix = parts.path.rstrip("/") if parts.scheme == "http" else ""
        self.limit = max(1, limit)
        self.connect_timeout = connect_timeout
        self.processes = 1  # the sidecar's processes, as /health advertises them
        self.capacity = 0  # jobs each of them runs at once (0: not advertised)
        self.depth = 1  # pipelined requests in flight per connection, as /health advertises it
        self.probe = probe
        self._host_line = f"Host: {host_header}\r\n".encode("latin-1")
        self._idle: list[_Conn] = []
        self._all: set[_Conn] = set()
        self._piping: set[_Conn] = set()  # busy with pipelined requests, taken by no other kind
        self._load: dict[str | None, int] = {}  # job slots in flight per sidecar process (``jobs``)
        self._awaiting: dict[str, list[asyncio.Future[None]]] = {}  # pid -> requests waiting for it
        self._slot = asyncio.Semaphore(self.limit)

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: Mapping[str, str] | None = None, timeout: float | None = None,
                      pipelined: bool = False, prefer_pid: str | None = None, jobs: int = 1) -> Response:
        """One request; raises TransportError when no complete answer came back. ``pipelined``: it
        may queue behind other pipelined requests on one connection (duty 4). ``prefer_pid``: an
        idle connection to that sidecar process, when there is one. ``jobs``: the job slots it may
        take there (a batch's jobs can run at the same time), which is what a process's load counts."""
        data = self._encode(method, path, body, headers)
        piped = pipelined and self.depth > 1
        if piped:
            conn = self._pipe()
            if conn is not None:  # rides on a connection already in use: no slot of its own
                return await self._exchange(conn, data, timeout, jobs)
        async with self._slot:
            conn = await self._acquire(prefer_pid)
            if piped:
                self._piping.add(conn)
            return await self._exchange(conn, data, timeout, jobs)

    async def _exchange(self, conn: _Conn, data: bytes, timeout: float | None, jobs: int = 1) -> Response:
        pid = conn.pid
        self._load[pid] = self._load.get(pid, 0) + jobs
        conn.in_flight += 1
        done = False
        try:
            if timeout is None:
                response = await conn.send(data)
            else:
                response = await asyncio.wait_for(conn.send(data), timeout)
            done = True
            return response
        except TimeoutError as exc:
            raise TransportTimeout(f"no answer within {timeout:g} s") from exc
        finally:
            self._load[pid] -= jobs
            conn.in_flight -= 1
            if not (done and not conn.closed):  # broken, cancelled or timed out half-way: out of step
                self._discard(conn)
            elif not conn.in_flight:  # the last of its callers (answers can land together): idle again
                self._piping.discard(conn)
                self._idle.append(conn)
                if self._awaiting:
                    self._wake(conn.pid)

    def _pipe(self) -> _Conn | None:
        """A connection with pipelined requests in flight and room for one more, to the least
        loaded process; None when an idle connection reaches a less loaded process (there the
        request runs beside the others instead of after them)."""
        load = self._load
        best = None
        for conn in self._piping:
            if conn.closed or conn.in_flight >= self.depth:
                continue
            if best is None or load.get(conn.pid, 0) < load.get(best.pid, 0):
                best = conn
        if best is None:
            return None
        least_idle = min((load.get(c.pid, 0) for c in self._idle if not c.closed), default=None)
        if least_idle is not None and least_idle < load.get(best.pid, 0):
            return None
        return best

    def _encode(self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None) -> bytes:
        head = [f"{method} {self.prefix}{path} HTTP/1.1\r\n".encode("latin-1"), self._host_line]
        if headers:
            head.append("".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1"))
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        return b"".join(head) + body

    async def _acquire(self, prefer_pid: str | None = None) -> _Conn:
        idle = self._idle
        for conn in [c for c in idle if c.closed]:
            self._discard(conn)
        if prefer_pid is not None:
            wanted = await self._to_process(prefer_pid)
            if wanted is not None:
                return wanted
        if idle:
            load = self._load
            # the most recently used first: its Puma thread is still waiting on it (Puma's fast
            # track), so the request skips the reactor's hand-off to another thread
            best = min(reversed(idle), key=lambda c: load.get(c.pid, 0))
            full = self.capacity and best.pid is not None and load.get(best.pid, 0) >= self.capacity
            if not (full or self._should_grow(best)) or len(self._all) >= self.limit:
                idle.remove(best)
                return best
        return await self._grow()

    async def _grow(self) -> _Conn:
        """A new connection; on several processes, one identified to reach a process with a free
        slot. One that reached a full process stays idle for later, and another is opened, up to
        ``limit``; past it the request takes the last one, and a full process answers 503 (the job
        goes back to its queue). A probe that gets no answer fails the request like a refused
        connect."""
        while True:
            conn = await self._open()
            if self.probe is None or self.processes <= 1 or not self.capacity:
                return conn
            if not await self._identify(conn):
                raise TransportError("no answer to the probe on a new connection")
            if self._load.get(conn.pid, 0) < self.capacity or len(self._all) >= self.limit:
                return conn
            self._idle.append(conn)

    async def _to_process(self, pid: str) -> _Conn | None:
        """An idle connection to sidecar process ``pid``: one at hand, or (several processes) the
        first of its busy ones to come back within PREFER_WAIT; None otherwise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PREFER_WAIT
        while True:
            for conn in reversed(self._idle):
                if conn.pid == pid and not conn.closed:
                    self._idle.remove(conn)
                    return conn
            left = deadline - loop.time()
            # one process: any new connection reaches it, no need to wait for a busy one
            if left <= 0 or self.processes <= 1 or not any(c.pid == pid and not c.closed for c in self._all):
                return None
            waiter = loop.create_future()
            self._awaiting.setdefault(pid, []).append(waiter)
            try:
                await asyncio.wait_for(waiter, left)
            except TimeoutError:
                pass
            finally:
                waiters = self._awaiting.get(pid)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._awaiting.pop(pid, None)

    def _wake(self, pid: str | None) -> None:
        """A connection to ``pid`` came back idle, or went: the first request waiting for it looks again."""
        for waiter in self._awaiting.get(pid or "", ()):
            if not waiter.done():
                waiter.set_result(None)
                return

    async def warm(self) -> None:
        """Open and identify (the ``probe``) connections until every advertised process has one per
        job slot. A new connection lands on whichever process accepts it, so this opens a few
        rounds of them and closes the surplus of the processes that got more than their share."""
        if self.processes <= 1 or self.probe is None:
            return
        per = max(self.capacity, 1)
        for attempt in range(10):
            if attempt:  # a Puma worker still booting accepts nothing yet: give it a moment
                await asyncio.sleep(0.05 * attempt)
            spread = self.spread()
            missing = sum(max(0, per - n) for n in spread.values()) + per * max(0, self.processes - len(spread))
            room = 2 * self.processes * per - len(self._all)
            if missing <= 0:
                break
            if room <= 0:  # the surplus goes below, and the next round tries again
                self._trim(per)
                continue
            conns = [await self._open() for _ in range(min(missing, room))]
            known = await asyncio.gather(*(self._identify(c) for c in conns))
            self._idle.extend(c for c, ok in zip(conns, known, strict=True) if ok)
        self._trim(per)

    def _trim(self, per: int) -> None:
        """Close the idle connections beyond ``per`` to one process, and unidentified ones."""
        seen: dict[str | None, int] = {}
        for conn in list(self._idle):
            seen[conn.pid] = seen.get(conn.pid, 0) + 1
            if conn.pid is None or seen[conn.pid] > per:
                self._discard(conn)

    async def _identify(self, conn: _Conn) -> bool:
        """Send the probe on a new connection, which learns its process from the answer; False (and
        the connection closed) when no answer came back on it."""
        assert self.probe is not None
        path, headers = self.probe
        data = self._encode("GET", path, b"", headers())
        try:
            await asyncio.wait_for(conn.send(data), PROBE_TIMEOUT)
        except (TimeoutError, TransportError):
            self._discard(conn)
            return False
        if conn.closed:
            self._discard(conn)
            return False
        return True

    def _should_grow(self, best: _Conn) -> bool:
        """Open another connection instead of reusing ``best`` (the idle connection to the least
        loaded process): while a process the sidecar advertises has no connection yet, or another
        process is less loaded than ``best``'s and has no idle connection. Puma's workers accept
        new connections in preference to busy ones (wait_for_less_busy_worker)."""
        if self.processes <= 1 or len(self._all) >= self.limit:
            return False
        busy = self._load.get(best.pid, 0)
        if busy == 0:
            return False
        known = {c.pid for c in self._all if c.pid is not None}
        if len(known) < self.processes:
            return True
        return busy > min(self._load.get(p, 0) for p in known)

    async def _open(self) -> _Conn:
        loop = asyncio.get_running_loop()
        try:
            if self.unix_path is not None:
                coro: Any = loop.create_unix_connection(_Conn, self.unix_path)
            else:
                coro = loop.create_connection(_Conn, self.host, self.port)
            transport, conn = await asyncio.wait_for(coro, self.connect_timeout)
        except TimeoutError as exc:
            raise TransportError(f"connect timed out after {self.connect_timeout:g} s") from exc
        except OSError as exc:
            raise TransportError(f"cannot connect: {exc}") from exc
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._all.add(conn)
        return conn

    def _discard(self, conn: _Conn) -> None:
        conn.close()
        self._all.discard(conn)
        self._piping.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        if self._awaiting:
            self._wake(conn.pid)

    def spread(self) -> dict[str, int]:
        """Open connections per sidecar process (for tests and the startup log)."""
        out: dict[str, int] = {}
        for c in self._all:
            if c.pid is not None:
                out[c.pid] = out.get(c.pid, 0) + 1
        return out

    async def close(self) -> None:
        for conn in list(self._all):
            self._discard(conn)
        self._idle.clear()
