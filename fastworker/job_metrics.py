"""Sidekiq 7.x/8.x job metrics: the data behind the Web UI's Metrics tab, in the format each version reads.

Duties:
1. Count per job class (``wrapped`` or ``class``, as Sidekiq's Metrics::Middleware names it): ``p``
   every finished attempt, ``f`` the failed ones, ``ms`` the milliseconds of the successful ones, and a
   26-bucket execution-time histogram of the successful ones. One dict lookup and a few integer adds
   per job: well under a microsecond (tests/test_job_metrics.py measures it).
2. At each heartbeat, turn what was counted since the last one into Redis commands, as Sidekiq's
   ExecutionTracker#flush writes them (read from github:sidekiq/sidekiq metrics/tracking.rb and
   metrics/shared.rb, 7.0.0-7.3.9 and 8.0.0-8.1.7):
   * 7.x: ``HINCRBY j|%Y%m%d|%-H:%-M  <Class>|p|f|ms``, EXPIRE 8 h; histogram key
     ``<Class>-%d-%H:%-M``: ``BITFIELD key OVERFLOW SAT INCRBY u16 #i n ...``, EXPIRE 8 h;
   * 8.x: the same hash fields in ``j|%y%m%d|%-H:%M`` (1 minute, 8 h) and in that string without its
     last character (10 minutes, 72 h); histogram key ``h|<Class>-%-d-%-H:%-M``.
   All of a flush goes to the minute of the flush, as in Sidekiq. The heartbeat sends the commands.
3. A 6.x app (or one whose version is unknown) gets none: ``for_version`` returns None.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from typing import Any

from .keys import Keys

# Histogram#BUCKET_INTERVALS: the upper bound (ms, exclusive) of each bucket; the 26th takes the rest
BUCKET_LIMITS = (20, 30, 45, 65, 100, 150, 225, 335, 500, 750, 1100, 1700, 2500, 3800, 5750,
                 8500, 13000, 20000, 30000, 45000, 65000, 100000, 150000, 225000, 335000)
BUCKETS = len(BUCKET_LIMITS) + 1
SHORT_TERM = 8 * 60 * 60
MID_TERM = 3 * 24 * 60 * 60  # 8.x's 10-minute buckets
HISTOGRAM_TTL = 8 * 60 * 60
MAX_CLASSES = 1000  # a flood of distinct class names between two beats shares one "other" row

_P, _F, _MS = 0, 1, 2  # a row: p, f, ms, then the 26 histogram buckets


class JobMetrics:
    __slots__ = ("major", "keys", "_rows")

    def __init__(self, major: int, keys: Keys) -> None:
        self.major = major
        self.keys = keys
        self._rows: dict[str, list[int]] = {}

    @classmethod
    def for_version(cls, sidekiq_version: str, keys: Keys) -> JobMetrics | None:
        """The app's Sidekiq major as config.py settled it ("7", "8"); None for 6.x or unknown ("auto")."""
        major = int(sidekiq_version) if sidekiq_version.isdigit() else 0
        return cls(major, keys) if major >= 7 else None

    # -- hot path -----------------------------------------------------------------------------

    def record(self, klass: str, seconds: float, ok: bool) -> None:
        row = self._rows.get(klass)
        if row is None:
            row = self._new_row(klass)
        row[_P] += 1
        if ok:
            ms = int(seconds * 1000)  # Sidekiq: whole milliseconds of the monotonic clock
            row[_MS] += ms
            row[3 + bisect_right(BUCKET_LIMITS, ms)] += 1
        else:
            row[_F] += 1  # failed attempts count no time, as in Sidekiq

    def _new_row(self, klass: str) -> list[int]:
        if len(self._rows) >= MAX_CLASSES:
            klass = "other"
            row = self._rows.get(klass)
            if row is not None:
                return row
        row = self._rows[klass] = [0] * (3 + BUCKETS)
        return row

    # -- flush (with the heartbeat) --------------------------------------------------------------

    def take(self) -> dict[str, list[int]]:
        rows, self._rows = self._rows, {}
        return rows

    def restore(self, rows: dict[str, list[int]]) -> None:
        """A flush that did not land: its counts go with the next one."""
        for klass, old in rows.items():
            row = self._rows.get(klass)
            if row is None:
                self._rows[klass] = old
            else:
                for i, v in enumerate(old):
                    row[i] += v

    def commands(self, rows: dict[str, list[int]], now: float | None = None) -> list[tuple[Any, ...]]:
        """The Redis commands for ``rows`` at ``now`` (epoch s, UTC), in Sidekiq's order and format."""
        if not rows:
            return []
        t = time.gmtime(time.time() if now is None else now)
        k = self.keys
        out: list[tuple[Any, ...]] = []
        if self.major >= 8:
            window = f"{t.tm_mday}-{t.tm_hour}:{t.tm_min}"
            short = f"{t.tm_year % 100:02d}{t.tm_mon:02d}{t.tm_mday:02d}|{t.tm_hour}:{t.tm_min:02d}"
            buckets = [(short[:-1], MID_TERM), (short, SHORT_TERM)]
        else:
            window = f"{t.tm_mday:02d}-{t.tm_hour:02d}:{t.tm_min}"
            buckets = [(f"{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}|{t.tm_hour}:{t.tm_min}", SHORT_TERM)]
        for klass, row in rows.items():
            incr: list[Any] = []
            for i in range(BUCKETS):
                n = row[3 + i]
                if n:
                    incr += ["INCRBY", "u16", f"#{i}", n]
            if incr:  # only successes have a histogram (Sidekiq creates one in track_time)
                key = k.job_histogram(klass, window, self.major)
                out.append(("BITFIELD", key, "OVERFLOW", "SAT", *incr))
                out.append(("EXPIRE", key, HISTOGRAM_TTL))
        for bucket, ttl in buckets:
            key = k.job_metrics(bucket)
            for klass, row in rows.items():
                # Sidekiq's Hash.new(0) holds only the fields a job touched: p always, f and ms when > 0
                # or when touched (ms of a 0 ms success is written as 0)
                out.append(("HINCRBY", key, f"{klass}|p", row[_P]))
                if row[_F]:
                    out.append(("HINCRBY", key, f"{klass}|f", row[_F]))
                if row[_P] > row[_F]:
                    out.append(("HINCRBY", key, f"{klass}|ms", row[_MS]))
            out.append(("EXPIRE", key, ttl))
        return out
