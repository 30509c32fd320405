#!/usr/bin/env bash
# The project's test command (README, .ci/run). On a fresh Debian machine, run as
# root, it installs what the tests use; a warm machine skips every install.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

# --- system packages the tests really use -------------------------------------
# dbus + gnome-keyring: the real Secret Service the keychain tests start.
# gcc: C compiler for aws-lc-sys (rustls' crypto) and, later, the C examples.
declare -A want=(
  [dbus-daemon]=dbus
  [gnome-keyring-daemon]=gnome-keyring
  [cc]=gcc
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    echo "missing packages: ${missing[*]}" >&2
    echo "install them with: sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
fi

for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "installing the $comp component"
    rustup component add "$comp"
  fi
done

# --- checks ---------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all --check

log "cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

log "cargo test"
cargo test --workspace --locked
