"""Issue 12, item 6: bad input at every door, fuzzed with hypothesis on a bounded budget.

- The worker's payload decoder (the compiled core, or its twin): any bytes give an Envelope or a
  PayloadError with a reason, never another exception, and quickly.
- The real Rails sidecar over HTTP: malformed JSON, deep nesting, huge numbers, invalid UTF-8,
  wrong types, random class names, hostile signature headers and huge headers. Every answer is a
  known status with a JSON ``error`` for each refusal, never a 500, never a hang, and the
  process is still healthy afterwards.

Budget: FASTWORKER_FUZZ_EXAMPLES examples per property (default 150), no deadline per example but
an HTTP timeout per request, so CI time stays bounded (about half a minute).
"""

from __future__ import annotations

import http.client
import json
import os
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastworker import core, signing
from tests.helpers import rails
from tests.helpers.procs import TEST_SECRET
from tests.test_rails_e2e import URL

EXAMPLES = int(os.environ.get("FASTWORKER_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20) | st.integers(min_value=2**63, max_value=2**80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)

# the fields the decoder and the sidecar look at, with any type
job_like = st.fixed_dictionaries({}, optional={
    "class": json_values | st.sampled_from(["PlainWorker", "NoSuchJob", "Kernel", "File", "PlainPerformer",
                                            "ActiveJob::QueueAdapters::SidekiqAdapter::JobWrapper", "::", ""]),
    "args": json_values | st.lists(json_values, max_size=3),
    "jid": json_values, "queue": json_values, "retry": json_values, "retry_count": json_values,
    "wrapped": json_values, "created_at": json_values, "enqueued_at": json_values, "backtrace": json_values,
})


def mangle(doc: bytes, how: int) -> bytes:
    """Ways to break a JSON document: cut it, inject invalid UTF-8, nest it deeply, huge numbers."""
    if how == 0:
        return doc[: max(1, len(doc) // 2)]
    if how == 1:
        return doc[:1] + b"\xff\xc3\x28" + doc[1:]
    if how == 2:
        return b'{"class":"PlainWorker","args":' + b"[" * 3000 + b"]" * 3000 + b"}"
    if how == 3:
        return b'{"class":"PlainWorker","args":[' + b"9" * 5000 + b"]}"
    if how == 4:
        return b'{"class":"PlainWorker","args":[1e99999]}'
    return doc


bodies = st.one_of(
    st.binary(max_size=300),
    job_like.map(lambda d: json.dumps(d).encode()),
    st.tuples(job_like.map(lambda d: json.dumps(d).encode()), st.integers(0, 5)).map(lambda t: mangle(*t)),
)


# -- the worker's decoder ----------------------------------------------------------------------------

@FUZZ
@given(bodies)
def test_the_payload_decoder_never_crashes(raw: bytes) -> None:
    t0 = time.perf_counter()
    try:
        env = core.decode_envelope(raw)
    except core.PayloadError as exc:
        assert str(exc), "every refusal says why"
    else:
        assert isinstance(env.klass, str) and env.klass
    assert time.perf_counter() - t0 < 1.0


# -- the sidecar's endpoints -----------------------------------------------------------------------

RUBY = rails.ruby_available()


@pytest.fixture(scope="module")
def fuzz_sidecar():
    if not RUBY:
        pytest.skip("needs Debian's ruby with rails, sidekiq and puma")
    yield from rails.serve(URL, threads=2)


SIGNER = signing.Signer(TEST_SECRET.encode())
KNOWN = {200, 400, 401, 404, 405, 413, 422, 431, 503}


def request(sidecar, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", sidecar.port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def assert_clear(status: int, payload: bytes) -> None:
    assert status in KNOWN, (status, payload[:300])
    if status in (400, 401, 413):
        assert json.loads(payload)["error"], payload[:300]


@FUZZ
@given(path=st.sampled_from(["/perform", "/perform_batch", "/exhausted"]), body=bodies,
       key=st.text(max_size=40).filter(lambda s: s.isprintable() and s.isascii()))
@example(path="/perform", body=b"", key=" ")  # found by CI: HTTP drops a header value's surrounding spaces
@example(path="/perform_batch", body=b"{}", key=" a, b ")
def test_signed_garbage_gets_a_clear_answer(fuzz_sidecar, path: str, body: bytes, key: str) -> None:
    if path == "/exhausted":
        body = b'{"job":' + body + b',"error":{"class":"E","message":"m"}}'
    header = "Idempotency-Keys" if path == "/perform_batch" else "Idempotency-Key"
    headers = {"Content-Type": "application/json", header: key}
    headers.update(SIGNER.headers("POST", path, body, key))
    status, payload = request(fuzz_sidecar, "POST", path, body, headers)
    assert_clear(status, payload)
    assert status != 401, payload  # a correct signature is never refused, whatever the body


hostile = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=80)


@FUZZ
@given(ts=hostile | st.integers(-2**70, 2**70).map(str), nonce=hostile, sig=hostile, body=bodies)
def test_forged_signature_headers_are_401(fuzz_sidecar, ts: str, nonce: str, sig: str, body: bytes) -> None:
    headers = {signing.TIMESTAMP: ts, signing.NONCE: nonce, signing.SIGNATURE: sig}
    status, payload = request(fuzz_sidecar, "POST", "/perform", body, headers)
    assert status in (401, 413), (status, payload[:200])
    assert json.loads(payload)["error"]


@pytest.mark.parametrize("size", [8_000, 60_000, 200_000])
def test_huge_headers_are_refused_or_ignored(fuzz_sidecar, size: int) -> None:
    body = b'{"class":"PlainWorker","args":["h",1]}'
    for name in ("Idempotency-Key", signing.SIGNATURE, "X-Junk"):
        try:
            status, payload = request(fuzz_sidecar, "POST", "/perform", body, {name: "k" * size})
        except (ConnectionError, http.client.HTTPException):
            status, payload = 431, b""  # Puma closed a connection whose headers exceed its limit
        assert status in (401, 413, 431, 400), (name, size, status)
    assert fuzz_sidecar.health()[0] == 200


def test_the_sidecar_is_healthy_after_the_fuzzing(fuzz_sidecar) -> None:
    assert fuzz_sidecar.health()[0] == 200
    log = fuzz_sidecar.log()
    assert "internal error" not in log, log[-2000:]
