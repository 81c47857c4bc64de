#!/usr/bin/env bash
# The two quick-start commands of the README, on a fresh Debian (or Raspberry Pi OS) machine, as
# root (a fresh Debian has no sudo; where it is installed, `sudo ./deploy/dev.sh ...` works too):
#   ./deploy/dev.sh start   install what is needed, then run the whole appliance in the network
#                           lab (devices, gateway, a simulated internet) in the foreground;
#                           it prints what to try, and Ctrl-C tears the lab down
#                           (--topology bridge|dns-only: the lab of another network mode)
#   ./deploy/dev.sh test    install what is needed, then run the whole test suite
# Everything installed comes from Debian's archive and PyPI; nothing else is downloaded.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
cd "$root"

# Debian packages the appliance and its tests use. The benchmarks install their own extras.
DEBIAN_PACKAGES=(
  python3 python3-venv python3-dev build-essential libxxhash-dev
  nftables iproute2 iputils-ping procps
  curl ca-certificates openssl bind9-dnsutils libnss3-tools tzdata
  sqlite3 postgresql
  debootstrap systemd systemd-container libseccomp2 shellcheck util-linux
  chromium fonts-liberation poppler-utils
)

say() { printf '\033[1mschoolgate:\033[0m %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    say "this needs root (it installs Debian packages and, for the tests, creates network namespaces)."
    if command -v sudo >/dev/null 2>&1; then
      say "run it again as root: sudo $0 $*"
    else
      say "run it again as root: su -c '$0 $*'  (or log in as root)"
    fi
    exit 1
  fi
}

install_debian_packages() {
  local missing=()
  for pkg in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

find_python() {
  local candidate
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      command -v "$candidate"
      return
    fi
  done
  say "schoolgate needs Python 3.11 (Debian bookworm's python3). None was found."
  exit 1
}

install_python_packages() {
  local stamp="$venv/.schoolgate-installed"
  if [ ! -x "$venv/bin/python" ]; then
    say "creating the virtual environment in $venv"
    "$(find_python)" -m venv "$venv"
  fi
  # Reinstall only when the dependencies, the package layout or a compiled helper's source
  # changed (pip builds the helpers in place), or a built helper has gone missing.
  local want
  want=$({ cat pyproject.toml setup.py; find . \( -path ./.venv -o -path ./build \) -prune -o \
           \( -name '*.c' -o -name '*.h' \) -type f -print | LC_ALL=C sort | xargs -r cat; } | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] ||
     ! "$venv/bin/python" -c 'import schoolgate.policy._listprobe, schoolgate.dns._question, schoolgate.dns._datagrams, schoolgate.proxy._hello, schoolgate.proxy._accept' 2>/dev/null; then
    say "installing schoolgate and its Python dependencies"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e ".[test]"
    echo "$want" > "$stamp"
  fi
}

cmd_start() {
  need_root start
  install_debian_packages
  install_python_packages
  # The whole appliance in the network lab, in the foreground; Ctrl-C tears it down.
  exec "$venv/bin/schoolgate" lab start "$@"
}

cmd_test() {
  need_root test
  install_debian_packages
  install_python_packages
  exec "$venv/bin/pytest" "$@"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  test) shift; cmd_test "$@" ;;
  *)
    echo "usage (as root): $0 start [schoolgate lab start options] | test [pytest arguments]" >&2
    exit 2
    ;;
esac
