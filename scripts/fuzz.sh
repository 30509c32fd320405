#!/usr/bin/env bash
# Fuzzes regent's parsers of hostile input for a bounded time each (issue 9):
#   ipc_frame       framing + request decoding (what a local client sends)
#   client_frame    the client library reading the agent's answers
#   upstream_reply  license-server status/headers/body -> grant, token endpoint or error
#   config_toml     the configuration file
#   store_file      state.json, the secrets file, keychain entries
#
# usage: scripts/fuzz.sh [--quick | --long | --time SECONDS] [--asan] [--fresh] [TARGET...]
#   default 30 s per target; --quick 10 s; --long 300 s.
#   --asan   build with AddressSanitizer (slower; regent itself has no unsafe code)
#   --fresh  forget the corpus grown by earlier runs (fuzz/target/corpus)
#
# Each target starts from the committed seeds (fuzz/corpus/TARGET, read only)
# plus what earlier runs found. A crash (a panic: every target asserts
# properties) is saved under fuzz/artifacts/TARGET/ and the script exits 1.
# Reproduce one with: scripts/fuzz.sh --repro fuzz/artifacts/TARGET/crash-…
# The committed corpus is also replayed by a normal test on stable Rust:
# cargo test -p regent-agent --features fuzzing --test fuzz_corpus.
set -euo pipefail
caller=$PWD
self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$self")/.."
root=$PWD

all_targets=(ipc_frame client_frame upstream_reply config_toml store_file)
seconds=30
sanitizer=none
fresh=0
repro=""
targets=()
usage() { sed -n '2,20p' "$self" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) seconds=10 ;;
    --long) seconds=300 ;;
    --time) seconds=${2:?--time needs a number of seconds}; shift ;;
    --asan) sanitizer=address ;;
    --fresh) fresh=1 ;;
    --repro)
      repro=${2:?--repro needs a crash file}; shift
      [ -e "$repro" ] || repro="$caller/$repro"
      [ -e "$repro" ] || { echo "no such file: $repro" >&2; exit 2; } ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    *) targets+=("$1") ;;
  esac
  shift
done
case "$seconds" in ''|*[!0-9]*) echo "--time wants whole seconds, got: $seconds" >&2; exit 2 ;; esac
[ "${#targets[@]}" -gt 0 ] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "unknown target: $t (one of: ${all_targets[*]})" >&2; exit 2; }
done

log() { printf '\n==> %s\n' "$*"; }

# --- tools --------------------------------------------------------------------
# libFuzzer (built by libfuzzer-sys) is C++: it needs a C++ compiler.
if ! command -v c++ >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing g++ (libFuzzer is C++)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends g++
  else
    echo "a C++ compiler is needed (libFuzzer): sudo apt-get install -y g++" >&2
    exit 1
  fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
# cargo-fuzz passes -Z flags to rustc; they are accepted by a stable toolchain
# only with RUSTC_BOOTSTRAP (nightly needs nothing).
export RUSTC_BOOTSTRAP=1

# --- build (all targets at once: they share every dependency) -------------------
target_dir="fuzz/target"
[ "$sanitizer" = none ] || target_dir="fuzz/target/$sanitizer"
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="$root/$target_dir/$triple/release"
log "building the fuzz targets (sanitizer: $sanitizer)"
build_start=$(date +%s)
(cd fuzz && cargo fuzz build --sanitizer "$sanitizer" --codegen-units 16 \
  --target-dir "$root/$target_dir")
echo "built in $(( $(date +%s) - build_start )) s"

# Scratch files (store_file writes the files it loads) go to tmpfs when there is
# one: the secret and state stores fsync every write.
scratch_parent=/tmp
[ -d /dev/shm ] && [ -w /dev/shm ] && scratch_parent=/dev/shm
scratch=$(mktemp -d "$scratch_parent/regent-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT

if [ -n "$repro" ]; then
  t=$(basename "$(dirname "$repro")")
  [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "expected .../TARGET/FILE (e.g. fuzz/artifacts/ipc_frame/crash-…), got $repro" >&2; exit 2; }
  log "reproducing $repro with $t"
  TMPDIR="$scratch" "$bin_dir/$t" "$repro"
  exit $?
fi

# --- run -------------------------------------------------------------------------

max_len() {
  case "$1" in
    ipc_frame|client_frame) echo 70000 ;;   # a little beyond the 64 KiB frame cap
    upstream_reply) echo 70000 ;;
    *) echo 16384 ;;
  esac
}

failed=()
summary=()
for t in "${targets[@]}"; do
  work="fuzz/target/corpus/$t"
  [ "$fresh" = 0 ] || rm -rf "$work"
  mkdir -p "$work" "fuzz/artifacts/$t"
  log "fuzzing $t for $seconds s"
  out="$scratch/$t.log"
  set +e
  TMPDIR="$scratch" "$bin_dir/$t" "$work" "fuzz/corpus/$t" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len="$(max_len "$t")" \
    -dict="fuzz/dict/$t.dict" -artifact_prefix="fuzz/artifacts/$t/" \
    -print_final_stats=1 -close_fd_mask=1 >"$out" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$out" | tail -1 | cut -d' ' -f2)
  size=$(find "$work" -type f | wc -l)
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$out" | tail -1)
    echo "CRASH in $t (exit $rc): ${artifact:-see the log below}"
    grep -A12 -m1 -E "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$out" || tail -30 "$out"
    [ -z "$artifact" ] || echo "reproduce: scripts/fuzz.sh --repro $artifact"
    summary+=("$(printf '%-15s CRASH      runs=%-10s exec/s=%-7s' "$t" "${runs:-?}" "${rate:-?}")")
  else
    summary+=("$(printf '%-15s ok         runs=%-10s exec/s=%-7s corpus=%-6s cov=%s' "$t" "${runs:-?}" "${rate:-?}" "$size" "${cov:-?}")")
  fi
done

log "summary ($seconds s per target, sanitizer: $sanitizer)"
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "crashes in: ${failed[*]} (inputs under fuzz/artifacts/)" >&2
  exit 1
fi
