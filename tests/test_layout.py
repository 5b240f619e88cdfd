"""The package's shape: no module imports another that imports it back (not even lazily, inside
a function), README's Layout names every module in fastworker/, and the Python it installs on is
the one it is checked for."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastworker"


def _imports(path: Path) -> set[str]:
    """The fastworker modules ``path`` imports, anywhere in it (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import a, b
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("fastworker."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("fastworker."))
    return found


def test_no_module_imports_one_that_imports_it_back():
    modules = {p.stem: p for p in PACKAGE.glob("*.py")}
    graph = {name: _imports(path) & modules.keys() - {name} for name, path in modules.items()}
    cycles = []

    def visit(name: str, trail: list[str]) -> None:
        for nxt in sorted(graph[name]):
            if nxt in trail:
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, trail + [nxt])
        done.add(name)

    done: set[str] = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_the_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Layout", 1)[1].split("```")[1]
    listed = block.split("sidecar/", 1)[0]  # the fastworker/ entry
    words = set(re.findall(r"[a-z_]+", listed))
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__", "_core_py"}
    assert not sorted(modules - words)


def test_it_installs_only_on_the_python_it_is_checked_for():
    # the code needs 3.11 (asyncio.timeout in clock.py and the sidecar client): a looser floor
    # would let pip install a worker that fails at its first wait
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    floor = re.fullmatch(r">=(\d+)\.(\d+)", cfg["project"]["requires-python"])
    assert floor is not None
    checked = tuple(int(x) for x in cfg["tool"]["mypy"]["python_version"].split("."))
    assert (int(floor[1]), int(floor[2])) == checked
    assert cfg["tool"]["ruff"]["target-version"] == "py%d%d" % checked
