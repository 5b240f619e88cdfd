"""The shape every polling loop beside the job path shares (the scheduler, the hooks loop): one
``poll()`` (a tick with its errors handled), then a sleep of ``interval()`` that quiet or stop cuts
short, until quiet. It is also the launcher's component protocol: start, quiet, stopping, stop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .clock import wait_event
from .log import log

STOP_WAIT = 5.0  # seconds stop() lets the tick in hand finish before it cancels it


def tick_failed(loop: str, exc: BaseException, **context: Any) -> None:
    """An error one tick of ``loop`` did not expect (a bug, an odd reply): logged with the loop's
    name and ``context``; the loop goes on, since a loop that ended here would fail silently."""
    log.error("loop_failed", loop=loop, **context, error_class=type(exc).__name__, error_message=str(exc)[:500])


class PollLoop:
    name = "loop"

    def __init__(self) -> None:
        self._done = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The loop's task, watched by the launcher (/healthz names a loop that died)."""
        return self._task

    async def poll(self) -> int:
        """One tick, its errors handled (a loop never ends on one); returns how much it did."""
        raise NotImplementedError

    def interval(self) -> float:
        """Seconds to sleep after a poll."""
        raise NotImplementedError

    async def run(self) -> None:
        while not self._done:
            await self.poll()
            if self._done:
                break
            assert self._wake is not None
            await wait_event(self._wake, self.interval())

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self.run(), name=self.name)

    def quiet(self) -> None:
        """No new poll from now on; the tick in hand finishes."""
        self._done = True
        if self._wake is not None:
            self._wake.set()

    def stopping(self) -> None:
        self.quiet()

    async def stop(self) -> None:
        self.quiet()
        task, self._task = self._task, None
        if task is None:
            return
        done, _ = await asyncio.wait([task], timeout=STOP_WAIT)
        if not done:  # stuck on Redis or the sidecar: every write is atomic, so cancelling loses nothing
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
