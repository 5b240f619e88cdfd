"""A job's JSON, read and written exactly as Ruby's JSON wrote it.

Duties:
1. ``load_job(raw)``: parse keeping every value's JSON type, integers of any size included;
   anything that is not strict JSON raises ValueError.
2. ``dump_job(job)``: compact JSON for what ``load_job`` parsed; ValueError if it cannot be
   written exactly.
3. ``needs_exact(raw)``: whether orjson alone would lose something (a long integer), so a caller
   holding orjson's parse must parse again with ``load_job`` before writing the job back.
Every module that rewrites a job (retry, scheduler, recoverer, hooks, the sidecar client) uses
these, so a Ruby Bignum in the args survives a retry, a move and a dead-set write.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

# A run of 19+ digits may be an integer beyond 64 bits, which orjson silently turns into a float
# (and cannot write back): such payloads take the exact, slower stdlib path.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")
_INF = float("inf")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (_INF, -_INF):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def needs_exact(raw: bytes) -> bool:
    return _LONG_DIGITS.search(raw) is not None


def load_job(raw: bytes) -> Any:
    """orjson for the common case; Python's json module for long integers and for what orjson
    refuses but Ruby accepts (lone surrogate escapes). NaN/Infinity, and a number too large for a
    float, raise ValueError."""
    if not needs_exact(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(raw, parse_constant=_no_constant, parse_float=_finite)


def dump_job(job: Any) -> bytes:
    try:
        return orjson.dumps(job)
    except TypeError:  # integers beyond 64 bits, lone surrogates
        pass
    text = json.dumps(job, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: keep them as \u escapes, as they came
        return json.dumps(job, separators=(",", ":"), allow_nan=False).encode("ascii")
