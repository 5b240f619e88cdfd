"""Tells the sidecar this worker's lifecycle, so the app's Sidekiq lifecycle events fire there.

The Sidekiq server fires ``:startup`` (booted, before fetching), ``:quiet`` (TSTP, the Web UI's
Quiet, the start of TERM), ``:shutdown`` (stopping, before waiting for jobs), ``:heartbeat`` (first
beat) and 7.x's ``:beat`` (every beat); sidekiq-cron, sidekiq-scheduler and apps' ``config.on``
blocks hang off them. The sidecar fires them (sidecar/lib/fastworker/sidecar/lifecycle.rb) from
what each worker tells it here.

Duties:
1. ``start``: POST /lifecycle ``startup`` with this worker's identity and the settings the app's
   Ruby code may read from Sidekiq's options (``--timeout``, which the sidecar's drain timeout also
   follows, ``--concurrency`` and ``--max-retries``), once, before the fetcher starts; not delivered
   (sidecar booting or down) -> the loop keeps trying, and a ``beat`` registers the worker too.
2. every ``heartbeat_interval``: a ``beat`` (with the quiet flag), which also re-registers the worker
   with a sidecar that restarted meanwhile; after it (and after ``startup``) the settings go to the
   sidecar's other processes in a Puma cluster (``announce``), which see no lifecycle events, and
   after ``shutdown`` they are told to forget them;
3. ``quiet()`` / ``stopping()``: ``quiet`` / ``shutdown`` at once, in order;
4. ``stop``: let the loop deliver what is still pending (``shutdown`` at the latest) within
   STOP_FLUSH seconds; never block shutdown longer, never send an event twice.
Events are delivered one at a time, in order, by one task; failures are logged, never raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .log import log

STOP_FLUSH = 5.0
RETRY_AFTER = 1.0


class Lifecycle:
    def __init__(self, sidecar: Any, identity: str, interval: float, settings: dict[str, float],
                 quiet: Callable[[], bool]) -> None:
        self.sidecar = sidecar
        self.identity = identity
        self.interval = interval
        # timeout (the sidecar's drain timeout follows it), concurrency, max_retries: what the
        # sidecar's Sidekiq options then say
        self.settings = settings
        self.is_quiet = quiet  # the worker is quiet or stopping (its beats say so)
        self.pending: list[str] = []
        self.delivered: list[str] = []  # for tests and logs
        self.started = False  # the sidecar took our startup
        self._closing = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- component contract ----------------------------------------------------------------------

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The loop's task, watched by the launcher (/healthz names a loop that died)."""
        return self._task

    async def start(self) -> None:
        self.pending.append("startup")
        await self.tick()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def quiet(self) -> None:
        self._push("quiet")

    def stopping(self) -> None:
        self._push("shutdown")

    async def stop(self) -> None:
        # the loop delivers what is pending (``shutdown`` at the latest) and ends by itself:
        # cancelling it mid-request and sending again would deliver an event twice
        self._closing = True
        self._push("shutdown")
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait([task], timeout=STOP_FLUSH)
        if not done:
            log.warn("lifecycle_undelivered", events=self.pending)
            task.cancel()
            await asyncio.wait([task], timeout=1.0)

    # -- delivery ----------------------------------------------------------------------------------

    def _push(self, event: str) -> None:
        if event not in self.pending and event not in self.delivered:
            self.pending.append(event)
        self._wake.set()

    async def tick(self) -> bool:
        """Deliver the pending events in order; False when one could not be delivered."""
        while self.pending:
            event = self.pending[0]
            if not await self._send(event):
                return False
            self.pending.pop(0)
            self.delivered.append(event)
            if event == "startup":
                self.started = True
            if event in ("startup", "shutdown"):
                await self.sidecar.announce(self.identity, self.settings, gone=event == "shutdown")
            log.info("lifecycle_event", lifecycle_event=event)
        return True

    async def _run(self) -> None:
        while not (self._closing and not self.pending):
            try:
                await asyncio.wait_for(self._wake.wait(), RETRY_AFTER if self.pending else self.interval)
            except TimeoutError:
                pass
            woken = self._wake.is_set() or self._closing
            self._wake.clear()
            if not await self.tick():
                if self._closing:  # a sidecar we cannot reach fires nothing: do not hold up the stop
                    log.warn("lifecycle_undelivered", events=self.pending)
                    return
                continue
            if not woken and "shutdown" not in self.delivered:
                if await self._send("beat"):
                    self.started = True
                    await self.sidecar.announce(self.identity, self.settings)

    async def _send(self, event: str) -> bool:
        return await self.sidecar.lifecycle(event, self.identity, self.settings, quiet=self.is_quiet())
