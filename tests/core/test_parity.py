"""Hypothesis: the compiled twin and the pure twin agree on every input, and both follow the spec.

Outcomes are compared as (type, repr) per attribute, so 1 / 1.0 / True and 0.0 / -0.0 count as
different, and exceptions by type and message.
"""

from __future__ import annotations

import json
import math
from types import ModuleType

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

ATTRIBUTES = (
    "raw", "job", "jid", "klass", "args", "wrapped", "worker_class", "display_class", "queue", "retry",
    "retry_count", "retry_queue", "backtrace", "dead", "retry_for", "created_at", "enqueued_at", "failed_at",
    "retried_at", "ms_timestamps",
)  # fmt: skip
TIMESTAMPS = ("created_at", "enqueued_at", "failed_at", "retried_at")

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies --------------------------------------------------------------------------------

# Integers past 2**64 make orjson fall back to floats; past 2**63 the C twin leaves its fast path.
integers = st.one_of(
    st.integers(-20, 20),
    st.integers(-(2**70), 2**70),
    st.sampled_from([2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**30]),
)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 2.0, 2.5, 1e300, -1e300, 1700000000.123456]),
)
timestamps = st.one_of(st.integers(1_600_000_000_000, 1_800_000_000_000), st.floats(1.6e9, 1.8e9))
scalars = st.one_of(st.none(), st.booleans(), integers, floats, st.text(max_size=6))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
# The type boundaries every field rule turns on (bool vs int, 0, empty string, ...).
edges = st.sampled_from([None, True, False, 0, 1, -1, 0.0, 1.0, 2.5, "", "x", [], {}])
names = st.sampled_from(["", "HardJob", "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "Caf\u00e9"])

FIELDS = {
    "class": st.one_of(names, edges, json_values),
    "args": st.one_of(st.lists(json_values, max_size=3), edges, json_values),
    "jid": st.one_of(st.just("5b0e4c2f7a9d1e3f4a5b6c7d"), edges, json_values),
    "wrapped": st.one_of(names, edges, json_values),
    "display_class": st.one_of(names, edges, json_values),
    "queue": st.one_of(st.sampled_from(["", "default", "critical"]), edges, json_values),
    "retry": st.one_of(edges, json_values),
    "retry_count": st.one_of(st.integers(0, 30), st.sampled_from([2.0, 3.5, 1e300]), edges, json_values),
    "retry_queue": st.one_of(st.sampled_from(["", "retries"]), edges, json_values),
    "backtrace": st.one_of(edges, json_values),
    "dead": st.one_of(edges, json_values),
    "retry_for": st.one_of(st.integers(0, 10**6), edges, json_values),
    "created_at": st.one_of(timestamps, edges, json_values),
    "enqueued_at": st.one_of(timestamps, edges, json_values),
    "failed_at": st.one_of(timestamps, edges, json_values),
    "retried_at": st.one_of(timestamps, edges, json_values),
}
# Mostly runnable jobs, so the field rules are exercised beyond the first validation error.
runnable = st.fixed_dictionaries(
    {"class": names.filter(bool), "args": st.lists(json_values, max_size=3)},
    optional={k: v for k, v in FIELDS.items() if k not in ("class", "args", "jid", "retry_count")}
    | {"jid": st.one_of(st.text(max_size=6), st.none()), "retry_count": st.one_of(st.none(), integers)},
)
anything = st.fixed_dictionaries({}, optional=FIELDS | {"error_message": st.text(max_size=5)})
# Keys one character away from the ones read (the compiled twin matches key bytes itself).
decoys = st.dictionaries(
    st.sampled_from(["deaf", "Dead", "jib", "jid\x00", "clasS", "queuE", "retry_foR", "created_aT", "\u696a\u0164\u0100"]),
    st.one_of(edges, json_values),
    max_size=3,
)
anything = st.tuples(decoys, anything).map(lambda pair: pair[0] | pair[1])


def dumps(value: object) -> bytes:
    # The stdlib writes integers of any size (orjson.dumps stops at 64 bits) and lone surrogates
    # as \ud800 escapes, which orjson then rejects: both are inputs worth having.
    return json.dumps(value).encode()


payloads = st.one_of(
    runnable.map(dumps),
    anything.map(dumps),
    json_values.map(dumps),  # top level not an object
    st.binary(max_size=40),  # garbage, invalid UTF-8
    anything.map(dumps).flatmap(lambda raw: st.integers(0, len(raw)).map(lambda i: raw[:i])),  # truncated
)

# -- helpers -----------------------------------------------------------------------------------


def outcome(mod: ModuleType, raw: object) -> tuple:
    try:
        env = mod.decode_envelope(raw)
    except Exception as exc:  # noqa: BLE001 - comparing failures is the point
        return ("error", type(exc), str(exc))
    values = tuple((name, type(getattr(env, name)), repr(getattr(env, name))) for name in ATTRIBUTES)
    return ("ok", values, env.raw is raw, repr(env))


def spec(job: dict) -> dict:
    """The attribute rules of the brief, restated independently of both twins."""

    def text(key: str) -> str | None:
        v = job.get(key)
        return v if isinstance(v, str) and v else None

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def seconds(v: object) -> float | None:
        if isinstance(v, float):
            return v
        return float(v) / 1000.0 if is_int(v) else None

    rc = job.get("retry_count")
    bt = job.get("backtrace")
    rf = job.get("retry_for")
    created, enqueued = job.get("created_at"), job.get("enqueued_at")
    if is_int(created) or isinstance(created, float):
        ms = is_int(created)
    else:
        ms = is_int(enqueued)
    worker_class = text("wrapped") or job["class"]
    return {
        "job": job,
        "jid": job.get("jid") or "",
        "klass": job["class"],
        "args": job["args"],
        "wrapped": text("wrapped"),
        "worker_class": worker_class,
        "display_class": text("display_class") or worker_class,
        "queue": text("queue"),
        "retry": job.get("retry"),
        "retry_count": None if rc is None else int(rc),
        "retry_queue": text("retry_queue"),
        "backtrace": False if bt is None or bt is False else (bt if is_int(bt) else True),
        "dead": job.get("dead") is not False,
        "retry_for": int(rf) if is_int(rf) or isinstance(rf, float) else None,
        **{key: seconds(job.get(key)) for key in TIMESTAMPS},
        "ms_timestamps": ms,
    }


# -- decode_envelope ---------------------------------------------------------------------------


@SETTINGS
@given(raw=payloads)
@example(raw=b'{"class":"A","args":[],"created_at":18446744073709551616}')
@example(raw=b'{"class":"A","args":[],"retry_count":123456789012345678901234567890}')
@example(raw=b'{"class":"A","args":[],"jid":"\\ud800"}')
@example(raw=b'{"class":"A","args":[],"backtrace":0,"dead":null,"retry_for":1.9}')
def test_decode_parity(twins: tuple[ModuleType, ModuleType], raw: bytes) -> None:
    c, py = twins
    assert outcome(c, raw) == outcome(py, raw)


@SETTINGS
@given(raw=payloads)
def test_decode_parity_for_other_input_types(twins: tuple[ModuleType, ModuleType], raw: bytes) -> None:
    c, py = twins
    assert outcome(c, bytearray(raw)) == outcome(py, bytearray(raw))
    assert outcome(c, memoryview(raw)) == outcome(py, memoryview(raw))
    text = raw.decode("utf-8", "surrogateescape")  # may hold lone surrogates: not encodable
    assert outcome(c, text) == outcome(py, text)


@SETTINGS
@given(job=runnable)
def test_decode_follows_the_spec(core_impl: ModuleType, job: dict) -> None:
    raw = dumps(job)
    parsed = orjson.loads(raw)
    rc = parsed.get("retry_count")
    if isinstance(rc, float) and not rc.is_integer():
        try:
            core_impl.decode_envelope(raw)
        except core_impl.PayloadError as exc:
            assert str(exc) == "'retry_count' must be an integer (got float)"
        else:
            raise AssertionError("a fractional retry_count must be rejected")
        return
    env = core_impl.decode_envelope(raw)
    assert env.raw is raw
    for name, expected in spec(parsed).items():
        value = getattr(env, name)
        assert (type(value), repr(value)) == (type(expected), repr(expected)), name


@SETTINGS
@given(value=st.one_of(json_values, st.integers(), st.floats(), st.sampled_from([10**400, -(10**400)])))
def test_to_epoch_seconds_parity(twins: tuple[ModuleType, ModuleType], value: object) -> None:
    c, py = twins
    a, b = c.to_epoch_seconds(value), py.to_epoch_seconds(value)
    assert (type(a), repr(a)) == (type(b), repr(b))
    if isinstance(value, float) and math.isfinite(value):
        assert a == value


# -- retry math --------------------------------------------------------------------------------

counts = st.one_of(
    st.integers(-3, 100),
    st.integers(0, 60000),
    st.integers(-(2**80), 2**80),
    st.sampled_from([50000, 50001, 55108, 55109, 2**49 - 1, 2**49, 2**53, 2**61, 2**61 + 1, 2**63 - 1, 2**63]),
)


def call(fn, *args) -> tuple:
    try:
        result = fn(*args)
    except Exception as exc:  # noqa: BLE001
        return ("error", type(exc), str(exc))
    return ("ok", type(result), result)


@SETTINGS
@given(count=counts, jitter=counts)
def test_retry_delay_parity(twins: tuple[ModuleType, ModuleType], count: int, jitter: int) -> None:
    c, py = twins
    got = call(c.retry_delay, count, jitter)
    assert got == call(py.retry_delay, count, jitter)
    if count >= 0 and jitter >= 0:
        assert got == ("ok", int, count**4 + 15 + jitter)


draws = st.one_of(
    st.floats(0.0, 1.0, exclude_max=True),
    st.integers(0, 2**53 - 1).map(lambda k: k / 2**53),  # what random.random() returns
    st.sampled_from([0.0, -0.0, math.nextafter(1.0, 0.0), 1.0, -1e-300, 1.5, math.inf, math.nan, 0, 1, True]),
    st.text(max_size=2),
)


@SETTINGS
@given(count=counts, r=draws, sidekiq8=st.one_of(st.booleans(), st.none(), st.integers(0, 1)))
def test_retry_jitter_parity(twins: tuple[ModuleType, ModuleType], count: int, r: float, sidekiq8: bool) -> None:
    c, py = twins
    got = call(c.retry_jitter, count, r, sidekiq8)
    assert got == call(py.retry_jitter, count, r, sidekiq8)
    if got[0] == "ok":
        n = 10 * (count + 1)
        if sidekiq8:
            assert 0 <= got[2] < n
        else:
            assert 0 <= got[2] <= 9 * (count + 1) and got[2] % (count + 1) == 0


# -- TokenPool ---------------------------------------------------------------------------------

amounts = st.one_of(st.integers(-2, 12), st.sampled_from([2**63 - 1, 2**63, 2**100, -(2**64)]))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("try_acquire")),
        st.tuples(st.just("release"), amounts),
        st.tuples(st.just("release")),
    ),
    max_size=40,
)


def pool_state(pool) -> tuple:
    return pool.capacity, pool.in_use, pool.free, pool.peak, repr(pool)


@SETTINGS
@given(capacity=amounts, ops=operations)
def test_token_pool_parity(twins: tuple[ModuleType, ModuleType], capacity: int, ops: list[tuple]) -> None:
    c, py = twins
    made = call(c.TokenPool, capacity), call(py.TokenPool, capacity)
    if made[0][0] == "error":
        assert made[0] == made[1]
        return
    pools = made[0][2], made[1][2]
    for op, *args in ops:
        results = [call(getattr(pool, op), *args) for pool in pools]
        assert results[0] == results[1], (op, args)  # same bool/int/None, or same error
        states = [pool_state(pool) for pool in pools]
        assert states[0] == states[1], (op, args)
        cap, in_use, free, peak, _ = states[0]
        assert free == max(0, cap - in_use)
        assert 0 <= in_use <= peak


# -- the Sidekiq 8 timestamp rule ------------------------------------------------------------------

stamps = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=3))


@SETTINGS
@given(created=stamps, enqueued=stamps)
def test_ms_timestamps_parity(twins: tuple[ModuleType, ModuleType], created: object, enqueued: object) -> None:
    """One rule for both the decoder and the scheduler (scheduler.prepare asks the core)."""
    c, py = twins
    assert c.ms_timestamps(created, enqueued) is py.ms_timestamps(created, enqueued)
