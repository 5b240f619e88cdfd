#!/usr/bin/env bash
# Installs what a fresh machine lacks: Debian's Ruby/Rails/Sidekiq/Puma (the sidecar and the tests'
# Sidekiq client), redis-server/redis-sentinel, docker-compose, and fastworker itself with its dev tools (pip).
# Idempotent: skips what is already there. Needs root (or sudo) for apt on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="ruby ruby-rails ruby-sidekiq puma ruby-sqlite3 ruby-pg redis-server redis-sentinel wrk rubocop docker-compose"
# docker-compose: its Compose Specification schema checks the compose files in pytest
# (tests/test_deploy.py), which runs before make compose-test would install it on a fresh machine
# note: Debian's `rails` metapackage pulls node tooling that does not install here; ruby-rails is Rails itself
missing=""
for p in $APT_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  echo "setup: apt-get install$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PY=${PYTHON:-python3}
# pip runs again when a dependency in pyproject.toml is missing or outside its bounds (a bound
# tightened after an earlier install), not only on a machine without fastworker
deps_ok() {
  $PY - <<'PYEOF' 2>/dev/null
import tomllib
from importlib.metadata import version
from packaging.requirements import Requirement
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for spec in project["dependencies"] + project["optional-dependencies"]["dev"]:
    req = Requirement(spec)
    assert req.specifier.contains(version(req.name), prereleases=True), spec
import fastworker._core
PYEOF
}
if ! deps_ok || [ fastworker/_core.pyx -nt "$(ls fastworker/_core*.so 2>/dev/null | head -1)" ]; then
  echo "setup: pip install -e .[dev]"
  $PY -m pip install -q --disable-pip-version-check "cython>=3.0,<4" setuptools wheel
  $PY -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[dev]"
  $PY setup.py -q build_ext --inplace >/dev/null
fi
$PY -c "import fastworker.core as c; print('setup: fastworker core =', c.IMPLEMENTATION)"
