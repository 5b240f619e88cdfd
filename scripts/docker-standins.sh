#!/usr/bin/env bash
# The base images docker-compose.yml and deploy/Dockerfile.* name: debian:bookworm-slim,
# python:3.11-slim-bookworm, redis:7.0, postgres:15, prom/prometheus. Pulled when Docker Hub answers; where it does
# not (the project's CI machine), built from Debian's packages and tagged with the official name,
# so the files users run stay the same. An image already present is kept: a machine builds its
# stand-ins once. FASTWORKER_STANDINS_REBUILD=1 rebuilds them.
set -euo pipefail
cd "$(dirname "$0")/.."
here=deploy/standins
log() { echo "standins: $*" >&2; }
have() { [ "${FASTWORKER_STANDINS_REBUILD:-0}" != 1 ] && docker image inspect "$1" >/dev/null 2>&1; }

hub=unknown
pull() {  # one failed pull says the hub is out of reach: the others are not tried
  [ "$hub" = no ] && return 1
  if timeout 20 docker pull -q "$1" >/dev/null 2>&1; then hub=yes; return 0; fi
  hub=no; log "cannot pull $1: building local stand-ins from Debian packages"; return 1
}

if ! have debian:bookworm-slim && ! pull debian:bookworm-slim; then
  command -v mmdebstrap >/dev/null || { log "mmdebstrap is missing (apt-get install mmdebstrap)"; exit 1; }
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  # minbase, without the docs, man pages and locales that the official slim image leaves out too
  mmdebstrap --quiet --variant=minbase \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$tmp/rootfs.tar"
  docker import --change 'CMD ["bash"]' --change 'LABEL org.fastworker.standin=debian:bookworm-slim' \
    "$tmp/rootfs.tar" debian:bookworm-slim >/dev/null
  log "debian:bookworm-slim imported from mmdebstrap"
fi

build() {  # build TAG DOCKERFILE: the official image if it can be pulled, else the stand-in
  local tag=$1 file=$2 ctx
  have "$tag" && return 0
  pull "$tag" && return 0
  ctx=$(mktemp -d)
  cp "$here/$file" "$here"/*.sh "$ctx/"
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/"
  docker build -q -t "$tag" -f "$ctx/$file" "$ctx" >/dev/null
  rm -rf "$ctx"
  log "$tag built from Debian packages ($file)"
}
build python:3.11-slim-bookworm Dockerfile.python
build redis:7.0 Dockerfile.redis
build postgres:15 Dockerfile.postgres
# the monitoring profile's Prometheus (Grafana has no Debian package: its stand-in is not built)
build "$(awk '/image: prom\/prometheus/ {print $2}' docker-compose.yml)" Dockerfile.prometheus
