#!/usr/bin/env bash
# make compose-test: the compose stack built, run and broken under a real Docker engine.
#   1. installs what is missing (docker.io, docker-compose, mmdebstrap) and starts dockerd if none answers;
#   2. checks the compose files against the Compose Specification (what Compose v2 reads);
#      base images: pulled, or local stand-ins from Debian packages (scripts/docker-standins.sh);
#   3. builds the images (cached layers are reused: a machine pays the full build once);
#   4. runs the stack (docker-compose.yml + deploy/compose.ci.yml) under its own project name, on a
#      free loopback port, and bench/load.py with every fault;
#   5. tears down containers, networks and volumes, passed or failed.
# Then the monitoring profile: Prometheus scrapes every one of 3 worker replicas, and every query
# of the Grafana dashboard evaluates there (scripts/check_monitoring.py).
# Last line: `compose: N enqueued, N done, 0 lost, D duplicated, F faults`.
# FASTWORKER_COMPOSE_FAULTS overrides the faults (comma-separated, bench/load.py --faults).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
t0=$(date +%s)
say() { echo "compose-test: $*" >&2; }
fail_line() { echo "compose: 0 enqueued, 0 done, 0 lost, 0 duplicated, 0 faults (FAILED: $*)"; exit 1; }

need=()
command -v dockerd >/dev/null || need+=(docker.io)  # the engine: a docker client alone (some images ship one) is not enough
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >/dev/null \
    || fail_line "apt-get install ${need[*]}"
fi
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd"
  (dockerd >/var/log/dockerd.log 2>&1 &)
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || fail_line "dockerd does not answer (/var/log/dockerd.log)"
fi

# the files as Compose v2 reads them: the Compose Specification's schema (shipped with docker-compose)
$PY -m pytest -q -p no:cacheprovider tests/test_deploy.py -k compose_specification >/dev/null \
  || fail_line "the compose files do not follow the Compose Specification (pytest tests/test_deploy.py)"

bash scripts/docker-standins.sh || fail_line "base images"

# the stack's own name, port and secret: nothing shared with another run or with the machine's
# Redis/PostgreSQL (the stack publishes only the app's port, on 127.0.0.1)
project=fwci$$
work=$(mktemp -d)
export FASTWORKER_APP_PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export FASTWORKER_PROMETHEUS_PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export FASTWORKER_SECRET_PATH=$work/sidecar_secret
$PY -c 'import secrets; print(secrets.token_urlsafe(48))' > "$FASTWORKER_SECRET_PATH"
chown 1000 "$FASTWORKER_SECRET_PATH" && chmod 400 "$FASTWORKER_SECRET_PATH"   # uid 1000: both images' user
compose="docker-compose -p $project -f docker-compose.yml -f deploy/compose.ci.yml"

teardown() {
  $compose down -v --remove-orphans -t 5 >/dev/null 2>&1
  rm -rf "$work"
}
trap teardown EXIT

tb=$(date +%s)
$compose build -q >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; fail_line "docker-compose build"; }
say "images built in $(( $(date +%s) - tb )) s: $(docker image ls --format '{{.Repository}} {{.Size}}' fastworker-worker) / $(docker image ls --format '{{.Repository}} {{.Size}}' fastworker-ruby)"
$compose up -d --no-build >"$work/up.log" 2>&1 || { tail -30 "$work/up.log" >&2; $compose logs --tail 40 >&2; fail_line "docker-compose up"; }

faults=${FASTWORKER_COMPOSE_FAULTS:-redis,kill,sidecar,scale,rolling,stop}
$PY bench/load.py --label compose --app-url "http://127.0.0.1:$FASTWORKER_APP_PORT" --compose "$compose" \
  --faults "$faults" --burst 1000 --rate 20 --duration 10 --json "$work/report.json" >"$work/load.out"
status=$?
[ $status -eq 0 ] || $compose logs --tail 60 worker sidecar >&2

# the monitoring profile: Prometheus finds every worker replica through compose's DNS and scrapes
# it, and every query of the Grafana dashboard evaluates there (Grafana itself is not started: no
# image of it can be built from Debian's packages)
if [ "${FASTWORKER_COMPOSE_MONITORING:-1}" != 0 ]; then
  $compose up -d --no-deps --no-recreate --timeout 35 --scale worker=3 worker >/dev/null 2>&1
  $compose up -d --no-deps prometheus >/dev/null 2>&1
  $PY scripts/check_monitoring.py "http://127.0.0.1:$FASTWORKER_PROMETHEUS_PORT" 3 deploy/grafana/fastworker.json || status=1
fi
line=$(tail -1 "$work/load.out")
[ -n "$line" ] || line="compose: 0 enqueued, 0 done, 0 lost, 0 duplicated, 0 faults (FAILED: bench/load.py exited $status)"
teardown; trap - EXIT
say "$(( $(date +%s) - t0 )) s in all; $(docker ps -aq --filter "label=com.docker.compose.project=$project" | wc -l) containers left"
echo "$line"
exit $status
