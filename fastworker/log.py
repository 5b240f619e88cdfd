"""One line per event, JSON by default, text for people (design.md "Logs").

The logger is built for the hot path: a filtered-out level costs one integer comparison (callers
guard per-job lines with ``if log.info_on:``), and an emitted line is one orjson.dumps plus a write
to a buffered stream that a background task flushes every 100 ms (and at exit).
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any

import orjson

LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40}
_NAMES = {10: "debug", 20: "info", 30: "warn", 40: "error"}


class EventLog:
    __slots__ = ("level", "format", "stream", "pid", "debug_on", "info_on", "_sec", "_prefix", "_dirty")

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
            rec = {"ts": self._ts(), "level": _NAMES[level], "event": event}
            rec.update(fields)
            rec["pid"] = self.pid
            line = orjson.dumps(rec, default=str) + b"\n"
        else:
            parts = [self._ts(), _NAMES[level].upper(), f"pid={self.pid}"]
            parts.extend(f"{k}={v}" for k, v in fields.items() if v is not None)
            parts.append(event)
            line = (" ".join(parts) + "\n").encode("utf-8", "replace")
        try:
            self.stream.write(line)
        except (ValueError, OSError):  # closed stream at interpreter exit: nothing to do
            return
        self._dirty = True
        if level >= 30:
            self.flush()

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


def configure(level: str, fmt: str, stream: IO[bytes] | None = None) -> EventLog:
    """Reconfigure the process-wide logger in place (modules hold a reference to it)."""
    new = EventLog(level, fmt, stream)
    for name in EventLog.__slots__:
        setattr(log, name, getattr(new, name))
    return log
