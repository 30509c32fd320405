#!/usr/bin/env bash
# Builds the release packages: target/debian/regent_*.deb (cargo-deb) and
# target/generate-rpm/regent-*.rpm (cargo-generate-rpm). The metadata lives in
# crates/regent-cli/Cargo.toml; units, config and maintainer scripts in
# packaging/. Installs the two cargo tools (pinned) when they are missing.
#   scripts/package.sh            both packages
#   scripts/package.sh deb|rpm    one of them
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1
what="${1:-all}"

need() {
  local tool=$1 crate=$2 version=$3
  if ! command -v "$tool" >/dev/null 2>&1; then
    log "installing $crate $version"
    cargo install --locked "$crate" --version "$version"
  fi
}

log "cargo build --release -p regent-cli"
cargo build --release --locked -p regent-cli

# `regent` (the small binary that answers `regent token`) is linked
# statically: a script that runs `regent token` per request pays the
# process's start-up every time, and the dynamic loader and libgcc_s were
# most of it (1.17 ms -> 0.83-0.94 ms against 0.66-0.71 ms for `true`,
# docs/performance.md). A second build for the host target with crt-static;
# `regentd` stays dynamic (libregent.so and the keychain need it).
host=$(rustc -vV | sed -n 's/^host: //p')
log "cargo build --release --target $host --bin regent (crt-static)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$host" -p regent-cli --bin regent
rm -f target/release/regent
cp "target/$host/release/regent" target/release/regent
if readelf -l target/release/regent | grep -q 'INTERP'; then
  echo "package.sh: target/release/regent is not statically linked" >&2
  exit 1
fi

if [ "$what" = all ] || [ "$what" = deb ]; then
  need cargo-deb cargo-deb "$CARGO_DEB_VERSION"
  log "cargo deb"
  cargo deb --no-build --locked -p regent-cli
fi

if [ "$what" = all ] || [ "$what" = rpm ]; then
  need cargo-generate-rpm cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"
  log "cargo generate-rpm"
  cargo generate-rpm -p crates/regent-cli
fi

log "packages"
ls -l target/debian/*.deb target/generate-rpm/*.rpm 2>/dev/null || true
