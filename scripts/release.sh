#!/usr/bin/env bash
# Builds the release: static (CGO_ENABLED=0) binaries of rmb-registrar,
# rmb-relay, rmb-peer and rmb for linux/amd64 and linux/arm64, stamped with
# VERSION and COMMIT, one tar.gz per platform in dist/, and
# dist/SHA256SUMS over the archives. Run by `make release`.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${GO:=go}"
: "${VERSION:?VERSION is required (make release sets it from git describe)}"
: "${COMMIT:=}"
pkg=github.com/rmb-go/rmb/internal/buildinfo
ldflags="-s -w -X $pkg.version=$VERSION -X $pkg.commit=$COMMIT"

rm -rf dist
mkdir -p dist
for arch in amd64 arm64; do
  name="rmb-$VERSION-linux-$arch"
  out="dist/$name"
  mkdir -p "$out"
  for bin in registrar relay peer rmb; do
    exe="rmb-$bin"
    [[ $bin == rmb ]] && exe=rmb
    GOOS=linux GOARCH=$arch CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags" -o "$out/$exe" "./cmd/$bin"
  done
  cp LICENSE README.md CHANGELOG.md "$out/"
  tar -C dist -czf "dist/$name.tar.gz" "$name"
  rm -rf "$out"
done
(cd dist && sha256sum -- *.tar.gz > SHA256SUMS)
echo "release: $(ls dist | tr '\n' ' ')"
