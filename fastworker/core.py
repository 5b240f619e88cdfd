"""The core's public face: the compiled ``_core`` when available, else the twin ``_core_py``.

The twin is used when FASTWORKER_NO_EXTENSIONS is set non-empty, off CPython, and under
TYPE_CHECKING (type checkers read the twin, so no stub can drift); an ImportError of the
compiled module (no build) also falls back to it. ``IMPLEMENTATION`` says which one ran.
"""

import os
import sys
from typing import TYPE_CHECKING

NO_EXTENSIONS = bool(os.environ.get("FASTWORKER_NO_EXTENSIONS")) or sys.implementation.name != "cpython"

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._core_py import (IMPLEMENTATION, Envelope, PayloadError, TokenPool, decode_envelope, ms_timestamps,
                           retry_delay, retry_jitter, to_epoch_seconds)
else:
    try:
        from ._core import (IMPLEMENTATION, Envelope, PayloadError, TokenPool, decode_envelope, ms_timestamps,
                            retry_delay, retry_jitter, to_epoch_seconds)
    except ImportError:  # pragma: no cover - not built; tests/core/test_selector.py catches this
        from ._core_py import (IMPLEMENTATION, Envelope, PayloadError, TokenPool, decode_envelope,
                               ms_timestamps, retry_delay, retry_jitter, to_epoch_seconds)

__all__ = (
    "IMPLEMENTATION",
    "Envelope",
    "PayloadError",
    "TokenPool",
    "decode_envelope",
    "ms_timestamps",
    "retry_delay",
    "retry_jitter",
    "to_epoch_seconds",
)
