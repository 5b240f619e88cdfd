"""retry.decide against Sidekiq 6.4.1's job_retry.rb (and the 7.x/8.x differences of sidekiq-compat.md §4).

Pure decisions: a payload, what the sidecar reported, a fixed clock and a fixed random draw in;
RetryAt / Dead / Discard out. What Sidekiq's own API makes of the entries is in test_sidekiq_api.py.
"""

from __future__ import annotations

import base64
import json
import zlib

import pytest

from fastworker import core, jobjson, retry
from fastworker.outcome import Failed

NOW = 1_700_000_000.25
BT = ["app/jobs/a.rb:3:in `perform'", "lib/b.rb:1", "lib/c.rb:2", "lib/d.rb:4"]


def env(**fields):
    job = {"retry": True, "queue": "default", "class": "HardJob", "args": [1, "x"],
           "jid": "5b0e4c2f7a9d1e3f4a5b6c7d", "created_at": 1_699_999_000.5, "enqueued_at": 1_699_999_001.5}
    for k, v in fields.items():
        if v is _DROP:
            job.pop(k, None)
        else:
            job[k] = v
    return core.decode_envelope(json.dumps(job).encode())


_DROP = object()


def failed(message="boom", error_class="RuntimeError", backtrace=BT, retry_in=None, class_retry=None):
    return Failed(error_class, message, backtrace, retry_in, class_retry, {})


def decide(e, f=None, queue="default", policy=retry.Policy(), r=0.0, now=NOW):
    return retry.decide(e, f or failed(), queue, now, policy, rand=lambda: r)


def member(decision):
    assert isinstance(decision, retry.RetryAt), decision
    return json.loads(decision.member)


# -- the fields of a retry entry (§4.2) ---------------------------------------------------------

def test_first_failure_writes_sidekiqs_fields_and_keeps_every_other_key():
    e = env(tags=["a"], custom={"n": 1.0, "z": None, "b": [True, False]}, bid="B1")
    d = decide(e, failed("kaboom", "Net::ReadTimeout"), queue="critical")
    m = member(d)
    assert m["queue"] == "critical"  # the queue it was fetched from
    assert m["error_message"] == "kaboom" and m["error_class"] == "Net::ReadTimeout"
    assert m["retry_count"] == 0
    assert m["failed_at"] == NOW and isinstance(m["failed_at"], float)
    assert "retried_at" not in m and "error_backtrace" not in m
    for k in ("class", "args", "jid", "created_at", "enqueued_at", "tags", "bid", "retry"):
        assert m[k] == e.job[k]
    assert m["custom"] == {"n": 1.0, "z": None, "b": [True, False]}
    assert b'"n":1.0' in d.member  # a float stays a float
    assert d.count == 0


def test_later_failure_sets_retried_at_and_keeps_failed_at():
    e = env(retry_count=0, failed_at=1_699_999_100.5, error_message="old", error_class="X")
    m = member(decide(e, failed("again")))
    assert m["retry_count"] == 1
    assert m["retried_at"] == NOW
    assert m["failed_at"] == 1_699_999_100.5
    assert m["error_message"] == "again" and m["error_class"] == "RuntimeError"


def test_retry_queue_replaces_the_queue():
    m = member(decide(env(retry_queue="low"), queue="default"))
    assert m["queue"] == "low" and m["retry_queue"] == "low"


@pytest.mark.parametrize("created, enqueued, version, want_ms", [
    (1_699_999_000.5, 1_699_999_001.5, "auto", False),   # Sidekiq <= 7 payload
    (1_699_999_000_500, 1_699_999_001_500, "auto", True),  # Sidekiq 8 payload: integer ms
    (_DROP, 1_699_999_001_500, "auto", True),             # judged by enqueued_at without created_at
    (1_699_999_000_500, 1_699_999_001_500, "7", False),  # forced flavour
    (1_699_999_000.5, 1_699_999_001.5, "8", True),
])
def test_timestamps_are_written_in_the_jobs_own_format(created, enqueued, version, want_ms):
    m = member(decide(env(created_at=created, enqueued_at=enqueued), policy=retry.Policy(25, version)))
    if want_ms:
        assert m["failed_at"] == int(NOW * 1000) and type(m["failed_at"]) is int
    else:
        assert m["failed_at"] == NOW and type(m["failed_at"]) is float
    m2 = member(decide(env(created_at=created, enqueued_at=enqueued, retry_count=3, failed_at=m["failed_at"]),
                       policy=retry.Policy(25, version)))
    assert type(m2["retried_at"]) is (int if want_ms else float)
    assert m2["failed_at"] == m["failed_at"]


# -- error_backtrace ----------------------------------------------------------------------------

def unpack_backtrace(text):
    return json.loads(zlib.decompress(base64.b64decode(text)))


@pytest.mark.parametrize("option, want", [(True, BT), (2, BT[:2]), (0, []), (10, BT)])
def test_error_backtrace_is_base64_zlib_json_of_the_lines_asked_for(option, want):
    m = member(decide(env(backtrace=option)))
    assert unpack_backtrace(m["error_backtrace"]) == want
    assert "\n" not in m["error_backtrace"]  # strict base64


@pytest.mark.parametrize("option", [False, None, _DROP])
def test_no_error_backtrace_without_the_option(option):
    assert "error_backtrace" not in member(decide(env(backtrace=option)))


# -- the message -------------------------------------------------------------------------------

def test_message_is_cut_to_10000_characters():
    m = member(decide(env(), failed("é" * 20_000)))
    assert m["error_message"] == "é" * 10_000


def test_lone_surrogates_are_scrubbed_and_the_member_is_valid_utf8_json():
    d = decide(env(), failed("bad \udcff byte \ud800 end"))
    d.member.decode("utf-8")  # strict
    assert member(d)["error_message"] == "bad \ufffd byte \ufffd end"


# -- the delay (§4.4) --------------------------------------------------------------------------

@pytest.mark.parametrize("count, r, ms, want", [
    (0, 0.0, False, 15),                     # first retry: 15 s + rand(10)*1
    (0, 0.999999, False, 15 + 9),
    (3, 0.55, False, 81 + 15 + 5 * 4),       # <= 7.x: rand(10) * (count + 1)
    (3, 0.55, True, 81 + 15 + 22),           # 8.x: rand(10 * (count + 1)) = int(0.55 * 40)
    (3, 0.999999, True, 81 + 15 + 39),
    (24, 0.0, False, 24**4 + 15),
])
def test_default_delay_is_count_to_the_fourth_plus_15_plus_jitter(count, r, ms, want):
    rc = _DROP if count == 0 else count - 1
    fields = {"retry_count": rc}
    if ms:
        fields.update(created_at=1_699_999_000_500, enqueued_at=1_699_999_001_500)
    d = decide(env(**fields), r=r)
    assert isinstance(d, retry.RetryAt)
    assert d.count == count
    assert d.delay == want
    assert d.score == NOW + want


def test_sidecar_retry_in_seconds_plus_jitter():
    d = decide(env(), failed(retry_in=60), r=0.95)
    assert d.delay == 60 + 9 and d.score == NOW + 69


@pytest.mark.parametrize("retry_in", [0, -5, None])
def test_retry_in_that_is_not_positive_falls_back_to_the_formula(retry_in):
    assert decide(env(), failed(retry_in=retry_in), r=0.0).delay == 15


def test_retry_in_kill_goes_to_the_exhausted_path():
    d = decide(env(), failed(retry_in="kill"))
    assert isinstance(d, retry.Dead) and d.run_exhausted_block and d.to_dead_set
    assert d.job["error_class"] == "RuntimeError" and d.job["retry_count"] == 0


def test_retry_in_discard_drops_the_job():
    assert isinstance(decide(env(), failed(retry_in="discard")), retry.Discard)


def test_retry_in_discard_on_sidekiq_8_keeps_the_job_for_the_death_handlers():
    assert decide(env(), failed(retry_in="discard"), policy=retry.Policy(sidekiq_version="7")).job is None
    d = decide(env(), failed(retry_in="discard"), policy=retry.Policy(sidekiq_version="8"))
    assert isinstance(d, retry.Discard) and d.job["discarded_at"] == int(NOW * 1000)
    assert d.job["jid"] == "5b0e4c2f7a9d1e3f4a5b6c7d"


def test_exhaustion_wins_over_retry_in_discard():
    # Sidekiq checks the count before asking sidekiq_retry_in
    d = decide(env(retry=0), failed(retry_in="discard"))
    assert isinstance(d, retry.Dead) and d.to_dead_set


# -- the limit (§4.3) ---------------------------------------------------------------------------

@pytest.mark.parametrize("retry_opt, retry_count, dead", [
    (True, 23, False),   # count 24 < 25
    (True, 24, True),    # count 25: 26 executions in all
    (2, 0, False),
    (2, 1, True),        # retry: 2 -> dead at the 3rd failure
    (0, _DROP, True),    # 0 is truthy in Ruby: dead at the first failure
    ("yes", 24, True),   # not an Integer: max_retries
])
def test_limit(retry_opt, retry_count, dead):
    d = decide(env(retry=retry_opt, retry_count=retry_count))
    if dead:
        assert isinstance(d, retry.Dead) and d.run_exhausted_block and d.to_dead_set
        want = 0 if retry_count is _DROP else retry_count + 1
        assert d.job["retry_count"] == want and d.job["error_message"] == "boom"
    else:
        assert isinstance(d, retry.RetryAt)


def test_max_retries_comes_from_the_policy():
    assert isinstance(decide(env(retry_count=1), policy=retry.Policy(max_retries=2)), retry.Dead)
    assert isinstance(decide(env(retry_count=0), policy=retry.Policy(max_retries=2)), retry.RetryAt)


@pytest.mark.parametrize("retry_opt", [False, None, _DROP])
def test_retry_false_or_nil_means_death_handlers_only_with_the_job_as_fetched(retry_opt):
    e = env(retry=retry_opt)
    d = decide(e)
    assert isinstance(d, retry.Dead)
    assert d.run_exhausted_block is False and d.to_dead_set is False
    assert d.job == e.job  # JobRetry#global re-parses the original: no error fields


def test_missing_retry_is_taken_from_the_class_option_and_stored():
    m = member(decide(env(retry=_DROP), failed(class_retry=3)))
    assert m["retry"] == 3
    d = decide(env(retry=_DROP, retry_count=2), failed(class_retry=3))
    assert isinstance(d, retry.Dead) and d.job["retry_count"] == 3
    d = decide(env(retry=None), failed(class_retry=False))
    assert isinstance(d, retry.Dead) and not d.to_dead_set


def test_payload_retry_wins_over_the_class_option():
    assert isinstance(decide(env(retry=False), failed(class_retry=True)), retry.Dead)


def test_dead_false_is_exhausted_but_not_for_the_dead_set():
    d = decide(env(retry=0, dead=False))
    assert isinstance(d, retry.Dead) and d.run_exhausted_block and not d.to_dead_set


def test_retry_for_window_over_is_exhausted_in_7x_mode_even_with_retries_left():
    e = env(retry_for=60, retry_count=0, failed_at=NOW - 61)
    assert isinstance(decide(e, policy=retry.Policy(25, "7")), retry.Dead)
    e = env(retry_for=60, retry_count=0, failed_at=NOW - 59)
    assert isinstance(decide(e, policy=retry.Policy(25, "7")), retry.RetryAt)


def test_retry_for_replaces_the_count_in_8x_mode():
    ms = {"created_at": 1_699_999_000_500, "enqueued_at": 1_699_999_001_500}
    e = env(retry=1, retry_for=3600, retry_count=5, failed_at=int((NOW - 60) * 1000), **ms)
    assert isinstance(decide(e, policy=retry.Policy(25, "8")), retry.RetryAt)  # count ignored
    assert isinstance(decide(e, policy=retry.Policy(25, "7")), retry.Dead)     # either ends it


# -- JSON fidelity ------------------------------------------------------------------------------

def test_integers_beyond_64_bits_survive_the_retry_entry():
    raw = (b'{"retry":true,"queue":"default","class":"HardJob","args":[123456789012345678901234567890,'
           b'-9223372036854775809,1.5],"jid":"abc","created_at":1699999000.5}')
    d = decide(core.decode_envelope(raw))
    assert b"[123456789012345678901234567890,-9223372036854775809,1.5]" in d.member
    assert json.loads(d.member)["retry_count"] == 0


def test_load_and_dump_job_keep_json_types():
    raw = b'{"a":18446744073709551616,"b":1.0,"c":"\\ud800x","d":[null,true],"e":"\xc3\xa9"}'
    job = jobjson.load_job(raw)
    assert job["a"] == 2**64 and job["b"] == 1.0 and type(job["b"]) is float
    out = jobjson.dump_job(job)
    assert json.loads(out) == json.loads(raw)
    assert b"18446744073709551616" in out and b"1.0" in out
    out.decode("utf-8")


@pytest.mark.parametrize("raw", [b'{"a":NaN}', b'{"a":1e400}', b'{"a":Infinity}', b"{nope"])
def test_load_job_rejects_what_is_not_strict_json(raw):
    with pytest.raises(ValueError):
        jobjson.load_job(raw)
