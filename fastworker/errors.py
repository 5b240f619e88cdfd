"""Failures named by what the job is owed (style.md §4.7)."""


class FastworkerError(Exception):
    """Base class."""


class SidecarUnavailable(FastworkerError):
    """Infrastructure failed (connection refused, timeout, 5xx, 503): requeue, no retry spent."""

    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None,
                 interrupted: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        # the sidecar had started the job and stopped it with Sidekiq::Shutdown (its drain, a
        # cancel): Sidekiq's stats count such a job processed and failed
        self.interrupted = interrupted
