"""fastworker.core picks the compiled twin, unless told not to; both twins export the same API."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastworker import _core_py, core

from .conftest import NO_EXTENSIONS

PUBLIC = {
    "IMPLEMENTATION", "Envelope", "PayloadError", "TokenPool", "decode_envelope", "ms_timestamps", "retry_delay",
    "retry_jitter", "to_epoch_seconds",
}  # fmt: skip
ROOT = Path(__file__).resolve().parents[2]


def _selected(no_extensions: str | None) -> str:
    env = dict(os.environ)
    env.pop("FASTWORKER_NO_EXTENSIONS", None)
    if no_extensions is not None:
        env["FASTWORKER_NO_EXTENSIONS"] = no_extensions
    out = subprocess.run(
        [sys.executable, "-c", "import fastworker.core as c; print(c.IMPLEMENTATION, c.decode_envelope.__module__)"],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.mark.skipif(NO_EXTENSIONS, reason="FASTWORKER_NO_EXTENSIONS is set")
def test_compiled_loaded() -> None:
    compiled = importlib.import_module("fastworker._core")
    assert core.IMPLEMENTATION == "c"
    assert compiled.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), compiled.__file__
    assert core.decode_envelope is compiled.decode_envelope
    assert core.TokenPool is compiled.TokenPool
    assert core.Envelope is compiled.Envelope


@pytest.mark.skipif(NO_EXTENSIONS, reason="FASTWORKER_NO_EXTENSIONS is set")
def test_selector_without_the_switch_picks_c() -> None:
    assert _selected(None) == "c fastworker._core"
    assert _selected("") == "c fastworker._core"  # set but empty: not a request for the twin


def test_selector_with_the_switch_picks_py() -> None:
    assert _selected("1") == "py fastworker._core_py"


@pytest.mark.skipif(not NO_EXTENSIONS, reason="only meaningful in the FASTWORKER_NO_EXTENSIONS run")
def test_this_run_uses_the_twin() -> None:
    assert core.IMPLEMENTATION == "py"
    assert core.decode_envelope is _core_py.decode_envelope


def test_twins_export_the_same_names(core_impl) -> None:
    assert set(core_impl.__all__) == PUBLIC
    assert set(core.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(core_impl, name), name
        assert hasattr(core, name), name
    assert core_impl.IMPLEMENTATION == {"fastworker._core": "c", "fastworker._core_py": "py"}[core_impl.__name__]


def test_twin_documents_the_spec() -> None:
    for name in PUBLIC - {"IMPLEMENTATION"}:
        doc = getattr(_core_py, name).__doc__
        assert doc and len(doc) > 40, name
