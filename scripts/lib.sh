# Shared by scripts/test.sh, test-windows.sh and test-macos.sh (sourced).

# apt_install PKG...: installs the Debian packages named (none: nothing). As
# root it runs `apt-get update` first; as another user it names the command to
# run and exits 1.
apt_install() {
  [ "$#" -gt 0 ] || return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: $*" >&2
    echo "install them with: sudo apt-get install -y --no-install-recommends $*" >&2
    exit 1
  fi
  printf '\n==> installing %s\n' "$*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "$@"
}
