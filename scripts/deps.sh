#!/usr/bin/env bash
# Installs the system packages the tests and the demo need, only when they
# are missing: redis-server, protoc, python3 with redis-py, chromium (the
# relay status page's browser test), postgresql (the registrar's
# PostgreSQL tests run initdb and postgres from it), nats-server (relay
# cluster tests), nodejs and npm (the TypeScript client interop test).
# Uses apt-get (Debian/Ubuntu); elsewhere it says what to install and fails.
set -euo pipefail

# `deps.sh demo` installs only what the demo runs (redis-server); with no
# argument, everything the tests need.
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [[ "${1:-}" != demo ]]; then
  command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
  /usr/bin/python3 -c 'import redis' >/dev/null 2>&1 || need+=(python3-redis)
  command -v chromium >/dev/null 2>&1 || need+=(chromium)
  compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || command -v postgres >/dev/null 2>&1 || need+=(postgresql)
  command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
  [[ -x /usr/sbin/nginx ]] || command -v nginx >/dev/null 2>&1 || need+=(nginx)
  # Node.js and npm: test/interop/ts runs the published TypeScript client.
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
fi

if [[ ${#need[@]} -eq 0 ]]; then
  exit 0
fi
echo "deps: installing ${need[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "deps: apt-get not found; install these packages yourself: ${need[*]}" >&2
  exit 1
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
    echo "deps: need root (or sudo) to install: ${need[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "deps: installed ${need[*]}" >&2
