"""to_epoch_seconds: Sidekiq's float-seconds / integer-milliseconds rule (compat §2.6)."""

from __future__ import annotations

import enum
from types import ModuleType

import pytest


class Millis(enum.IntEnum):
    EPOCH_MS = 1700000000500


class Seconds(float):
    pass


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1700000000.123456, 1700000000.123456),  # 6.x/7.x: float seconds, kept
        (1700000000.0, 1700000000.0),
        (1700000000123, 1700000000.123),  # 8.x: integer milliseconds
        (0, 0.0),
        (-1500, -1.5),
        (0.0, 0.0),
        (2**53 + 1, 9007199254740.992),  # float(value) rounds first, like the C conversion
        (2**63 - 1, 9223372036854776.0),  # the last C long long
        (2**63, 9223372036854776.0),  # the first that is not: Python-int path
        (-(2**63), -9223372036854776.0),
        (-(2**63) - 1, -9223372036854776.0),
        (10**300, 1e297),
        (Millis.EPOCH_MS, 1700000000.5),  # int subclasses are ints
        (Seconds(12.5), 12.5),  # float subclasses are floats (returned as plain float)
    ],
)
def test_numbers(core_impl: ModuleType, value: object, expected: float) -> None:
    seconds = core_impl.to_epoch_seconds(value)
    assert seconds == expected
    assert type(seconds) is float


@pytest.mark.parametrize(
    "value",
    [
        None, True, False, "1700000000.5", b"1700000000", [1700000000], {"t": 1},
        float("inf"), float("-inf"), float("nan"),
        10**400,  # too large for a float: a bad timestamp, not a crash
        -(10**400),
    ],
)  # fmt: skip
def test_not_a_timestamp(core_impl: ModuleType, value: object) -> None:
    assert core_impl.to_epoch_seconds(value) is None


def test_exact_float_is_returned_as_is(core_impl: ModuleType) -> None:
    value = 1700000000.25
    assert core_impl.to_epoch_seconds(value) is value


def test_every_realistic_millisecond_is_exact(core_impl: ModuleType) -> None:
    for ms in range(1700000000000, 1700000000000 + 2000, 7):
        assert core_impl.to_epoch_seconds(ms) == ms / 1000
