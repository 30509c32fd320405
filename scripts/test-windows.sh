#!/usr/bin/env bash
# The Windows job (issue 13), called by scripts/test.sh and runnable alone:
# cross-builds for x86_64-pc-windows-gnu, runs clippy for that target, the
# unit and IPC tests under Wine, and an end-to-end run under Wine: the
# emulator, the agent on a named pipe with the file store, enroll / token /
# status from separate processes, the C example against libregent
# (regent.dll), the agent with the Credential Manager store surviving a
# restart, the per-peer checks (a client's SID and image; allow_users /
# allow_groups / allow_executables; the per-user pipe), `regent demo`, the
# service through sc / net, and the MSI (packaging/windows/regent.wxs,
# built by scripts/msi.sh with wixl) installed and removed with msiexec.
#
# What Wine cannot show (one user only, so no multi-user pipe ACLs or
# refusals by account; two servers may share a pipe name, as Wine ignores
# FILE_FLAG_FIRST_PIPE_INSTANCE; no `sc config` / `sc qc`; a stub
# PowerShell) needs a real Windows: docs/operations.md, docs/security.md.
#
# On a fresh Debian machine, as root, it installs what is missing (wine64,
# gcc-mingw-w64-x86-64, wixl, msitools, the rustup target). Ends with one
# line: `windows: N passed, N failed`; exits non-zero when anything failed.
# REGENT_WINDOWS_E2E_ONLY=1 (for working on the end-to-end part only) skips
# clippy and the unit tests; CI runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

TARGET=x86_64-pc-windows-gnu
WINE_DIR=/usr/lib/wine # Debian's wine64 is not on PATH
log() { printf '\n==> [windows] %s\n' "$*"; }

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok     %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAILED %s\n' "$*" >&2; }
summary() { printf 'windows: %d passed, %d failed\n' "$passed" "$failed"; }

# --- toolchain (only what is missing) ------------------------------------------
missing=()
[ -x "$WINE_DIR/wine64" ] || missing+=(wine64)
command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1 || missing+=(gcc-mingw-w64-x86-64)
# The C++ wrapper's example uses std::thread: the posix threading model.
command -v x86_64-w64-mingw32-g++-posix >/dev/null 2>&1 || missing+=(g++-mingw-w64-x86-64-posix)
command -v wixl >/dev/null 2>&1 || missing+=(wixl)
command -v msibuild >/dev/null 2>&1 || missing+=(msitools)
apt_install ${missing[@]+"${missing[@]}"}
if ! rustup target list --installed | grep -qx "$TARGET"; then
  log "installing the rustup target $TARGET"
  rustup target add "$TARGET"
fi

export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER=x86_64-w64-mingw32-gcc
export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$WINE_DIR/wine64"
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
out="$target_dir/$TARGET/debug"
work="$target_dir/wine"

# --- a private Wine prefix, new each run ----------------------------------------
# WINEDEBUG=-all: no fixme noise; no Mono / Gecko (never needed, slow to set up).
export WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
export WINEPREFIX="$work/prefix"
wineserver() { "$WINE_DIR/wineserver" "$@"; }
wine() { "$WINE_DIR/wine64" "$@"; }
cleanup() {
  # Every Windows process of this prefix (agent, emulator, service) and the
  # wineserver itself, whatever happened above.
  wineserver -k 2>/dev/null || true
}
trap cleanup EXIT
log "Wine prefix $WINEPREFIX"
wineserver -k 2>/dev/null || true
rm -rf "$work"
mkdir -p "$work"
timeout 120 "$WINE_DIR/wine64" wineboot --init >"$work/wineboot.log" 2>&1
# Rust >= 1.78 programs import ProcessPrng from bcryptprimitives.dll, which
# Wine only has from 8.13 (Debian 12: 8.0): a forwarding DLL stands in.
x86_64-w64-mingw32-gcc -Wall -Wextra -Werror -O2 -shared \
  -o "$work/bcryptprimitives.dll" scripts/wine/bcryptprimitives.c scripts/wine/bcryptprimitives.def -ladvapi32
cp "$work/bcryptprimitives.dll" "$WINEPREFIX/drive_c/windows/system32/"
pass "wine prefix with the bcryptprimitives forwarder"

# --- build, clippy ----------------------------------------------------------------
# Debug builds of what runs on Windows: the CLI (agent, emulator, demo) and
# libregent (regent.dll).
log "cargo build --target $TARGET (regent.exe, regent.dll)"
if cargo build --locked --quiet --target "$TARGET" -p regent-cli -p regent-ffi; then
  pass "cross-build"
else
  fail "cross-build"
  summary
  exit 1
fi

e2e_only=${REGENT_WINDOWS_E2E_ONLY:-}
if [ -n "$e2e_only" ]; then
  log "REGENT_WINDOWS_E2E_ONLY: no clippy, no unit tests"
else
log "cargo clippy --target $TARGET (-D warnings)"
# Every library and binary, and the tests that run below (the agent's
# Unix-only test files compile to nothing here).
clippy() { cargo clippy --locked --quiet --target "$TARGET" "$@" -- -D warnings; }
if clippy -p regent-proto -p regent-client -p regent-cli --lib --bins --tests &&
  clippy -p regent-agent -p regent-ffi --lib --bins &&
  clippy -p regent-agent --lib --profile test &&
  clippy -p regent-agent --features crash-points,fuzzing --tests &&
  clippy -p regent-tests --lib --bins --test ffi --test ffi_instances --test agent_cli --test demand --test login &&
  clippy -p regent-emulator --tests; then
  pass "clippy for $TARGET"
else
  fail "clippy for $TARGET"
fi
fi

# --- unit and IPC tests under Wine -----------------------------------------------
# A Linux path as Wine sees it (drive Z: is /).
winpath() { printf 'Z:%s' "$(realpath -m "$1" | sed 's|/|\\|g')"; }
test_log="$work/cargo-test.log"
run_tests() {
  local what=$1
  shift
  if [ -n "$e2e_only" ]; then return 0; fi
  log "cargo test --target $TARGET $what (under Wine)"
  local start=$SECONDS
  if cargo test --locked --no-fail-fast --target "$TARGET" "$@" 2>&1 | tee -a "$test_log"; then
    pass "tests: $what ($((SECONDS - start)) s)"
  else
    fail "tests: $what ($((SECONDS - start)) s)"
  fi
}
: >"$test_log"
# The client's tests against a scripted agent on a pipe of their own.
run_tests "regent-proto, regent-client (lib, platform_ipc, async_client, blocking)" \
  -p regent-proto -p regent-client --lib --test platform_ipc --test async_client --test blocking
# The peer, config and reload unit tests run in their Windows forms (issue
# 13, item 2: file identities by volume serial + file index, absolute paths
# with a drive letter); the Unix-only ones are #[cfg(unix)].
run_tests "regent-agent (lib, fuzz_corpus)" -p regent-agent --features fuzzing --lib --test fuzz_corpus
# The agent's integration tests on named pipes of their own, the keychain
# ones against the Credential Manager (docs/operations.md lists what stays
# Unix-only and why).
run_tests "regent-agent (IPC, instances, engine, Credential Manager, upstream, faults)" \
  -p regent-agent --features crash-points --test ipc --test instances --test agent_sentinel --test agent_oauth2 \
  --test agent_crash --test log_secrecy --test keychain --test keychain_crash \
  --test upstream_sentinel --test upstream_oauth2 --test upstream_hostile
# libregent from C (tests/tests/ffi.rs): the C examples are built here with
# mingw-w64 against regent.dll's import library and libregent.a, since a test
# under Wine cannot run the Linux compiler (Wine starts a Linux program but
# neither waits for it nor reports its status); the test runs them against
# an agent on a pipe. ffi_instances.rs calls the C ABI from Rust.
c_programs="$work/c-programs"
build_c_programs() {
  local cc=(x86_64-w64-mingw32-gcc -std=c11 -Wall -Wextra -Wpedantic -Werror -g -Ibindings/c/include)
  mkdir -p "$c_programs" && cp "$out/regent.dll" "$c_programs/" &&
    "${cc[@]}" bindings/c/examples/get_token.c -L"$out" -lregent -o "$c_programs/get_token.exe" &&
    "${cc[@]}" bindings/c/examples/subscribe.c -L"$out" -lregent \
      -Wl,-Bstatic -lwinpthread -Wl,-Bdynamic -o "$c_programs/subscribe.exe" &&
    # The libraries `rustc --print native-static-libs` names for this target.
    "${cc[@]}" bindings/c/examples/get_token.c "$out/libregent.a" \
      -lkernel32 -lntdll -luserenv -lws2_32 -ldbghelp -o "$c_programs/get_token-static.exe"
}
if [ -z "$e2e_only" ]; then
  if build_c_programs; then pass "C examples built with mingw-w64 for tests/ffi.rs"; else fail "C examples built with mingw-w64"; fi
fi
# With agent_cli and demand: the real regent.exe as agent, emulator and CLI.
# upstream_faults: every network fault on both profiles, the fault proxy in front
# of an in-process emulator and agent (moved here from regent-agent, issue 14).
# login: a user's sign-in, both flows, the browser stand-in (regent-test-browser.exe)
# run by regent.exe as $BROWSER.
REGENT_TEST_C_PROGRAMS=$(winpath "$c_programs") run_tests "regent-tests (ffi: C examples via regent.dll; ffi_instances; agent_cli; demand; upstream_faults; login)" \
  -p regent-tests --test ffi --test ffi_instances --test agent_cli --test demand --test upstream_faults --test login
run_tests "regent-emulator (all tests; HTTP on loopback)" -p regent-emulator --tests
run_tests "regent-cli (unit tests, cli)" -p regent-cli --lib --bins --test cli
read -r unit_passed unit_failed < <(awk '/^test result: /{p+=$4; f+=$6} END {print p+0, f+0}' "$test_log")
printf 'unit tests under Wine: %d passed, %d failed\n' "$unit_passed" "$unit_failed"
passed=$((passed + unit_passed))
failed=$((failed + unit_failed))

# --- end to end under Wine -----------------------------------------------------------
e2e="$work/e2e"
mkdir -p "$e2e"
regent="$out/regent.exe"
# Runs the Windows `regent` with a bound, so a hang fails instead of stalling CI.
run() { timeout 60 "$WINE_DIR/wine64" "$regent" "$@"; }
# Waits (at most $1 seconds) until the command after it succeeds.
wait_until() {
  local limit=$1 start=$SECONDS
  shift
  until "$@" >/dev/null 2>&1; do
    if [ $((SECONDS - start)) -ge "$limit" ]; then
      return 1
    fi
    sleep 0.2
  done
}
# The agent answers on the pipe: any exit status but AGENT_UNREACHABLE (14).
answers() {
  local rc=0
  run status --socket "$1" >/dev/null 2>&1 || rc=$?
  [ "$rc" -ne 14 ] && [ "$rc" -ne 124 ]
}
check() {
  local name=$1
  shift
  if "$@"; then pass "$name"; else fail "$name"; fi
}
# Starts the agent with config $1 in the background, logging to $2; waits
# until it answers on pipe $3.
start_agent() {
  "$WINE_DIR/wine64" "$regent" agent --no-watch --config "$(winpath "$1")" >"$2" 2>&1 &
  agent_pid=$!
  wait_until 60 answers "$3"
}
# Stops the agent with Ctrl-C (SIGINT reaches it as CTRL_C_EVENT) and waits
# for it to exit; its status must be 0.
stop_agent() {
  kill -INT "$agent_pid" 2>/dev/null || return 1
  local rc=0 waited=0
  while kill -0 "$agent_pid" 2>/dev/null; do
    if [ "$waited" -ge 150 ]; then
      kill -KILL "$agent_pid" 2>/dev/null || true
      return 1
    fi
    sleep 0.2
    waited=$((waited + 1))
  done
  wait "$agent_pid" || rc=$?
  [ "$rc" -eq 0 ]
}

log "end to end under Wine"
"$WINE_DIR/wine64" "$regent" emulator --listen 127.0.0.1:0 >"$e2e/emulator.log" 2>&1 &
emulator_ready() { grep -q 'listening on http://' "$e2e/emulator.log"; }
if wait_until 60 emulator_ready; then
  url=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$e2e/emulator.log" | head -n1 | tr -d '\r')
  pass "emulator listening at $url"
else
  fail "emulator did not start: $(cat "$e2e/emulator.log")"
  summary
  exit 1
fi
# The emulator's admin API through `regent admin`, as for a real server.
mint() {
  REGENT_ADMIN_URL=$url REGENT_ADMIN_USER=admin REGENT_ADMIN_PASSWORD=admin \
    run admin registration-token create --count "$1" | tr -d '\r'
}

# Writes $e2e/NAME.toml: the emulator at $url, the [store] lines STORE,
# state in $e2e/NAME-state and, when given, the [ipc] lines that follow (none:
# the default pipe). Single-quoted TOML strings: a Windows path is taken as
# written.
agent_config() {
  local name=$1 store=$2
  shift 2
  {
    printf '[server]\nprofile = "sentinel"\nurl = "%s"\n\n[store]\n%s\n\n[state]\ndir = '"'"'%s'"'"'\n' \
      "$url" "$store" "$(winpath "$e2e/$name-state")"
    if [ "$#" -gt 0 ]; then printf '\n[ipc]\n'; printf '%s\n' "$@"; fi
  } >"$e2e/$name.toml"
}

# Agent 1: the file store on a pipe of its own.
pipe='\\.\pipe\regent-e2e-file-'$$
agent_config file 'kind = "file"' "socket = '$pipe'"
if start_agent "$e2e/file.toml" "$e2e/agent-file.log" "$pipe"; then
  pass "agent (file store) answers on $pipe"
  enroll_file() { mint 1 | run enroll --socket "$pipe"; }
  check "enroll over the pipe (file store)" enroll_file
  token_file() { [ -n "$(run token --socket "$pipe" | tr -d '\r')" ]; }
  check "token over the pipe" token_file
  check "status: active" run status --socket "$pipe"

  # The C example, built with mingw against regent.dll's import library.
  cp "$out/regent.dll" "$e2e/"
  c_example() {
    x86_64-w64-mingw32-gcc -Wall -Wextra -Wpedantic -Werror bindings/c/examples/get_token.c \
      -Ibindings/c/include -L"$out" -lregent -o "$e2e/get_token.exe" &&
      REGENT_SOCKET="$pipe" timeout 60 "$WINE_DIR/wine64" "$e2e/get_token.exe" 60 3 >"$e2e/get_token.log" 2>&1
  }
  check "the C example gets tokens through libregent (regent.dll)" c_example

  # The C++ wrapper (bindings/cpp/regent.hpp) and its example, built with
  # mingw-w64's g++ (posix threads; -static links its runtime in and takes
  # regent.dll through its import library, named so that libregent.a is not
  # picked): a token valid for 45 s, a subscription's
  # first token, and the wrapper's exception for an agent that is not there.
  cpp_example() {
    x86_64-w64-mingw32-g++-posix -std=c++17 -Wall -Wextra -Werror bindings/cpp/examples/get_token.cpp \
      -Ibindings/c/include -Ibindings/cpp -L"$out" -l:libregent.dll.a -static \
      -o "$e2e/get_token_cpp.exe" &&
      REGENT_SOCKET="$pipe" timeout 60 "$WINE_DIR/wine64" "$e2e/get_token_cpp.exe" 45 >"$e2e/get_token_cpp.log" 2>&1 &&
      grep -q '^token: Bearer, [0-9]* bytes, valid for' "$e2e/get_token_cpp.log" &&
      grep -q '^subscription: token' "$e2e/get_token_cpp.log" &&
      grep -q 'expected error: AGENT_UNREACHABLE (14), retryable: yes' "$e2e/get_token_cpp.log" ||
      { tail -n 20 "$e2e/get_token_cpp.log" >&2 2>/dev/null; return 1; }
  }
  check "the C++ wrapper's example gets tokens and a subscription through regent.dll" cpp_example
  check "agent stops on Ctrl-C with status 0" stop_agent
else
  fail "agent (file store) did not answer: $(tail -n 20 "$e2e/agent-file.log")"
  kill -KILL "$agent_pid" 2>/dev/null || true
fi

# Agent 2: the Credential Manager store, enrolled once, then restarted.
pipe='\\.\pipe\regent-e2e-credman-'$$
agent_config credman $'kind = "keychain"\nservice = "regent-e2e"' "socket = '$pipe'"
if start_agent "$e2e/credman.toml" "$e2e/agent-credman.log" "$pipe"; then
  enroll_credman() { mint 1 | run enroll --socket "$pipe"; }
  check "enroll with the Credential Manager store" enroll_credman
  check "agent (Credential Manager) stops on Ctrl-C" stop_agent
  if start_agent "$e2e/credman.toml" "$e2e/agent-credman-2.log" "$pipe"; then
    # Enrolled after the restart: the credential came back from the store.
    check "the credential survives a restart (status active)" run status --socket "$pipe"
    token_credman() { [ -n "$(run token --socket "$pipe" | tr -d '\r')" ]; }
    check "token after the restart" token_credman
    check "agent (Credential Manager) stops again" stop_agent
  else
    fail "agent (Credential Manager) did not come back: $(tail -n 20 "$e2e/agent-credman-2.log")"
  fi
else
  fail "agent (Credential Manager) did not answer: $(tail -n 20 "$e2e/agent-credman.log")"
  kill -KILL "$agent_pid" 2>/dev/null || true
fi

# --- per-peer checks on Windows (issue 13, item 2) ---------------------------------
# Each pipe client is identified by its token (user SID, enabled groups) and
# image path, and checked against allow_users / allow_groups /
# allow_executables. Wine has one account, which is also an administrator
# (Administrators enabled in every token): a client of another account, or a
# refusal by account, cannot be made here and needs a real Windows.
log "per-peer checks under Wine"
peer_start=$SECONDS
# Agent P1: no [ipc] socket, so the per-user default pipe
# \\.\pipe\regent-agent-<SID>; the client finds it with no --socket.
agent_config peer-default 'kind = "file"'
"$WINE_DIR/wine64" "$regent" agent --no-watch --config "$(winpath "$e2e/peer-default.toml")" >"$e2e/agent-peer-default.log" 2>&1 &
agent_pid=$!
listening() { grep -q 'listening' "$1"; }
user_pipe=""
if wait_until 60 listening "$e2e/agent-peer-default.log"; then
  user_pipe=$(grep 'listening' "$e2e/agent-peer-default.log" | grep -o 'socket=[^ ]*' | head -n1 | tr -d '\r')
  user_pipe=${user_pipe#socket=}
fi
sid=${user_pipe#'\\.\pipe\regent-agent-'}
if [[ "$sid" =~ ^S-1-5-21-[0-9-]+$ ]]; then
  pass "a per-user agent listens on \\\\.\\pipe\\regent-agent-<its SID> ($user_pipe)"
  # No --socket, no REGENT_SOCKET: the client's default finds the user's pipe.
  default_answers() {
    local rc=0
    run status >/dev/null 2>&1 || rc=$?
    [ "$rc" -ne 14 ] && [ "$rc" -ne 124 ]
  }
  check "the client's default finds the per-user pipe" wait_until 30 default_answers
  enroll_default() { mint 1 | run enroll; }
  check "enroll through the default pipe" enroll_default
  token_default() { [ -n "$(run token | tr -d '\r')" ]; }
  check "token through the default pipe" token_default
  # The audit line names the client's account and program as the agent read them.
  audited_default() {
    grep 'token handed out' "$e2e/agent-peer-default.log" | grep -F "$sid" | grep -qi 'regent.exe'
  }
  check "the audit line names the client's SID and image (regent.exe)" audited_default
  # A second agent on the same pipe: the first instance was created with
  # FILE_FLAG_FIRST_PIPE_INSTANCE, so Windows refuses the second server.
  second_rc=0
  "$WINE_DIR/wine64" "$regent" agent --no-watch --config "$(winpath "$e2e/peer-default.toml")" >"$e2e/agent-peer-second.log" 2>&1 &
  second_pid=$!
  second_settled() { ! kill -0 "$second_pid" 2>/dev/null || listening "$e2e/agent-peer-second.log"; }
  wait_until 60 second_settled || true
  if ! kill -0 "$second_pid" 2>/dev/null; then
    wait "$second_pid" || second_rc=$?
    second_refused() { [ "$second_rc" -eq 17 ] && grep -q 'already holds the named pipe' "$e2e/agent-peer-second.log"; }
    check "a second agent on the same pipe is refused (FILE_FLAG_FIRST_PIPE_INSTANCE)" second_refused
  else
    kill -INT "$second_pid" 2>/dev/null || true
    wait "$second_pid" 2>/dev/null || true
    printf 'SKIPPED a second server on the same pipe name: Wine 8.0 does not honour FILE_FLAG_FIRST_PIPE_INSTANCE (the second agent listened too); needs a real Windows\n'
  fi
  check "agent (per-user pipe) stops" stop_agent
else
  fail "a per-user agent listens on \\\\.\\pipe\\regent-agent-<its SID> (found: ${user_pipe:-nothing}): $(tail -n 20 "$e2e/agent-peer-default.log")"
  kill -KILL "$agent_pid" 2>/dev/null || true
fi

# Agent P2: allow_users by name and by SID, allow_groups by name, and
# allow_executables listing the C example only.
user_name=$(timeout 30 "$WINE_DIR/wine64" cmd /c 'echo %USERNAME%' 2>/dev/null | tr -d '\r')
pipe='\\.\pipe\regent-e2e-peer-'$$
[ -f "$e2e/get_token.exe" ] || x86_64-w64-mingw32-gcc -Wall -Wextra -Wpedantic -Werror bindings/c/examples/get_token.c \
  -Ibindings/c/include -L"$out" -lregent -o "$e2e/get_token.exe"
cp "$out/regent.dll" "$e2e/"
agent_config peer-lists 'kind = "file"' "socket = '$pipe'" \
  "allow_users = ['$user_name'${sid:+", '$sid'"}]" \
  "allow_groups = ['Users']" \
  "allow_executables = ['$(winpath "$e2e/get_token.exe")']"
if start_agent "$e2e/peer-lists.toml" "$e2e/agent-peer-lists.log" "$pipe"; then
  pass "agent with allow_users ($user_name by name and by SID), allow_groups (Users), allow_executables"
  # The agent's own regent.exe still administers (enroll, status)...
  enroll_lists() { mint 1 | run enroll --socket "$pipe"; }
  check "regent.exe (not listed) still enrolls" enroll_lists
  check "regent.exe (not listed) still reads status" run status --socket "$pipe"
  # ...but gets no token: PERMISSION_DENIED (11), naming the key.
  cli_refused() {
    local rc=0
    run token --socket "$pipe" >"$e2e/peer-token.out" 2>&1 || rc=$?
    [ "$rc" -eq 11 ] && grep -q 'allow_executables' "$e2e/peer-token.out"
  }
  check "regent token is refused with PERMISSION_DENIED naming allow_executables" cli_refused
  # The listed program is served.
  listed_served() { REGENT_SOCKET="$pipe" timeout 60 "$WINE_DIR/wine64" "$e2e/get_token.exe" 60 1 >"$e2e/peer-get_token.log" 2>&1; }
  check "the listed C example (get_token.exe) gets a token" listed_served
  audited_listed() { grep 'token handed out' "$e2e/agent-peer-lists.log" | grep -qi 'get_token.exe'; }
  check "the audit line names get_token.exe" audited_listed
  check "agent (allow lists) stops" stop_agent
else
  fail "agent with allow lists did not answer: $(tail -n 20 "$e2e/agent-peer-lists.log")"
  kill -KILL "$agent_pid" 2>/dev/null || true
fi
printf 'SKIPPED a refusal by account (SID not listed): Wine has one account, the agent'"'"'s own and an administrator; needs a real Windows\n'

# Configuration errors: an unknown account, and allow_uids on Windows.
config_refused() {
  local name=$1 lines=$2 expect=$3 rc=0
  agent_config "$name" 'kind = "file"' "socket = '$pipe-bad'" "$lines"
  timeout 60 "$WINE_DIR/wine64" "$regent" agent --no-watch --config "$(winpath "$e2e/$name.toml")" >"$e2e/$name.log" 2>&1 || rc=$?
  [ "$rc" -eq 17 ] && grep -qF "$expect" "$e2e/$name.log"
}
check "an unknown account in allow_users is CONFIG naming it" \
  config_refused peer-unknown "allow_users = ['no-such-user-xyz']" 'no account named "no-such-user-xyz"'
check "an unknown group in allow_groups is CONFIG naming it" \
  config_refused peer-unknown-group "allow_groups = ['no-such-group-xyz']" 'no account named "no-such-group-xyz"'
check "allow_uids on Windows is CONFIG pointing to allow_users" \
  config_refused peer-uids "allow_uids = [1000]" 'name the accounts in allow_users'
printf 'per-peer step: %d s\n' "$((SECONDS - peer_start))"

# regent demo: the embedded emulator and agent on a pipe of the demo's own.
demo() { timeout 120 "$WINE_DIR/wine64" "$regent" demo --token-lifetime 3 --renewals 1 >"$e2e/demo.log" 2>&1; }
check "regent demo" demo || tail -n 20 "$e2e/demo.log" >&2

# The service `regent` (the name install.ps1 registers): created, started,
# answering, stopped, deleted through the service control manager.
pipe='\\.\pipe\regent-e2e-service-'$$
agent_config service 'kind = "file"' "socket = '$pipe'"
service_create() {
  timeout 60 "$WINE_DIR/wine64" sc create regent \
    binPath= "$(winpath "$regent") agent --windows-service --no-watch --config $(winpath "$e2e/service.toml")" >"$e2e/sc-create.log" 2>&1
}
check "sc create" service_create
check "net start" timeout 60 "$WINE_DIR/wine64" net start regent
check "the service answers on its pipe" wait_until 60 answers "$pipe"
check "net stop" timeout 60 "$WINE_DIR/wine64" net stop regent
not_answering() { ! answers "$pipe"; }
check "the pipe is gone after the stop" wait_until 30 not_answering
check "sc delete" timeout 60 "$WINE_DIR/wine64" sc delete regent

# The MSI: built from this run's binaries by scripts/msi.sh, its tables
# checked, then installed with msiexec /i /qn (the service `regent` as
# LocalSystem, its config in C:\ProgramData\regent, the default pipe) and
# removed with msiexec /x. When nothing had run in the new prefix before this
# part (REGENT_WINDOWS_E2E_ONLY runs; cause not found), Wine 8.0's service manager
# could not open a service it had just created (OpenService: 1060), so
# StartServices fails and the install rolls back: that exact outcome is
# reported as skipped, never passed; every other outcome is checked in full.
log "the MSI (wixl) under msiexec"
msi_start=$SECONDS
msi_dir="$work/msi"
drive_c="$WINEPREFIX/drive_c"
program="$drive_c/Program Files/regent"
data="$drive_c/ProgramData/regent"
default_pipe='\\.\pipe\regent-agent'
msi=""
build_msi() { msi=$(scripts/msi.sh "$out" "$msi_dir" | tail -n1) && [ -f "$msi" ]; }
# One row of an MSI table, tab-separated, found by its first column (an
# export starts with three header lines: names, types, the table's name).
msi_row() { msiinfo export "$msi" "$1" | tr -d '\r' | awk -F'\t' -v k="$2" '$1 == k'; }
tab=$'\t'
msi_tables() {
  # The service: `regent`, own process (16), automatic start (2), normal
  # errors (1), no account (LocalSystem), install.ps1's command line.
  [ "$(msi_row ServiceInstall RegentService | cut -f2,4,5,6,9,11)" = \
    "regent${tab}16${tab}2${tab}1${tab}${tab}agent --windows-service --config \"[CommonAppDataFolder]regent\\regent.toml\"" ] &&
    # Start at install (1), stop at install and uninstall (2 + 32), delete
    # at uninstall (128), waiting for each.
    [ "$(msi_row ServiceControl RegentServiceControl | cut -f2,3,5)" = "regent${tab}163${tab}1" ] &&
    # The config: 64-bit (256), Permanent (16), NeverOverwrite (128).
    [ "$(msi_row Component Config | cut -f4)" = 400 ] &&
    [ "$(msiinfo export "$msi" File | tr -d '\r' | tail -n +4 | cut -f1 | sort | tr '\n' ' ')" = "RegentDll RegentExe RegentH RegentToml " ]
}
msiexec() { timeout 180 "$WINE_DIR/wine64" msiexec "$@"; }
service_state() { timeout 60 "$WINE_DIR/wine64" sc query regent 2>/dev/null | tr -d '\r' | awk '$1 == "STATE" {print $4}'; }
service_running() { [ "$(service_state)" = RUNNING ]; }
service_gone() { ! timeout 60 "$WINE_DIR/wine64" sc query regent >/dev/null 2>&1; }
installed_files() {
  [ -f "$program/regent.exe" ] && [ -f "$program/regent.dll" ] && [ -f "$program/include/regent.h" ] &&
    [ -f "$data/regent.toml" ] && [ -d "$data/state" ] && [ -d "$data/provisioning" ]
}
program_files_gone() { [ ! -e "$program" ]; }
# Edited by the admin while installed: the uninstall keeps the file as it is.
marker="# edited after the install ($$)"
config_kept() { [ -d "$data/state" ] && [ -f "$data/regent.toml" ] && grep -qxF "$marker" "$data/regent.toml"; }
not_answering_default() { ! answers "$default_pipe"; }
# Like check, and returns the command's status, to gate the steps after it.
gate() {
  local name=$1
  shift
  if "$@"; then pass "$name"; else
    fail "$name"
    return 1
  fi
}
wine_msi_bug() {
  tr -d '\0' <"$e2e/msi-install.log" | grep -q 'StartServices. Return value 0' &&
    grep -q 'ITERATE_StartService failed to open service L"regent" (1060)' "$e2e/msiexec-install.err"
}
if gate "MSI built with wixl (scripts/msi.sh)" build_msi; then
  check "MSI tables: service regent (auto, LocalSystem, install.ps1's command), start/stop/delete, config Permanent+NeverOverwrite" msi_tables
  msi_win=$(winpath "$msi")
  install_rc=0
  WINEDEBUG=err+msi msiexec /i "$msi_win" /qn /l*v "$(winpath "$e2e/msi-install.log")" 2>"$e2e/msiexec-install.err" || install_rc=$?
  if [ "$install_rc" -eq 0 ]; then
    pass "msiexec /i /qn"
    check "the MSI installed regent.exe, regent.dll, regent.h, regent.toml, state, provisioning" installed_files
    check "the MSI's service is RUNNING" wait_until 60 service_running
    check "the MSI's service answers on $default_pipe (regent status)" wait_until 60 answers "$default_pipe"
    printf '%s\n' "$marker" >>"$data/regent.toml"
    check "msiexec /x /qn" msiexec /x "$msi_win" /qn /l*v "$(winpath "$e2e/msi-remove.log")"
    check "the service is deleted after the uninstall" service_gone
    check "nothing answers on $default_pipe after the uninstall" wait_until 30 not_answering_default
    check "Program Files\\regent is gone after the uninstall" program_files_gone
    check "the edited config and the state directory are kept" config_kept
  elif wine_msi_bug; then
    printf 'SKIPPED msiexec /i under Wine (exit %d): Wine 8.0 StartServices could not open the service it had just created (1060) and rolled back; see docs/operations.md\n' "$install_rc"
  else
    fail "msiexec /i /qn (exit $install_rc)"
    tr -d '\0' <"$e2e/msi-install.log" | grep -E 'Return value [03]' >&2 || true
  fi
fi
printf 'MSI step (build, tables, msiexec): %d s\n' "$((SECONDS - msi_start))"

summary
[ "$failed" -eq 0 ]
