#!/usr/bin/env bash
# Idempotent node set-up for Porin on Debian 12, as root.
#   hack/setup.sh [VENV [MODE]]   VENV default ./.venv; MODE dev (editable, with
#                                 test tools) or install (a plain copy for the node)
# Installs Debian packages, links kernel headers for bcc, mounts bpffs,
# creates a virtual environment that can import bcc and installs Porin into it.
set -euo pipefail

VENV=${1:-.venv}
MODE=${2:-dev}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PKGS=(python3 python3-venv python3-pip python3-bpfcc bpftool iproute2 iptables
      containernetworking-plugins iperf3 tcpdump ipset ethtool procps util-linux kmod iputils-ping
      curl linux-headers-cloud-amd64 etcd-server etcd-client prometheus)

log() { echo "[setup] $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  echo "hack/setup.sh must run as root (it installs packages and mounts bpffs)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bcc wants kernel headers at /lib/modules/$(uname -r)/build. The datapath uses
# only UAPI headers, so Debian's cloud headers do when the running kernel ships none.
moddir="/lib/modules/$(uname -r)"
if [ ! -e "$moddir/build/include/generated" ] || [ ! -e "$moddir/source/include/linux/kconfig.h" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-cloud-amd64 2>/dev/null | sort -V | tail -n 1)
  [ -n "$hdr" ] || { echo "no linux-headers-*-cloud-amd64 under /usr/src" >&2; exit 1; }
  common=${hdr%-cloud-amd64}-common
  log "linking $moddir/build -> $hdr and $moddir/source -> $common"
  mkdir -p "$moddir"
  ln -sfn "$hdr" "$moddir/build"
  ln -sfn "$common" "$moddir/source"
fi

if ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

# The venv must use Debian's python3 (the one python3-bpfcc is built for).
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import bcc' 2>/dev/null; then
  log "creating virtual environment $VENV"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
pip=("$VENV/bin/pip" install -q --disable-pip-version-check)
if [ "$MODE" = install ]; then
  log "installing Porin into $VENV"
  "${pip[@]}" "$ROOT" && "${pip[@]}" --force-reinstall --no-deps "$ROOT"
else
  stamp="$VENV/.porin-installed"
  if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    log "installing Porin (editable) and its test dependencies into $VENV"
    "${pip[@]}" -e "$ROOT[test]"
    touch "$stamp"
  fi
fi
"$VENV/bin/python" -c 'import bcc, pyroute2, porin' || { echo "venv $VENV cannot import bcc/pyroute2/porin" >&2; exit 1; }
