#!/bin/sh
# protected mode off, as in the official image (a later --protected-mode in ARGS still wins)
if [ "$1" = "redis-server" ]; then shift; set -- redis-server --protected-mode no "$@"; fi
exec "$@"
