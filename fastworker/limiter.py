"""Concurrency tokens: asyncio waiting around the core's integer TokenPool.

A token is taken before a job's task is spawned and released in the task's ``finally``; a
released token goes straight to the oldest waiter (FIFO), so in_use never exceeds capacity and
the sidecar never sees more than ``capacity`` requests at once.
"""

from __future__ import annotations

import asyncio
from collections import deque

from . import core


class Limiter:
    __slots__ = ("pool", "_waiters", "_free_waiters")

    def __init__(self, capacity: int) -> None:
        self.pool = core.TokenPool(capacity)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._free_waiters: list[asyncio.Future[None]] = []

    @property
    def capacity(self) -> int:
        return self.pool.capacity

    @property
    def in_use(self) -> int:
        return self.pool.in_use

    @property
    def free(self) -> int:
        return 0 if self._waiters else self.pool.free

    def try_acquire(self) -> bool:
        return not self._waiters and self.pool.try_acquire()

    async def acquire(self) -> None:
        if not self._waiters and self.pool.try_acquire():
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the token was handed over just as we were cancelled
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # hand the token over: in_use is unchanged
                return
        self.pool.release()
        if self._free_waiters:
            waiters, self._free_waiters = self._free_waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    async def wait_free(self) -> None:
        """Return once at least one token is free (without taking it)."""
        while self.free == 0:
            await self.wait_release()

    async def wait_release(self) -> None:
        """Return at the next release of a token."""
        fut = asyncio.get_running_loop().create_future()
        self._free_waiters.append(fut)
        await fut
