"""Sidekiq 7.x/8.x job metrics (fastworker/job_metrics.py), in the formats read from Sidekiq's source as
fetched from github:sidekiq/sidekiq (metrics/tracking.rb and metrics/shared.rb at 7.0.0, 7.3.9, 8.0.0 and
8.1.7). Sidekiq 7/8 cannot be installed here: the key names are checked against Ruby's own strftime with
the format strings those files use, the rest against the files as read."""

from __future__ import annotations

import calendar
import json
import shutil
import subprocess
import time
import uuid

import pytest

from fastworker.job_metrics import BUCKETS, JobMetrics
from fastworker.keys import Keys
from tests.helpers.procs import wait_until

# (format of the 1-minute hash bucket, of the histogram window) per major, as in tracking.rb / shared.rb
FORMATS = {7: ("%Y%m%d|%-H:%-M", "%d-%H:%-M"), 8: ("%y%m%d|%-H:%M", "%-d-%-H:%-M")}
TIMES = [(2025, 2, 14, 8, 43, 5), (2025, 3, 3, 0, 5, 59), (2031, 12, 31, 23, 9, 0)]


def epoch(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)))


def ruby_strftime(t: float, fmt: str) -> str:
    out = subprocess.run(["ruby", "-e", f"print Time.at({t!r}).utc.strftime({json.dumps(fmt)})"],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout


@pytest.mark.skipif(shutil.which("ruby") is None, reason="needs ruby")
@pytest.mark.parametrize("major", [7, 8])
@pytest.mark.parametrize("when", TIMES)
def test_key_names_match_rubys_strftime_with_sidekiqs_formats(major: int, when: tuple[int, ...]) -> None:
    t = epoch(*when)
    jm = JobMetrics(major, Keys())
    jm.record("HardJob", 0.012, True)
    cmds = jm.commands(jm.take(), t)
    minute_fmt, window_fmt = FORMATS[major]
    short = "j|" + ruby_strftime(t, minute_fmt)
    hist = ("h|" if major == 8 else "") + "HardJob-" + ruby_strftime(t, window_fmt)
    hashes = [c[1] for c in cmds if c[0] == "HINCRBY"]
    assert ("BITFIELD", hist, "OVERFLOW", "SAT", "INCRBY", "u16", "#0", 1) in cmds
    assert ("EXPIRE", hist, 8 * 3600) in cmds
    if major == 7:
        assert set(hashes) == {short}
        assert ("EXPIRE", short, 8 * 3600) in cmds
    else:
        mid = short[:-1]  # tracking.rb: the same string without its last character, 10-minute buckets
        assert set(hashes) == {short, mid}
        assert ("EXPIRE", short, 8 * 3600) in cmds and ("EXPIRE", mid, 72 * 3600) in cmds


def test_counts_and_buckets_as_the_execution_tracker_keeps_them() -> None:
    jm = JobMetrics(7, Keys("ns"))
    for ms in (0, 19.9, 20, 280, 400_000):
        jm.record("A", ms / 1000, True)
    jm.record("A", 5.0, False)
    jm.record("B", 0.1, False)  # only failures: p and f, no ms, no histogram
    cmds = jm.commands(jm.take(), epoch(2025, 2, 14, 8, 43, 5))
    h = {c[2]: c[3] for c in cmds if c[0] == "HINCRBY"}
    assert h == {"A|p": 6, "A|f": 1, "A|ms": 0 + 19 + 20 + 280 + 400_000, "B|p": 1, "B|f": 1}
    (bitfield,) = [c for c in cmds if c[0] == "BITFIELD"]
    assert bitfield[1] == "ns:A-14-08:43"  # the namespace prefixes the key (6.x users only, in practice)
    incr = dict(zip(bitfield[6::4], bitfield[7::4]))
    assert incr == {"#0": 2, "#1": 1, "#7": 1, f"#{BUCKETS - 1}": 1}  # 280 ms < 335: bucket 7
    assert all(c[1].startswith("ns:j|") for c in cmds if c[0] == "HINCRBY")
    assert jm.commands(jm.take()) == []  # nothing since: nothing written


def test_a_flush_that_did_not_land_goes_with_the_next() -> None:
    jm = JobMetrics(8, Keys())
    jm.record("A", 0.01, True)
    rows = jm.take()
    jm.record("A", 0.01, True)
    jm.restore(rows)
    assert jm.take()["A"][:3] == [2, 0, 20]


def test_no_metrics_for_6x_or_an_unknown_version() -> None:
    assert JobMetrics.for_version("6", Keys()) is None
    assert JobMetrics.for_version("auto", Keys()) is None
    assert JobMetrics.for_version("7", Keys()).major == 7


def push(r, n: int, klass: str, queue: str = "default") -> None:
    p = r.pipeline(transaction=False)
    for _ in range(n):
        job = {"class": klass, "args": [], "queue": queue, "jid": uuid.uuid4().hex[:24], "retry": False,
               "created_at": time.time(), "enqueued_at": time.time()}
        p.sadd("queues", queue)
        p.lpush(f"queue:{queue}", json.dumps(job))
    p.execute()


@pytest.mark.parametrize("version", ["7", "8"])
def test_the_worker_writes_them_with_the_heartbeat(redis_url, r, stub, worker, version):
    w = worker("--sidekiq-version", version, "--heartbeat-interval", "1", "--process-ttl", "10")
    w.wait_event("startup")
    push(r, 5, "HardJob")
    push(r, 2, "FailJob")
    hashes = wait_until(lambda: [k for k in r.keys("j|*")], 10, 0.1, "a j| hash")
    wait_until(lambda: all(int(r.hget(k, "HardJob|p") or 0) == 5 for k in r.keys("j|*")), 10, 0.1, "5 HardJob")
    assert len(hashes) == (2 if version == "8" else 1)
    for k in r.keys("j|*"):
        assert int(r.hget(k, "FailJob|f")) == 2 and int(r.hget(k, "FailJob|p")) == 2
        assert r.hget(k, "FailJob|ms") is None and int(r.hget(k, "HardJob|ms")) >= 0
        assert 0 < r.ttl(k) <= (72 if version == "8" and len(k) < len(max(r.keys("j|*"), key=len)) else 8) * 3600
    (hist,) = r.keys(("h|" if version == "8" else "") + "HardJob-*")
    counts = r.execute_command("BITFIELD", hist, *sum((["GET", "u16", f"#{i}"] for i in range(BUCKETS)), []))
    assert sum(counts) == 5 and counts[0] == 5  # no-op jobs: all under 20 ms


def test_a_6x_app_gets_no_job_metrics(redis_url, r, stub, worker):
    w = worker("--sidekiq-version", "6", "--heartbeat-interval", "1", "--process-ttl", "10")
    w.wait_event("startup")
    push(r, 3, "HardJob")
    wait_until(lambda: int(r.get("stat:processed") or 0) == 3, 10, 0.05, "3 jobs")
    time.sleep(1.5)
    assert r.keys("j|*") == [] and r.keys("*HardJob-*") == []
