"""Failures named by what the job is owed (style.md §4.7)."""


class FastworkerError(Exception):
    """Base class."""


class SidecarUnavailable(FastworkerError):
    """Infrastructure failed (connection refused, timeout, 5xx, 503): requeue, no retry spent."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None,
                 interrupted: bool = False, busy: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        # the sidecar had started the job and stopped it with Sidekiq::Shutdown (its drain, a
        # cancel): Sidekiq's stats count such a job processed and failed
        self.interrupted = interrupted
        # the sidecar answered 503 at capacity: alive and full (several workers share it), which
        # is backpressure, not an outage
        self.busy = busy


class PayloadError(ValueError):
    """A job payload the worker cannot run: bad JSON, not an object, or a required field
    missing or of the wrong type. The message names the reason. Sidekiq sends such jobs
    straight to the dead set; they are never retried.

    Both cores raise this very class (it lives here, not in either twin, so the compiled core
    need not import the pure-Python one), so ``except core.PayloadError`` works whichever
    implementation is active.
    """
