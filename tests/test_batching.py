"""Jobs that take less than a request's overhead share one POST /perform_batch; slower ones keep one
request each. Against the STUB sidecar (which offers /perform_batch unless started with --no-batch;
``--request-delay`` makes every request cost what it costs on a slow machine)."""

from __future__ import annotations

import json

import pytest

from tests.helpers.procs import StubSidecar, ruby_json, wait_until


def processed(r) -> int:
    return int(r.get("stat:processed") or 0)


def test_fast_jobs_are_batched_and_each_keeps_its_own_outcome(redis_url, r, stub, worker):
    jids = ruby_json(redis_url, """
      ok = 300.times.map { |i| Sidekiq::Client.push("class" => "HardJob", "args" => [i]) }
      bad = 3.times.map { |i| Sidekiq::Client.push("class" => "FailJob", "args" => ["no #{i}"]) }
      puts (ok + bad).to_json""")
    worker("-c", "16")
    wait_until(lambda: processed(r) >= 303 and r.zcard("retry") == 3, 20, what="all jobs")
    stats = stub.stats()
    assert stats["batches"] > 0  # HardJob is learned to be fast, then batched
    assert sorted(rec["jid"] for rec in stats["records"]) == sorted(jids)  # each exactly once
    assert all(rec["key"] == rec["jid"] for rec in stats["records"])
    retried = sorted(json.loads(m)["error_message"] for m in r.zrange("retry", 0, -1))
    assert retried == ["no 0", "no 1", "no 2"]
    assert r.llen("queue:default") == 0


def test_slow_jobs_are_never_batched(redis_url, r, stub, worker):
    ruby_json(redis_url, 'puts 30.times.map { Sidekiq::Client.push("class" => "SlowJob", "args" => [0.01]) }.to_json')
    worker("-c", "10")
    wait_until(lambda: processed(r) >= 30, 20, what="30 slow jobs")
    assert stub.stats()["batches"] == 0


def test_no_batches_when_the_sidecar_does_not_offer_them(redis_url, r, worker, tmp_path):
    plain = StubSidecar(record=True, extra=["--no-batch"])
    try:
        ruby_json(redis_url, 'puts 200.times.map { Sidekiq::Client.push("class" => "HardJob", "args" => []) }.to_json')
        worker("-c", "8", sidecar_url=plain.url)
        wait_until(lambda: processed(r) >= 200, 20, what="200 jobs")
        stats = plain.stats()
        assert stats["batches"] == 0 and stats["count"] == 200
    finally:
        plain.stop()


def test_a_batch_never_exceeds_the_concurrency_tokens(redis_url, r, stub, worker):
    ruby_json(redis_url, 'puts 500.times.map { Sidekiq::Client.push("class" => "HardJob", "args" => []) }.to_json')
    w = worker("-c", "3")
    wait_until(lambda: processed(r) >= 500, 30, what="500 jobs")
    stats = stub.stats()
    assert stats["batch_sizes"] and max(stats["batch_sizes"]) <= 3
    assert stats["peak"] <= 3  # jobs whose requests were in flight at once, batches counted whole
    assert w.proc.poll() is None


def test_batching_engages_on_a_slow_machine(redis_url, r, worker):
    """A no-op job whose Ruby runtime is 0.8 ms (a slow machine) still shares requests, because a
    request there costs more still (3 ms here): the rule is relative, not a fixed threshold."""
    slow = StubSidecar(record=True, extra=["--request-delay", "0.003"])
    try:
        ruby_json(redis_url, 'puts 600.times.map { Sidekiq::Client.push("class" => "RuntimeJob", "args" => [0.8]) }.to_json')
        worker("-c", "10", sidecar_url=slow.url)
        wait_until(lambda: processed(r) >= 600, 30, what="600 jobs")
        sizes = slow.stats()["batch_sizes"]
        assert sum(sizes) >= 500  # all but the first jobs, which teach the worker the class's runtime
        assert max(sizes) <= 10
    finally:
        slow.stop()


def test_slow_jobs_keep_the_full_parallelism(redis_url, r, stub, worker):
    """Jobs slower than a request's overhead (a 300 ms sleep) each get their own request, all ten at once."""
    ruby_json(redis_url, 'puts 20.times.map { Sidekiq::Client.push("class" => "SlowJob", "args" => [0.3]) }.to_json')
    worker("-c", "10")
    wait_until(lambda: stub.stats()["in_flight"] == 10, 10, what="ten slow jobs at once")
    wait_until(lambda: processed(r) >= 20, 20, what="20 slow jobs")
    stats = stub.stats()
    assert stats["batches"] == 0 and stats["peak"] == 10


@pytest.mark.parametrize("concurrency,processes,pipeline,size", [
    (10, 1, 2, 5),    # one Puma process that takes 2 pipelined: two lanes of 5
    (10, 1, 1, 10),   # one that does not (Puma 6, a proxy): one batch of 10 at a time
    (20, 2, 2, 10),   # two Puma workers: one lane each, they overlap already
    (10, 1, 3, 4),
])
def test_batch_size_follows_the_lanes_the_sidecar_offers(concurrency, processes, pipeline, size):
    from fastworker.batching import BatchPlanner, Offer
    assert BatchPlanner(concurrency, Offer(batch_max=32, processes=processes, pipeline=pipeline)).size == size


@pytest.mark.parametrize("n,in_flight,sizes", [
    (10, 0, [5, 5]),      # both lanes free
    (6, 1, [6]),          # one lane left: one request, not 3 + 3 beside the one in flight
    (4, 2, [4]),          # every lane busy (a shallow queue, latency first): still one request
    (70, 0, [24, 23, 23]),  # beyond batch_max per lane: as many requests as batch_max needs
])
def test_a_fetch_opens_no_more_requests_than_the_free_lanes(n, in_flight, sizes):
    from fastworker.batching import BatchPlanner, Offer
    planner = BatchPlanner(10, Offer(batch_max=32, processes=1, pipeline=2))
    assert [len(g) for g in planner.split(list(range(n)), in_flight)] == sizes


def test_a_batch_whose_jobs_ran_at_the_same_time_teaches_its_overhead_from_how_long_it_ran():
    """The sidecar runs the batched jobs of a class that waits at the same time, so their runtimes
    add up to more than the request spent running them; the request's overhead is the round trip
    minus what the sidecar says it ran (x-fastworker-ran-ms), and each job's runtime its share of
    that. Summing the runtimes instead would teach an overhead near 0, and runtimes inflated by the
    GVL: the class would stop being batched."""
    from types import SimpleNamespace

    from fastworker import core
    from fastworker.batching import BatchPlanner, Offer
    from fastworker.outcome import Done, Outcomes
    from fastworker.processor import Processor, Work
    from fastworker.sidecar_client import _ran

    assert _ran({"x-fastworker-ran-ms": "0.6"}) == 0.0006
    assert _ran({}) is None and _ran({"x-fastworker-ran-ms": "soon"}) is None
    planner = BatchPlanner(10, Offer(batch_max=32, processes=1, pipeline=2))
    processor = Processor(None, None, None, SimpleNamespace(), None, 0, 0, planner, None)  # type: ignore[arg-type]
    env = core.decode_envelope(b'{"class":"WaitWorker","args":[],"jid":"abc123","queue":"default"}')
    works = [Work("default", env, str(i), 0.0) for i in range(4)]
    answers = Outcomes([Done(0.5) for _ in works], ran=0.0006)  # four 0.5 ms jobs at once: 0.6 ms
    processor._measured(0.002, list(zip(works, answers, strict=True)), answers.ran)
    assert planner.overhead is not None and abs(planner.overhead - 0.0014) < 1e-9
    # each job counts for its share of the 0.6 ms, not the 0.5 ms its own clock ran (the others
    # had the GVL part of it): 0.15 ms, well below the overhead, so the class stays batched
    assert abs((planner.runtime("WaitWorker") or 0) - 0.00015) < 1e-9
    assert planner.batchable("WaitWorker")


def test_jobs_the_sidecar_finds_waiting_share_one_request_per_process(redis_url, r, stub, worker):
    """The sidecar runs a batch of jobs that wait at the same time (x-fastworker-waiting: 1). Split
    over two pipelined lanes, the second half would wait on the same Puma thread until the first half
    had all finished; so such jobs take every free token of a process in one request. Jobs that
    compute keep the two pipelined lanes of 5 (one runs in Ruby while the worker turns the other)."""
    ruby_json(redis_url, 'puts 600.times.map { Sidekiq::Client.push("class" => "WaitJob", "args" => []) }.to_json')
    worker("-c", "10")
    wait_until(lambda: processed(r) >= 600, 30, what="600 WaitJob jobs")
    waiting = stub.stats()["batch_sizes"]
    stub.reset()
    ruby_json(redis_url, 'puts 600.times.map { Sidekiq::Client.push("class" => "HardJob", "args" => []) }.to_json')
    wait_until(lambda: processed(r) >= 1200, 30, what="600 HardJob jobs")
    computing = stub.stats()["batch_sizes"]
    assert waiting.count(10) > len(waiting) // 2, f"WaitJob batches: {waiting}"
    assert computing.count(10) <= len(computing) // 10, f"HardJob batches: {computing}"


def test_the_planner_learns_from_each_answer_which_classes_wait():
    from fastworker.batching import BatchPlanner, Offer
    from fastworker.sidecar_client import _waiting

    assert _waiting({"x-fastworker-waiting": "1"}) is True and _waiting({}) is False
    planner = BatchPlanner(10, Offer(batch_max=32, processes=1, pipeline=2))
    planner.observe_waiting("Io", True)
    assert planner.waits("Io") and not planner.waits("Cpu")
    assert [len(g) for g in planner.split(list(range(10)), 0, waiting=True)] == [10]
    assert (planner.lanes, planner.size) == (1, 10)  # the fetcher gathers tokens for that one request
    assert [len(g) for g in planner.split(list(range(10)), 0)] == [5, 5]
    planner.observe_waiting("Io", False)  # a probe found it computing: pipelined lanes again
    assert not planner.waits("Io")
    two = BatchPlanner(20, Offer(batch_max=32, processes=2, pipeline=2))
    assert [len(g) for g in two.split(list(range(20)), 0, waiting=True)] == [10, 10]  # one per process
