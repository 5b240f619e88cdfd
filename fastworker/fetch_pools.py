"""The fetch pools: one Fetcher and one Limiter per capsule (Sidekiq 7's capsule = fetcher + threads).

Duties:
1. Build, for each capsule of the configuration (the default one first), a Limiter of the capsule's
   concurrency and a Fetcher over a Broker view of its queues only, so a capsule's jobs never hold more
   tokens than its concurrency (a single-threaded capsule runs one job at a time) and a busy capsule
   never starves another.
2. Look like one Fetcher to the rest of the process (run, stop, wake, held, fetched): the launcher,
   recoverer and metrics need not know about capsules.
With no capsules besides the default one, this is exactly the single fetch loop it always was.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .config import Config
from .fetcher import Fetcher
from .limiter import Limiter


class FetchPools:
    def __init__(self, config: Config, broker: Any, manager: Any, processor: Any, breaker: Any, planner: Any,
                 default_limiter: Limiter) -> None:
        self.pools: list[tuple[str, Limiter, Fetcher]] = []
        for cap in config.all_capsules:
            limiter = default_limiter if cap.name == "default" else Limiter(cap.concurrency)
            source = broker if not config.capsules else broker.view([n for n, _ in cap.queues])
            self.pools.append((cap.name, limiter, Fetcher(source, limiter, manager, processor, breaker, planner,
                                                          cap)))
            for name, _ in cap.queues:
                manager.limiters[name] = limiter

    @property
    def fetchers(self) -> list[Fetcher]:
        return [f for _, _, f in self.pools]

    @property
    def fetched(self) -> int:
        return sum(f.fetched for f in self.fetchers)

    @property
    def quiet(self) -> bool:
        return all(f.quiet for f in self.fetchers)

    async def run(self) -> None:
        if len(self.pools) == 1:
            await self.fetchers[0].run()
            return
        tasks = [asyncio.get_running_loop().create_task(f.run()) for f in self.fetchers]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        for f in self.fetchers:
            f.stop()

    def wake(self) -> None:
        for f in self.fetchers:
            f.wake()

    def held(self) -> list[bytes]:
        return [raw for f in self.fetchers for raw in f.held()]
