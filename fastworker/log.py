"""One line per event, JSON by default, text for people (design.md "Logs").

The logger is built for the hot path: a filtered-out level costs one integer comparison (callers
guard per-job lines with ``if log.info_on:``), and an emitted line is one orjson.dumps plus a write
to a buffered stream that a background task flushes every 100 ms (and at exit).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Sequence
from typing import IO, Any

import orjson

LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40}
_NAMES = {10: "debug", 20: "info", 30: "warn", 40: "error"}


class EventLog:
    __slots__ = ("level", "format", "stream", "pid", "debug_on", "info_on", "_sec", "_prefix", "_dirty",
                 "_pid_tail")

    def __init__(self, level: str = "info", fmt: str = "json", stream: IO[bytes] | None = None) -> None:
        self.level = LEVELS[level]
        self.format = fmt
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.pid = os.getpid()
        self.debug_on = self.level <= 10
        self.info_on = self.level <= 20
        self._sec = -1
        self._prefix = ""
        self._dirty = False
        self._pid_tail = b',"pid":' + str(self.pid).encode() + b"}\n"

    def _ts(self) -> str:
        now = time.time()
        sec = int(now)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{int((now - sec) * 1000):03d}Z"

    def emit(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if level < self.level:
            return
        if self.format == "json":
            rec: dict[str, Any] = {"ts": self._ts(), "level": _NAMES[level], "event": event}
            rec.update(fields)
            rec["pid"] = self.pid
            line = orjson.dumps(rec, default=str) + b"\n"
        else:
            parts = [self._ts(), _NAMES[level].upper(), event, f"pid={self.pid}"]
            parts.extend(f"{k}={_text_value(v)}" for k, v in fields.items() if v is not None)
            line = (" ".join(parts) + "\n").encode("utf-8", "replace")
        try:
            self.stream.write(line)
        except (ValueError, OSError):  # closed stream at interpreter exit: nothing to do
            return
        self._dirty = True
        if level >= 30:
            self.flush()

    # -- the per-job lines, the hot path at INFO ---------------------------------------------------

    def job_fields(self, jid: str, klass: str, queue: str, retry_count: int) -> bytes:
        """A job's fields, encoded once for its start and done lines (JSON members, no braces)."""
        return orjson.dumps({"jid": jid, "class": klass, "queue": queue, "retry_count": retry_count})[1:-1]

    def job_lines(self, event: bytes, fields: Sequence[bytes], elapsed_ms: float | None = None) -> None:
        """One INFO line per job of a request (``event`` is b"job_start" or b"job_done"): a
        timestamp read once, the pre-encoded fields, one write."""
        if self.level > 20 or not fields:
            return
        if self.format != "json":
            for f in fields:
                rec = orjson.loads(b"{" + f + b"}")
                if elapsed_ms is not None:
                    rec["elapsed_ms"] = elapsed_ms
                self.emit(20, event.decode(), rec)
            return
        head = b'{"ts":"' + self._ts().encode() + b'","level":"info","event":"' + event + b'",'
        tail = (b',"elapsed_ms":' + repr(elapsed_ms).encode() if elapsed_ms is not None else b"") + self._pid_tail
        try:
            self.stream.write(b"".join([head + f + tail for f in fields]))
        except (ValueError, OSError):
            return
        self._dirty = True

    def debug(self, event: str, **fields: Any) -> None:
        if self.level <= 10:
            self.emit(10, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        if self.level <= 20:
            self.emit(20, event, fields)

    def warn(self, event: str, **fields: Any) -> None:
        if self.level <= 30:
            self.emit(30, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self.emit(40, event, fields)

    def flush(self) -> None:
        if self._dirty:
            self._dirty = False
            try:
                self.stream.flush()
            except (ValueError, OSError):
                pass


log = EventLog()


def _text_value(v: Any) -> str:
    """A value for the text format: bare when it is one word, else quoted (JSON string rules)."""
    if isinstance(v, (dict, list, tuple)):
        return orjson.dumps(v, default=str).decode()
    text = str(v)
    if not text or any(c in text for c in ' ="\n\t'):
        return orjson.dumps(text).decode()
    return text


class _Bridge(logging.Handler):
    """Python's ``logging`` (asyncio's "Task exception was never retrieved", aiohttp, redis-py) and
    ``warnings`` into the same one-line events, so stdout never mixes formats."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = 40 if record.levelno >= logging.ERROR else 30 if record.levelno >= logging.WARNING else \
                20 if record.levelno >= logging.INFO else 10
            if level < log.level:
                return
            fields: dict[str, Any] = {"logger": record.name, "message": record.getMessage()[:2000]}
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                fields["error_class"] = type(exc).__name__
                fields["error_message"] = str(exc)[:500]
                fields["backtrace"] = "".join(traceback.format_exception(*record.exc_info))[-4000:]
            log.emit(level, "python_warning" if record.name == "py.warnings" else "python_log", fields)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _excepthook(etype: type[BaseException], exc: BaseException, tb: Any) -> None:
    log.error("crash", error_class=etype.__name__, error_message=str(exc)[:500],
              backtrace="".join(traceback.format_exception(etype, exc, tb))[-4000:])
    log.flush()


def configure(level: str, fmt: str, stream: IO[bytes] | None = None) -> EventLog:
    """Reconfigure the process-wide logger in place (modules hold a reference to it), and route
    Python's own logging, warnings and uncaught exceptions through it."""
    new = EventLog(level, fmt, stream)
    for name in EventLog.__slots__:
        setattr(log, name, getattr(new, name))
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _Bridge):
            root.removeHandler(h)
    root.addHandler(_Bridge())
    root.setLevel(logging.DEBUG if log.level <= 10 else logging.WARNING)
    logging.captureWarnings(True)
    sys.excepthook = _excepthook
    return log
