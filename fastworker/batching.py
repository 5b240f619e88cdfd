"""Which jobs share one sidecar request, and how many requests are in flight (the batch planner).

Duties:
1. measure, on this machine: per job class, the runtime the sidecar reports; per request, its
   overhead (the round trip minus the runtime of the jobs in it). Both are moving averages, so the
   rule below scales with the machine instead of resting on an absolute threshold;
2. ``batchable``: a class whose jobs take less time than one request's overhead shares requests
   (``POST /perform_batch``): for it, one request per job costs more than the job. A class not yet
   measured, or slower, gets a request per job, so a slow job never waits behind another one and
   slow jobs keep Puma's thread parallelism;
3. ``split``: the batchable jobs of one fetch go into requests of about ``size`` jobs, chosen so
   that at full concurrency a single sidecar process has as many requests in flight as it takes
   pipelined on one connection (``Offer.pipeline``, see LANES): one runs in Ruby while the worker
   turns the last answer round and sends the next. Several processes get one each. A fetch never
   opens more requests than the lanes left free by those in flight: a request beyond them goes
   to a second connection of one Puma process, where it costs more than it overlaps, and an
   uneven split (3/3/4 of 10 tokens) would otherwise stay uneven for good. Jobs of classes the
   sidecar says wait (it runs their batches at the same time, on several threads) get one request
   per process and none pipelined: Puma takes a pipelined request only once the one before it has
   answered, so the second half of them would wait for the first instead of beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")

# Requests in flight per sidecar process at full concurrency, when the sidecar cannot take them
# pipelined on one connection. Measured on the project's 2-core machine at -c 10 against one Puma
# process: 1 lane (batches of 10) ran 8,016-8,414 jobs/s at 105-107 us of CPU per job, 2 lanes on
# two connections (batches of 5) 5,659-6,633 jobs/s at 157-160 us: two Puma threads fighting for
# the GVL cost ~250 us more per request than the overlap gains. Pipelined on one connection, one
# thread takes them in turn and 2 lanes pay (Offer.pipeline; design.md, "Pipelined batches"),
# but only before ONE process: before two Puma workers (-c 20) batches of 10 ran 7,466-9,410
# jobs/s at 120-148 us of CPU per job, pipelined batches of 5 6,619-6,705 at 184-199 us; again
# once a fetch kept to the free lanes (2026-12-02): 18,069-18,827 jobs/s against 15,136-15,435.
LANES = 1
ALPHA = 0.2  # weight of a new sample in the moving averages
SPIKE = 4.0  # a sample counts at most this many times the current average (a GC pause, a preemption)
MAX_BATCH = 32  # jobs per batch when the sidecar offers batches without saying how many


class Offer:
    """What the sidecar's GET /health advertises (kept current by the sidecar client)."""

    __slots__ = ("batch_max", "processes", "pipeline")

    def __init__(self, batch_max: int = 1, processes: int = 1, pipeline: int = 1) -> None:
        self.batch_max = batch_max  # jobs per /perform_batch; 1 = no batches
        self.processes = processes  # sidecar processes (Puma workers) behind the URL
        self.pipeline = pipeline  # requests each takes pipelined on one connection; 1 = none


class BatchPlanner:
    __slots__ = ("concurrency", "offer", "overhead", "waiting", "_runtime", "_waits")

    def __init__(self, concurrency: int, offer: Offer) -> None:
        self.concurrency = concurrency
        self.offer = offer
        self.overhead: float | None = None  # seconds per request beyond its jobs' runtime
        self._runtime: dict[str, float] = {}  # class -> seconds
        self._waits: set[str] = set()  # classes whose last batch the sidecar found waiting
        self.waiting = False  # the last split was of such classes only: lanes and size follow it

    @property
    def lanes(self) -> int:
        """Fast requests in flight at full concurrency, over every sidecar process."""
        processes = max(1, self.offer.processes)
        # one process: pipelined lanes overlap Ruby with the worker, unless its jobs wait (module
        # duty 3). Several: they overlap with each other already, and halving the batches cost
        # more than it gained (see LANES)
        per_process = max(LANES, self.offer.pipeline) if processes == 1 and not self.waiting else LANES
        return per_process * processes

    @property
    def size(self) -> int:
        """Jobs per batch: enough requests to keep each sidecar process's lanes full."""
        return max(1, min(self.offer.batch_max, -(-self.concurrency // self.lanes)))

    # -- measurements --------------------------------------------------------------------------

    def observe_runtime(self, klass: str, seconds: float | None) -> None:
        if seconds is None:
            return
        old = self._runtime.get(klass)
        if old is None:
            self._runtime[klass] = seconds
        else:
            self._runtime[klass] = old + ALPHA * (min(seconds, old * SPIKE) - old)

    def observe_waiting(self, klass: str, waiting: bool) -> None:
        if waiting:
            self._waits.add(klass)
        else:
            self._waits.discard(klass)

    def observe_request(self, wall: float, runtimes: float) -> None:
        """One request's round trip (``wall``) and the summed runtime of its jobs, in seconds."""
        sample = max(0.0, wall - runtimes)
        old = self.overhead
        self.overhead = sample if old is None else old + ALPHA * (min(sample, old * SPIKE) - old)

    # -- decisions -----------------------------------------------------------------------------

    def batchable(self, klass: str) -> bool:
        if self.offer.batch_max <= 1 or self.overhead is None:
            return False
        runtime = self._runtime.get(klass)
        return runtime is not None and runtime < self.overhead

    def waits(self, klass: str) -> bool:
        return klass in self._waits

    def split(self, items: Sequence[T], in_flight: int = 0, waiting: bool = False) -> list[list[T]]:
        """``items`` in requests of about ``size``, as even as possible, and no more requests than
        the lanes that ``in_flight`` fast requests leave (one at least; a request grows up to
        ``batch_max`` for it). ``waiting``: they are all of classes that wait (``waits``)."""
        n = len(items)
        if n == 0:
            return []
        self.waiting = waiting
        count = min(-(-n // self.size), max(1, self.lanes - in_flight))
        count = max(count, -(-n // max(1, self.offer.batch_max)))
        base, extra = divmod(n, count)
        out: list[list[T]] = []
        start = 0
        for i in range(count):
            end = start + base + (1 if i < extra else 0)
            out.append(list(items[start:end]))
            start = end
        return out

    def runtime(self, klass: str) -> float | None:
        return self._runtime.get(klass)
