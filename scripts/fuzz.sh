#!/usr/bin/env bash
# Runs every fuzz target for FUZZTIME each (default 5s; `make fuzz` uses
# 60s). go test -fuzz takes one target per run, so they run one by one.
# New crashers land in the package's testdata/fuzz/ and become regression
# inputs that plain `go test` replays.
#
# Go 1.26's fuzz coordinator can end a duration-bounded run with a bare
# "context deadline exceeded" and no failing input (golang/go#75804, fixed
# in Go 1.27). Such a run is repeated, up to three times in all; a run that
# writes a failing input, or fails any other way, fails at once.
set -euo pipefail
fuzztime="${FUZZTIME:-5s}"
cd "$(dirname "$0")/.."
mapfile -t pkgs < <(grep -rl --include='*_test.go' '^func Fuzz' . | xargs -n1 dirname | sort -u)
# files counts the inputs saved for a target (0 when it has none yet).
files() { if [[ -d $1 ]]; then find "$1" -type f | wc -l; else echo 0; fi; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
n=0
for pkg in "${pkgs[@]}"; do
  for target in $(grep -h '^func Fuzz' "$pkg"/*_test.go | sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/'); do
    corpus="$pkg/testdata/fuzz/$target"
    for attempt in 1 2 3; do
      echo "fuzz: $pkg $target ($fuzztime)"
      before=$(files "$corpus")
      if go test -run='^$' -fuzz="^${target}\$" -fuzztime="$fuzztime" "$pkg" >"$log" 2>&1; then
        break
      fi
      after=$(files "$corpus")
      if [[ $attempt -lt 3 && $after -eq $before ]] && grep -q 'context deadline exceeded' "$log" &&
        ! grep -q 'Failing input written' "$log"; then
        echo "fuzz: $target ended with Go's fuzztime race (golang/go#75804), no failing input: again"
        continue
      fi
      cat "$log"
      exit 1
    done
    n=$((n+1))
  done
done
echo "fuzz: $n targets passed"
