"""Shared fixtures: a real Redis DB flushed per test, the stub sidecar, the worker command."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers.procs import StubSidecar, Worker

REDIS_BASE = os.environ.get("FASTWORKER_TEST_REDIS", "redis://127.0.0.1:6379")
TEST_DB = int(os.environ.get("FASTWORKER_TEST_DB", "15"))


@pytest.fixture
def redis_url() -> Iterator[str]:
    url = f"{REDIS_BASE}/{TEST_DB}"
    r = redis.Redis.from_url(url)
    r.flushdb()
    r.close()
    yield url


@pytest.fixture
def r(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def stub() -> Iterator[StubSidecar]:
    s = StubSidecar(record=True)
    yield s
    s.stop()


@pytest.fixture
def worker(redis_url: str, stub: StubSidecar, tmp_path: Path) -> Iterator:
    """Factory: worker(*args) starts ``fastworker`` against the test DB and the stub sidecar."""
    started: list[Worker] = []

    def start(*args: str, sidecar_url: str | None = None, env: dict[str, str] | None = None,
              name: str = "worker") -> Worker:
        w = Worker(redis_url, sidecar_url or stub.url, *args,
                   log_path=tmp_path / f"{name}-{len(started)}.log", env=env)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


