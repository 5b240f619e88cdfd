"""What the sidecar said of one job: values the processor branches on, never raised.

- ``Done``: perform returned;
- ``Failed``: the job raised (it spends a retry; the retry policy reads it);
- ``BadJob``: the sidecar says it is not a runnable job (to the dead set, no retry);
- ``NotAttempted``: a job of a batch the sidecar did not run (draining) or stopped with
  Sidekiq::Shutdown: back to its queue for free, as a whole request the sidecar could not take
  (errors.SidecarUnavailable, which is raised) is.

A batch answers ``Outcomes``: one per job, in order, and how long the sidecar took to run them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Done:
    """``runtime_ms`` as the sidecar measured it (None if not reported); ``skipped``: an
    IterableJob interrupted and re-enqueued itself (7.3+ JobRetry::Skip)."""

    runtime_ms: float | None
    skipped: bool = False


@dataclass(slots=True)
class Failed:
    """The job raised (422)."""

    error_class: str
    error_message: str
    backtrace: list[str] | None
    retry_in: int | str | None
    class_retry: Any  # the class's sidekiq_options retry, reported when the payload lacks "retry"
    body: dict[str, Any]
    pid: str | None = None  # the sidecar process that ran it (it holds the live exception for the hooks)

    @property
    def runtime_ms(self) -> float | None:
        rt = self.body.get("runtime_ms")
        return rt if isinstance(rt, (int, float)) and not isinstance(rt, bool) else None

    def error(self) -> dict[str, Any]:
        """The exception as /exhausted takes it ("error": class, message, backtrace, stage, and
        the sidecar's seal of the exception object, which its hooks get back wherever they run)."""
        error: dict[str, Any] = {"class": self.error_class, "message": self.error_message}
        if self.backtrace is not None:
            error["backtrace"] = self.backtrace
        if self.body.get("stage") is not None:
            error["stage"] = self.body["stage"]
        if isinstance(self.body.get("exception"), str):
            error["exception"] = self.body["exception"]
        return error


@dataclass(slots=True)
class BadJob:
    """The sidecar refused the body as no runnable job (400, or 413: over its size limit)."""

    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(slots=True)
class NotAttempted:
    """The same fields as errors.SidecarUnavailable, so one requeue path serves both."""

    reason: str
    status: int | None = None
    interrupted: bool = False  # stopped by Sidekiq::Shutdown: Sidekiq counts it processed and failed
    busy: bool = False  # refused at capacity: backpressure from a live sidecar


Outcome = Done | Failed | BadJob | NotAttempted


class Outcomes(list):  # type: ignore[type-arg]
    """A batch's outcomes, one per job in order; ``ran``: the seconds the sidecar spent on the
    batch (None when it did not say). Jobs the sidecar ran at the same time overlap, so their
    runtimes do not add up to it. ``waiting``: the sidecar found the jobs waiting (it runs such
    batches at the same time), None when it did not say."""

    __slots__ = ("ran", "waiting")

    def __init__(self, items: Any = (), ran: float | None = None, waiting: bool | None = None) -> None:
        super().__init__(items)
        self.ran = ran
        self.waiting = waiting
