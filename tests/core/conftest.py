"""Fixtures for the core: every behaviour test runs on both twins.

``core_impl`` is the module under test, ``fastworker._core`` ("c") or ``fastworker._core_py``
("py"). The compiled case is skipped only when FASTWORKER_NO_EXTENSIONS is set; otherwise a
missing or broken build fails the tests instead of silently testing the twin twice.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import pytest

# When a hypothesis test fails, its pytest plugin imports libcst to suggest a patch, and that
# import emits a DeprecationWarning (mypy_extensions.TypedDict) which filterwarnings=error turns
# into an INTERNALERROR that hides the falsifying example. Import it once, quietly, up front.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import libcst  # noqa: F401
    except ImportError:
        pass

NO_EXTENSIONS = bool(os.environ.get("FASTWORKER_NO_EXTENSIONS"))

MODULES = {"c": "fastworker._core", "py": "fastworker._core_py"}


def load_impl(name: str) -> ModuleType:
    if name == "c" and NO_EXTENSIONS:
        pytest.skip("FASTWORKER_NO_EXTENSIONS is set: the compiled core is not under test")
    return importlib.import_module(MODULES[name])


# Session scope: the module is stateless, and hypothesis refuses function-scoped fixtures.
@pytest.fixture(scope="session", params=sorted(MODULES))
def core_impl(request: pytest.FixtureRequest) -> ModuleType:
    """The core module under test (parametrized: "c", "py")."""
    return load_impl(request.param)


@pytest.fixture(scope="session")
def twins() -> tuple[ModuleType, ModuleType]:
    """(compiled, pure) for parity tests; skipped with FASTWORKER_NO_EXTENSIONS."""
    return load_impl("c"), load_impl("py")
