"""Compiled twin of fastworker._core_py: the same names, behaviour and error messages.

The specification is the docstrings of ``fastworker/_core_py.py``; comments here are about
the C side. Hot paths (decoding a valid payload, the retry formulas for realistic counts,
token accounting) run on C types. Error paths and rare inputs (huge integers, non-bytes
payloads) use the same Python code as the twin, some of it imported from it, so the two
cannot drift where speed does not matter.
"""

cimport cython
from cpython.bool cimport PyBool_Check
from cpython.bytes cimport PyBytes_CheckExact
from cpython.dict cimport PyDict_CheckExact, PyDict_Next
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_Check, PyFloat_CheckExact
from cpython.list cimport PyList_CheckExact
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_Check, PyLong_CheckExact
from cpython.number cimport PyNumber_Index
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_1BYTE_KIND, PyUnicode_CheckExact, PyUnicode_GET_LENGTH
from libc.limits cimport LLONG_MAX
from libc.math cimport floor, isfinite
from libc.string cimport memcmp

# The same CPython macros as cpython.unicode's, on borrowed pointers (no reference counting).
cdef extern from "Python.h":
    bint _str_check_exact "PyUnicode_CheckExact" (PyObject *o) noexcept
    unsigned int _str_kind "PyUnicode_KIND" (PyObject *o) noexcept
    Py_ssize_t _str_length "PyUnicode_GET_LENGTH" (PyObject *o) noexcept
    const void *_str_data "PyUnicode_DATA" (PyObject *o) noexcept

from orjson import JSONDecodeError as _JSONDecodeError
from orjson import loads as _orjson_loads

# One exception class for both twins, so `except core.PayloadError` always works.
from .errors import PayloadError


cdef object _twin():
    """The twin, for its error-message builders and the paths off C integers: imported on first
    use only, since importing it costs the worker about 1 MB of memory (issue 9's PSS goal)."""
    from . import _core_py
    return _core_py

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

IMPLEMENTATION = "c"

# A C-level reference: calling it skips the module-dict lookup of a global.
cdef object _loads = _orjson_loads

# retry_delay fast path: for count <= 50000, count**4 <= 6.25e18, and with jitter <= 2**61
# (2.3e18) the sum stays below LLONG_MAX (9.22e18). Larger values take the Python-int path.
cdef long long _DELAY_FAST_COUNT = 50000
cdef long long _DELAY_FAST_JITTER = 1LL << 61

# retry_jitter fast path: below 2**49, n = 10 * (count + 1) < 2**53 converts to double
# exactly, so `x * <double>n` is the very operation the twin's `r * n` performs.
cdef long long _JITTER_FAST_COUNT = 1LL << 49


cdef inline bint _is_text(object value) noexcept:
    """value is a non-empty str (orjson only yields exact str)."""
    return PyUnicode_CheckExact(value) and PyUnicode_GET_LENGTH(value) > 0


cdef object _big_ms_to_seconds(object value):
    # An int outside the C long long range: float() rounds it (or overflows) as in the twin.
    try:
        return float(value) / 1000.0
    except OverflowError:
        return None


cpdef object to_epoch_seconds(object value):
    """Float epoch seconds from a Sidekiq timestamp (float = seconds, int = milliseconds)."""
    cdef double seconds
    cdef long long ms
    cdef int overflow = 0
    if PyFloat_Check(value):
        seconds = PyFloat_AS_DOUBLE(value)
        if not isfinite(seconds):
            return None
        return value if PyFloat_CheckExact(value) else seconds
    if PyLong_Check(value) and not PyBool_Check(value):
        ms = PyLong_AsLongLongAndOverflow(value, &overflow)
        if overflow == 0:
            # C's long long -> double conversion rounds to nearest like float(); it is exact
            # for |ms| < 2**53, which covers every real millisecond timestamp.
            return <double>ms / 1000.0
        return _big_ms_to_seconds(value)
    return None


@cython.final
@cython.freelist(64)
cdef class Envelope:
    """The decoded view of one job payload; made only by decode_envelope().

    Attributes (all read-only) are documented on fastworker._core_py.Envelope.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("Envelope objects are made by decode_envelope()")

    def __reduce__(self):
        return (decode_envelope, (self.raw,))

    def __repr__(self):
        return (
            f"<Envelope jid={self.jid!r} class={self.worker_class!r} queue={self.queue!r}"
            f" retry_count={self.retry_count!r}>"
        )


# The payload keys the core reads ("slots"), as indexes into a table of borrowed value pointers.
cdef enum:
    S_CLASS
    S_ARGS
    S_JID
    S_RETRY_COUNT
    S_WRAPPED
    S_DISPLAY_CLASS
    S_QUEUE
    S_RETRY_QUEUE
    S_RETRY
    S_BACKTRACE
    S_DEAD
    S_RETRY_FOR
    S_CREATED_AT
    S_ENQUEUED_AT
    S_FAILED_AT
    S_RETRIED_AT
    S_COUNT


cdef inline int _slot_of(PyObject *key) noexcept:
    """The slot that payload key fills, or -1 for a key the core does not read."""
    cdef Py_ssize_t n
    cdef const char *s
    if not _str_check_exact(key) or _str_kind(key) != PyUnicode_1BYTE_KIND:
        return -1  # every key we read is ASCII, so it is stored one byte per character
    n = _str_length(key)
    s = <const char *>_str_data(key)
    if n == 3:
        if memcmp(s, b"jid", 3) == 0: return S_JID
    elif n == 4:
        if memcmp(s, b"args", 4) == 0: return S_ARGS
        if memcmp(s, b"dead", 4) == 0: return S_DEAD
    elif n == 5:
        if memcmp(s, b"class", 5) == 0: return S_CLASS
        if memcmp(s, b"queue", 5) == 0: return S_QUEUE
        if memcmp(s, b"retry", 5) == 0: return S_RETRY
    elif n == 7:
        if memcmp(s, b"wrapped", 7) == 0: return S_WRAPPED
    elif n == 9:
        if memcmp(s, b"retry_for", 9) == 0: return S_RETRY_FOR
        if memcmp(s, b"backtrace", 9) == 0: return S_BACKTRACE
        if memcmp(s, b"failed_at", 9) == 0: return S_FAILED_AT
    elif n == 10:
        if memcmp(s, b"created_at", 10) == 0: return S_CREATED_AT
        if memcmp(s, b"retried_at", 10) == 0: return S_RETRIED_AT
    elif n == 11:
        if memcmp(s, b"retry_count", 11) == 0: return S_RETRY_COUNT
        if memcmp(s, b"retry_queue", 11) == 0: return S_RETRY_QUEUE
        if memcmp(s, b"enqueued_at", 11) == 0: return S_ENQUEUED_AT
    elif n == 13:
        if memcmp(s, b"display_class", 13) == 0: return S_DISPLAY_CLASS
    return -1


cpdef Envelope decode_envelope(object raw):
    """Parse one Sidekiq job payload into an Envelope; PayloadError if it cannot be run."""
    cdef object parsed, klass, args, jid, retry_count, value, created, enqueued
    cdef dict job
    cdef str worker_class
    cdef Envelope env
    # Borrowed pointers into `job`, which outlives them; an absent key reads as None.
    cdef PyObject *slots[S_COUNT]
    cdef PyObject *key = NULL
    cdef PyObject *item = NULL
    cdef Py_ssize_t pos = 0
    cdef int i

    if not PyBytes_CheckExact(raw):
        raw = _twin()._coerce_raw(raw)
    try:
        parsed = _loads(raw)
    except _JSONDecodeError as exc:
        raise PayloadError(f"invalid JSON: {exc}") from exc
    if not PyDict_CheckExact(parsed):
        raise _twin()._not_an_object(parsed)
    job = <dict>parsed

    # One pass over the payload's keys instead of one hash lookup per field: a typical job
    # has ~7 keys against 16 fields, and a string compare on the key's length and bytes is
    # cheaper than a lookup (measured: ~40 ns against ~170 ns for the 16 lookups).
    for i in range(S_COUNT):
        slots[i] = <PyObject *>None
    while PyDict_Next(job, &pos, &key, &item):
        i = _slot_of(key)
        if i >= 0:
            slots[i] = item

    # Validation, in the twin's order. Exact-type checks (orjson yields exact types) also
    # rule out bool where an int is wanted.
    klass = <object>slots[S_CLASS]
    if not _is_text(klass):
        raise _twin()._field_error(job, "class", "missing or invalid 'class'")
    args = <object>slots[S_ARGS]
    if not PyList_CheckExact(args):
        raise _twin()._field_error(job, "args", "'args' must be an array")
    jid = <object>slots[S_JID]
    if jid is None:
        jid = ""
    elif not PyUnicode_CheckExact(jid):
        raise _twin()._field_error(job, "jid", "'jid' must be a string")
    retry_count = <object>slots[S_RETRY_COUNT]
    if retry_count is not None and not PyLong_CheckExact(retry_count):
        # orjson never yields inf or nan; isfinite keeps this equal to float.is_integer().
        if PyFloat_CheckExact(retry_count) and isfinite(PyFloat_AS_DOUBLE(retry_count)) \
                and floor(PyFloat_AS_DOUBLE(retry_count)) == PyFloat_AS_DOUBLE(retry_count):
            retry_count = int(retry_count)
        else:
            raise _twin()._field_error(job, "retry_count", "'retry_count' must be an integer")

    env = Envelope.__new__(Envelope)
    env.raw = <bytes>raw
    env.job = job
    env.jid = <str>jid
    env.klass = <str>klass
    env.args = <list>args
    env.retry_count = retry_count

    value = <object>slots[S_WRAPPED]
    env.wrapped = <str>value if _is_text(value) else None
    worker_class = env.wrapped if env.wrapped is not None else <str>klass
    env.worker_class = worker_class
    value = <object>slots[S_DISPLAY_CLASS]
    env.display_class = <str>value if _is_text(value) else worker_class
    value = <object>slots[S_QUEUE]
    env.queue = <str>value if _is_text(value) else None
    value = <object>slots[S_RETRY_QUEUE]
    env.retry_queue = <str>value if _is_text(value) else None
    env.retry = <object>slots[S_RETRY]

    value = <object>slots[S_BACKTRACE]
    if value is None or value is False:
        env.backtrace = False
    elif PyLong_CheckExact(value):
        env.backtrace = value  # Ruby truthiness: 0 is a (truthy) line count, kept as is
    else:
        env.backtrace = True
    env.dead = <object>slots[S_DEAD] is not False

    value = <object>slots[S_RETRY_FOR]
    if PyLong_CheckExact(value):
        env.retry_for = value
    elif PyFloat_CheckExact(value):
        env.retry_for = int(value)
    else:
        env.retry_for = None

    created = <object>slots[S_CREATED_AT]
    enqueued = <object>slots[S_ENQUEUED_AT]
    env.created_at = to_epoch_seconds(created)
    env.enqueued_at = to_epoch_seconds(enqueued)
    env.failed_at = to_epoch_seconds(<object>slots[S_FAILED_AT])
    env.retried_at = to_epoch_seconds(<object>slots[S_RETRIED_AT])
    env.ms_timestamps = ms_timestamps(created, enqueued)
    return env


cpdef bint ms_timestamps(object created, object enqueued):
    """See fastworker._core_py.ms_timestamps."""
    if PyLong_CheckExact(created) or PyFloat_CheckExact(created):
        return PyLong_CheckExact(created)
    return PyLong_CheckExact(enqueued)


def retry_delay(count, jitter):
    """Sidekiq's default retry delay in seconds: count**4 + 15 + jitter (exact ints)."""
    cdef long long c, j
    cdef int overflow = 0
    if PyLong_CheckExact(count) and PyLong_CheckExact(jitter):
        c = PyLong_AsLongLongAndOverflow(count, &overflow)
        if overflow == 0 and 0 <= c <= _DELAY_FAST_COUNT:
            j = PyLong_AsLongLongAndOverflow(jitter, &overflow)
            if overflow == 0 and 0 <= j <= _DELAY_FAST_JITTER:
                return c * c * c * c + 15 + j
    # past C integers, validation and exact Python ints: the twin's code is the spec
    return _twin().retry_delay(count, jitter)


def retry_jitter(count, r, sidekiq8):
    """Sidekiq's retry jitter from a uniform draw r in [0, 1): <= 7 or 8 formula."""
    cdef long long c, n, j
    cdef double x
    cdef int overflow = 0
    if PyLong_CheckExact(count) and PyFloat_CheckExact(r):
        c = PyLong_AsLongLongAndOverflow(count, &overflow)
        x = PyFloat_AS_DOUBLE(r)
        if overflow == 0 and 0 <= c < _JITTER_FAST_COUNT and 0.0 <= x < 1.0:
            if sidekiq8:
                n = 10 * (c + 1)
                j = <long long>(x * <double>n)  # truncation, as int() of a float >= 0
                return j if j < n else n - 1
            j = <long long>(x * 10.0)
            return (j if j < 10 else 9) * (c + 1)
    # anything off the fast path (huge counts, int r, bad input): the twin's code is the spec
    return _twin().retry_jitter(count, r, sidekiq8)


cdef long long _nonneg(object value, str name) except -2:
    """value (via __index__) as a C count >= 0, or -1 when it is above LLONG_MAX: more than
    any pool holds, which release treats as "too many"."""
    cdef int overflow = 0
    cdef long long n
    if not PyLong_CheckExact(value):
        value = PyNumber_Index(value)
    n = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow > 0:
        return -1
    if overflow < 0 or n < 0:
        raise ValueError(f"{name} must be >= 0")
    return n


cdef long long _capacity_arg(object value) except -1:
    cdef int overflow = 0
    cdef long long n
    if not PyLong_CheckExact(value):
        value = PyNumber_Index(value)
    n = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow < 0 or (overflow == 0 and n < 1):
        raise ValueError("capacity must be >= 1")
    if overflow > 0:
        raise ValueError(f"capacity must be <= {LLONG_MAX}")
    return n


@cython.final
cdef class TokenPool:
    """Integer accounting for concurrency tokens (see fastworker._core_py.TokenPool)."""

    def __init__(self, capacity):
        self._capacity = _capacity_arg(capacity)
        self._in_use = 0
        self._peak = 0

    @property
    def capacity(self):
        return self._capacity

    @property
    def in_use(self):
        return self._in_use

    @property
    def free(self):
        return self._capacity - self._in_use if self._in_use < self._capacity else 0

    @property
    def peak(self):
        return self._peak

    def try_acquire(self):
        """Take one token if one is free; return whether it was taken."""
        if self._in_use < self._capacity:
            self._in_use += 1
            if self._in_use > self._peak:
                self._peak = self._in_use
            return True
        return False

    def release(self, n=1):
        """Give back n (>= 0) tokens; RuntimeError if fewer than n are in use."""
        cdef long long k = _nonneg(n, "n")
        if k > self._in_use or k == -1:
            raise RuntimeError(f"cannot release more tokens than are in use ({self._in_use})")
        self._in_use -= k

    def __repr__(self):
        return f"<TokenPool in_use={self._in_use} capacity={self._capacity} peak={self._peak}>"
