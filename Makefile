# make run   - set everything up and run the demo: Redis (local), the demo Rails app, the sidecar, the worker
# make test  - set everything up and run every test (what CI runs)
# make lint  - ruff and mypy on fastworker/ and bench/, rubocop on sidecar/ (configs: pyproject.toml, sidecar/.rubocop.yml)
# make compose-test - the compose stack under a real Docker engine: built, loaded, faults (scripts/compose-test.sh)
# make bench - throughput/latency/memory figures (fastworker vs stub sidecar, core micro-benchmarks)
PYTHON ?= python3
REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: setup run test lint test-python test-sidecar test-pure bench compose-test

setup:
	@bash scripts/setup.sh

run: setup
	@bash scripts/run-local.sh

test: setup
	@bash scripts/test.sh

lint: setup
	@bash scripts/lint.sh

compose-test:
	@bash scripts/compose-test.sh

bench: setup
	$(PYTHON) -m pytest bench/bench_core.py --benchmark-only -q
	$(PYTHON) bench/throughput.py --jobs 100000 --concurrency 25
