"""The synchronous Redis client as the tests and benchmarks name it in annotations.

redis-py 6 (the version pyproject.toml allows) annotates every reply of its synchronous client as
``Awaitable[T] | T``, since the synchronous and asyncio clients share their command mixins; the
tests read those replies directly, so this alias checks them as ``Any``.
"""

from typing import Any

SyncRedis = Any
