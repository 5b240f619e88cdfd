"""Pure-Python twin of ``fastworker._core``; its docstrings are the specification.

The core holds the hot, pure, I/O-free work of the worker:

* :func:`decode_envelope` parses a Sidekiq job payload once and extracts the fields the
  worker acts on, validating the ones it cannot do without;
* :func:`retry_delay` and :func:`retry_jitter` are Sidekiq's default retry backoff;
* :class:`TokenPool` is the integer accounting behind the concurrency limit.

It never imports asyncio, redis or aiohttp, never reads the clock and never draws random
numbers: callers pass those in. ``fastworker._core`` (Cython) exports the same names with the
same behaviour, error messages included; ``fastworker.core`` picks one of the two.
"""

from __future__ import annotations

import math
import operator
from operator import attrgetter
from typing import Any, SupportsIndex

from orjson import JSONDecodeError
from orjson import loads as _loads

from .errors import PayloadError

__all__ = (
    "IMPLEMENTATION",
    "Envelope",
    "PayloadError",
    "TokenPool",
    "decode_envelope",
    "ms_timestamps",
    "retry_delay",
    "retry_jitter",
    "to_epoch_seconds",
)

IMPLEMENTATION = "py"

# Largest capacity a TokenPool accepts: the compiled twin counts in a C long long.
_MAX_CAPACITY = 2**63 - 1

_JSON_KINDS = {
    type(None): "null",
    bool: "boolean",
    int: "integer",
    float: "float",
    str: "string",
    list: "array",
    dict: "object",
}


def _kind(value: object) -> str:
    """The JSON type of a parsed value, for error messages ("got array")."""
    if isinstance(value, str) and not value:
        return "empty string"
    return _JSON_KINDS.get(type(value), type(value).__name__)


def _field_error(job: dict, key: str, message: str) -> PayloadError:
    """A PayloadError for job[key]: ``"<message> (key absent)"`` or ``"<message> (got <kind>)"``.

    Only called on the error path; the compiled twin calls this same function, so the two
    cannot word their errors differently.
    """
    if key not in job:
        return PayloadError(f"{message} (key absent)")
    return PayloadError(f"{message} (got {_kind(job[key])})")


def _not_an_object(value: object) -> PayloadError:
    return PayloadError(f"payload is not a JSON object (got {_kind(value)})")


def _coerce_raw(raw: object) -> bytes:
    """Payload input other than exact bytes, as bytes: str is UTF-8 encoded, other bytes-like
    objects are copied. Anything else is a TypeError (a programming error, not a bad job)."""
    if isinstance(raw, str):
        try:
            return raw.encode()
        except UnicodeEncodeError as exc:  # lone surrogates: not representable as UTF-8
            raise PayloadError(f"invalid JSON: {exc}") from exc
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw)
    raise TypeError(f"payload must be bytes, str, bytearray or memoryview, not {type(raw).__name__}")


def to_epoch_seconds(value: object) -> float | None:
    """A Sidekiq timestamp as float epoch seconds, or None.

    Sidekiq's rule (``api.rb`` ``time_from_timestamp`` in 8.x): a float is epoch seconds
    (6.x/7.x writers), an integer is epoch milliseconds (8.x writers), so it is divided by
    1000.0 (as ``float(value) / 1000.0``). bool, None, str and anything else give None, as do
    non-finite floats and integers too large for a float: a reader must not fail on a bad
    timestamp.
    """
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value) / 1000.0
        except OverflowError:
            return None
    return None


def ms_timestamps(created: object, enqueued: object) -> bool:
    """Does this job write Sidekiq 8's integer-millisecond timestamps? Its ``created_at`` says (an
    integer: yes, a float: no); without a numeric one, its ``enqueued_at`` (an integer: yes)."""
    if type(created) is int or type(created) is float:
        return type(created) is int
    return type(enqueued) is int


def _prop(name: str, doc: str) -> property:
    return property(attrgetter("_" + name), doc=doc)


class Envelope:
    """The decoded view of one job payload; made only by :func:`decode_envelope`.

    Every attribute is read-only. ``raw`` keeps the payload bytes exactly as fetched, because
    Sidekiq removes list and zset members by value (LREM/ZREM): those bytes, not a re-encoding,
    are what the worker acks, requeues and POSTs to the sidecar.
    """

    __slots__ = (
        "_raw", "_job", "_jid", "_klass", "_args", "_wrapped", "_worker_class",
        "_display_class", "_queue", "_retry", "_retry_count", "_retry_queue", "_backtrace",
        "_dead", "_retry_for", "_created_at", "_enqueued_at", "_failed_at", "_retried_at",
        "_ms_timestamps",
    )  # fmt: skip
    # the slots' types, for the type checker (annotations alone make no class attributes)
    _raw: bytes
    _job: dict[str, Any]
    _jid: str
    _klass: str
    _args: list[Any]
    _wrapped: str | None
    _worker_class: str
    _display_class: str
    _queue: str | None
    _retry: Any
    _retry_count: int | None
    _retry_queue: str | None
    _backtrace: bool | int
    _dead: bool
    _retry_for: int | None
    _created_at: float | None
    _enqueued_at: float | None
    _failed_at: float | None
    _retried_at: float | None
    _ms_timestamps: bool

    raw = _prop("raw", "bytes: the payload exactly as given (the same object when given bytes).")
    job = _prop("job", "dict: the parsed payload.")
    jid = _prop("jid", "str: job['jid']; '' when absent or null.")
    klass = _prop("klass", "str: job['class'], never empty.")
    args = _prop("args", "list: job['args'].")
    wrapped = _prop("wrapped", "str | None: job['wrapped'] (ActiveJob's job class) if a non-empty string.")
    worker_class = _prop("worker_class", "str: wrapped or klass; the class metrics and logs name.")
    display_class = _prop("display_class", "str: job['display_class'] if a non-empty string, else worker_class.")
    queue = _prop("queue", "str | None: job['queue'] if a non-empty string.")
    retry = _prop("retry", "Any: job['retry'] as parsed (true, false, an integer, ...); None when absent.")
    retry_count = _prop("retry_count", "int | None: job['retry_count']; None when absent or null.")
    retry_queue = _prop("retry_queue", "str | None: job['retry_queue'] if a non-empty string.")
    backtrace = _prop("backtrace", "bool | int: False when absent/null/false, an integer as is, else True.")
    dead = _prop("dead", "bool: False only when job['dead'] is JSON false.")
    retry_for = _prop("retry_for", "int | None: job['retry_for'] (seconds) truncated to int when numeric.")
    created_at = _prop("created_at", "float | None: job['created_at'] in epoch seconds (see to_epoch_seconds).")
    enqueued_at = _prop("enqueued_at", "float | None: job['enqueued_at'] in epoch seconds.")
    failed_at = _prop("failed_at", "float | None: job['failed_at'] in epoch seconds.")
    retried_at = _prop("retried_at", "float | None: job['retried_at'] in epoch seconds.")
    ms_timestamps = _prop(
        "ms_timestamps",
        "bool: the payload uses Sidekiq 8 integer-millisecond timestamps (judged by created_at, else enqueued_at).",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("Envelope objects are made by decode_envelope()")

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (decode_envelope, (self._raw,))

    def __repr__(self) -> str:
        return (
            f"<Envelope jid={self._jid!r} class={self._worker_class!r} queue={self._queue!r}"
            f" retry_count={self._retry_count!r}>"
        )


_new_envelope = object.__new__


def decode_envelope(raw: bytes | bytearray | memoryview | str) -> Envelope:
    """Parse one Sidekiq job payload (``orjson.loads``) into an :class:`Envelope`.

    ``raw`` is bytes (kept as is); str is UTF-8 encoded, bytearray and memoryview are copied to
    bytes; any other type is a TypeError.

    Raises :class:`PayloadError`, checked in this order, when:

    * the bytes are not valid JSON or not valid UTF-8 (``"invalid JSON: ..."``);
    * the JSON is not an object (``"payload is not a JSON object (got array)"``);
    * ``class`` is not a non-empty string (``"missing or invalid 'class' ..."``);
    * ``args`` is not an array (``"'args' must be an array ..."``);
    * ``jid`` is present, not null and not a string (``"'jid' must be a string ..."``);
    * ``retry_count`` is present, not null and neither an integer nor an integral float
      (``"'retry_count' must be an integer ..."``).

    Every other field is read leniently, as documented on each :class:`Envelope` attribute.
    Where Ruby truthiness matters it is kept: ``backtrace: 0`` stays ``0`` (truthy in Ruby),
    and ``dead`` is False only for an explicit JSON ``false``.
    """
    if type(raw) is not bytes:
        raw = _coerce_raw(raw)
    try:
        job = _loads(raw)
    except JSONDecodeError as exc:
        raise PayloadError(f"invalid JSON: {exc}") from exc
    if type(job) is not dict:
        raise _not_an_object(job)
    get = job.get

    klass = get("class")
    if type(klass) is not str or not klass:
        raise _field_error(job, "class", "missing or invalid 'class'")
    args = get("args")
    if type(args) is not list:
        raise _field_error(job, "args", "'args' must be an array")
    jid = get("jid")
    if jid is None:
        jid = ""
    elif type(jid) is not str:
        raise _field_error(job, "jid", "'jid' must be a string")
    retry_count = get("retry_count")
    if retry_count is not None and type(retry_count) is not int:
        if type(retry_count) is float and retry_count.is_integer():
            retry_count = int(retry_count)
        else:
            raise _field_error(job, "retry_count", "'retry_count' must be an integer")

    # orjson yields exact types only, so `type(x) is int` also rules out bool here.
    wrapped = get("wrapped")
    if type(wrapped) is not str or not wrapped:
        wrapped = None
    worker_class = wrapped or klass
    display_class = get("display_class")
    if type(display_class) is not str or not display_class:
        display_class = worker_class
    queue = get("queue")
    if type(queue) is not str or not queue:
        queue = None
    retry_queue = get("retry_queue")
    if type(retry_queue) is not str or not retry_queue:
        retry_queue = None
    backtrace = get("backtrace")
    if backtrace is None or backtrace is False:
        backtrace = False
    elif type(backtrace) is not int:
        backtrace = True
    retry_for = get("retry_for")
    if type(retry_for) is float:
        retry_for = int(retry_for)
    elif type(retry_for) is not int:
        retry_for = None

    created = get("created_at")
    enqueued = get("enqueued_at")

    env = _new_envelope(Envelope)
    env._raw = raw
    env._job = job
    env._jid = jid
    env._klass = klass
    env._args = args
    env._wrapped = wrapped
    env._worker_class = worker_class
    env._display_class = display_class
    env._queue = queue
    env._retry = get("retry")
    env._retry_count = retry_count
    env._retry_queue = retry_queue
    env._backtrace = backtrace
    env._dead = get("dead") is not False
    env._retry_for = retry_for
    env._created_at = to_epoch_seconds(created)
    env._enqueued_at = to_epoch_seconds(enqueued)
    env._failed_at = to_epoch_seconds(get("failed_at"))
    env._retried_at = to_epoch_seconds(get("retried_at"))
    env._ms_timestamps = ms_timestamps(created, enqueued)
    return env


def retry_delay(count: int, jitter: int) -> int:
    """Sidekiq's default retry delay in seconds: ``count**4 + 15 + jitter``.

    ``count`` is the job's retry_count (0 for the first retry), ``jitter`` comes from
    :func:`retry_jitter`. Both are integers (anything with ``__index__``; else TypeError) and
    must be >= 0 (else ValueError). The result is an exact int of any size.
    """
    count = operator.index(count)
    jitter = operator.index(jitter)
    if count < 0:
        raise ValueError("count must be >= 0")
    if jitter < 0:
        raise ValueError("jitter must be >= 0")
    return count**4 + 15 + jitter


def retry_jitter(count: int, r: float, sidekiq8: bool) -> int:
    """Sidekiq's retry jitter for retry number ``count``, from a uniform draw ``r`` in [0, 1).

    The caller draws ``r`` (e.g. ``random.random()``); the core never reads randomness.

    * Sidekiq <= 7, ``rand(10) * (count + 1)``: ``min(int(r * 10), 9) * (count + 1)``, so a
      multiple of ``count + 1`` in ``[0, 9 * (count + 1)]``;
    * Sidekiq 8 (``sidekiq8`` true), ``rand(10 * (count + 1))``: with ``n = 10 * (count + 1)``,
      ``min(int(r * n), n - 1)``, so an int in ``[0, n - 1]``.

    The ``min`` guards float rounding for r just below 1. ``count`` is an integer >= 0 and ``r``
    an int or float with ``0 <= r < 1`` (else TypeError/ValueError). In Sidekiq 8 mode
    ``r * n`` is float arithmetic, so a count beyond ~1.8e307 raises OverflowError.
    """
    count = operator.index(count)
    if not isinstance(r, (int, float)):
        raise TypeError(f"r must be a real number, not {type(r).__name__}")
    if count < 0:
        raise ValueError("count must be >= 0")
    r = float(r)
    if not 0.0 <= r < 1.0:
        raise ValueError(f"r must be in [0, 1), got {r!r}")
    if sidekiq8:
        n = 10 * (count + 1)
        j = int(r * n)
        return j if j < n else n - 1
    digit = int(r * 10)
    return (digit if digit < 10 else 9) * (count + 1)


def _nonneg(value: SupportsIndex, name: str) -> int:
    n = operator.index(value)
    if n < 0:
        raise ValueError(f"{name} must be >= 0")
    return n


def _capacity(value: SupportsIndex) -> int:
    n = operator.index(value)
    if n < 1:
        raise ValueError("capacity must be >= 1")
    if n > _MAX_CAPACITY:
        raise ValueError(f"capacity must be <= {_MAX_CAPACITY}")
    return n


class TokenPool:
    """Integer accounting for concurrency tokens; no waiting, no asyncio.

    ``capacity`` tokens exist; ``in_use`` are taken; ``free = max(0, capacity - in_use)``.
    ``peak`` is the highest ``in_use`` ever seen.
    Counts are ints (``__index__``); capacity must be in ``[1, 2**63 - 1]``.
    """

    __slots__ = ("_capacity", "_in_use", "_peak")

    def __init__(self, capacity: int) -> None:
        self._capacity = _capacity(capacity)
        self._in_use = 0
        self._peak = 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_use(self) -> int:
        return self._in_use

    @property
    def free(self) -> int:
        free = self._capacity - self._in_use
        return free if free > 0 else 0

    @property
    def peak(self) -> int:
        return self._peak

    def try_acquire(self) -> bool:
        """Take one token if one is free; return whether it was taken."""
        if self._in_use < self._capacity:
            self._in_use += 1
            if self._in_use > self._peak:
                self._peak = self._in_use
            return True
        return False

    def release(self, n: int = 1) -> None:
        """Give back ``n`` (>= 0) tokens; RuntimeError if fewer than ``n`` are in use."""
        n = _nonneg(n, "n")
        if n > self._in_use:
            raise RuntimeError(f"cannot release more tokens than are in use ({self._in_use})")
        self._in_use -= n

    def __repr__(self) -> str:
        return f"<TokenPool in_use={self._in_use} capacity={self._capacity} peak={self._peak}>"
