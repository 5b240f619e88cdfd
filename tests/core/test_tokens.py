"""TokenPool: integer accounting for the concurrency limit."""

from __future__ import annotations

from types import ModuleType

import pytest

MAX = 2**63 - 1


def state(pool) -> tuple[int, int, int, int]:
    return pool.capacity, pool.in_use, pool.free, pool.peak


def take(pool, n: int) -> int:
    """Up to n tokens, one try_acquire at a time (as the fetch loop takes them); how many were taken."""
    return sum(1 for _ in range(n) if pool.try_acquire())


def test_new_pool(core_impl: ModuleType) -> None:
    pool = core_impl.TokenPool(3)
    assert state(pool) == (3, 0, 3, 0)


def test_try_acquire_until_full(core_impl: ModuleType) -> None:
    pool = core_impl.TokenPool(3)
    assert [pool.try_acquire() for _ in range(5)] == [True, True, True, False, False]
    assert state(pool) == (3, 3, 0, 3)
    pool.release()
    assert state(pool) == (3, 2, 1, 3)
    assert pool.try_acquire() is True
    assert pool.try_acquire() is False


def test_release(core_impl: ModuleType) -> None:
    pool = core_impl.TokenPool(5)
    assert take(pool, 4) == 4
    pool.release(0)
    assert pool.in_use == 4
    pool.release(3)
    pool.release()
    assert state(pool) == (5, 0, 5, 4)


@pytest.mark.parametrize("n", [1, 3, 2**63, 2**100])
def test_release_more_than_in_use(core_impl: ModuleType, n: int) -> None:
    pool = core_impl.TokenPool(5)
    if n > 1:
        take(pool, 2)
    with pytest.raises(RuntimeError, match=r"^cannot release more tokens than are in use \((0|2)\)$"):
        pool.release(n)
    assert pool.in_use == (0 if n == 1 else 2)


@pytest.mark.parametrize("n", [-1, -(2**64)])
def test_negative_counts(core_impl: ModuleType, n: int) -> None:
    pool = core_impl.TokenPool(5)
    take(pool, 2)
    with pytest.raises(ValueError, match=r"^n must be >= 0$"):
        pool.release(n)
    assert state(pool) == (5, 2, 3, 2)


@pytest.mark.parametrize("n", [1.0, "1", None])
def test_non_integer_counts(core_impl: ModuleType, n: object) -> None:
    pool = core_impl.TokenPool(5)
    with pytest.raises(TypeError, match=r"cannot be interpreted as an integer"):
        pool.release(n)
    with pytest.raises(TypeError, match=r"cannot be interpreted as an integer"):
        core_impl.TokenPool(n)


def test_index_protocol_is_accepted(core_impl: ModuleType) -> None:
    class Two:
        def __index__(self) -> int:
            return 2

    pool = core_impl.TokenPool(Two())
    assert take(pool, 3) == 2
    pool.release(Two())
    assert state(pool) == (2, 0, 2, 2)


@pytest.mark.parametrize("capacity", [0, -1, -(2**64)])
def test_capacity_must_be_positive(core_impl: ModuleType, capacity: int) -> None:
    with pytest.raises(ValueError, match=r"^capacity must be >= 1$"):
        core_impl.TokenPool(capacity)


@pytest.mark.parametrize("capacity", [2**63, 2**100])
def test_capacity_upper_bound(core_impl: ModuleType, capacity: int) -> None:
    with pytest.raises(ValueError, match=rf"^capacity must be <= {MAX}$"):
        core_impl.TokenPool(capacity)
    pool = core_impl.TokenPool(MAX)
    assert take(pool, 3) == 3
    assert state(pool) == (MAX, 3, MAX - 3, 3)
    with pytest.raises(RuntimeError):
        pool.release(MAX + 1)  # beyond any C integer: still "more than are in use"
    pool.release(3)
    assert state(pool) == (MAX, 0, MAX, 3)


def test_peak_is_the_high_water_mark(core_impl: ModuleType) -> None:
    pool = core_impl.TokenPool(100)
    take(pool, 7)
    pool.release(7)
    take(pool, 3)
    assert (pool.in_use, pool.peak) == (3, 7)
    for _ in range(6):
        pool.try_acquire()
    assert (pool.in_use, pool.peak) == (9, 9)


def test_read_only_properties(core_impl: ModuleType) -> None:
    pool = core_impl.TokenPool(3)
    for name in ("capacity", "in_use", "free", "peak"):
        with pytest.raises(AttributeError):
            setattr(pool, name, 1)
    assert state(pool) == (3, 0, 3, 0)


def test_repr(core_impl: ModuleType) -> None:
    pool = core_impl.TokenPool(4)
    take(pool, 3)
    pool.release()
    assert repr(pool) == "<TokenPool in_use=2 capacity=4 peak=3>"
