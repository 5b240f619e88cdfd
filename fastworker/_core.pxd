"""C declarations of fastworker._core; the behaviour is specified in fastworker/_core_py.py."""

cimport cython


@cython.final
cdef class Envelope:
    cdef readonly bytes raw
    cdef readonly dict job
    cdef readonly str jid
    cdef readonly str klass
    cdef readonly list args
    cdef readonly str wrapped
    cdef readonly str worker_class
    cdef readonly str display_class
    cdef readonly str queue
    cdef readonly object retry
    cdef readonly object retry_count
    cdef readonly str retry_queue
    cdef readonly object backtrace
    cdef readonly bint dead
    cdef readonly object retry_for
    cdef readonly object created_at
    cdef readonly object enqueued_at
    cdef readonly object failed_at
    cdef readonly object retried_at
    cdef readonly bint ms_timestamps


@cython.final
cdef class TokenPool:
    # Invariants: 1 <= _capacity <= LLONG_MAX, 0 <= _in_use <= _peak, and _in_use only grows
    # while below _capacity, so none of the three can overflow.
    cdef long long _capacity
    cdef long long _in_use
    cdef long long _peak


cpdef Envelope decode_envelope(object raw)
cpdef object to_epoch_seconds(object value)
cpdef bint ms_timestamps(object created, object enqueued)
