"""Circuit breaker for the sidecar (design.md); pure state, no I/O.

closed    -> jobs flow; ``threshold`` consecutive infrastructure failures, or a failure rate over
             ``rate`` across the last ``window`` calls, open the circuit.
open      -> no new jobs are fetched (they stay in Redis) until ``cooldown`` has passed
             (or a Retry-After the sidecar sent, whichever is later).
half_open -> the launcher probes GET /health; when it answers, ``probe_jobs`` real jobs are let
             through one at a time; that many successes close the circuit, one failure re-opens it.
Job failures (the job raised, 422) are successes here: the sidecar did its work. A 503 at
capacity (every job slot taken, as when several workers share one sidecar) is neither: the sidecar
is alive, so it counts no failure, but no job ran (``busy``).

Retry-After: a 503 or 429 that carries it opens the circuit at once, for exactly that long (the
sidecar said when to come back; the cooldown applies when it did not say).

A hung sidecar (SIGSTOPped, deadlocked, a lost host) refuses nothing: requests just never come
back, so no failure is ever counted. The launcher's watchdog (launcher._breaker_probe) decides it
is hung when ALL of these hold, and never on the age of a request alone, so a legitimately slow
job is never cut short:
  * a /perform has been outstanding longer than ``hang_after`` (2 x --sidecar-connect-timeout,
    10 s by default),
  * no /perform answer of any kind arrived during that time either,
  * and a concurrent GET /health gets no answer at all within --sidecar-connect-timeout (an answer
    of any status, 503 while draining included, means the sidecar is alive; the real sidecar
    keeps spare Puma threads so /health answers even when every job slot is busy).
Then the outstanding requests are abandoned: their jobs go back to the head of their queues with no
retry spent (the sidecar may still run them once it wakes: at-least-once, hence Idempotency-Key),
and ``trip()`` opens the circuit; the usual half-open probe brings it back.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from .log import log

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATE_VALUE = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2}


class Breaker:
    def __init__(self, threshold: int = 5, cooldown: float = 10.0, window: int = 50, rate: float = 0.5,
                 probe_jobs: int = 3, mono: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.window = window
        self.rate = rate
        self.probe_jobs = probe_jobs
        self.mono = mono
        self.state = CLOSED
        self.consecutive = 0
        self.recent: deque[bool] = deque(maxlen=window)
        self.opened_at = 0.0
        self.reopen_after = 0.0
        self.probe_ok = 0
        self.probe_in_flight = 0
        self.transitions: dict[str, int] = {CLOSED: 0, OPEN: 0, HALF_OPEN: 0}

    def _set(self, state: str, **fields: object) -> None:
        if state == self.state:
            return
        self.state = state
        self.transitions[state] += 1
        (log.warn if state == OPEN else log.info)(f"breaker_{state}", **fields)

    # -- asked by the fetcher ---------------------------------------------------------------

    def allow_fetch(self) -> bool:
        """May the fetcher take another job now?"""
        if self.state == CLOSED:
            return True
        if self.state == HALF_OPEN:
            return self.probe_in_flight == 0 and self.probe_ok < self.probe_jobs
        return False

    def cooldown_over(self) -> bool:
        return self.state == OPEN and self.mono() >= self.reopen_after

    def half_open(self) -> None:
        """The health probe answered: let a few real jobs through."""
        self.probe_ok = 0
        self.probe_in_flight = 0
        self._set(HALF_OPEN)

    def probe_failed(self, reason: str) -> None:
        self.reopen_after = self.mono() + self.cooldown
        log.debug("breaker_probe_failed", reason=reason)

    def started(self) -> None:
        if self.state == HALF_OPEN:
            self.probe_in_flight += 1

    # -- outcomes ------------------------------------------------------------------------------

    def success(self) -> None:
        self.consecutive = 0
        self.recent.append(True)
        if self.state == HALF_OPEN:
            self.probe_in_flight = max(0, self.probe_in_flight - 1)
            self.probe_ok += 1
            if self.probe_ok >= self.probe_jobs:
                self.recent.clear()
                self._set(CLOSED)

    def busy(self) -> None:
        """The sidecar answered at capacity: alive, so the failure streak ends; a half-open probe
        did not conclude, and the next job probes again."""
        self.consecutive = 0
        if self.state == HALF_OPEN:
            self.probe_in_flight = max(0, self.probe_in_flight - 1)

    def failure(self, reason: str, retry_after: float | None = None) -> None:
        self.consecutive += 1
        self.recent.append(False)
        if self.state == HALF_OPEN:
            self.probe_in_flight = max(0, self.probe_in_flight - 1)
            self._open(reason, retry_after)
            return
        if self.state == CLOSED:
            failures = self.recent.count(False)
            over_rate = len(self.recent) >= self.window // 2 and failures / len(self.recent) > self.rate
            if self.consecutive >= self.threshold or over_rate or retry_after is not None:
                self._open(reason, retry_after)
        elif retry_after is not None:
            self.reopen_after = max(self.reopen_after, self.mono() + retry_after)

    def trip(self, reason: str) -> None:
        """Open now, whatever the counts say (the watchdog found the sidecar hung)."""
        if self.state != OPEN:
            self._open(reason, None)

    def _open(self, reason: str, retry_after: float | None) -> None:
        self.opened_at = self.mono()
        self.reopen_after = self.opened_at + (self.cooldown if retry_after is None else retry_after)
        self._set(OPEN, reason=reason, consecutive_failures=self.consecutive,
                  cooldown_s=round(self.reopen_after - self.opened_at, 3))
