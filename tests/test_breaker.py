"""The sidecar circuit breaker (issue 6 item 1): the state machine on a fake clock, then real workers
against the STUB sidecar: Retry-After honoured, 422s never trip it, consecutive failures open it,
while open nothing is fetched and /readyz says 503, half-open lets a few real jobs through one at a
time, and the hang watchdog tells a hung sidecar from a slow job or a draining sidecar."""

from __future__ import annotations

import json
import signal
import time

import pytest

from fastworker.breaker import CLOSED, HALF_OPEN, OPEN, Breaker
from tests.helpers.faults import (FileStub, check_counts, drained, fstub, has_http_server, jobs,  # noqa: F401
                                  make_job, no_retry_spent, predis, procs, push, readyz, rr)
from tests.helpers.procs import free_port, wait_until


class FakeMono:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def breaker(**kw) -> tuple[Breaker, FakeMono, list[str]]:
    mono = FakeMono()
    b = Breaker(mono=mono, **kw)
    changes: list[str] = []
    set_state = b._set

    def recording(state: str, **fields: object) -> None:  # every transition, in order
        if state != b.state:
            changes.append(state)
        set_state(state, **fields)

    b._set = recording  # type: ignore[method-assign]
    return b, mono, changes


# -- the state machine -------------------------------------------------------------------------


def test_consecutive_failures_open_it_and_a_success_resets_the_count():
    b, _, changes = breaker(threshold=3)
    for _ in range(2):
        b.failure("refused")
    b.success()
    for _ in range(2):
        b.failure("refused")
    assert b.state == CLOSED and b.allow_fetch()
    b.failure("refused")
    assert b.state == OPEN and not b.allow_fetch() and changes == [OPEN]


def test_a_failure_rate_over_the_window_opens_it():
    b, _, _ = breaker(threshold=100, window=20, rate=0.5)
    for i in range(9):  # F F S repeating: never 3 in a row, 2/3 failing
        b.failure("503") if i % 3 != 2 else b.success()
    assert b.state == CLOSED  # not enough calls yet (window // 2)
    for i in range(9, 12):
        b.failure("503") if i % 3 != 2 else b.success()
    assert b.state == OPEN


def test_job_failures_are_successes_for_the_breaker():
    b, _, _ = breaker(threshold=2)
    for _ in range(100):
        b.success()  # what the processor reports for a 422
    assert b.state == CLOSED


def test_retry_after_opens_it_at_once_for_exactly_that_long():
    b, mono, _ = breaker(threshold=5, cooldown=10)
    b.failure("503", retry_after=2.0)
    assert b.state == OPEN
    mono.t += 1.9
    assert not b.cooldown_over()
    mono.t += 0.2
    assert b.cooldown_over()


def test_without_retry_after_the_cooldown_applies():
    b, mono, _ = breaker(threshold=1, cooldown=10)
    b.failure("refused")
    mono.t += 9.9
    assert not b.cooldown_over()
    mono.t += 0.2
    assert b.cooldown_over()
    b.probe_failed("health 503")
    assert not b.cooldown_over()  # another cooldown before the next probe
    mono.t += 10.1
    assert b.cooldown_over()


def test_half_open_lets_a_few_jobs_through_one_at_a_time_then_closes():
    b, mono, changes = breaker(threshold=1, cooldown=1, probe_jobs=3)
    b.failure("refused")
    mono.t += 2
    b.half_open()
    for _ in range(3):
        assert b.allow_fetch()
        b.started()
        assert not b.allow_fetch()  # one probe job at a time
        b.success()
    assert b.state == CLOSED and changes == [OPEN, HALF_OPEN, CLOSED]
    assert b.transitions == {CLOSED: 1, OPEN: 1, HALF_OPEN: 1}


def test_a_failure_while_half_open_opens_it_again():
    b, mono, changes = breaker(threshold=5, cooldown=1)
    b.trip("hung")
    mono.t += 2
    b.half_open()
    b.started()
    b.failure("refused")
    assert b.state == OPEN and changes == [OPEN, HALF_OPEN, OPEN]
    assert not b.cooldown_over()


def test_a_sidecar_at_capacity_is_alive_not_failing():
    """503 at capacity: the failure streak ends, nothing opens, and a half-open probe that was
    refused leaves the next job free to probe again."""
    b, mono, changes = breaker(threshold=3, cooldown=1, probe_jobs=1)
    for _ in range(2):
        b.failure("refused")
    for _ in range(10):
        b.busy()
    b.failure("refused")
    assert b.state == CLOSED and changes == []
    b.trip("hung")
    mono.t += 2
    b.half_open()
    b.started()
    b.busy()
    assert b.state == HALF_OPEN and b.allow_fetch()
    b.started()
    b.success()
    assert b.state == CLOSED and changes == [OPEN, HALF_OPEN, CLOSED]


def test_trip_opens_whatever_the_counts():
    b, _, _ = breaker(threshold=50)
    b.trip("sidecar hung")
    assert b.state == OPEN
    b.trip("again")  # idempotent
    assert b.transitions[OPEN] == 1


# -- real workers --------------------------------------------------------------------------------


def breaker_events(w) -> list[dict]:
    return [e for e in w.events() if e["event"].startswith("breaker_")]


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_is_honoured_and_nothing_is_fetched_while_open(procs, rr, fstub, status):
    jids = push(rr, jobs(30, seconds=0.01))
    fstub.mode(status, retry_after=2)
    w = procs.worker("-c", "2", "--breaker-cooldown", "10")
    opened = w.wait_event("breaker_open", timeout=10)[0]
    assert opened["cooldown_s"] == 2  # the sidecar's Retry-After, not the 10 s cooldown
    t_open = time.monotonic()
    if has_http_server():
        assert readyz(w) == 503
    time.sleep(0.3)  # the answers to requests sent before it opened are logged just after it
    requeued = len(w.events("job_requeued"))
    time.sleep(1.0)
    assert len(w.events("job_requeued")) == requeued  # nothing sent while open
    assert rr.llen("queue:default") + sum(rr.llen(k) for k in rr.keys("fastworker:inprogress:*")) == 30
    fstub.mode(None)
    w.wait_event("breaker_half_open", timeout=10)
    assert time.monotonic() - t_open >= 1.5
    w.wait_event("breaker_closed", timeout=10)
    wait_until(lambda: drained(rr), 20, what="all jobs")
    check_counts(fstub.counts(), jids)
    no_retry_spent(rr, fstub)
    if has_http_server():
        wait_until(lambda: readyz(w) == 200, 5, what="ready again")


def test_job_failures_never_trip_it(procs, rr, fstub):
    push(rr, [make_job("FailJob", ["nope"]) for _ in range(40)])
    w = procs.worker("-c", "4", "--breaker-threshold", "2")
    wait_until(lambda: rr.zcard("retry") == 40, 20, what="40 retry entries")
    assert breaker_events(w) == []
    assert w.events("job_requeued") == []


def test_consecutive_failures_open_it_and_it_closes_once_the_sidecar_is_up(procs, predis, rr, tmp_path):
    port = free_port()  # nothing listens there yet: connection refused
    from tests.helpers.procs import Worker
    jids = push(rr, jobs(20, seconds=0.01))
    w = Worker(predis.url(), f"http://127.0.0.1:{port}", "-c", "1", "--breaker-threshold", "3",
               "--breaker-cooldown", "0.5", log_path=tmp_path / "refused.log")
    procs.workers.append(w)
    opened = w.wait_event("breaker_open", timeout=15)[0]
    assert opened["consecutive_failures"] == 3
    time.sleep(1.0)
    assert len(w.events("job_requeued")) == 3  # probes fail on /health: no job is sent meanwhile
    stub = FileStub(tmp_path / "late.jsonl", port=port)
    try:
        w.wait_event("breaker_closed", timeout=15)
        wait_until(lambda: drained(rr), 20, what="all jobs")
        check_counts(stub.counts(), jids)
        no_retry_spent(rr, stub)
        # half-open: a few real jobs, one at a time, before closing
        evs = w.events()
        i = next(k for k, e in enumerate(evs) if e["event"] == "breaker_half_open")
        j = next(k for k, e in enumerate(evs) if e["event"] == "breaker_closed")
        probe = [e["event"] for e in evs[i:j] if e["event"] in ("job_start", "job_done")]
        # the third success closes it (its job_done line follows the breaker_closed line)
        assert probe == ["job_start", "job_done", "job_start", "job_done", "job_start"]
    finally:
        stub.stop(signal.SIGKILL)


def test_slow_jobs_beside_a_healthy_sidecar_are_never_taken_for_a_hang(procs, rr, fstub):
    jids = push(rr, [make_job("SlowJob", [3.0]) for _ in range(2)])
    w = procs.worker("-c", "2", "--sidecar-connect-timeout", "0.5")  # hang_after = 1 s
    wait_until(lambda: drained(rr), 15, what="the slow jobs")
    done = w.events("job_done")
    assert len(done) == 2 and all(e["elapsed_ms"] >= 2900 for e in done)
    assert w.events("sidecar_hung") == [] and breaker_events(w) == []
    check_counts(fstub.counts(), jids)


def test_a_draining_sidecar_is_not_taken_for_a_hang(procs, rr, fstub):
    slow = make_job("SlowJob", [3.0])
    push(rr, [slow])
    w = procs.worker("-c", "1", "--sidecar-connect-timeout", "0.5")
    wait_until(lambda: fstub.stats()["in_flight"] == 1, 10, what="the job running")
    fstub.mode(503, retry_after=1)  # draining: /health answers 503 at once, running jobs finish
    wait_until(lambda: w.events("job_done"), 10, what="the job to finish")
    assert w.events("sidecar_hung") == []
    assert fstub.counts()[slow["jid"]] == 1 and drained(rr)


def test_a_hung_sidecar_gives_its_jobs_back_for_free(procs, rr, fstub):
    jids = push(rr, [make_job("SlowJob", [0.5]) for _ in range(3)])
    w = procs.worker("-c", "3", "--sidecar-connect-timeout", "0.5")
    wait_until(lambda: fstub.stats()["in_flight"] == 3, 10, what="3 jobs running")
    originals = set(rr.lrange(rr.keys("fastworker:inprogress:*")[0], 0, -1))
    fstub.pause()
    try:
        hung = w.wait_event("sidecar_hung", timeout=10)[0]
        assert hung["requeued"] == 3
        # back at the head of the queue, byte-identical, no retry_count: the job is owed a free run
        wait_until(lambda: rr.llen("queue:default") == 3, 5, what="the jobs back in their queue")
        assert set(rr.lrange("queue:default", 0, -1)) == originals
        assert all("retry_count" not in json.loads(x) for x in originals)
        if has_http_server():
            assert readyz(w) == 503
    finally:
        fstub.resume()
    w.wait_event("breaker_closed", timeout=15)
    wait_until(lambda: drained(rr), 15, what="the jobs run again")
    check_counts(fstub.counts(), jids, may_repeat=set(jids))  # the stopped sidecar had them: at least once
    no_retry_spent(rr, fstub)


# -- the probe loop ------------------------------------------------------------------------------

async def test_the_probe_loop_outlives_a_tick_that_raises_and_still_half_opens():
    """A probe that died silently left the circuit open for good while /healthz said 200."""
    import asyncio
    import io
    from types import SimpleNamespace

    from fastworker.launcher import Launcher
    from fastworker.log import log

    b, mono, changes = breaker(threshold=1, cooldown=1.0)
    b.failure("down")
    mono.t += 2  # the cooldown is over
    answers = iter([RuntimeError("health exploded"), True])

    async def health() -> bool:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    woken: list[bool] = []
    fake = SimpleNamespace(breaker=b, sidecar=SimpleNamespace(health=health), config=SimpleNamespace(
        sidecar_connect_timeout=1.0), fetcher=SimpleNamespace(wake=lambda: woken.append(True)), _next_hang_probe=0.0)
    fake._breaker_probe_tick = lambda: Launcher._breaker_probe_tick(fake)  # type: ignore[arg-type]
    saved = log.stream, log.format
    log.stream, log.format = io.BytesIO(), "json"
    try:
        task = asyncio.ensure_future(Launcher._breaker_probe(fake))  # type: ignore[arg-type]
        for _ in range(50):
            await asyncio.sleep(0.05)
            if b.state == HALF_OPEN:
                break
        task.cancel()
        log.flush()
        lines = [json.loads(x) for x in log.stream.getvalue().splitlines()]
    finally:
        log.stream, log.format = saved
    assert b.state == HALF_OPEN and woken == [True]
    assert [(x["loop"], x["error_message"]) for x in lines if x["event"] == "loop_failed"] == \
        [("breaker_probe", "health exploded")]


async def test_healthz_names_any_background_loop_that_died():
    """Every loop beside the job path is watched, not only the fetch loop: a heartbeat or scheduler
    that ended on a bug made /healthz answer 503 with its name, where it said 200 before."""
    import asyncio
    from types import SimpleNamespace

    import orjson

    from fastworker.http_server import HttpServer
    from fastworker.launcher import Launcher

    async def boom() -> None:
        raise RuntimeError("a bug in the loop")

    async def forever() -> None:
        await asyncio.sleep(3600)

    died, alive = asyncio.ensure_future(boom()), asyncio.ensure_future(forever())
    fetch = asyncio.ensure_future(forever())
    await asyncio.sleep(0)
    fake = SimpleNamespace(quiet=False, stopping=False, fetch_task=fetch, _tasks=[alive],
                           components=[SimpleNamespace(task=died)])
    fake.is_quiet = lambda: Launcher.is_quiet(fake)  # type: ignore[arg-type]
    fake.loops = lambda: Launcher.loops(fake)  # type: ignore[arg-type]
    fake.dead_loops = lambda: Launcher.dead_loops(fake)  # type: ignore[arg-type]
    server = HttpServer("127.0.0.1", 0, lambda: (True, "ok"), fake.dead_loops)
    status, _, body = await server.healthz()
    assert status == 503
    assert orjson.loads(body)["loops"] == [{"loop": "simplenamespace", "error": "RuntimeError('a bug in the loop')"}]
    fake.stopping = True  # stopping: loops end on purpose, nothing to report
    assert (await server.healthz())[0] == 200
    for t in (alive, fetch):
        t.cancel()


async def test_healthz_answers_while_the_launcher_is_still_starting():
    """The HTTP server starts before the fetch loop exists (the other loops start after it, and
    the sidecar's :startup is awaited): a probe in that window got its connection closed with no
    answer (an AttributeError in the handler), and a kubelet would count it a failure."""
    from fastworker.config import Config
    from fastworker.http_server import HttpServer
    from fastworker.launcher import Launcher

    launcher = Launcher(Config(queues=[("default", 0)]))
    server = HttpServer("127.0.0.1", 0, lambda: (True, "ok"), launcher.dead_loops)
    assert (await server.healthz())[0] == 200


async def test_a_job_refused_at_capacity_leaves_the_busy_set_at_once_and_its_token_comes_back_later():
    """The refused job is back in its queue, so no busy entry may show it (the heartbeat would list
    a job that is not running, perhaps beside the process that took it); only its token waits."""
    import asyncio
    from types import SimpleNamespace

    from fastworker import core
    from fastworker.batching import BatchPlanner, Offer
    from fastworker.errors import SidecarUnavailable
    from fastworker.limiter import Limiter
    from fastworker.manager import Manager
    from fastworker.processor import Processor

    class FullSidecar:
        async def perform(self, raw: bytes, jid: str) -> None:
            raise SidecarUnavailable("sidecar at capacity", 503, busy=True)

    requeued: list[bytes] = []

    async def bulk_requeue(items):  # noqa: ANN001, ANN202
        requeued.extend(raw for _, raw in items)

    breaker = Breaker(threshold=1)
    clock = SimpleNamespace(now=lambda: 0.0, mono=lambda: 0.0)
    processor = Processor(SimpleNamespace(bulk_requeue=bulk_requeue), FullSidecar(), breaker, clock,  # type: ignore[arg-type]
                          None, 0, 0, BatchPlanner(1, Offer()), None)  # type: ignore[arg-type]
    limiter = Limiter(1)
    manager = Manager(processor, limiter, None, clock)  # type: ignore[arg-type]
    assert limiter.try_acquire()
    raw = b'{"class":"HardJob","args":[],"jid":"abc123","queue":"default"}'
    work = manager.spawn("default", core.decode_envelope(raw))
    await work.task
    assert requeued == [raw] and manager.busy == {}
    assert breaker.state == CLOSED  # threshold 1: one counted failure would have opened it
    assert 0 < work.hold <= 0.075 and limiter.free == 0  # 50 ms +- 50 %: the token is still out
    await asyncio.sleep(work.hold + 0.02)
    assert limiter.free == 1
