"""TokenPool: integer accounting for the concurrency limit."""

from __future__ import annotations

from types import ModuleType

import pytest

MAX = 2**63 - 1


def state(pool) -> tuple[int, int, int, int]:
    return pool.capacity, pool.in_use, pool.free, pool.peak


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


def test_try_acquire_many_takes_what_is_free(core_impl: ModuleType) -> None:
    pool = core_impl.TokenPool(10)
    assert pool.try_acquire_many(4) == 4
    assert pool.try_acquire_many(0) == 0
    assert pool.try_acquire_many(100) == 6
    assert pool.try_acquire_many(1) == 0
    assert state(pool) == (10, 10, 0, 10)
    pool.release(7)
    assert state(pool) == (10, 3, 7, 10)
    assert pool.try_acquire_many(2**100) == 7  # larger than any C integer: still "take what is free"


def test_release(core_impl: ModuleType) -> None:
    pool = core_impl.TokenPool(5)
    pool.try_acquire_many(4)
    pool.release(0)
    assert pool.in_use == 4
    pool.release(3)
    pool.release()
    assert state(pool) == (5, 0, 5, 4)


@pytest.mark.parametrize("n", [1, 3, 2**63, 2**100])
def test_release_more_than_in_use(core_impl: ModuleType, n: int) -> None:
    pool = core_impl.TokenPool(5)
    if n > 1:
        pool.try_acquire_many(2)
    with pytest.raises(RuntimeError, match=r"^cannot release more tokens than are in use \((0|2)\)$"):
        pool.release(n)
    assert pool.in_use == (0 if n == 1 else 2)


@pytest.mark.parametrize("method", ["release", "try_acquire_many"])
@pytest.mark.parametrize("n", [-1, -(2**64)])
def test_negative_counts(core_impl: ModuleType, method: str, n: int) -> None:
    pool = core_impl.TokenPool(5)
    pool.try_acquire_many(2)
    with pytest.raises(ValueError, match=r"^n must be >= 0$"):
        getattr(pool, method)(n)
    assert state(pool) == (5, 2, 3, 2)


@pytest.mark.parametrize("method", ["release", "try_acquire_many", "set_capacity"])
@pytest.mark.parametrize("n", [1.0, "1", None])
def test_non_integer_counts(core_impl: ModuleType, method: str, n: object) -> None:
    pool = core_impl.TokenPool(5)
    with pytest.raises(TypeError, match=r"cannot be interpreted as an integer"):
        getattr(pool, method)(n)


def test_index_protocol_is_accepted(core_impl: ModuleType) -> None:
    class Two:
        def __index__(self) -> int:
            return 2

    pool = core_impl.TokenPool(Two())
    assert pool.try_acquire_many(Two()) == 2
    pool.release(Two())
    assert state(pool) == (2, 0, 2, 2)


@pytest.mark.parametrize("capacity", [0, -1, -(2**64)])
def test_capacity_must_be_positive(core_impl: ModuleType, capacity: int) -> None:
    with pytest.raises(ValueError, match=r"^capacity must be >= 1$"):
        core_impl.TokenPool(capacity)
    pool = core_impl.TokenPool(2)
    with pytest.raises(ValueError, match=r"^capacity must be >= 1$"):
        pool.set_capacity(capacity)
    assert pool.capacity == 2


@pytest.mark.parametrize("capacity", [2**63, 2**100])
def test_capacity_upper_bound(core_impl: ModuleType, capacity: int) -> None:
    with pytest.raises(ValueError, match=rf"^capacity must be <= {MAX}$"):
        core_impl.TokenPool(capacity)
    pool = core_impl.TokenPool(MAX)
    assert pool.try_acquire_many(2**100) == MAX
    assert state(pool) == (MAX, MAX, 0, MAX)
    assert pool.try_acquire() is False
    with pytest.raises(RuntimeError):
        pool.release(MAX + 1)  # one more than the (full) pool holds
    pool.release(MAX)
    assert state(pool) == (MAX, 0, MAX, MAX)


def test_shrinking_below_in_use(core_impl: ModuleType) -> None:
    pool = core_impl.TokenPool(10)
    assert pool.try_acquire_many(8) == 8
    pool.set_capacity(5)
    assert state(pool) == (5, 8, 0, 8)  # nothing is taken back; free is 0, not -3
    assert pool.try_acquire() is False
    assert pool.try_acquire_many(3) == 0
    pool.release(3)
    assert state(pool) == (5, 5, 0, 8)
    assert pool.try_acquire() is False
    pool.release()
    assert pool.try_acquire() is True
    pool.set_capacity(20)
    assert state(pool) == (20, 5, 15, 8)


def test_peak_is_the_high_water_mark(core_impl: ModuleType) -> None:
    pool = core_impl.TokenPool(100)
    pool.try_acquire_many(7)
    pool.release(7)
    pool.try_acquire_many(3)
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
    pool.try_acquire_many(3)
    pool.release()
    assert repr(pool) == "<TokenPool in_use=2 capacity=4 peak=3>"
