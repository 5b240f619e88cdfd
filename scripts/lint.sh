#!/usr/bin/env bash
# make lint: ruff and mypy on the worker and the benchmarks, rubocop (Debian's package) on the
# sidecar. The configurations are committed: pyproject.toml ([tool.ruff], [tool.mypy]) and
# sidecar/.rubocop.yml. Exit non-zero if any of them finds something.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
status=0
echo "lint: ruff"; $PY -m ruff check fastworker bench || status=1
echo "lint: mypy"; $PY -m mypy fastworker bench || status=1
echo "lint: rubocop"; (cd sidecar && rubocop --format simple) || status=1
exit $status
