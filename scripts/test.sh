#!/usr/bin/env bash
# Every test: pytest (worker, core on the compiled build, end-to-end with Ruby and Rails), the
# sidecar's minitest suite, the core again on the pure-Python twin, and the core micro-benchmarks.
# Last, the compose stack built, loaded and broken under Docker (make compose-test).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || {
  echo "test: starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  sleep 0.5
}
# the suite runs signed, as users run it: one fresh secret for the worker, the sidecar and the stub
export FASTWORKER_SIDECAR_SECRET=${FASTWORKER_SIDECAR_SECRET:-$($PY -c 'import secrets; print(secrets.token_urlsafe(48))')}
status=0
echo "== lint (scripts/lint.sh: ruff, mypy, rubocop)"
bash scripts/lint.sh || status=1
echo "== sidecar (minitest)"
if [ -f sidecar/Rakefile ]; then
  (cd sidecar && timeout 600 ruby -Ilib -Itest -e 'Dir["test/*_test.rb"].sort.each { |f| require File.expand_path(f) }') || status=1
fi
echo "== core on the pure-Python twin (FASTWORKER_NO_EXTENSIONS=1)"
FASTWORKER_NO_EXTENSIONS=1 $PY -m pytest tests/core -q -p no:cacheprovider || status=1
echo "== the worker end to end on the pure-Python twin"
FASTWORKER_NO_EXTENSIONS=1 $PY -m pytest tests/test_worker.py -q -p no:cacheprovider \
  -k "exactly_once or malformed or uses_uvloop or failure_writes" || status=1
echo "== micro-benchmarks: the core (compiled vs twin) and the hot path against Redis"
$PY -m pytest bench/bench_core.py bench/bench_hot_path.py --benchmark-only -q -p no:cacheprovider \
  --benchmark-columns=min,median,ops || status=1
echo "== the sidecar's batch path in Ruby, without HTTP"
ruby bench/sidecar_batch.rb || status=1
echo "== benchmarks, short runs after a warm-up (ratios for the log; the full runs are in README.md)"
$PY bench/throughput.py --jobs 20000 --json || status=1
$PY bench/vs_sidekiq.py --quick --redis-url redis://127.0.0.1:6379/12 || status=1
echo "== pytest (includes the hypothesis fuzzers, tests/test_fuzz.py: FASTWORKER_FUZZ_EXAMPLES per property, default 150)"
$PY -m pytest -q -p no:cacheprovider "$@" || status=1
echo "== the compose stack under a real Docker engine (scripts/compose-test.sh; FASTWORKER_COMPOSE_TEST=0 skips it)"
if [ "${FASTWORKER_COMPOSE_TEST:-1}" != 0 ]; then bash scripts/compose-test.sh || status=1; fi
exit $status
