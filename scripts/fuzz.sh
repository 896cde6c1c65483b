#!/usr/bin/env bash
# Runs every fuzz target for FUZZTIME each (default 5s; `make fuzz` uses
# 60s). go test -fuzz takes one target per run, so they run one by one.
# New crashers land in the package's testdata/fuzz/ and become regression
# inputs that plain `go test` replays.
set -euo pipefail
fuzztime="${FUZZTIME:-5s}"
cd "$(dirname "$0")/.."
mapfile -t pkgs < <(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u)
n=0
for pkg in "${pkgs[@]}"; do
  for target in $(grep -h '^func Fuzz' "$pkg"/*_test.go | sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/'); do
    echo "fuzz: $pkg $target ($fuzztime)"
    go test -run='^$' -fuzz="^${target}\$" -fuzztime="$fuzztime" "$pkg" >/tmp/rmb-fuzz.log 2>&1 || { cat /tmp/rmb-fuzz.log; exit 1; }
    n=$((n+1))
  done
done
echo "fuzz: $n targets passed"
