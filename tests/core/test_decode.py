"""decode_envelope on real Sidekiq payload shapes and on bad input, for both twins."""

from __future__ import annotations

import copy
import pickle
from types import ModuleType

import orjson
import pytest

JID = "5b0e4c2f7a9d1e3f4a5b6c7d"

# Byte-for-byte what Sidekiq 6.4.1's client LPUSHes (JSON.generate: compact, merge order).
SIDEKIQ_641 = (
    b'{"retry":true,"queue":"default","args":[1,"x"],"class":"HardJob",'
    b'"jid":"5b0e4c2f7a9d1e3f4a5b6c7d","created_at":1700000000.123456,"enqueued_at":1700000000.124}'
)
# Sidekiq 8: the same job with integer-millisecond timestamps.
SIDEKIQ_8 = (
    b'{"retry":true,"queue":"default","args":[1,"x"],"class":"HardJob",'
    b'"jid":"5b0e4c2f7a9d1e3f4a5b6c7d","created_at":1700000000123,"enqueued_at":1700000000124}'
)
# Rails 6.1's ActiveJob adapter: a JobWrapper carrying the real class in "wrapped".
ACTIVEJOB = (
    b'{"class":"ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper","wrapped":"InvoiceMailerJob",'
    b'"queue":"mailers","args":[{"job_class":"InvoiceMailerJob","job_id":"0b8d8f6e-3c1e-4b5e-9c55-1f0e2d7c9a10",'
    b'"provider_job_id":null,"queue_name":"mailers","priority":null,'
    b'"arguments":[{"_aj_globalid":"gid://demo/Invoice/42"}],"executions":0,"exception_executions":{},'
    b'"locale":"en","timezone":"UTC","enqueued_at":"2023-11-14T22:13:20Z"}],'
    b'"retry":true,"jid":"d1c3f0a9b8e7d6c5b4a39281","created_at":1700000000.5,"enqueued_at":1700000000.5}'
)
# A member of the schedule zset: no "at" and (7.1.2+) no enqueued_at.
SCHEDULED = (
    b'{"retry":3,"queue":"low","args":[7],"class":"ReportJob","jid":"aaaaaaaaaaaaaaaaaaaaaaaa",'
    b'"created_at":1700000000.25}'
)
# A member of the retry zset after two failures (6.4.1 process_retry fields).
RETRIED = (
    b'{"retry":5,"queue":"critical","args":[],"class":"FlakyJob","jid":"bbbbbbbbbbbbbbbbbbbbbbbb",'
    b'"created_at":1700000000.0,"enqueued_at":1700000100.5,"retry_queue":"retries","backtrace":10,'
    b'"dead":false,"error_message":"boom","error_class":"RuntimeError","failed_at":1700000001.75,'
    b'"retry_count":1,"retried_at":1700000050.25}'
)
# Sidekiq 8 retry member: failed_at/retried_at in ms too, retry_for set.
RETRIED_8 = (
    b'{"retry":true,"queue":"default","args":[1],"class":"FlakyJob","jid":"cccccccccccccccccccccccc",'
    b'"created_at":1700000000000,"enqueued_at":1700000000000,"retry_for":3600,"failed_at":1700000001500,'
    b'"retry_count":0,"retried_at":1700000002500,"display_class":"Flaky (v2)"}'
)


def test_sidekiq_641_payload(core_impl: ModuleType) -> None:
    env = core_impl.decode_envelope(SIDEKIQ_641)
    assert env.raw is SIDEKIQ_641
    assert env.job == orjson.loads(SIDEKIQ_641)
    assert env.jid == JID
    assert env.klass == "HardJob"
    assert env.args == [1, "x"]
    assert env.wrapped is None
    assert env.worker_class == "HardJob"
    assert env.display_class == "HardJob"
    assert env.queue == "default"
    assert env.retry is True
    assert env.retry_count is None
    assert env.retry_queue is None
    assert env.backtrace is False
    assert env.dead is True
    assert env.retry_for is None
    assert env.created_at == 1700000000.123456
    assert env.enqueued_at == 1700000000.124
    assert env.failed_at is None
    assert env.retried_at is None
    assert env.ms_timestamps is False


def test_sidekiq_8_payload_uses_milliseconds(core_impl: ModuleType) -> None:
    env = core_impl.decode_envelope(SIDEKIQ_8)
    assert env.created_at == 1700000000.123
    assert env.enqueued_at == 1700000000.124
    assert type(env.created_at) is float
    assert env.ms_timestamps is True
    assert env.klass == "HardJob"
    assert env.jid == JID


def test_activejob_wrapper(core_impl: ModuleType) -> None:
    env = core_impl.decode_envelope(ACTIVEJOB)
    assert env.klass == "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper"
    assert env.wrapped == "InvoiceMailerJob"
    assert env.worker_class == "InvoiceMailerJob"
    assert env.display_class == "InvoiceMailerJob"
    assert env.queue == "mailers"
    assert env.args[0]["job_class"] == "InvoiceMailerJob"
    assert env.args[0]["enqueued_at"] == "2023-11-14T22:13:20Z"
    assert env.created_at == 1700000000.5
    assert env.ms_timestamps is False


def test_scheduled_payload_without_enqueued_at(core_impl: ModuleType) -> None:
    env = core_impl.decode_envelope(SCHEDULED)
    assert env.enqueued_at is None
    assert env.created_at == 1700000000.25
    assert env.retry == 3
    assert env.queue == "low"
    assert env.args == [7]
    assert env.ms_timestamps is False


def test_retried_payload(core_impl: ModuleType) -> None:
    env = core_impl.decode_envelope(RETRIED)
    assert env.retry == 5
    assert env.retry_count == 1
    assert env.retry_queue == "retries"
    assert env.backtrace == 10
    assert env.dead is False
    assert env.failed_at == 1700000001.75
    assert env.retried_at == 1700000050.25
    assert env.created_at == 1700000000.0
    assert env.ms_timestamps is False


def test_retried_sidekiq_8_payload(core_impl: ModuleType) -> None:
    env = core_impl.decode_envelope(RETRIED_8)
    assert env.retry_count == 0
    assert env.retry_for == 3600
    assert env.failed_at == 1700000001.5
    assert env.retried_at == 1700000002.5
    assert env.display_class == "Flaky (v2)"
    assert env.worker_class == "FlakyJob"
    assert env.ms_timestamps is True


def _decode(core_impl: ModuleType, **fields: object):
    job = {"class": "HardJob", "args": []}
    job.update(fields)
    return core_impl.decode_envelope(orjson.dumps(job))


ABSENT = object()


def _decode_field(core_impl: ModuleType, key: str, value: object):
    if value is ABSENT:
        return _decode(core_impl)
    return _decode(core_impl, **{key: value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [(ABSENT, ""), (None, ""), ("", ""), (JID, JID)],
)
def test_jid(core_impl: ModuleType, value: object, expected: str) -> None:
    assert _decode_field(core_impl, "jid", value).jid == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(ABSENT, None), (None, None), ("", None), (5, None), (["X"], None), ("Api::SyncJob", "Api::SyncJob")],
)
def test_wrapped_and_worker_class(core_impl: ModuleType, value: object, expected: str | None) -> None:
    env = _decode_field(core_impl, "wrapped", value)
    assert env.wrapped == expected
    assert env.worker_class == (expected or "HardJob")
    assert env.klass == "HardJob"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "HardJob"),
        ({"display_class": "Shown"}, "Shown"),
        ({"display_class": ""}, "HardJob"),
        ({"display_class": 7}, "HardJob"),
        ({"wrapped": "Inner"}, "Inner"),
        ({"wrapped": "Inner", "display_class": None}, "Inner"),
        ({"wrapped": "Inner", "display_class": "Shown"}, "Shown"),
    ],
)
def test_display_class(core_impl: ModuleType, fields: dict, expected: str) -> None:
    assert _decode(core_impl, **fields).display_class == expected


@pytest.mark.parametrize("key", ["queue", "retry_queue"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [(ABSENT, None), (None, None), ("", None), (3, None), (True, None), ("critical", "critical")],
)
def test_queue_names(core_impl: ModuleType, key: str, value: object, expected: str | None) -> None:
    assert getattr(_decode_field(core_impl, key, value), key) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(ABSENT, None), (None, None), (True, True), (False, False), (0, 0), (25, 25), ("yes", "yes"), ([1], [1])],
)
def test_retry_is_the_raw_value(core_impl: ModuleType, value: object, expected: object) -> None:
    retry = _decode_field(core_impl, "retry", value).retry
    assert retry == expected
    assert type(retry) is type(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(ABSENT, None), (None, None), (0, 0), (3, 3), (-1, -1), (2.0, 2), (18446744073709551615, 18446744073709551615)],
)
def test_retry_count(core_impl: ModuleType, value: object, expected: int | None) -> None:
    count = _decode_field(core_impl, "retry_count", value).retry_count
    assert count == expected
    assert type(count) is type(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ABSENT, False), (None, False), (False, False), (True, True),
        (0, 0),  # Ruby: 0 is truthy, an integer is a line count
        (20, 20), (-3, -3), ("yes", True), ("", True), (1.5, True), ([], True), ({}, True),
    ],
)  # fmt: skip
def test_backtrace(core_impl: ModuleType, value: object, expected: object) -> None:
    backtrace = _decode_field(core_impl, "backtrace", value).backtrace
    assert backtrace == expected
    assert type(backtrace) is type(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(ABSENT, True), (None, True), (True, True), (False, False), (0, True), ("false", True), ([], True)],
)
def test_dead(core_impl: ModuleType, value: object, expected: bool) -> None:
    assert _decode_field(core_impl, "dead", value).dead is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ABSENT, None), (None, None), (True, None), ("3600", None), ([3600], None),
        (3600, 3600), (0, 0), (3600.9, 3600), (-1.5, -1), (1e20, 100000000000000000000),
    ],
)  # fmt: skip
def test_retry_for(core_impl: ModuleType, value: object, expected: int | None) -> None:
    retry_for = _decode_field(core_impl, "retry_for", value).retry_for
    assert retry_for == expected
    assert type(retry_for) is type(expected)


@pytest.mark.parametrize("key", ["created_at", "enqueued_at", "failed_at", "retried_at"])
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (ABSENT, None), (None, None), (True, None), (False, None), ("1700000000.5", None), ([1], None),
        (1700000000.5, 1700000000.5), (1700000000500, 1700000000.5), (0, 0.0), (-1500, -1.5),
    ],
)  # fmt: skip
def test_timestamps(core_impl: ModuleType, key: str, value: object, expected: float | None) -> None:
    stamp = getattr(_decode_field(core_impl, key, value), key)
    assert stamp == expected
    assert type(stamp) is type(expected)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, False),
        ({"created_at": 1700000000000}, True),
        ({"created_at": 1700000000.0}, False),
        ({"created_at": 1700000000.0, "enqueued_at": 1700000000000}, False),  # created_at decides
        ({"created_at": 1700000000000, "enqueued_at": 1700000000.0}, True),
        ({"enqueued_at": 1700000000000}, True),  # scheduled-then-enqueued without created_at
        ({"enqueued_at": 1700000000.0}, False),
        ({"created_at": "2023-11-14", "enqueued_at": 1700000000000}, True),  # not numeric: ask enqueued_at
        ({"created_at": True, "enqueued_at": 1700000000000}, True),  # bool is not a number
        ({"created_at": None, "enqueued_at": None}, False),
        ({"enqueued_at": True}, False),
        ({"created_at": "x", "enqueued_at": False}, False),
        ({"created_at": 0}, True),
        ({"created_at": 0.0, "enqueued_at": 0}, False),
        ({"failed_at": 1700000000000}, False),  # only created_at / enqueued_at decide
    ],
)
def test_ms_timestamps(core_impl: ModuleType, fields: dict, expected: bool) -> None:
    assert _decode(core_impl, **fields).ms_timestamps is expected


# ---------------------------------------------------------------------------------------------
# Bad payloads: the exact reason is in the message.


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[]", "payload is not a JSON object (got array)"),
        (b'"str"', "payload is not a JSON object (got string)"),
        (b"null", "payload is not a JSON object (got null)"),
        (b"12", "payload is not a JSON object (got integer)"),
        (b"true", "payload is not a JSON object (got boolean)"),
        (b'{"args":[]}', "missing or invalid 'class' (key absent)"),
        (b'{"class":5,"args":[]}', "missing or invalid 'class' (got integer)"),
        (b'{"class":"","args":[]}', "missing or invalid 'class' (got empty string)"),
        (b'{"class":null,"args":[]}', "missing or invalid 'class' (got null)"),
        (b'{"class":["HardJob"],"args":[]}', "missing or invalid 'class' (got array)"),
        (b'{"class":"HardJob"}', "'args' must be an array (key absent)"),
        (b'{"class":"HardJob","args":"x"}', "'args' must be an array (got string)"),
        (b'{"class":"HardJob","args":{"a":1}}', "'args' must be an array (got object)"),
        (b'{"class":"HardJob","args":null}', "'args' must be an array (got null)"),
        (b'{"class":"HardJob","args":[],"jid":5}', "'jid' must be a string (got integer)"),
        (b'{"class":"HardJob","args":[],"jid":false}', "'jid' must be a string (got boolean)"),
        (b'{"class":"HardJob","args":[],"retry_count":"3"}', "'retry_count' must be an integer (got string)"),
        (b'{"class":"HardJob","args":[],"retry_count":2.5}', "'retry_count' must be an integer (got float)"),
        (b'{"class":"HardJob","args":[],"retry_count":true}', "'retry_count' must be an integer (got boolean)"),
        (b'{"class":"HardJob","args":[],"retry_count":[]}', "'retry_count' must be an integer (got array)"),
        # checked in order: class, args, jid, retry_count
        (b'{"class":5,"args":"x","jid":1,"retry_count":"x"}', "missing or invalid 'class' (got integer)"),
        (b'{"class":"X","args":"x","jid":1,"retry_count":"x"}', "'args' must be an array (got string)"),
        (b'{"class":"X","args":[],"jid":1,"retry_count":"x"}', "'jid' must be a string (got integer)"),
    ],
)
def test_invalid_payloads(core_impl: ModuleType, raw: bytes, message: str) -> None:
    with pytest.raises(core_impl.PayloadError) as info:
        core_impl.decode_envelope(raw)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b'{"class":"HardJob","args":[]',
        b'{"class":"\xff\xfe","args":[]}',  # invalid UTF-8
        b'{"class":"HardJob","args":[],"created_at":NaN}',
        b'{"class":"HardJob","args":[],"created_at":1e400}',  # orjson refuses infinity
        b'{"class":"HardJob","args":[]} trailing',
    ],
)
def test_invalid_json(core_impl: ModuleType, raw: bytes) -> None:
    with pytest.raises(core_impl.PayloadError) as info:
        core_impl.decode_envelope(raw)
    cause = info.value.__cause__
    assert isinstance(cause, orjson.JSONDecodeError)  # orjson's own wording varies by version
    assert str(info.value) == f"invalid JSON: {cause}"


def test_huge_integers(core_impl: ModuleType) -> None:
    # orjson keeps integers up to 2**64 - 1 exact and turns larger ones into floats.
    raw = (
        b'{"class":"HardJob","args":[123456789012345678901234567890],'
        b'"retry_count":123456789012345678901234567890,"created_at":18446744073709551615,'
        b'"enqueued_at":-9223372036854775809,"failed_at":9223372036854775807,'
        b'"retried_at":-9223372036854775808,"retry_for":99999999999999999999,"backtrace":18446744073709551615}'
    )
    env = core_impl.decode_envelope(raw)
    assert env.args == [1.2345678901234568e29]
    assert env.retry_count == 123456789012345677877719597056  # int() of the integral float
    assert type(env.retry_count) is int
    assert env.created_at == 1.844674407370955e16
    assert env.enqueued_at == -9.223372036854776e18  # became a float: seconds, as is
    assert env.failed_at == 9223372036854776.0
    assert env.retried_at == -9223372036854776.0
    assert env.retry_for == 100000000000000000000
    assert env.backtrace == 18446744073709551615
    assert env.ms_timestamps is True  # created_at stayed an int


# Keys that are not the ones the core reads but look like them: same length, shared prefix,
# other case, trailing NUL, non-ASCII. The last one is three code points whose UCS-2 bytes
# start with b"jid" (on little-endian machines).
DECOY_KEYS = (
    "deaf", "Dead", "dead ", "jib", "jid\x00", "Class", "clasS", "queuE", "retrY", "wrappeD", "retry_foR",
    "backtracE", "failed_aT", "created_aT", "retried_aT", "retry_counT", "retry_queuE", "enqueued_aT",
    "display_clasS", "args\u00e9", "cr\u00e9ated_at", "\u696a\u0164\u0100",
)


def test_only_exact_key_names_are_read(core_impl: ModuleType) -> None:
    decoys = {key: 1 for key in DECOY_KEYS} | {"deaf": False, "Dead": False, "jib": "x", "\u696a\u0164\u0100": "decoy"}
    env = core_impl.decode_envelope(orjson.dumps({"class": "HardJob", "args": [], **decoys}))
    assert env.job == {"class": "HardJob", "args": [], **decoys}
    assert env.jid == ""
    assert env.dead is True
    assert (env.queue, env.retry, env.wrapped, env.retry_for, env.retry_count, env.retry_queue) == (None,) * 6
    assert env.backtrace is False
    assert (env.created_at, env.enqueued_at, env.failed_at, env.retried_at) == (None,) * 4
    assert env.display_class == "HardJob"
    assert env.ms_timestamps is False


def test_duplicate_keys_last_wins(core_impl: ModuleType) -> None:
    env = core_impl.decode_envelope(b'{"class":"A","args":[],"class":"B","queue":"q1","queue":"q2"}')
    assert (env.klass, env.queue) == ("B", "q2")


# ---------------------------------------------------------------------------------------------
# Input types, raw preservation, the Envelope object itself.


def test_raw_bytes_untouched(core_impl: ModuleType) -> None:
    # Non-canonical spacing and escapes: raw is what LREM/ZREM need, so it must not be re-encoded.
    raw = b'{ "class" : "Caf\\u00e9Job", "args" : [ 1.50 ], "jid" : "j" }'
    env = core_impl.decode_envelope(raw)
    assert env.raw is raw
    assert env.klass == "Caf\u00e9Job"
    assert env.args == [1.5]


def test_str_input_is_utf8_encoded(core_impl: ModuleType) -> None:
    env = core_impl.decode_envelope('{"class":"CaféJob","args":["ü"]}')
    assert env.raw == '{"class":"CaféJob","args":["ü"]}'.encode()
    assert type(env.raw) is bytes
    assert env.klass == "CaféJob"
    assert env.args == ["ü"]


def test_str_with_lone_surrogate_is_a_payload_error(core_impl: ModuleType) -> None:
    with pytest.raises(core_impl.PayloadError, match=r"^invalid JSON: 'utf-8' codec can't encode"):
        core_impl.decode_envelope('{"class":"\ud800","args":[]}')


@pytest.mark.parametrize("wrap", [bytearray, memoryview, lambda b: memoryview(b"xx" + b)[2:]])
def test_bytes_like_input_is_copied_to_bytes(core_impl: ModuleType, wrap) -> None:
    env = core_impl.decode_envelope(wrap(SIDEKIQ_641))
    assert type(env.raw) is bytes
    assert env.raw == SIDEKIQ_641
    assert env.jid == JID


def test_bytes_subclass_becomes_plain_bytes(core_impl: ModuleType) -> None:
    class Payload(bytes):
        pass

    env = core_impl.decode_envelope(Payload(SIDEKIQ_641))
    assert type(env.raw) is bytes
    assert env.raw == SIDEKIQ_641


@pytest.mark.parametrize("raw", [None, 5, 1.5, ["x"], {"class": "A", "args": []}])
def test_non_bytes_input_is_a_type_error(core_impl: ModuleType, raw: object) -> None:
    with pytest.raises(TypeError, match=r"^payload must be bytes, str, bytearray or memoryview, not "):
        core_impl.decode_envelope(raw)


ATTRIBUTES = (
    "raw", "job", "jid", "klass", "args", "wrapped", "worker_class", "display_class", "queue", "retry",
    "retry_count", "retry_queue", "backtrace", "dead", "retry_for", "created_at", "enqueued_at", "failed_at",
    "retried_at", "ms_timestamps",
)  # fmt: skip


@pytest.mark.parametrize("name", ATTRIBUTES)
def test_attributes_are_read_only(core_impl: ModuleType, name: str) -> None:
    env = core_impl.decode_envelope(SIDEKIQ_641)
    before = getattr(env, name)
    with pytest.raises(AttributeError):
        setattr(env, name, "changed")
    with pytest.raises(AttributeError):
        delattr(env, name)
    assert getattr(env, name) is before


def test_envelope_is_not_constructible(core_impl: ModuleType) -> None:
    with pytest.raises(TypeError, match=r"^Envelope objects are made by decode_envelope\(\)$"):
        core_impl.Envelope()
    assert type(core_impl.decode_envelope(SIDEKIQ_641)) is core_impl.Envelope


def test_repr(core_impl: ModuleType) -> None:
    assert repr(core_impl.decode_envelope(ACTIVEJOB)) == (
        "<Envelope jid='d1c3f0a9b8e7d6c5b4a39281' class='InvoiceMailerJob' queue='mailers' retry_count=None>"
    )
    assert repr(core_impl.decode_envelope(RETRIED)) == (
        "<Envelope jid='bbbbbbbbbbbbbbbbbbbbbbbb' class='FlakyJob' queue='critical' retry_count=1>"
    )


@pytest.mark.parametrize("clone", [copy.copy, copy.deepcopy, lambda e: pickle.loads(pickle.dumps(e))])
def test_copy_and_pickle_redecode_raw(core_impl: ModuleType, clone) -> None:
    env = core_impl.decode_envelope(RETRIED_8)
    other = clone(env)
    assert type(other) is core_impl.Envelope
    assert other is not env
    for name in ATTRIBUTES:
        assert getattr(other, name) == getattr(env, name), name


def test_payload_error_is_shared(core_impl: ModuleType) -> None:
    from fastworker import _core_py, core

    assert core_impl.PayloadError is _core_py.PayloadError
    assert core.PayloadError is _core_py.PayloadError
    assert issubclass(core_impl.PayloadError, ValueError)


def test_many_decodes_keep_independent_envelopes(core_impl: ModuleType) -> None:
    # Exercises the compiled twin's freelist: recycled objects must not leak old fields.
    envs = [core_impl.decode_envelope(p) for p in (SIDEKIQ_641, ACTIVEJOB, SCHEDULED, RETRIED, RETRIED_8) * 50]
    del envs[::2]
    fresh = core_impl.decode_envelope(b'{"class":"Z","args":[]}')
    assert (fresh.wrapped, fresh.queue, fresh.retry_count, fresh.created_at, fresh.jid) == (None, None, None, None, "")
    assert [e.klass for e in envs[:5]] == [
        "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "FlakyJob", "HardJob", "ReportJob", "FlakyJob",
    ]  # fmt: skip
