"""Sidekiq's own API reads what fastworker wrote: checklist items 9-25 and 31 of sidekiq-compat.md §10.

Ruby (Debian's sidekiq 6.4.1 client + ``sidekiq/api``) enqueues and inspects; ``fastworker`` runs
the jobs against the STUB sidecar (tests/helpers/stub_sidecar.py), whose class names pick the
outcome (FailJob, KillJob, DiscardJob, RetryInJob, DeepFailJob, LongMessageJob, BadBytesJob,
NoSuch*). The Ruby-side hooks (sidekiq_retries_exhausted, death handlers, ActiveJob) are checked
with the real sidecar and the demo Rails app at the end of this file.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import redis

from tests.helpers.procs import ruby, wait_until
from tests.helpers.stub_sidecar import LONG_MESSAGE

pytestmark = pytest.mark.ruby

AJ_WRAPPER = "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"

# Prelude for the snippets: the sets as Sidekiq::API shows them.
DUMP = """
def entry(e)
  sorted = e.respond_to?(:score)
  {jid: e.jid, score: sorted ? e.score : nil, at: sorted ? e.at.to_f : nil, item: e.item,
   display_class: e.display_class,
   display_args: e.display_args, queue: e.queue, error_backtrace: e.error_backtrace,
   failed_at_class: e.item["failed_at"].class.name, retried_at_class: e.item["retried_at"].class.name,
   enqueued_at_class: e.item["enqueued_at"].class.name,
   message_length: (e.item["error_message"] || "").length,
   message_valid: (e.item["error_message"] || "").valid_encoding?}
end
def dump(set) = set.map { |e| entry(e) }
"""


def rb(redis_url: str, code: str):
    # the last line of stdout (split on \n only: Ruby writes U+2028 raw inside JSON strings)
    return json.loads(ruby(redis_url, DUMP + code).strip().split("\n")[-1])


def push(redis_url: str, item_ruby: str) -> str:
    """Sidekiq::Client.push(<hash literal>) with the real client; returns the jid."""
    return rb(redis_url, f"puts [Sidekiq::Client.push({item_ruby})].to_json")[0]


def sets(redis_url: str) -> dict:
    return rb(redis_url, """puts({retry: dump(Sidekiq::RetrySet.new), dead: dump(Sidekiq::DeadSet.new),
                                 schedule: dump(Sidekiq::ScheduledSet.new)}.to_json)""")


def retry_entry(redis_url: str, jid: str, count: int | None = None, timeout: float = 10.0) -> dict:
    def find():
        for e in sets(redis_url)["retry"]:
            if e["jid"] == jid and (count is None or e["item"]["retry_count"] == count):
                return e
        return None
    return wait_until(find, timeout, 0.1, f"retry entry {jid} #{count}")


def dead_entry(redis_url: str, jid: str, timeout: float = 10.0) -> dict:
    return wait_until(lambda: next((e for e in sets(redis_url)["dead"] if e["jid"] == jid), None), timeout, 0.1,
                      f"dead entry {jid}")


def runs(stub, jid: str) -> list[dict]:
    return [json.loads(rec["raw"]) for rec in stub.stats()["records"] if rec["jid"] == jid]


def exhausted_calls(stub, jid: str, phase: str | None = None) -> list[dict]:
    """The /exhausted calls for ``jid`` (of one phase: "block" or "death"), in order."""
    return [c for c in stub.stats()["exhausted"] if c["job"].get("jid") == jid and phase in (None, c.get("phase"))]


def make_due(r: redis.Redis, key: str = "retry") -> None:
    """Move every entry of ``key`` to now (the score only: the member bytes stay fastworker's)."""
    for member in r.zrange(key, 0, -1):
        r.zadd(key, {member: time.time() - 0.5}, xx=True)


# -- 9, 10: scheduled jobs ------------------------------------------------------------------------

def test_09_scheduled_job_runs_within_the_default_poll_interval_with_a_fresh_enqueued_at(redis_url, r, stub, worker):
    w = worker("-c", "2")  # default poll interval: 1 s on average
    w.wait_event("startup")
    s = rb(redis_url, """
      class HardJob; include Sidekiq::Worker; end
      jid = HardJob.perform_in(3, 1, "x")
      e = Sidekiq::ScheduledSet.new.first
      puts({jid: jid, size: Sidekiq::ScheduledSet.new.size, now: Time.now.to_f, e: entry(e),
            queued: Sidekiq::Queue.new.size}.to_json)""")
    e = s["e"]
    assert s["size"] == 1 and s["queued"] == 0
    assert 2.5 < e["at"] - s["now"] <= 3.01
    assert "at" not in e["item"] and "enqueued_at" not in e["item"] and e["display_class"] == "HardJob"
    wait_until(lambda: runs(stub, s["jid"]), 10, 0.02, "the scheduled job to run")
    rec = next(rec for rec in stub.stats()["records"] if rec["jid"] == s["jid"])
    ran = json.loads(rec["raw"])
    # due at `at`; polled every 0.5-1.5 s, so it runs within 1.5 s (+ slack for a loaded machine)
    assert e["at"] <= rec["t"] < e["at"] + 2.5
    assert ran["enqueued_at"] >= e["at"] and isinstance(ran["enqueued_at"], float)
    assert ran["created_at"] == e["item"]["created_at"]
    assert {k: v for k, v in ran.items() if k != "enqueued_at"} == e["item"]
    after = sets(redis_url)
    assert after["schedule"] == [] and after["retry"] == [] and after["dead"] == []


def test_10_a_past_time_goes_straight_to_the_queue(redis_url, r, stub, worker):
    s = rb(redis_url, """
      class HardJob; include Sidekiq::Worker; end
      jid = HardJob.perform_at(Time.now - 60, 7)
      puts({jid: jid, scheduled: Sidekiq::ScheduledSet.new.size, queued: Sidekiq::Queue.new.size}.to_json)""")
    assert s["scheduled"] == 0 and s["queued"] == 1
    worker("-c", "1")
    wait_until(lambda: runs(stub, s["jid"]), 10, what="the job")
    assert r.zcard("schedule") == 0


def test_scheduled_sidekiq8_payload_gets_integer_ms_enqueued_at(redis_url, r, stub, worker):
    # as an 8.x client writes it: integer-ms created_at, score in float seconds
    now = time.time()
    raw = json.dumps({"retry": True, "queue": "default", "args": [], "class": "HardJob", "jid": "8" * 24,
                      "created_at": int(now * 1000) - 5000})
    r.zadd("schedule", {raw: now - 1})
    worker("-c", "1", "--poll-interval", "0.2")
    wait_until(lambda: runs(stub, "8" * 24), 10, what="the job")
    ran = runs(stub, "8" * 24)[0]
    assert isinstance(ran["enqueued_at"], int) and ran["enqueued_at"] >= int(now * 1000)


# -- 11, 12: the retry record and its progression; the API's retry actions ----------------------

def test_11_12_retry_record_then_add_to_queue_runs_again_and_progresses(redis_url, r, stub, worker):
    worker("-c", "1")
    jid = push(redis_url, '"class" => "FailJob", "args" => ["boom"]')
    e = retry_entry(redis_url, jid, 0)
    item = e["item"]
    assert item["error_class"] == "RuntimeError" and item["error_message"] == "boom"
    assert e["failed_at_class"] == "Float" and "retried_at" not in item
    assert e["queue"] == "default" and e["display_class"] == "FailJob"
    assert e["at"] == e["score"]
    assert 15 <= e["score"] - item["failed_at"] < 25

    # the API moves it back; fastworker runs it again; it fails again
    rb(redis_url, 'Sidekiq::RetrySet.new.find_job("%s").add_to_queue; puts 1' % jid)
    e2 = retry_entry(redis_url, jid, 1)
    assert len(runs(stub, jid)) == 2
    assert runs(stub, jid)[1]["retry_count"] == 0  # it ran as the API pushed it
    assert e2["retried_at_class"] == "Float" and e2["item"]["failed_at"] == item["failed_at"]
    assert 16 <= e2["score"] - e2["item"]["retried_at"] < 16 + 9 * 2 + 1  # 1**4 + 15 + rand(10) * 2
    assert len(sets(redis_url)["retry"]) == 1


def test_retry_action_does_not_spend_a_retry_and_the_job_runs_again(redis_url, r, stub, worker):
    worker("-c", "1")
    jid = push(redis_url, '"class" => "FailJob", "args" => ["x"], "retry_count" => 4')
    retry_entry(redis_url, jid, 5)
    rb(redis_url, 'Sidekiq::RetrySet.new.find_job("%s").retry; puts 1' % jid)  # retry_count - 1, then push
    wait_until(lambda: len(runs(stub, jid)) == 2, 10, what="the second run")
    e = retry_entry(redis_url, jid, 5)
    assert runs(stub, jid)[1]["retry_count"] == 4
    assert e["retried_at_class"] == "Float"


# -- 13, 31: retry_queue, the move back, and latency ----------------------------------------------

def test_13_31_retry_queue_and_latency_measured_from_the_move(redis_url, r, stub, worker):
    w = worker("-c", "1", "-q", "default", "--poll-interval", "0.2")  # not listening on "low"
    jid = push(redis_url, '"class" => "FailJob", "args" => ["q"], "retry_queue" => "low", '
                          '"created_at" => Time.now.to_f - 3600')
    e = retry_entry(redis_url, jid, 0)
    assert e["queue"] == "low" and e["item"]["queue"] == "low"
    moved_after = time.time()
    make_due(r)
    wait_until(lambda: r.llen("queue:low") == 1, 10, what="the retry back in queue:low")
    q = rb(redis_url, """
      q = Sidekiq::Queue.new("low")
      puts({names: Sidekiq::Queue.all.map(&:name), latency: q.latency, job: entry(q.first)}.to_json)""")
    assert "low" in q["names"]
    assert q["job"]["enqueued_at_class"] == "Float" and q["job"]["item"]["enqueued_at"] >= moved_after
    assert 0 <= q["latency"] < 2  # from the move, not from created_at an hour ago
    assert q["job"]["item"]["error_message"] == "q" and q["job"]["jid"] == jid
    assert w.stop() == 0
    time.sleep(1.0)
    lat = rb(redis_url, 'puts [Sidekiq::Queue.new("low").latency].to_json')[0]
    assert 1.0 <= lat < 4  # with the worker stopped it grows with the job's age in the queue


def test_reschedule_through_the_api_keeps_one_entry(redis_url, r, stub, worker):
    # SortedEntry#reschedule re-generates the JSON with Ruby and ZINCRBYs it: only a byte-identical
    # regeneration updates our entry instead of adding a copy
    worker("-c", "1", "--poll-interval", "0.2")
    jid = push(redis_url, '"class" => "DeepFailJob", "args" => [1, 2.5, {"é" => [nil, true]}], "backtrace" => 3, '
                          '"tags" => ["a/b"], "custom" => "line\\nbreak \\u0001 \\u2028"')
    retry_entry(redis_url, jid, 0)
    rb(redis_url, 'Sidekiq::RetrySet.new.find_job("%s").reschedule(Time.now - 1); puts 1' % jid)
    assert r.zcard("retry") in (0, 1)  # one entry (or already moved by the worker), never two
    wait_until(lambda: len(runs(stub, jid)) == 2, 10, what="the rescheduled retry to run")
    retry_entry(redis_url, jid, 1)
    assert r.zcard("retry") == 1


# -- 14, 20: exhaustion ----------------------------------------------------------------------------

def test_14_20_integer_retry_is_exhausted_into_the_dead_set_after_exhausted_runs_once(redis_url, r, stub, worker):
    worker("-c", "2", "--poll-interval", "0.2")
    jid = push(redis_url, '"class" => "FailJob", "args" => ["two"], "retry" => 2')
    zero = push(redis_url, '"class" => "FailJob", "args" => ["zero"], "retry" => 0')
    for count in (0, 1):
        retry_entry(redis_url, jid, count)
        make_due(r)
    dead = dead_entry(redis_url, jid)
    item = dead["item"]
    assert item["retry_count"] == 2 and item["error_message"] == "two" and item["retry"] == 2
    assert abs(dead["score"] - time.time()) < 10
    assert len(runs(stub, jid)) == 3
    calls = exhausted_calls(stub, jid)
    # the block, then (after the dead-set write) the death handlers: JobRetry#retries_exhausted's order
    assert [c["phase"] for c in calls] == ["block", "death"] and calls[0]["run_exhausted_block"] is True
    assert calls[0]["job"] == item  # the hook saw the msg with its error fields, as the morgue stores it
    error = calls[0]["error"]  # the exception as Ruby rebuilds it for the hooks, backtrace included
    assert (error["class"], error["message"]) == ("RuntimeError", "two")
    assert error["backtrace"][0] == "app/jobs/fail_job.rb:3:in `perform'"

    z = dead_entry(redis_url, zero)  # retry: 0 is truthy: dead at the first failure
    assert z["item"]["retry_count"] == 0 and z["failed_at_class"] == "Float" and len(runs(stub, zero)) == 1
    assert len(exhausted_calls(stub, zero)) == 2
    assert sets(redis_url)["retry"] == []


def test_hooks_the_sidecar_cannot_run_wait_for_it_and_the_job_never_runs_again(redis_url, r, stub, worker):
    """An exhausted job whose hooks cannot run (the sidecar answers /exhausted 503) waits for them in
    fastworker's hooks set, not in a queue: it never runs again, even across a restart, and once
    the sidecar takes hooks again the block, the dead set and the death handlers follow in order."""
    stub.mode(None, exhausted_status=503)
    w = worker("-c", "2", name="first")
    zero = push(redis_url, '"class" => "FailJob", "args" => ["zero"], "retry" => 0')
    wait_until(lambda: r.zcard("fastworker:hooks") == 1, 10, what="the job parked for its hooks")
    assert w.stop() == 0
    w2 = worker("-c", "2", name="second")  # another process finds the entry once its retry time comes
    time.sleep(1.0)
    assert len(runs(stub, zero)) == 1 and r.llen("queue:default") == 0
    assert not any(r.llen(k) for k in r.keys("fastworker:inprogress:*")) and sets(redis_url)["dead"] == []
    assert rb(redis_url, "s = Sidekiq::Stats.new; puts [s.processed, s.failed].to_json") == [1, 1]
    stub.mode(None)
    dead = dead_entry(redis_url, zero, timeout=20)
    assert dead["item"]["retry_count"] == 0
    wait_until(lambda: exhausted_calls(stub, zero, "death"), 10, what="the death handlers")
    assert [c["phase"] for c in exhausted_calls(stub, zero)] == ["block", "death"]
    assert r.zcard("fastworker:hooks") == 0 and len(runs(stub, zero)) == 1
    assert w2.stop() == 0


def test_hooks_that_outlast_the_job_timeout_still_finish(redis_url, r, stub, worker):
    """--job-timeout bounds a job's request, not its exhaustion hooks: a slow death handler still
    completes, and the job leaves the in-progress list for the dead set."""
    stub.mode(None, exhausted_delay=1.5)
    worker("-c", "2", "--job-timeout", "1")
    zero = push(redis_url, '"class" => "FailJob", "args" => ["zero"], "retry" => 0')
    assert dead_entry(redis_url, zero)["item"]["retry_count"] == 0
    wait_until(lambda: r.zcard("fastworker:hooks") == 0, 10, what="both hooks done")
    assert [c["phase"] for c in exhausted_calls(stub, zero)] == ["block", "death"]
    assert not any(r.llen(k) for k in r.keys("fastworker:inprogress:*")) and len(runs(stub, zero)) == 1


# -- 15, 16: retry false, dead false ---------------------------------------------------------------

def test_15_16_retry_false_and_dead_false_leave_no_entry_but_reach_the_death_handlers(redis_url, r, stub, worker):
    worker("-c", "2")
    no_retry = push(redis_url, '"class" => "FailJob", "args" => ["nr"], "retry" => false')
    no_dead = push(redis_url, '"class" => "FailJob", "args" => ["nd"], "retry" => 0, "dead" => false')
    wait_until(lambda: exhausted_calls(stub, no_retry) and exhausted_calls(stub, no_dead, "death"), 10,
               what="/exhausted")
    time.sleep(0.3)
    s = sets(redis_url)
    assert s["retry"] == [] and s["dead"] == []
    stats = wait_until(lambda: (x := rb(redis_url, "s = Sidekiq::Stats.new; puts({failed: s.failed, "
                                            "processed: s.processed}.to_json)")) and x["failed"] and x, 10,
                       what="the stats")
    assert stats == {"failed": 2, "processed": 2}
    nr, = exhausted_calls(stub, no_retry)
    assert nr["phase"] == "death"  # JobRetry#global: death handlers only
    assert "error_message" not in nr["job"] and nr["job"]["retry"] is False
    nd, = exhausted_calls(stub, no_dead, "block")
    assert nd["run_exhausted_block"] is True and nd["job"]["error_message"] == "nd"
    assert not any(r.llen(k) for k in r.keys("fastworker:inprogress:*"))  # both acked: nowhere to run again


# -- 17, 18: backtrace and message ----------------------------------------------------------------

def test_17_error_backtrace_is_decoded_by_sidekiqs_api(redis_url, r, stub, worker):
    worker("-c", "3")
    five = push(redis_url, '"class" => "DeepFailJob", "args" => [], "backtrace" => 5')
    full = push(redis_url, '"class" => "DeepFailJob", "args" => [], "backtrace" => true')
    none = push(redis_url, '"class" => "DeepFailJob", "args" => []')
    assert retry_entry(redis_url, five)["error_backtrace"] == [f"frame {i}" for i in range(5)]
    assert retry_entry(redis_url, full)["error_backtrace"] == [f"frame {i}" for i in range(12)]
    e = retry_entry(redis_url, none)
    assert e["error_backtrace"] is None and "error_backtrace" not in e["item"]


def test_18_message_is_cut_to_10000_characters_and_stays_valid(redis_url, r, stub, worker):
    worker("-c", "2")
    long = push(redis_url, '"class" => "LongMessageJob", "args" => []')
    bad = push(redis_url, '"class" => "BadBytesJob", "args" => []')
    e = retry_entry(redis_url, long)
    assert e["message_length"] == 10_000 and e["message_valid"]
    assert e["item"]["error_message"] == LONG_MESSAGE[:10_000]
    b = retry_entry(redis_url, bad)  # an unreadable 422 still records a retry the API can parse
    assert b["message_valid"] and b["message_length"] <= 10_000 and b["item"]["retry_count"] == 0


# -- 19: sidekiq_retry_in (as the sidecar reports it) ------------------------------------------------

def test_19_retry_in_from_the_sidecar(redis_url, r, stub, worker):
    worker("-c", "4")
    sixty = push(redis_url, '"class" => "RetryInJob", "args" => [60]')
    default = push(redis_url, '"class" => "RetryInJob", "args" => [nil]')  # the block raised: default
    kill = push(redis_url, '"class" => "KillJob", "args" => []')
    discard = push(redis_url, '"class" => "DiscardJob", "args" => []')
    e = retry_entry(redis_url, sixty)
    assert 60 <= e["score"] - e["item"]["failed_at"] < 70
    e = retry_entry(redis_url, default)
    assert 15 <= e["score"] - e["item"]["failed_at"] < 25
    assert dead_entry(redis_url, kill)["item"]["retry_count"] == 0
    assert len(exhausted_calls(stub, kill)) == 2
    wait_until(lambda: runs(stub, discard), 5, what="the discarded job to run")
    time.sleep(0.3)
    s = sets(redis_url)
    assert discard not in [x["jid"] for x in s["retry"] + s["dead"]] and not exhausted_calls(stub, discard)
    assert not any(r.llen(k) for k in r.keys("fastworker:inprogress:*"))


def test_an_interrupted_iterable_job_counts_processed_and_failed(redis_url, r, stub, worker):
    """7.3+: an IterableJob interrupted at quiet re-enqueues itself and raises JobRetry::Skip, which
    passes through Processor#stats (failure counted) and is acked without a retry or error."""
    worker("-c", "2")
    jid = push(redis_url, '"class" => "SkipJob", "args" => []')
    wait_until(lambda: runs(stub, jid), 5, what="the iterable job to run")
    stats = lambda: rb(redis_url, "s = Sidekiq::Stats.new; puts [s.processed, s.failed, s.retry_size, s.dead_size].to_json")  # noqa: E731
    wait_until(lambda: stats() == [1, 1, 0, 0], 5, what="processed 1, failed 1")
    assert not any(r.llen(k) for k in r.keys("fastworker:inprogress:*"))


def test_19_discard_on_sidekiq_8_runs_the_death_handlers(redis_url, r, stub, worker):
    """8.x JobRetry#process_retry: :discard stamps discarded_at and still runs the death handlers
    (not sidekiq_retries_exhausted); the job goes to neither set. 7.x drops it silently (above)."""
    worker("-c", "2", "--sidekiq-version", "8")
    discard = push(redis_url, '"class" => "DiscardJob", "args" => []')
    wait_until(lambda: exhausted_calls(stub, discard), 10, what="the death handlers of the discarded job")
    [call] = exhausted_calls(stub, discard)
    assert call["phase"] == "death" and isinstance(call["job"]["discarded_at"], int)
    time.sleep(0.3)
    s = sets(redis_url)
    assert discard not in [x["jid"] for x in s["retry"] + s["dead"]]
    assert not any(r.llen(k) for k in r.keys("fastworker:inprogress:*"))


# -- 21, 22: unknown class, invalid JSON ----------------------------------------------------------

def test_21_unknown_class_is_retried_not_dropped(redis_url, r, stub, worker):
    worker("-c", "1")
    jid = push(redis_url, '"class" => "NoSuchJob", "args" => []')
    e = retry_entry(redis_url, jid)
    assert e["item"]["error_class"] == "NameError"
    assert e["item"]["error_message"] == "uninitialized constant NoSuchJob"
    assert sets(redis_url)["dead"] == []


def test_22_invalid_json_anywhere_goes_to_the_dead_set_and_the_worker_goes_on(redis_url, r, stub, worker):
    r.lpush("queue:default", b"{not json")
    r.zadd("schedule", {b"{also not json": time.time() - 1})
    r.zadd("retry", {b'[1,"not an object"]': time.time() - 1, b'{"class":"X","args":[],"queue":null}': 1.0})
    w = worker("-c", "1", "--poll-interval", "0.2")
    wait_until(lambda: r.zcard("dead") == 4, 10, what="four dead entries")
    members = r.zrange("dead", 0, -1)
    assert b"{not json" in members and b"{also not json" in members  # raw, as Sidekiq stores them
    assert b'{"class":"X","args":[],"queue":null}' in members
    # Sidekiq 6.4.1's JobRecord cannot read valid JSON that is not an object (it raises a
    # TypeError, and so would the Web UI's Dead page), so that one is wrapped with its raw text
    [wrapped] = [json.loads(m) for m in members if m.startswith(b'{"class":"Fastworker::InvalidPayload"')]
    assert wrapped["args"] == ['[1,"not an object"]'] and wrapped["queue"] == "default"
    dead = sets(redis_url)["dead"]  # and Sidekiq's API lists the whole dead set
    assert sorted(e["display_args"][0] if e["item"] == {} else e["item"]["class"] for e in dead) == sorted(
        ["{not json", "{also not json", "X", "Fastworker::InvalidPayload"])
    reasons = sorted(ev["reason"] for ev in w.events("job_dead"))
    assert any("invalid JSON" in x for x in reasons) and any("not a JSON object" in x for x in reasons)
    assert any("'queue'" in x for x in reasons)
    # and scheduling goes on
    jid = rb(redis_url, 'class HardJob; include Sidekiq::Worker; end; puts [HardJob.perform_in(0.5)].to_json')[0]
    wait_until(lambda: runs(stub, jid), 10, what="a later scheduled job")
    assert w.proc.poll() is None


# -- 23: dead-set trimming ------------------------------------------------------------------------

def test_23_dead_set_keeps_9999_and_drops_entries_older_than_180_days(redis_url, r, stub, worker):
    now = time.time()
    p = r.pipeline(transaction=False)
    p.zadd("dead", {f"ancient-{i}": now - 181 * 86400 - i for i in range(5)})
    for start in range(0, 10_000, 2_000):
        p.zadd("dead", {f'{{"class":"Old","args":[],"jid":"old{i}"}}': now - 86400 + i for i in range(start, start + 2_000)})
    p.execute()
    worker("-c", "1")
    jid = push(redis_url, '"class" => "FailJob", "args" => ["last"], "retry" => 0')
    wait_until(lambda: r.zscore("dead", r.zrange("dead", -1, -1)[0]) > now, 10, what="the new death")
    s = rb(redis_url, f'd = Sidekiq::DeadSet.new; puts({{size: d.size, e: entry(d.find_job("{jid}"))}}.to_json)')
    assert s["size"] == 9_999
    assert s["e"]["item"]["error_message"] == "last" and abs(s["e"]["score"] - time.time()) < 10
    assert not r.zrangebyscore("dead", "-inf", now - 180 * 86400)


# -- 24, 25: ActiveJob-shaped payloads (Rails 6.1 adapter) ------------------------------------------

def test_24_25_activejob_payloads_display_by_wrapped_and_run_after_the_poll(redis_url, r, stub, worker):
    worker("-c", "2", "--poll-interval", "0.2")
    aj = ('"class" => "%s", "wrapped" => "%s", "queue" => "default", "args" => [{"job_class" => "%s", '
          '"job_id" => "0b5a4f", "queue_name" => "default", "arguments" => [1], "executions" => 0}]')
    failing = push(redis_url, aj % (AJ_WRAPPER, "FailJob", "FailJob"))
    e = retry_entry(redis_url, failing)
    assert e["item"]["wrapped"] == "FailJob" and e["display_class"] == "FailJob"
    assert e["item"]["class"] == AJ_WRAPPER and e["display_args"] == [1]
    s = rb(redis_url, ("jid = Sidekiq::Client.push(%s.merge(\"at\" => Time.now.to_f + 1))\n" % ("{" + aj % (
        AJ_WRAPPER, "MyAjJob", "MyAjJob") + "}")) + "puts({jid: jid, e: entry(Sidekiq::ScheduledSet.new.first)}.to_json)")
    assert s["e"]["display_class"] == "MyAjJob"
    wait_until(lambda: runs(stub, s["jid"]), 10, what="the scheduled ActiveJob")
    assert runs(stub, s["jid"])[0]["wrapped"] == "MyAjJob"


# -- the API's actions on fastworker's entries ----------------------------------------------------

def test_kill_delete_and_dead_retry_through_the_api(redis_url, r, stub, worker):
    worker("-c", "3")
    a, b, c = (push(redis_url, f'"class" => "FailJob", "args" => ["{x}"], "display_class" => "Shown{x}"')
               for x in "abc")
    for jid in (a, b, c):
        retry_entry(redis_url, jid)
    out = rb(redis_url, f"""
      rs = Sidekiq::RetrySet.new
      shown = rs.map(&:display_class).sort
      rs.find_job("{a}").kill
      rs.find_job("{b}").delete
      puts({{shown: shown, retry: dump(Sidekiq::RetrySet.new).map {{ |e| e[:jid] }},
             dead: dump(Sidekiq::DeadSet.new).map {{ |e| e[:jid] }}}}.to_json)""")
    assert out["shown"] == ["Showna", "Shownb", "Shownc"]
    assert out["retry"] == [c] and out["dead"] == [a]
    rb(redis_url, f'Sidekiq::DeadSet.new.find_job("{a}").retry; puts 1')  # back to its queue: runs again
    wait_until(lambda: len(runs(stub, a)) == 2, 10, what="the job retried from the dead set")
    e = retry_entry(redis_url, a, 0)
    assert e["item"]["error_message"] == "a"
    # a far-future scheduled job pushed into its queue at once by the API
    jid = rb(redis_url, """
      class HardJob; include Sidekiq::Worker; end
      jid = HardJob.perform_in(3600)
      Sidekiq::ScheduledSet.new.find_job(jid).add_to_queue
      puts [jid].to_json""")[0]
    wait_until(lambda: runs(stub, jid), 10, what="the scheduled job added to its queue")


# -- the real sidecar and the demo Rails app: the Ruby hooks (14-21, 24, 25) ----------------------

@pytest.fixture
def app(redis_url, tmp_path):
    """The demo app on a private SQLite DB, its sidecar, and a reader for the JobRun/JobEvent rows."""
    from tests.helpers import rails
    if not rails.ruby_available():
        pytest.skip("needs Debian's ruby with Rails and Sidekiq")
    db = tmp_path / "demo.sqlite3"
    database_url = f"sqlite3:{db}"
    rails.prepare_db(redis_url, database_url=database_url)
    sidecar = rails.start_sidecar(redis_url, database_url=database_url, threads=4)

    def rows(table: str, **where) -> list[dict]:
        import sqlite3
        con = sqlite3.connect(db, timeout=10)
        con.row_factory = sqlite3.Row
        try:
            sql = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(f"{k} = ?" for k in where) if where else "")
            out = [dict(row) for row in con.execute(sql + " ORDER BY id", tuple(where.values()))]
        finally:
            con.close()
        for row in out:
            if row.get("details"):
                row["details"] = json.loads(row["details"])
        return out

    def enqueue(snippet: str) -> dict:
        return rails.rails_json(snippet, redis_url, database_url=database_url)

    yield SimpleNamespace(url=sidecar.url, rows=rows, enqueue=enqueue, sidecar=sidecar)
    sidecar.stop()


def events(app, jid: str, event: str) -> list[dict]:
    return app.rows("job_events", jid=jid, event=event)


@pytest.mark.rails
def test_rails_14_15_16_20_exhausted_block_and_death_handlers_run_in_ruby(redis_url, r, app, worker):
    worker("-c", "4", sidecar_url=app.url)
    j = app.enqueue("""puts({
      exhausted: ExhaustedWorker.perform_async,                  # retry: 0 from sidekiq_options
      no_retry: ExhaustedWorker.set(retry: false).perform_async,
      no_dead: ExhaustedWorker.set(dead: false).perform_async,
      kill: RetryInWorker.perform_async("kill"),
      discard: RetryInWorker.perform_async("discard")}.to_json)""")
    wait_until(lambda: len(app.rows("job_runs")) == 5, 20, 0.1, "five runs")
    dead = dead_entry(redis_url, j["exhausted"])
    assert dead["item"]["retry"] == 0 and dead["item"]["retry_count"] == 0
    assert dead["item"]["error_message"] == "exhausted worker gives up"
    ex = wait_until(lambda: events(app, j["exhausted"], "exhausted"), 10, 0.1, "sidekiq_retries_exhausted")
    assert len(ex) == 1  # once, with the msg's error fields filled in
    assert ex[0]["details"]["error_message_in_job"] == "exhausted worker gives up"
    assert ex[0]["details"]["retry_count"] == 0 and ex[0]["error_class"] == "RuntimeError"
    assert len(wait_until(lambda: events(app, j["exhausted"], "death"), 10, 0.1, "death handler")) == 1
    # retry: false -> death handlers only, and no entry anywhere
    assert len(wait_until(lambda: events(app, j["no_retry"], "death"), 10, 0.1, "death handler")) == 1
    assert events(app, j["no_retry"], "exhausted") == []
    # dead: false -> exhausted block and death handlers, no dead entry
    assert len(wait_until(lambda: events(app, j["no_dead"], "exhausted"), 10, 0.1, "exhausted")) == 1
    assert len(wait_until(lambda: events(app, j["no_dead"], "death"), 10, 0.1, "death handler")) == 1
    # sidekiq_retry_in :kill (6.5+) -> dead set and death handlers; :discard -> gone
    assert dead_entry(redis_url, j["kill"])["item"]["error_class"] == "RetryInWorker::Failure"
    assert len(wait_until(lambda: events(app, j["kill"], "death"), 10, 0.1, "death handler")) == 1
    time.sleep(0.3)
    s = sets(redis_url)
    assert sorted(e["jid"] for e in s["dead"]) == sorted([j["exhausted"], j["kill"]])
    assert s["retry"] == [] and events(app, j["discard"], "death") == []


@pytest.mark.rails
def test_rails_13_17_19_21_retry_entries_from_real_exceptions(redis_url, r, app, worker):
    worker("-c", "4", sidecar_url=app.url)
    j = app.enqueue("""puts({
      options: OptionsWorker.perform_async,                      # retry 2, retry_queue low, backtrace 5
      delay: RetryInWorker.perform_async("delay"),               # sidekiq_retry_in -> 10 * (count + 1)
      explode: RetryInWorker.perform_async("explode"),           # the block raises -> the default
      unknown: Sidekiq::Client.push("class" => "NoSuchJob", "args" => [1])}.to_json)""")
    o = retry_entry(redis_url, j["options"])
    assert o["queue"] == "low" and o["item"]["error_class"] == "OptionsWorker::Failure"
    bt = o["error_backtrace"]
    assert isinstance(bt, list) and 1 <= len(bt) <= 5 and all(isinstance(x, str) for x in bt)
    assert any("options_worker.rb" in x for x in bt)
    d = retry_entry(redis_url, j["delay"])
    assert 10 <= d["score"] - d["item"]["failed_at"] < 20
    x = retry_entry(redis_url, j["explode"])
    assert 15 <= x["score"] - x["item"]["failed_at"] < 25
    u = retry_entry(redis_url, j["unknown"])
    assert u["item"]["error_class"] == "NameError" and "NoSuchJob" in u["item"]["error_message"]
    assert sets(redis_url)["dead"] == []


@pytest.mark.rails
def test_rails_24_25_activejob_through_the_rails_61_adapter(redis_url, r, app, worker):
    # first a worker that polls rarely, so the retry entry and the schedule can be looked at
    w = worker("-c", "4", "--poll-interval", "60", sidecar_url=app.url)
    j = app.enqueue("""puts({
      hooks: AjHooksJob.perform_later.provider_job_id,          # retry 1, hooks on the AJ class
      later: KeywordJob.set(wait: 2.seconds).perform_later(name: "later").provider_job_id}.to_json)""")
    scheduled = sets(redis_url)["schedule"]
    assert [e["display_class"] for e in scheduled] == ["KeywordJob"]
    assert scheduled[0]["item"]["class"] == AJ_WRAPPER and scheduled[0]["item"]["wrapped"] == "KeywordJob"
    e = retry_entry(redis_url, j["hooks"], 0)
    assert e["item"]["class"] == AJ_WRAPPER and e["item"]["wrapped"] == "AjHooksJob"
    assert e["display_class"] == "AjHooksJob"
    assert app.rows("job_runs", kind="aj_hooks")[0]["provider_job_id"] == j["hooks"]
    assert w.stop() == 0

    # then one that polls every 0.2 s: the scheduled job runs, the retry fails again and is exhausted
    worker("-c", "4", "--poll-interval", "0.2", sidecar_url=app.url)
    make_due(r)
    run = wait_until(lambda: app.rows("job_runs", kind="kwargs"), 10, 0.1, "the scheduled ActiveJob")[0]
    assert run["provider_job_id"] == run["jid"] == j["later"]  # ActiveJob's provider_job_id is the jid
    assert run["job_class"] == "KeywordJob"
    dead = dead_entry(redis_url, j["hooks"])
    assert dead["display_class"] == "AjHooksJob" and dead["item"]["retry_count"] == 1
    ex = wait_until(lambda: events(app, j["hooks"], "exhausted"), 10, 0.1, "the AJ exhausted block")
    assert len(ex) == 1 and ex[0]["job_class"] == "AjHooksJob"
    assert sets(redis_url)["schedule"] == [] and sets(redis_url)["retry"] == []
