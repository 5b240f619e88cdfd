"""The worker's own Prometheus text format against prometheus_client's, byte for byte, and the
worker's runtime importing neither prometheus_client nor the core's pure-Python twin (their memory
counts toward issue 9's PSS goal; see fastworker/exposition.py)."""

from __future__ import annotations

import subprocess
import sys

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from fastworker import exposition as ex

AWKWARD = 'back\\slash "quoted"\nnew line, ünïcode'


class _Families:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


def reference(families) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    return generate_latest(registry)


def both(build):
    """The same families built with each library's classes."""
    ours = build(ex.CounterFamily, ex.GaugeFamily, ex.HistogramFamily)
    theirs = build(CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily)
    return ex.render(ours), reference(theirs)


def test_counters_gauges_and_histograms_render_as_prometheus_client_renders_them():
    def build(counter, gauge, histogram):
        c = counter("sidekiq_jobs_executed", "Jobs executed (done or failed).", labels=["queue", "worker"])
        c.add_metric(["default", "HardWorker"], 3)
        c.add_metric(["critical", AWKWARD], 12345678901)
        total = counter("fastworker_heartbeats_total", "Already named *_total.", value=7)
        g = gauge("sidekiq_queue_latency", "Help with a \\ backslash\nand a newline.", labels=["queue"])
        g.add_metric(["default"], 0.000123)
        g.add_metric(["low"], 1234567.5)
        plain = gauge("fastworker_ready", "1 while ready.", value=1)
        special = gauge("fastworker_lag", "Odd values.", labels=["kind"])
        for kind, v in (("inf", float("inf")), ("ninf", float("-inf")), ("nan", float("nan")), ("neg", -2.5),
                        ("big", 3e21), ("zero", 0)):
            special.add_metric([kind], v)
        h = histogram("sidekiq_job_runtime_seconds", "Job execution time.", labels=["queue", "worker"])
        buckets = [(ex.go_float(b), n) for b, n in ((0.005, 1), (1, 2), (21_600, 2))] + [("+Inf", 4)]
        h.add_metric(["default", "HardWorker"], buckets, 12.75)
        return [c, total, g, plain, special, h]

    ours, theirs = both(build)
    assert ours == theirs, (ours.decode(), theirs.decode())


def test_numbers_print_as_go_prints_them():
    for value in (0, 1, 0.5, 1e-7, 123456.0, 1234567.0, 21_600, 1.5e300, -3e21, float("inf"), float("-inf")):
        assert ex.go_float(value) == prometheus_client.utils.floatToGoString(value), value
    assert ex.go_float(float("nan")) == "NaN"


def test_process_families_match_the_process_collector():
    ours = {f.name: f for f in ex.ProcessStats().families()}
    theirs = {f.name + ("_total" if f.type == "counter" else ""): f for f in ProcessCollector(registry=None).collect()}
    assert sorted(ours) == sorted(theirs)
    for name, fam in ours.items():
        ref = theirs[name]
        assert (fam.type_name, fam.doc) == (ref.type, ref.documentation)
        if name in ("process_start_time_seconds", "process_max_fds"):
            assert fam.samples[0][2] == ref.samples[0].value


def test_no_proc_means_no_process_series(tmp_path):
    assert ex.ProcessStats(proc=str(tmp_path / "missing")).families() == []


def test_the_worker_runtime_imports_neither_prometheus_client_nor_the_core_twin():
    probe = ("import sys, fastworker.cli, fastworker.launcher, fastworker.core as c;"
             "print(c.IMPLEMENTATION, sorted(m for m in ('prometheus_client', 'fastworker._core_py') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split(None, 1)
    if out[0] != "c":
        pytest.skip("the twin is the core here (FASTWORKER_NO_EXTENSIONS, or no build): it must be imported")
    assert out[1].strip() == "[]"
