#!/usr/bin/env bash
# The project's test command (README, .ci/run). On a fresh Debian machine, run as
# root, it installs what the tests use; a warm machine skips every install.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

log() { printf '\n==> %s\n' "$*"; }

# --long: the full reliability runs (crash matrix of 200 kill points, 10,000
# connections, a soak of many renewal periods, minutes of fuzzing per target).
# Without it every one of them runs its bounded quick form.
for arg in "$@"; do
  case "$arg" in
    --long) export REGENT_LONG=1 ;;
    -h|--help) echo "usage: scripts/test.sh [--long]"; exit 0 ;;
    *) echo "unknown argument: $arg (usage: scripts/test.sh [--long])" >&2; exit 2 ;;
  esac
done

# --- system packages the tests really use -------------------------------------
# dbus + gnome-keyring: the real Secret Service the keychain tests start.
# gcc: C compiler for aws-lc-sys (rustls' crypto) and the C examples (with its
# AddressSanitizer/LeakSanitizer runtime); g++: the C++ wrapper's example;
# python3: the Python binding's tests; nm (binutils): the exported-symbols check.
# systemd-analyze: the unit files are verified; dpkg-deb: the .deb is built and
# unpacked into a scratch root (python3 also parses the launchd plist).
declare -A want=(
  [dbus-daemon]=dbus
  [gnome-keyring-daemon]=gnome-keyring
  [cc]=gcc
  [g++]=g++
  [python3]=python3
  [nm]=binutils
  [systemd-analyze]=systemd
  [dpkg-deb]=dpkg
)
missing=()
for cmd in "${!want[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
apt_install ${missing[@]+"${missing[@]}"}

for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "installing the $comp component"
    rustup component add "$comp"
  fi
done

# cargo-deb builds the .deb in the packaging test (the version scripts/package.sh pins).
if ! command -v cargo-deb >/dev/null 2>&1; then
  log "installing cargo-deb"
  cargo install --locked cargo-deb --version 3.8.0
fi

# A cold run builds three targets (host, static host, Windows) and keeps them;
# incremental caches would add gigabytes a clean clone never reuses.
export CARGO_INCREMENTAL=0
free_kib=$(df -Pk . 2>/dev/null | awk 'NR == 2 { print $4 }' || true)
if [ "${free_kib:-0}" -lt $((12 * 1024 * 1024)) ]; then
  echo "warning: $((free_kib / 1024)) MiB free here; a cold run needs about 12 GiB (target/ holds three builds)" >&2
fi

# --- checks ---------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all --check

log "cargo clippy (-D warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "cargo doc (warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

# Data flows one way inside each crate (docs/ARCHITECTURE.md).
log "no import cycles between modules"
python3 scripts/module_cycles.py crates/*/src

# The `regent` the packages ship is linked statically (scripts/package.sh: its
# start-up is most of a `regent token` process); build it the same way, in
# debug, so that tests/tests/static_regent.rs runs it.
host=$(rustc -vV | sed -n 's/^host: //p')
log "regent, statically linked ($host, crt-static)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --locked --quiet --target "$host" -p regent-cli --bin regent
export REGENT_TEST_STATIC_REGENT="$PWD/target/$host/debug/regent"

log "cargo test"
test_log=$(mktemp)
trap 'rm -f "$test_log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$test_log"
# Fuzzing: every run replays the committed corpus and a bounded set of
# mutations of it on stable Rust (crates/regent-agent/tests/fuzz_corpus.rs, above);
# --long adds five minutes of coverage-guided cargo-fuzz per target.
if [ -n "${REGENT_LONG:-}" ]; then
  log "scripts/fuzz.sh --long (coverage-guided, 5 minutes per target)"
  scripts/fuzz.sh --long
fi
log "regent-bench smoke run (--quick: the scenarios run; targets are not judged)" && cargo run -p regent-bench --locked --quiet -- all --quick

# macOS from Linux: clippy for both Apple targets, libregent.dylib linked,
# regent-bench linted for Windows (it installs zig and cargo-zigbuild).
log "scripts/test-macos.sh (macOS cross-check)"
macos_status=0
scripts/test-macos.sh || macos_status=$?

# The Windows job: cross-build, clippy, tests and an end-to-end run under Wine
# (scripts/test-windows.sh; REGENT_SKIP_WINDOWS=1 skips it). It prints its own
# `windows: N passed, N failed` line; a failure fails this script at the end.
windows_status=0
if [ -z "${REGENT_SKIP_WINDOWS:-}" ]; then
  log "scripts/test-windows.sh"
  scripts/test-windows.sh || windows_status=$?
fi

log "disk: target/ holds $(du -sh target 2>/dev/null | cut -f1) ($(df -Ph . | awk 'NR == 2 { print $4 }') free)"

# One closing line with the totals of every test binary above (the last line
# cargo prints is a doc-test block that may well hold no test).
awk '/^test result: /{p+=$4; f+=$6} END {printf "tests: %d passed, %d failed\n", p, f}' "$test_log"
if [ "$windows_status" -ne 0 ]; then exit "$windows_status"; fi
exit "$macos_status"
