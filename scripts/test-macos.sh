#!/usr/bin/env bash
# macOS from Linux (issue 13): what can be checked without a Mac.
#
#   - clippy -D warnings for the whole workspace (every target: lib, bins,
#     tests, benches) for aarch64-apple-darwin and x86_64-apple-darwin —
#     this compiles every crate for macOS, C code included (aws-lc-sys with
#     zig as the C compiler), without linking;
#   - libregent.dylib (regent-ffi's cdylib) linked for both, with zig as the
#     linker, and checked to be a Mach-O library of the right CPU;
#   - regent-bench linted for x86_64-pc-windows-gnu (it must build on every
#     platform; the Windows job covers the rest of the workspace there).
#
# Not done, because it cannot be here: linking the `regent` CLI or any test
# binary (they need the CoreFoundation, Security and CoreServices frameworks
# of a macOS SDK, which no Debian package or reachable registry provides),
# and running anything. docs/operations.md (macOS) lists what is unverified.
#
# Installs what a fresh Debian machine lacks (as root, apt-get update first,
# only when missing): python3-venv, gcc-mingw-w64-x86-64; ziglang from PyPI
# into a venv under the target directory (Debian's Python is "externally
# managed": a venv leaves the system alone and `cargo clean` removes it);
# cargo-zigbuild from crates.io; the rustup targets. Versions are pinned.
#
# Ends with one line: `macos: N passed, N failed` (steps).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

ZIGLANG_VERSION=0.15.2
CARGO_ZIGBUILD_VERSION=0.24.1
APPLE_TARGETS=(aarch64-apple-darwin x86_64-apple-darwin)
WINDOWS_TARGET=x86_64-pc-windows-gnu

target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir/macos-tools"
tools=$(cd "$target_dir/macos-tools" && pwd)
venv="$tools/venv"

log() { printf '\n==> %s\n' "$*"; }
die() { echo "test-macos: $*" >&2; exit 1; }
started=$(date +%s)

# --- tools ----------------------------------------------------------------------
apt_missing=()
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_missing+=(python3-venv)
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || apt_missing+=(gcc-mingw-w64-x86-64)
apt_install ${apt_missing[@]+"${apt_missing[@]}"}

if ! "$venv/bin/python3" -m ziglang version 2>/dev/null | grep -qx "$ZIGLANG_VERSION"; then
  log "installing ziglang $ZIGLANG_VERSION (PyPI) into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check "ziglang==$ZIGLANG_VERSION"
fi

if ! cargo-zigbuild --version 2>/dev/null | grep -q " $CARGO_ZIGBUILD_VERSION\$"; then
  log "installing cargo-zigbuild $CARGO_ZIGBUILD_VERSION"
  cargo install --locked cargo-zigbuild --version "$CARGO_ZIGBUILD_VERSION"
fi

installed=$(rustup target list --installed)
for t in "${APPLE_TARGETS[@]}" "$WINDOWS_TARGET"; do
  if ! grep -qx "$t" <<<"$installed"; then
    log "installing the rustup target $t"
    rustup target add "$t"
  fi
done

# cargo-zigbuild runs `python3 -m ziglang` from the venv; zig's caches stay
# under the target directory too, where the disk use is counted and cleaned.
export CARGO_ZIGBUILD_PYTHON_PATH="$venv/bin/python3"
export CARGO_ZIGBUILD_CACHE_DIR="$tools/cargo-zigbuild"
export ZIG_GLOBAL_CACHE_DIR="$tools/zig-cache"
export ZIG_LOCAL_CACHE_DIR="$tools/zig-cache"
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
# Incremental caches would double these target directories (~600 MB each) for
# a few seconds saved on a warm run.
export CARGO_INCREMENTAL=0

# --- steps ----------------------------------------------------------------------
passed=0
failed=0
failures=()
step() {
  local name=$1
  shift
  log "$name"
  local t0
  t0=$(date +%s)
  if "$@"; then
    passed=$((passed + 1))
    echo "--- $name: ok ($(($(date +%s) - t0)) s)"
  else
    failed=$((failed + 1))
    failures+=("$name")
    echo "--- $name: FAILED ($(($(date +%s) - t0)) s)"
  fi
}

# The file at $1 is a Mach-O 64-bit dynamic library for CPU type $2.
is_dylib() {
  python3 - "$1" "$2" <<'EOF'
import struct, sys
path, want = sys.argv[1], int(sys.argv[2], 16)
with open(path, "rb") as f:
    magic, cputype, _sub, filetype = struct.unpack("<IiiI", f.read(16))
MH_MAGIC_64, MH_DYLIB = 0xFEEDFACF, 6
if (magic, cputype & 0xFFFFFFFF, filetype) != (MH_MAGIC_64, want, MH_DYLIB):
    sys.exit(f"{path}: magic {magic:#x}, cputype {cputype:#x}, filetype {filetype}: not a 64-bit Mach-O dylib for cputype {want:#x}")
print(f"{path}: Mach-O 64-bit dylib, cputype {want:#x}")
EOF
}

# rustc warns that `xcrun` cannot find MacOSX.sdk: expected, there is none
# here; libregent needs only libSystem, which zig provides.
link_dylib() {
  local target=$1 cpu=$2
  cargo zigbuild -p regent-ffi --lib --locked --target "$target" &&
    is_dylib "$target_dir/$target/debug/libregent.dylib" "$cpu"
}

for t in "${APPLE_TARGETS[@]}"; do
  step "clippy -D warnings, workspace, $t" \
    cargo-zigbuild clippy --workspace --all-targets --keep-going --locked --target "$t" -- -D warnings
done
step "libregent.dylib links, aarch64-apple-darwin" link_dylib aarch64-apple-darwin 0x0100000c
step "libregent.dylib links, x86_64-apple-darwin" link_dylib x86_64-apple-darwin 0x01000007
# --no-deps: lint regent-bench itself; its dependencies are compiled (so
# they must build for Windows) but linted by the Windows job.
step "clippy -D warnings, regent-bench, $WINDOWS_TARGET" \
  cargo clippy -p regent-bench --all-targets --no-deps --locked --target "$WINDOWS_TARGET" -- -D warnings

log "disk: $(du -sh "$tools" 2>/dev/null | cut -f1) tools; target dirs: $(for t in "${APPLE_TARGETS[@]}" "$WINDOWS_TARGET"; do printf '%s %s; ' "$t" "$(du -sh "$target_dir/$t" 2>/dev/null | cut -f1)"; done)"
echo "wall time: $(($(date +%s) - started)) s"
for f in "${failures[@]+"${failures[@]}"}"; do echo "failed: $f"; done
echo "macos: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
