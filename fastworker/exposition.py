"""The Prometheus text format (version 0.0.4), written here rather than by prometheus_client.

Why: importing prometheus_client cost the worker 2.2 MB of PSS (measured 2026-12-02: its
exposition module brings http.server, wsgiref and urllib.request), about a tenth of what the worker
costs beyond Sidekiq on the whole machine (issue 9's memory goal). The worker only ever builds
families at scrape time and renders them, so that is all this module does. The output is
prometheus_client 0.26's ``generate_latest`` byte for byte (tests/test_exposition.py compares
the two on the same families): counters are named ``*_total`` in HELP, TYPE and samples, labels
are sorted by name, a histogram's ``le`` is a label like the others, and numbers are printed
as Go prints them.

Duties:
1. ``CounterFamily``, ``GaugeFamily``, ``HistogramFamily``: a family and its samples;
2. ``render``: families to the text format;
3. ``ProcessStats.families``: the ``process_*`` series prometheus_client's ProcessCollector
   exports, from /proc (none where there is no /proc).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence

Labels = tuple[tuple[str, str], ...]


def go_float(value: float) -> str:
    """A number as Go's strconv prints it, which Prometheus' own clients do: 1.0, +Inf, 1e+06."""
    d = float(value)
    if d == math.inf:
        return "+Inf"
    if d == -math.inf:
        return "-Inf"
    if d != d:
        return "NaN"
    s = repr(d)
    dot = s.find(".")
    if d > 0 and dot > 6:  # Go switches to an exponent sooner than Python does
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Family:
    """One metric family: a name, its help text, a type and its samples."""

    __slots__ = ("name", "doc", "labelnames", "samples")
    type_name = "untyped"

    def __init__(self, name: str, doc: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.doc = doc
        self.labelnames = tuple(labels)
        self.samples: list[tuple[str, Labels, float]] = []

    def _labels(self, values: Sequence[str], extra: Labels = ()) -> Labels:
        return tuple(zip(self.labelnames, values, strict=True)) + extra


class GaugeFamily(Family):
    type_name = "gauge"

    def __init__(self, name: str, doc: str, value: float | None = None, labels: Sequence[str] = ()) -> None:
        super().__init__(name, doc, labels)
        if value is not None:
            self.add_metric((), value)

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self.samples.append((self.name, self._labels(labels), value))


class CounterFamily(GaugeFamily):
    """A counter: its samples and its HELP and TYPE lines are named ``<name>_total``."""

    type_name = "counter"

    def __init__(self, name: str, doc: str, value: float | None = None, labels: Sequence[str] = ()) -> None:
        super().__init__(name.removesuffix("_total") + "_total", doc, value, labels)


class HistogramFamily(Family):
    type_name = "histogram"

    def add_metric(self, labels: Sequence[str], buckets: Sequence[tuple[str, float]], sum_value: float) -> None:
        """``buckets``: cumulative counts per upper bound, as text, the last "+Inf"."""
        for le, count in buckets:
            self.samples.append((self.name + "_bucket", self._labels(labels, (("le", le),)), count))
        self.samples.append((self.name + "_count", self._labels(labels), buckets[-1][1]))
        self.samples.append((self.name + "_sum", self._labels(labels), sum_value))


def render(families: Iterable[Family]) -> bytes:
    """HELP escapes backslash and newline only; label values escape the double quote too."""
    out: list[str] = []
    for fam in families:
        doc = fam.doc.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {fam.name} {doc}\n")
        out.append(f"# TYPE {fam.name} {fam.type_name}\n")
        for name, labels, value in fam.samples:
            if labels:
                body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels))
                out.append(f"{name}{{{body}}} {go_float(value)}\n")
            else:
                out.append(f"{name} {go_float(value)}\n")
    return "".join(out).encode()


def _boot_time(proc: str) -> float:
    with open(os.path.join(proc, "stat"), "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


class ProcessStats:
    """The process_* families (CPU, memory, start time, file descriptors), read at each scrape."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.ticks = float(os.sysconf("SC_CLK_TCK"))
        self.pagesize = os.sysconf("SC_PAGESIZE")
        try:
            self.btime: float | None = _boot_time(proc)
        except OSError:  # no /proc: the process_* series are simply absent
            self.btime = None

    def families(self) -> list[Family]:
        if self.btime is None:
            return []
        me = os.path.join(self.proc, "self")
        out: list[Family] = []
        try:
            with open(os.path.join(me, "stat"), "rb") as f:
                parts = f.read().split(b")")[-1].split()
            out += [
                GaugeFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.", float(parts[20])),
                GaugeFamily("process_resident_memory_bytes", "Resident memory size in bytes.",
                            float(parts[21]) * self.pagesize),
                GaugeFamily("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                            float(parts[19]) / self.ticks + self.btime),
                CounterFamily("process_cpu_seconds", "Total user and system CPU time spent in seconds.",
                              (float(parts[11]) + float(parts[12])) / self.ticks),
            ]
        except OSError:
            pass
        try:
            max_fds = None
            with open(os.path.join(me, "limits"), "rb") as f:
                for line in f:
                    if line.startswith(b"Max open file"):
                        max_fds = float(line.split()[3])
                        break
            out.append(GaugeFamily("process_open_fds", "Number of open file descriptors.",
                                   len(os.listdir(os.path.join(me, "fd")))))
            if max_fds is not None:
                out.append(GaugeFamily("process_max_fds", "Maximum number of open file descriptors.", max_fds))
        except OSError:
            pass
        return out
