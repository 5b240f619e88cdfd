"""Builds the compiled core (fastworker/_core.pyx).

FASTWORKER_NO_EXTENSIONS=1  -> pure-Python build (the twin, fastworker/_core_py.py, is used)
FASTWORKER_CYTHON_TRACE=1   -> line tracing for coverage
"""
import os
import platform

from setuptools import setup

NO_EXTENSIONS = bool(os.environ.get("FASTWORKER_NO_EXTENSIONS")) or platform.python_implementation() != "CPython"

ext_modules = []
if not NO_EXTENSIONS:
    from Cython.Build import cythonize
    from setuptools import Extension

    trace = bool(os.environ.get("FASTWORKER_CYTHON_TRACE"))
    macros = [("CYTHON_TRACE", "1")] if trace else []
    ext_modules = cythonize(
        [Extension("fastworker._core", ["fastworker/_core.pyx"], define_macros=macros)],
        compiler_directives={
            "language_level": "3",
            "boundscheck": False,
            "wraparound": False,
            "linetrace": trace,
        },
    )
    print("*** fastworker: accelerated build (Cython core) ***")
else:
    print("*** fastworker: pure-Python build ***")

setup(ext_modules=ext_modules)
