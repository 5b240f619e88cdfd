"""Time, injectable: wall-clock for what is stored, monotonic for durations (Sidekiq component.rb)."""

from __future__ import annotations

import asyncio
import random
import time


class Clock:
    """Real clock. Tests may pass a subclass with fixed or advancing values."""

    __slots__ = ()

    def now(self) -> float:
        """Epoch seconds (float), for what is stored in Redis."""
        return time.time()

    def mono(self) -> float:
        """Monotonic seconds, for elapsed times and deadlines."""
        return time.monotonic()


def sidekiq_time(now: float, ms: bool) -> float | int:
    """A timestamp in the job's own format: float seconds (Sidekiq <= 7) or int ms (Sidekiq 8)."""
    return int(now * 1000) if ms else now


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` pass; True if it was set. Every loop sleeps with
    this, not ``asyncio.wait_for``: on Python 3.11 wait_for swallows a cancellation that arrives as
    the event fires, and the task then never stops (a shutdown that hangs); asyncio.timeout does not."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
        return True
    except TimeoutError:
        return event.is_set()


class Backoff:
    """Delays after a refusal (Redis gone, the sidecar at capacity): 50 ms doubling up to ``cap``,
    each with +-50 % jitter so that many processes refused together do not come back in step."""

    __slots__ = ("cap", "_next")
    FIRST = 0.05

    def __init__(self, cap: float = 5.0) -> None:
        self.cap = cap
        self._next = self.FIRST

    def delay(self) -> float:
        """The next pause, in seconds (and the one after is twice as long, up to ``cap``)."""
        d = self._next * (0.5 + random.random())
        self._next = min(self._next * 2, self.cap)
        return d

    def reset(self) -> None:
        self._next = self.FIRST


REAL_CLOCK = Clock()
