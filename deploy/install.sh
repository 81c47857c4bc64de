#!/usr/bin/env bash
# Install (or upgrade in place) schoolgate as an appliance on Raspberry Pi OS (64-bit) or Debian 12.
#
#   deploy/install.sh (as root)                asks for the network mode, interfaces, address and upstream DNS
#   deploy/install.sh --non-interactive --lan-if eth1 --lan-address 10.20.0.1/22 \
#        --upstream 10.20.0.254 --site-id kingswood --site-name "Kingswood Primary School"
#   deploy/install.sh --mode bridge --lan-if eth1 --wan-if eth0 --lan-address 10.20.0.2/22 --router 10.20.0.1
#   deploy/install.sh --mode dns-only --lan-if eth0 --lan-address 10.20.0.5/22 --router 10.20.0.1
#   sudo deploy/install.sh --root /srv/tree --no-start    install into a Debian tree (tests, images)
#
# What it does, in order: Debian packages; the group `schoolgate` and one system user per daemon;
# the program in a virtual environment under /opt/schoolgate (pip, from the package index only);
# the configuration in /etc/schoolgate; the data directory /var/lib/schoolgate; the school CA and
# the console's TLS certificate; the database schema; the first admin account; the systemd units.
#
# Running it again upgrades in place. Data is never touched, and a configuration file someone has
# edited is never overwritten: the new version is written beside it as `<file>.new`.
# Nothing is downloaded except Debian packages (apt) and Python packages (pip).
set -euo pipefail

SOURCE=$(cd "$(dirname "$0")/.." && pwd)

PREFIX=/opt/schoolgate
VENV=$PREFIX/venv
ETC=/etc/schoolgate
DATA=/var/lib/schoolgate
UNIT_DIR=/usr/local/lib/systemd/system
CONFFILES=$PREFIX/conffiles.sha256   # what this script last installed, to tell edited files apart
GROUP=schoolgate
DAEMONS=(dns proxy console scheduler netwatch identity)
UNITS=(schoolgate.target schoolgate-net.service schoolgate-dns.service schoolgate-proxy.service
       schoolgate-console.socket schoolgate-console.service schoolgate-scheduler.service
       schoolgate-netwatch.service schoolgate-identity.service)
# Where the console's socket takes its address from the configuration ([console] listen).
CONSOLE_SOCKET_DROPIN=/etc/systemd/system/schoolgate-console.socket.d/listen.conf
# gcc, libc6-dev, python3-dev and libxxhash-dev build schoolgate's compiled helpers (policy/_listprobe.c,
# the list store's hash and probe, dns/_question.c, dns/_datagrams.c, proxy/_hello.c and proxy/_accept.c),
# which have no binary wheel: pip compiles them on every install.
DEBIAN_PACKAGES=(python3 python3-venv nftables iproute2 ca-certificates openssl systemd passwd
                 gcc libc6-dev python3-dev libxxhash-dev)
# Only needed when pip finds no binary wheel of a dependency for this machine (it then compiles from source).
BUILD_PACKAGES=(python3-dev build-essential libffi-dev libssl-dev)

ROOT=""
START=1
INTERACTIVE=1
MODE=gateway
LAN_IF=""
WAN_IF=""
ROUTER=""
LAN_ADDRESS=""
UPSTREAMS=()
SITE_ID=""
SITE_NAME=""
CONFIG_FLAGS=0

say() { printf 'schoolgate install: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

usage() {
  cat <<'EOF'
usage: sudo deploy/install.sh [options]

  --mode MODE            gateway (the appliance is the devices' router), bridge (in the cable
                         between the school's router and switch: nothing re-addressed) or
                         dns-only (only the DNS server the school's DHCP hands out)
  --lan-if IF            the interface facing the school LAN (bridge: the port to the switch)
  --wan-if IF            bridge: the port to the school's router
  --router ADDR          bridge, dns-only: the school router's address (the appliance's own route out)
  --lan-address CIDR     the appliance's address on the LAN with its prefix (e.g. 192.168.10.1/24)
  --upstream ADDR        an upstream DNS resolver (repeatable; e.g. the ISP's filtered resolver)
  --site-id ID           short name of the school (letters, digits, - and _)
  --site-name NAME       the school's name, as shown on the block page
  --non-interactive      never ask; take detected values where a flag is missing
  --root DIR             install into the Debian tree DIR (commands run via chroot)
  --no-start             enable the services but do not start them now
  -h, --help             this text
EOF
}

while [ $# -gt 0 ]; do
  case "$1" in
    --mode) MODE=${2:?--mode needs a value}; CONFIG_FLAGS=1; shift 2 ;;
    --lan-if) LAN_IF=${2:?--lan-if needs a value}; CONFIG_FLAGS=1; shift 2 ;;
    --wan-if) WAN_IF=${2:?--wan-if needs a value}; CONFIG_FLAGS=1; shift 2 ;;
    --router) ROUTER=${2:?--router needs a value}; CONFIG_FLAGS=1; shift 2 ;;
    --lan-address) LAN_ADDRESS=${2:?--lan-address needs a value}; CONFIG_FLAGS=1; shift 2 ;;
    --upstream) UPSTREAMS+=("${2:?--upstream needs a value}"); CONFIG_FLAGS=1; shift 2 ;;
    --site-id) SITE_ID=${2:?--site-id needs a value}; CONFIG_FLAGS=1; shift 2 ;;
    --site-name) SITE_NAME=${2:?--site-name needs a value}; CONFIG_FLAGS=1; shift 2 ;;
    --non-interactive) INTERACTIVE=0; shift ;;
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
[ -t 0 ] || INTERACTIVE=0

[ "$(id -u)" -eq 0 ] || die "this needs root: run it again with sudo"
if [ -n "$ROOT" ]; then
  ROOT=$(cd "$ROOT" && pwd) || die "--root $ROOT: no such directory"
  [ "$ROOT" != / ] || ROOT=""
fi

# ------------------------------------------------------------------ running in the target system

MOUNTED=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount "${MOUNTED[$i]}" 2>/dev/null || umount -l "${MOUNTED[$i]}" || true; done
}
trap cleanup EXIT

# Run a command in the target system: directly, or inside the tree given with --root.
target() {
  if [ -n "$ROOT" ]; then chroot "$ROOT" "$@"; else "$@"; fi
}

# Run a command in the target system as one of the daemon users.
target_as() {
  local user=$1; shift
  if [ -n "$ROOT" ]; then
    chroot --userspec="$user:$GROUP" "$ROOT" env HOME="$DATA" "$@"
  else
    setpriv --reuid="$user" --regid="$GROUP" --init-groups env HOME="$DATA" "$@"
  fi
}

prepare_root() {
  [ -n "$ROOT" ] || return 0
  [ -x "$ROOT/bin/sh" ] || die "--root $ROOT does not look like a Debian tree (no /bin/sh)"
  local fs
  for fs in proc sys dev dev/pts; do
    mkdir -p "$ROOT/$fs"
    if ! mountpoint -q "$ROOT/$fs"; then
      case "$fs" in
        proc) mount -t proc proc "$ROOT/proc" ;;
        sys) mount -t sysfs sysfs "$ROOT/sys" ;;
        dev) mount --bind /dev "$ROOT/dev" ;;
        dev/pts) mount -t devpts devpts "$ROOT/dev/pts" ;;
      esac
      MOUNTED+=("$ROOT/$fs")
    fi
  done
  # Name resolution for apt and pip inside the tree.
  if [ ! -s "$ROOT/etc/resolv.conf" ] && [ -s /etc/resolv.conf ]; then
    cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  fi
}

check_system() {
  local os="$ROOT/etc/os-release" id="" like="" version=""
  [ -r "$os" ] || die "cannot read $os: is this Debian or Raspberry Pi OS?"
  # shellcheck disable=SC1090  # os-release is a shell fragment by specification
  { read -r id; read -r like; read -r version; } < <(. "$os"; printf '%s\n' "${ID:-}" "${ID_LIKE:-}" "${VERSION_ID:-}")
  case " $id $like " in
    *" debian "*|*" raspbian "*) ;;
    *) die "this installer supports Debian 12 and Raspberry Pi OS (found: $id)" ;;
  esac
  [ "$version" = 12 ] || say "warning: tested on Debian 12 (bookworm); this system says VERSION_ID=$version"
}

# ------------------------------------------------------------------ packages

install_debian_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    # shellcheck disable=SC2016  # ${Status} is dpkg-query's field, not a shell variable
    target dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  target env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  target env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

create_users() {
  target getent group "$GROUP" >/dev/null || target groupadd --system "$GROUP"
  local daemon user
  for daemon in "${DAEMONS[@]}"; do
    user=schoolgate-$daemon
    if ! target getent passwd "$user" >/dev/null; then
      say "creating system user $user"
      target useradd --system --gid "$GROUP" --no-create-home --home-dir "$DATA" \
        --shell /usr/sbin/nologin --comment "schoolgate $daemon daemon" "$user"
    fi
  done
}

# The checkout, minus everything that is not part of the program, in a stable order.
source_tarball() {
  tar -C "$SOURCE" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --exclude=./.git --exclude=./.venv --exclude=./build --exclude=./dist --exclude=./var --exclude=./data \
    --exclude=./tests --exclude=./bench --exclude=./.ci --exclude=__pycache__ --exclude='*.egg-info' \
    --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.ruff_cache --exclude=.hypothesis \
    --exclude=node_modules --exclude='*.so' --exclude='*.db' --exclude='*.db-wal' --exclude='*.db-shm' \
    -cf - .
}

install_program() {
  local want have="" stamp="$ROOT$PREFIX/source.sha256"
  if [ ! -x "$ROOT$VENV/bin/python" ] || ! target "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    target python3 -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
      || die "schoolgate needs Python 3.11 (Debian 12's python3)"
    say "creating the virtual environment $VENV"
    rm -rf "$ROOT$VENV"
    mkdir -p "$ROOT$PREFIX"
    target python3 -m venv "$VENV"
    rm -f "$stamp"
  fi
  want=$(source_tarball | sha256sum | cut -d' ' -f1)
  [ -f "$stamp" ] && have=$(cat "$stamp")
  if [ "$want" = "$have" ] && target "$VENV/bin/schoolgate" --version >/dev/null 2>&1; then
    say "the program is up to date"
    return 0
  fi
  say "installing schoolgate into $VENV"
  rm -rf "$ROOT$PREFIX/src"
  mkdir -p "$ROOT$PREFIX/src"
  source_tarball | tar -C "$ROOT$PREFIX/src" -xf -
  if ! target env PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install --quiet --prefer-binary "$PREFIX/src"; then
    say "pip could not install from binary wheels alone; installing compilers and trying again"
    install_debian_packages "${BUILD_PACKAGES[@]}"
    target env PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/pip" install --quiet "$PREFIX/src"
  fi
  # pip leaves its build directories in the source tree; they are not part of the install.
  rm -rf "$ROOT$PREFIX/src/build" "$ROOT$PREFIX/src"/*.egg-info "$ROOT$PREFIX/src/src"/*.egg-info
  echo "$want" > "$stamp"
}

# ------------------------------------------------------------------ configuration files

conffile_recorded_hash() {  # the hash of what this script last wrote to $1, if anything
  [ -f "$ROOT$CONFFILES" ] || return 0
  awk -v p="$1" '$2 == p { print $1 }' "$ROOT$CONFFILES"
}

conffile_record() {
  local path=$1 hash=$2 tmp
  tmp=$(mktemp)
  [ -f "$ROOT$CONFFILES" ] && awk -v p="$path" '$2 != p' "$ROOT$CONFFILES" > "$tmp"
  echo "$hash $path" >> "$tmp"
  sort -k2 "$tmp" > "$ROOT$CONFFILES"
  rm -f "$tmp"
  chmod 0644 "$ROOT$CONFFILES"
}

# install_conffile SOURCE DEST: like dpkg's conffiles. A file nobody edited is replaced by the
# new version; an edited one is kept and the new version is written beside it as DEST.new.
install_conffile() {
  local src=$1 dest=$2 new old recorded
  new=$(sha256sum < "$src" | cut -d' ' -f1)
  if [ ! -e "$ROOT$dest" ]; then
    install -D -m 0640 -o root -g "$(group_id)" "$src" "$ROOT$dest"
    conffile_record "$dest" "$new"
    return 0
  fi
  old=$(sha256sum < "$ROOT$dest" | cut -d' ' -f1)
  recorded=$(conffile_recorded_hash "$dest")
  if [ "$old" = "$new" ]; then
    [ "$recorded" = "$new" ] || conffile_record "$dest" "$new"
    rm -f "$ROOT$dest.new"
  elif [ -n "$recorded" ] && [ "$old" = "$recorded" ]; then
    say "updating $dest (it was not edited)"
    install -m 0640 -o root -g "$(group_id)" "$src" "$ROOT$dest"
    conffile_record "$dest" "$new"
  else
    if [ ! -e "$ROOT$dest.new" ] || ! cmp -s "$src" "$ROOT$dest.new"; then
      install -m 0640 -o root -g "$(group_id)" "$src" "$ROOT$dest.new"
    fi
    say "kept your edited $dest; the new version is in $dest.new (compare and merge by hand)"
  fi
}

group_id() { target getent group "$GROUP" | cut -d: -f3; }

detect_lan() {
  # Only on the machine itself: the host's interfaces say nothing about a tree under --root.
  [ -z "$ROOT" ] || return 0
  if [ -z "$LAN_IF" ]; then
    LAN_IF=$(ip -o -4 route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit }}')
  fi
  if [ -z "$ROUTER" ]; then
    ROUTER=$(ip -o -4 route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "via") { print $(i + 1); exit }}')
  fi
  if [ -z "$LAN_ADDRESS" ] && [ -n "$LAN_IF" ]; then
    LAN_ADDRESS=$(ip -o -4 addr show dev "$LAN_IF" 2>/dev/null | awk '{print $4; exit}')
  fi
  if [ ${#UPSTREAMS[@]} -eq 0 ] && [ -r /etc/resolv.conf ]; then
    local server
    while read -r server; do UPSTREAMS+=("$server"); done < <(
      awk '$1 == "nameserver" && $2 !~ /^127\./ && $2 != "::1" { print $2 }' /etc/resolv.conf)
  fi
}

ask() {  # ask VAR "question" : keeps the current value when the answer is empty
  local var=$1 question=$2 answer
  [ "$INTERACTIVE" -eq 1 ] || return 0
  read -r -p "$question [${!var}]: " answer
  [ -z "$answer" ] || printf -v "$var" '%s' "$answer"
}

toml_string() {  # a TOML basic string
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

render_appliance_config() {
  local out=$1 lan_ip prefix network upstream_list="" u
  lan_ip=${LAN_ADDRESS%/*}
  prefix=${LAN_ADDRESS#*/}
  [ "$prefix" != "$LAN_ADDRESS" ] || prefix=24
  network=$(python3 -c 'import ipaddress, sys; print(ipaddress.ip_interface(sys.argv[1]).network)' "$lan_ip/$prefix") \
    || die "--lan-address $LAN_ADDRESS is not an IPv4 address with a prefix, e.g. 192.168.10.1/24"
  for u in "${UPSTREAMS[@]}"; do
    case "$u" in *:*:*|*\]*) ;; *:*) ;; *) u="$u:53" ;; esac
    upstream_list+="${upstream_list:+, }$(toml_string "$u")"
  done
  local network_extra=""
  case "$MODE" in
    bridge) network_extra="wan_interface = $(toml_string "$WAN_IF")      # the port to the school's router
bridge_interface = \"br0\"
router_ipv4 = $(toml_string "$ROUTER")" ;;
    dns-only) network_extra="router_ipv4 = $(toml_string "$ROUTER")" ;;
  esac
  cat > "$out" <<EOF
# schoolgate appliance configuration, written by deploy/install.sh.
# The school's rules are in policy.toml beside this file. After editing either file:
#   sudo systemctl restart schoolgate.target      and check with:   sudo schoolgate doctor

policy = "policy.toml"
data_dir = "$DATA"

[site]
id = $(toml_string "$SITE_ID")
name = $(toml_string "$SITE_NAME")

[dns]
listen = [$(toml_string "$lan_ip:53")]
upstreams = [$upstream_list]
nftables = true          # answers for watched services steer their connections into the proxy

[proxy]
listen = $(toml_string "$lan_ip:8081")   # nftables redirects the LAN's web traffic here

[network]
# gateway, bridge or dns-only: see "Which network mode to choose" in the README.
mode = $(toml_string "$MODE")
lan_interface = $(toml_string "$LAN_IF")
${network_extra}
appliance_ipv4 = $(toml_string "$lan_ip")
lan_cidrs = [$(toml_string "$network")]

[console]
listen = $(toml_string "$lan_ip:8443")
base_url = $(toml_string "https://$lan_ip:8443")
tls_cert = "$DATA/console-tls/console.pem"
tls_key = "$DATA/console-tls/console.key"

[mail]
host = ""                # the school's mail relay, for the digest and alerts
sender = "schoolgate@$SITE_ID.invalid"

[identity]
# Who is behind an address, from the school's own systems (see the README):
# lease_files = ["windows:/srv/dhcp/leases.csv"]       # or isc:, kea:, dnsmasq: and a path
# radius_listen = "$lan_ip:1813"                        # the Wi-Fi controller's RADIUS accounting
# radius_clients = ["10.0.0.5"]
# radius_secret_file = "$ETC/radius-secret"
EOF
}

install_configuration() {
  mkdir -p "$ROOT$ETC"
  chown root:"$(group_id)" "$ROOT$ETC"
  chmod 0750 "$ROOT$ETC"
  local work
  work=$(mktemp -d)
  if [ ! -e "$ROOT$ETC/schoolgate.toml" ] || [ "$CONFIG_FLAGS" -eq 1 ]; then
    detect_lan
    LAN_IF=${LAN_IF:-eth0}
    SITE_ID=${SITE_ID:-school}
    SITE_NAME=${SITE_NAME:-Our School}
    if [ "$INTERACTIVE" -eq 1 ]; then
      cat >&2 <<'MODES'
How does this appliance sit in the school's network?
  gateway   it is every device's router: the school's DHCP gives it as gateway and DNS
  bridge    it goes in the cable between the school's router and its main switch; nothing is
            re-addressed (fit a bypass switch: if it is off, the school is offline)
  dns-only  it is only the DNS server the school's DHCP hands out; the school's firewall must
            stop other DNS servers, DNS over TLS/HTTPS and QUIC (the README says how)
MODES
    fi
    ask MODE "network mode (gateway, bridge or dns-only)"
    [[ "$MODE" =~ ^(gateway|bridge|dns-only)$ ]] || die "--mode $MODE: one of gateway, bridge, dns-only"
    if [ "$MODE" = bridge ]; then
      ask LAN_IF "the port to the school's switch"
      ask WAN_IF "the port to the school's router"
      if [ -z "$WAN_IF" ] || [ "$WAN_IF" = "$LAN_IF" ]; then
        die "bridge mode needs two ports: give --lan-if and --wan-if"
      fi
      [[ "$WAN_IF" =~ ^[A-Za-z0-9_.:-]+$ ]] || die "--wan-if $WAN_IF: not an interface name"
    else
      ask LAN_IF "LAN interface"
    fi
    if [ "$MODE" != gateway ]; then
      ask ROUTER "the school router's address"
      [ -n "$ROUTER" ] || die "$MODE mode needs the school router's address: give --router"
    fi
    ask LAN_ADDRESS "appliance address on the LAN (with prefix, e.g. 192.168.10.1/24)"
    local upstream_default=${UPSTREAMS[*]:-}
    ask upstream_default "upstream DNS servers (space-separated)"
    read -r -a UPSTREAMS <<< "$upstream_default"
    ask SITE_ID "short name of the school"
    ask SITE_NAME "the school's name"
    [ -n "$LAN_ADDRESS" ] || die "no LAN address: give one with --lan-address, e.g. --lan-address 192.168.10.1/24"
    [ ${#UPSTREAMS[@]} -gt 0 ] || die "no upstream DNS server: give one with --upstream, e.g. --upstream 192.168.10.254"
    [[ "$SITE_ID" =~ ^[A-Za-z0-9_-]+$ ]] || die "--site-id $SITE_ID: use letters, digits, - and _ only"
    [[ "$LAN_IF" =~ ^[A-Za-z0-9_.:-]+$ ]] || die "--lan-if $LAN_IF: not an interface name"
    render_appliance_config "$work/schoolgate.toml"
    install_conffile "$work/schoolgate.toml" "$ETC/schoolgate.toml"
  fi
  [ -f "$SOURCE/deploy/policy.example.toml" ] || die "$SOURCE/deploy/policy.example.toml is missing from the checkout"
  install_conffile "$SOURCE/deploy/policy.example.toml" "$ETC/policy.toml"
  if [ -d "$SOURCE/deploy/lists" ]; then
    local list name
    mkdir -p "$ROOT$ETC/lists"
    chown root:"$(group_id)" "$ROOT$ETC/lists"
    chmod 0750 "$ROOT$ETC/lists"
    while IFS= read -r -d '' list; do
      name=${list#"$SOURCE/deploy/lists/"}
      install_conffile "$list" "$ETC/lists/$name"
    done < <(find "$SOURCE/deploy/lists" -type f -print0 | sort -z)
  fi
  rm -rf "$work"
}

# ------------------------------------------------------------------ data, CA, database, admin

prepare_data() {
  # One directory shared by every daemon through the group; setgid keeps new files in the group.
  mkdir -p "$ROOT$DATA"
  chown root:"$(group_id)" "$ROOT$DATA"
  chmod 2770 "$ROOT$DATA"
}

setting() {  # setting SECTION KEY : a value from the installed schoolgate.toml
  target "$VENV/bin/python" - "$ETC/schoolgate.toml" "$1" "$2" <<'EOF'
import sys
from schoolgate.config import load_config
config = load_config(sys.argv[1])
section = getattr(config, sys.argv[2]) if sys.argv[2] else config
print(getattr(section, sys.argv[3]))
EOF
}

create_ca() {
  local ca_dir
  ca_dir=$(setting proxy ca_dir)
  [ -n "$ca_dir" ] || ca_dir=$DATA/ca
  if [ ! -e "$ROOT$ca_dir/mitmproxy-ca.pem" ]; then
    say "creating the school CA in $ca_dir"
    target "$VENV/bin/schoolgate" ca init --config "$ETC/schoolgate.toml" --owner schoolgate-proxy
  fi
  # The proxy owns the CA (systemd's StateDirectory= keeps it so); the group may read the public half.
  target chown "schoolgate-proxy:$GROUP" "$ca_dir"
  chmod 0750 "$ROOT$ca_dir"
  create_console_certificate "$ca_dir"
}

create_console_certificate() {
  local ca_dir=$1 cert key
  cert=$(setting console tls_cert)
  key=$(setting console tls_key)
  [ -n "$cert" ] && [ -n "$key" ] || return 0
  [ -e "$ROOT$cert" ] && [ -e "$ROOT$key" ] && return 0
  say "issuing the console's TLS certificate from the school CA"
  target "$VENV/bin/python" - "$ETC/schoolgate.toml" "$ca_dir" "$cert" "$key" <<'EOF'
import ipaddress, os, shutil, sys
from pathlib import Path
from schoolgate.config import load_config
from schoolgate.ca import issue_server_cert

config = load_config(sys.argv[1])
cert, key = Path(sys.argv[3]), Path(sys.argv[4])
host = config.console.listen.rsplit(":", 1)[0].strip("[]")
names, ips = ["schoolgate.lan", *config.dns.names], []
try:
    ips.append(str(ipaddress.ip_address(host)))
except ValueError:
    names.insert(0, host)
made_cert, made_key = issue_server_cert(sys.argv[2], list(dict.fromkeys(names)), ips, name="console")
for path in (cert, key):
    path.parent.mkdir(parents=True, exist_ok=True)
shutil.copyfile(made_cert, cert)
shutil.copyfile(made_key, key)
os.chmod(cert, 0o644)
os.chmod(key, 0o600)
EOF
  local dir
  dir=$(dirname "$cert")
  target chown "schoolgate-console:$GROUP" "$dir" "$cert" "$key"
  chmod 0750 "$ROOT$dir"
}

upgrade_database() {
  say "bringing the database schema up to date"
  target_as schoolgate-console "$VENV/bin/schoolgate" db upgrade --config "$ETC/schoolgate.toml" >&2
  local url
  url=$(setting "" database_url)
  case "$url" in
    sqlite:///*)
      # Every daemon writes the one SQLite file; SQLite gives the -wal and -shm files its mode.
      local db=${url#sqlite:///} f
      for f in "$db" "$db-wal" "$db-shm"; do
        [ -e "$ROOT$f" ] && chmod 0660 "$ROOT$f"
      done
      ;;
  esac
  return 0
}

create_admin() {
  local listed
  listed=$(target_as schoolgate-console "$VENV/bin/schoolgate" users list --config "$ETC/schoolgate.toml") \
    || die "cannot list the console's users (schoolgate users list failed)"
  if printf '%s\n' "$listed" | cut -f1 | grep -qx admin; then  # first column: the user name
    return 0
  fi
  say "creating the first console account, admin; write down the one-time password below"
  target_as schoolgate-console "$VENV/bin/schoolgate" users add admin --role admin --config "$ETC/schoolgate.toml"
}

# ------------------------------------------------------------------ systemd

install_units() {
  mkdir -p "$ROOT$UNIT_DIR"
  local unit changed=0
  for unit in "${UNITS[@]}"; do
    if ! cmp -s "$SOURCE/systemd/$unit" "$ROOT$UNIT_DIR/$unit"; then
      install -m 0644 "$SOURCE/systemd/$unit" "$ROOT$UNIT_DIR/$unit"
      changed=1
    fi
  done
  write_console_socket && changed=1
  # A symlink to the CLI on the PATH, for `schoolgate doctor` and friends.
  ln -sfn "$VENV/bin/schoolgate" "$ROOT/usr/local/bin/schoolgate"
  if [ -n "$ROOT" ]; then
    target systemctl enable "${UNITS[@]}" >/dev/null 2>&1 || target systemctl enable "${UNITS[@]}"
    return 0
  fi
  if [ -d /run/systemd/system ]; then
    [ "$changed" -eq 0 ] || systemctl daemon-reload
    systemctl enable "${UNITS[@]}" >/dev/null 2>&1
    if [ "$START" -eq 1 ]; then
      say "starting schoolgate"
      systemctl restart schoolgate-net.service
      systemctl restart schoolgate.target
    fi
  else
    # No running systemd (a container or an image being built): enable only.
    systemctl --root=/ enable "${UNITS[@]}" >/dev/null
  fi
}

# The console's socket listens where the configuration says the console does; written again at
# every install, so that re-running the installer after editing [console] listen moves it.
# Succeeds (status 0) only when the file changed.
write_console_socket() {
  local listen text
  listen=$(setting console listen) || die "cannot read [console] listen from $ETC/schoolgate.toml"
  text="# Written by deploy/install.sh from [console] listen in $ETC/schoolgate.toml.
[Socket]
ListenStream=
ListenStream=$listen"
  if [ -f "$ROOT$CONSOLE_SOCKET_DROPIN" ] && [ "$(cat "$ROOT$CONSOLE_SOCKET_DROPIN")" = "$text" ]; then
    return 1
  fi
  mkdir -p "$(dirname "$ROOT$CONSOLE_SOCKET_DROPIN")"
  printf '%s\n' "$text" > "$ROOT$CONSOLE_SOCKET_DROPIN"
  chmod 0644 "$ROOT$CONSOLE_SOCKET_DROPIN"
}

main() {
  prepare_root
  check_system
  install_debian_packages "${DEBIAN_PACKAGES[@]}"
  create_users
  install_program
  install_configuration
  prepare_data
  create_ca
  upgrade_database
  create_admin
  install_units
  say "done. Next: put this school's name, block address and LAN ranges in $ETC/policy.toml"
  say "([school] and [[networks]]), check it with: schoolgate policy check $ETC/policy.toml"
  say "then: sudo systemctl restart schoolgate.target && sudo schoolgate doctor"
}

main "$@"; exit  # one line: an install.sh edited while it runs (an upgrade) is never read further
