"""Capsules (Sidekiq 7.x/8.x): read from --capsule, :capsules: and the sidecar's answer; each gets its own
fetch pool with its own concurrency; the process record carries them in 7.x/8.x's format (Sidekiq's
Launcher#to_data and Capsule#to_h as fetched from github:sidekiq/sidekiq 8.1.7), against the real
``fastworker`` command and the STUB sidecar."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from fastworker.capsules import Capsule
from fastworker.config import ConfigError, config_from_args, load_config, parse_args
from tests.helpers.procs import wait_until


def test_capsules_from_flags_env_and_file(tmp_path: Path) -> None:
    c = load_config(["-c", "6", "-q", "default", "--capsule", "single=1:single", "--capsule", "bulk=4:bulk:3,low"], {})
    assert c.capsules == (Capsule("single", 1, (("single", 0),)), Capsule("bulk", 4, (("bulk", 3), ("low", 0))))
    assert c.total_concurrency == 11
    assert c.all_queue_names == ("default", "single", "bulk", "low")
    assert load_config([], {"FASTWORKER_CAPSULES": "a=2:qa;b=3:qb"}).capsules == (
        Capsule("a", 2, (("qa", 0),)), Capsule("b", 3, (("qb", 0),)))
    path = tmp_path / "sidekiq.yml"
    path.write_text(":concurrency: 3\n:queues:\n  - default\n:capsules:\n  :single:\n    :concurrency: 1\n"
                    "    :queues:\n      - single\n  bulk:\n    :queues:\n      - bulk,2\n      - [low, 1]\n"
                    "  empty:\n    :concurrency: 2\n")
    c = load_config(["-C", str(path)], {})
    # bulk has no concurrency: the top-level one, as Sidekiq 7's Capsule.new; empty has no queues: left out
    assert c.capsules == (Capsule("single", 1, (("single", 0),)), Capsule("bulk", 3, (("bulk", 2), ("low", 1))))


def test_capsules_from_the_sidecars_answer() -> None:
    answer = {"sidekiq_version": "7.3.9", "concurrency": 5, "queues": [["default", 0]],
              "capsules": {"single": {"concurrency": 1, "queues": [["single", 0]]}}, "options": {}}
    c = config_from_args(parse_args([]), {}, answer)
    assert c.capsules == (Capsule("single", 1, (("single", 0),)),) and c.concurrency == 5


@pytest.mark.parametrize(("argv", "message"), [
    (["-q", "a", "--capsule", "x=1:a"], "--capsule: queue 'a' is in capsules 'default' and 'x'; a queue belongs to one capsule"),
    (["--capsule", "x=0:a"], "--capsule: capsule 'x': concurrency must be a positive integer, got '0'"),
    (["--capsule", "x:a"], "--capsule: expected NAME=CONCURRENCY:QUEUES (single=1:single), got 'x:a'"),
    (["--capsule", "default=1:a"], "--capsule: capsule 'default' is the top-level queues and concurrency; name it otherwise"),
    (["--capsule", "x=1:a,a"], "--capsule: queues: a cannot be defined twice"),
])
def test_capsule_errors_name_the_option(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(argv, {})
    assert str(info.value) == message


def push(r, queue: str, n: int, seconds: float) -> list[str]:
    jids = []
    p = r.pipeline(transaction=False)
    for _ in range(n):
        jid = uuid.uuid4().hex[:24]
        jids.append(jid)
        job = {"class": "SlowJob", "args": [seconds], "queue": queue, "jid": jid, "retry": True,
               "created_at": time.time(), "enqueued_at": time.time()}
        p.sadd("queues", queue)
        p.lpush(f"queue:{queue}", json.dumps(job))
    p.execute()
    return jids


def test_each_capsule_has_its_own_pool_and_a_single_threaded_one_runs_one_job_at_a_time(redis_url, r, stub, worker):
    w = worker("-c", "4", "-q", "default", "--capsule", "single=1:single")
    ident = w.wait_event("startup")[0]["identity"]
    single = push(r, "single", 4, 0.4)
    default = push(r, "default", 4, 0.4)
    wait_until(lambda: int(r.get("stat:processed") or 0) == 8, 15, 0.05, "8 jobs processed")
    arrived = {rec["jid"]: rec["t"] for rec in stub.stats()["records"]}
    s = sorted(arrived[j] for j in single)
    assert all(b - a >= 0.35 for a, b in zip(s, s[1:])), s  # one after the other
    d = sorted(arrived[j] for j in default)
    assert d[-1] - d[0] < 0.3, d  # four at once, not held back by the single capsule

    info = json.loads(r.hget(ident, "info"))
    assert info["capsules"] == {"default": {"concurrency": 4, "mode": "strict", "weights": {"default": 0}},
                                "single": {"concurrency": 1, "mode": "strict", "weights": {"single": 0}}}
    assert info["queues"] == ["default", "single"]
    assert info["weights"] == [{"default": 0}, {"single": 0}]
    assert info["concurrency"] == 5 and r.hget(ident, "concurrency") == b"5"
