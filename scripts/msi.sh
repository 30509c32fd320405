#!/usr/bin/env bash
# Builds the Windows installer regent-VERSION-x64.msi from cross-built
# binaries, on Linux, with wixl (Debian's `wixl`, from msitools):
#   scripts/msi.sh [BIN_DIR [OUT_DIR]]
# BIN_DIR holds regent.exe and regent.dll (default: the release build,
# target/x86_64-pc-windows-gnu/release, from
#   cargo build --release --target x86_64-pc-windows-gnu -p regent-cli -p regent-ffi);
# OUT_DIR defaults to target/msi. The WiX source: packaging/windows/regent.wxs.
# Prints the MSI's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

bin_dir=${1:-target/x86_64-pc-windows-gnu/release}
out_dir=${2:-target/msi}
for f in regent.exe regent.dll; do
  if [ ! -f "$bin_dir/$f" ]; then
    echo "scripts/msi.sh: $bin_dir/$f not found; cross-build it first (cargo build --target x86_64-pc-windows-gnu -p regent-cli -p regent-ffi)" >&2
    exit 1
  fi
done
for tool in wixl msibuild; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "scripts/msi.sh: $tool not found; install it with: sudo apt-get install -y --no-install-recommends wixl msitools" >&2
    exit 1
  fi
done

# wixl resolves File/@Source relative to the current directory and refuses
# absolute paths there.
bin_dir=$(realpath --relative-to=. "$bin_dir")
version=$(sed -n 's/^version = "\([0-9][0-9.]*\)".*/\1/p' Cargo.toml | head -n1)
if [ -z "$version" ]; then
  echo "scripts/msi.sh: no version = \"X.Y.Z\" in Cargo.toml" >&2
  exit 1
fi
mkdir -p "$out_dir"
msi="$out_dir/regent-$version-x64.msi"
wixl --arch x64 -D Version="$version" -D BinDir="$bin_dir" -D HeaderDir=bindings/c/include \
  -D ConfigDir=packaging/windows -o "$msi" packaging/windows/regent.wxs
# wixl 0.101 has no Permanent / NeverOverwrite: set them in the Component
# table (64-bit 256 + Permanent 16 + NeverOverwrite 128), so that the config
# an admin edited survives a repair, an upgrade and an uninstall.
msibuild "$msi" -q "UPDATE \`Component\` SET \`Attributes\` = 400 WHERE \`Component\` = 'Config'"
attrs=$(msiinfo export "$msi" Component | awk -F'\t' '$1 == "Config" {print $4}')
if [ "$attrs" != 400 ]; then
  echo "scripts/msi.sh: the Config component's attributes are '$attrs', not 400" >&2
  exit 1
fi
echo "$msi"
