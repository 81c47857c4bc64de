#!/usr/bin/env bash
# Remove schoolgate from this machine: the services, the units and the program.
# The school's data (/var/lib/schoolgate) and configuration (/etc/schoolgate) are kept, so a
# later install.sh picks up where this one left off, unless --purge is given. The system users
# stay too (files may still belong to them); --purge removes them as well.
#
#   sudo deploy/uninstall.sh [--purge] [--root DIR]
set -euo pipefail

PREFIX=/opt/schoolgate
ETC=/etc/schoolgate
DATA=/var/lib/schoolgate
UNIT_DIR=/usr/local/lib/systemd/system
GROUP=schoolgate
DAEMONS=(dns proxy console scheduler netwatch identity)
UNITS=(schoolgate.target schoolgate-net.service schoolgate-dns.service schoolgate-proxy.service
       schoolgate-console.socket schoolgate-console.service schoolgate-scheduler.service
       schoolgate-netwatch.service schoolgate-identity.service)

ROOT=""
PURGE=0
say() { printf 'schoolgate uninstall: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --purge) PURGE=1; shift ;;
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option: $1" ;;
  esac
done
[ "$(id -u)" -eq 0 ] || die "this needs root: run it again with sudo"
if [ -n "$ROOT" ]; then
  ROOT=$(cd "$ROOT" && pwd) || die "--root $ROOT: no such directory"
  [ "$ROOT" != / ] || ROOT=""
fi
target() { if [ -n "$ROOT" ]; then chroot "$ROOT" "$@"; else "$@"; fi; }

if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  say "stopping the services"
  systemctl disable --now "${UNITS[@]}" >/dev/null 2>&1 || true
  # Take the filtering ruleset down with the program: without its daemons, the redirects
  # would send the LAN's DNS and web traffic to ports nobody listens on.
  if command -v nft >/dev/null; then nft delete table inet schoolgate 2>/dev/null || true; fi
else
  target systemctl disable "${UNITS[@]}" >/dev/null 2>&1 || true
fi
for unit in "${UNITS[@]}"; do rm -f "$ROOT$UNIT_DIR/$unit"; done
# The console socket's address, which install.sh wrote from the configuration.
rm -rf "$ROOT/etc/systemd/system/schoolgate-console.socket.d"
rmdir "$ROOT/etc/systemd/system/schoolgate.target.wants" 2>/dev/null || true
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
if [ -L "$ROOT/usr/local/bin/schoolgate" ]; then rm -f "$ROOT/usr/local/bin/schoolgate"; fi
rm -rf "$ROOT$PREFIX"
say "removed the program and its units"

if [ "$PURGE" -eq 1 ]; then
  rm -rf "$ROOT$ETC" "$ROOT$DATA"
  for daemon in "${DAEMONS[@]}"; do
    if target getent passwd "schoolgate-$daemon" >/dev/null; then target userdel "schoolgate-$daemon"; fi
  done
  if target getent group "$GROUP" >/dev/null; then target groupdel "$GROUP"; fi
  say "purged the configuration ($ETC), the data ($DATA) and the system users"
else
  say "kept the configuration ($ETC) and the data ($DATA); remove them with --purge"
fi
