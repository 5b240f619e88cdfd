"""retry_delay and retry_jitter: Sidekiq's default backoff (compat §4.4)."""

from __future__ import annotations

import math
from types import ModuleType

import pytest

LAST_BELOW_ONE = math.nextafter(1.0, 0.0)  # 1 - 2**-53


@pytest.mark.parametrize(
    ("count", "jitter", "expected"),
    [
        (0, 0, 15),  # first retry: 15 s + jitter
        (0, 9, 24),
        (1, 0, 16),
        (2, 3, 34),
        (10, 0, 10015),
        (24, 0, 331791),
        (25, 259, 390640 + 259),
    ],
)
def test_retry_delay_values(core_impl: ModuleType, count: int, jitter: int, expected: int) -> None:
    assert core_impl.retry_delay(count, jitter) == expected


def test_default_schedule_totals_about_20_days(core_impl: ModuleType) -> None:
    # Sum over the 25 default retries without jitter: sum(c**4) = 1 763 020 s, plus 25 * 15.
    total = sum(core_impl.retry_delay(c, 0) for c in range(25))
    assert total == 1763395
    assert round(total / 86400, 1) == 20.4


@pytest.mark.parametrize(
    ("count", "jitter"),
    [
        (50000, 0),  # the last count on the C fast path
        (50000, 2**61),  # ... with the largest fast-path jitter
        (50001, 0),  # Python-int path from here
        (50000, 2**61 + 1),
        (55108, 0),  # count**4 just below 2**63
        (55109, 0),  # count**4 just above 2**63
        (10**6, 10**6),
        (2**63 - 1, 0),
        (2**64, 2**64),
        (10**30, 7),
    ],
)
def test_retry_delay_is_exact_for_any_size(core_impl: ModuleType, count: int, jitter: int) -> None:
    delay = core_impl.retry_delay(count, jitter)
    assert delay == count**4 + 15 + jitter
    assert type(delay) is int


def test_retry_delay_huge(core_impl: ModuleType) -> None:
    assert core_impl.retry_delay(10**20, 0) == 10**80 + 15


@pytest.mark.parametrize(
    ("count", "jitter", "message"),
    [(-1, 0, "count must be >= 0"), (0, -1, "jitter must be >= 0"), (-(2**70), 0, "count must be >= 0"),
     (-5, -5, "count must be >= 0"), (3, -(2**64), "jitter must be >= 0")],
)  # fmt: skip
def test_retry_delay_rejects_negatives(core_impl: ModuleType, count: int, jitter: int, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        core_impl.retry_delay(count, jitter)


@pytest.mark.parametrize(("count", "jitter"), [(1.0, 0), (0, 2.5), ("3", 0), (None, 0)])
def test_retry_delay_rejects_non_integers(core_impl: ModuleType, count: object, jitter: object) -> None:
    with pytest.raises(TypeError, match=r"cannot be interpreted as an integer"):
        core_impl.retry_delay(count, jitter)


# ---------------------------------------------------------------------------------------------
# retry_jitter


@pytest.mark.parametrize(
    ("count", "r", "expected"),
    [
        (0, 0.0, 0),
        (0, 0.5, 5),
        (0, LAST_BELOW_ONE, 9),
        (2, 0.35, 9),  # rand(10) = 3, times count + 1 = 3
        (2, 0.3, 9),  # 0.3 * 10 rounds to 3.0 in floats, as the spec's int(r * 10) says
        (24, 0.99, 225),
        (24, LAST_BELOW_ONE, 225),
        (2**60, 0.5, 5 * (2**60 + 1)),  # beyond the C fast path: exact Python ints
        (10**30, 0.15, 1 * (10**30 + 1)),
    ],
)
def test_retry_jitter_sidekiq7(core_impl: ModuleType, count: int, r: float, expected: int) -> None:
    assert core_impl.retry_jitter(count, r, False) == expected


@pytest.mark.parametrize(
    ("count", "r", "expected"),
    [
        (0, 0.0, 0),
        (0, 0.55, 5),
        (0, LAST_BELOW_ONE, 9),
        (2, 0.5, 15),  # rand(30)
        (2, 0.35, 10),
        (24, LAST_BELOW_ONE, 249),  # rand(250) tops out at 249
        (24, 0.999, 249),
        (2**49 - 1, 0.5, 5 * 2**49),  # last fast-path count
        (2**49, 0.5, 5 * (2**49 + 1)),  # first Python-path count
        (2**60, 0.5, int(0.5 * (10 * (2**60 + 1)))),  # float rounding of n, as the spec says
    ],
)
def test_retry_jitter_sidekiq8(core_impl: ModuleType, count: int, r: float, expected: int) -> None:
    assert core_impl.retry_jitter(count, r, True) == expected


@pytest.mark.parametrize("count", [0, 1, 2, 3, 7, 24, 25, 99, 1000, 123456, 2**49 - 1, 2**49, 2**52, 2**70])
def test_retry_jitter_stays_in_range(core_impl: ModuleType, count: int) -> None:
    n = 10 * (count + 1)
    draws = [0.0, 1e-300, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.999999, LAST_BELOW_ONE]
    draws += [k / 1024 for k in range(1024)]
    for r in draws:
        old = core_impl.retry_jitter(count, r, False)
        assert 0 <= old <= 9 * (count + 1)
        assert old % (count + 1) == 0
        assert old == min(int(r * 10), 9) * (count + 1)
        new = core_impl.retry_jitter(count, r, True)
        assert 0 <= new <= n - 1
        assert new == min(int(r * n), n - 1)


def test_retry_jitter_covers_every_value(core_impl: ModuleType) -> None:
    # Evenly spaced draws hit every jitter value the Ruby formulas can produce.
    count = 4
    draws = [(k + 0.5) / 5000 for k in range(5000)]
    assert {core_impl.retry_jitter(count, r, True) for r in draws} == set(range(50))
    assert {core_impl.retry_jitter(count, r, False) for r in draws} == {5 * d for d in range(10)}


def test_retry_jitter_accepts_int_draw_and_truthy_flag(core_impl: ModuleType) -> None:
    assert core_impl.retry_jitter(3, 0, True) == 0
    assert core_impl.retry_jitter(3, 0.5, 1) == 20
    assert core_impl.retry_jitter(3, 0.5, "") == 20  # falsy: Sidekiq <= 7 formula (5 * 4)
    assert core_impl.retry_jitter(3, 0.51, None) == 20


@pytest.mark.parametrize("r", [1.0, -0.1, -1e-300, 1.5, float("inf"), float("-inf"), float("nan"), 1, True])
def test_retry_jitter_rejects_draws_outside_unit_interval(core_impl: ModuleType, r: float) -> None:
    with pytest.raises(ValueError, match=r"^r must be in \[0, 1\), got "):
        core_impl.retry_jitter(0, r, True)


@pytest.mark.parametrize("r", ["0.5", None, [0.5]])
def test_retry_jitter_rejects_non_numeric_draws(core_impl: ModuleType, r: object) -> None:
    with pytest.raises(TypeError, match=r"^r must be a real number, not "):
        core_impl.retry_jitter(0, r, True)


@pytest.mark.parametrize("count", [-1, -(2**64)])
def test_retry_jitter_rejects_negative_counts(core_impl: ModuleType, count: int) -> None:
    with pytest.raises(ValueError, match=r"^count must be >= 0$"):
        core_impl.retry_jitter(count, 0.5, True)


def test_retry_jitter_rejects_non_integer_count(core_impl: ModuleType) -> None:
    with pytest.raises(TypeError, match=r"cannot be interpreted as an integer"):
        core_impl.retry_jitter(1.0, 0.5, False)


def test_retry_jitter_overflows_beyond_float_range_in_sidekiq8_mode(core_impl: ModuleType) -> None:
    # Documented limit: r * n is float arithmetic. The <= 7 formula is exact at any size.
    with pytest.raises(OverflowError):
        core_impl.retry_jitter(10**400, 0.5, True)
    assert core_impl.retry_jitter(10**400, 0.5, False) == 5 * (10**400 + 1)
