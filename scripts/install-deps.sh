#!/usr/bin/env bash
# Install what building and testing berth needs on a fresh Debian 12 machine.
#
# Idempotent and quick on re-runs: apt only runs when a package is missing, pip
# only when a Python package is missing or at the wrong version.
#
#   scripts/install-deps.sh          # as root, or as a user with sudo
#
# Sources allowed: Debian packages, crates.io (via cargo), PyPI (via pip).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"

say() { printf '[install-deps] %s\n' "$*"; }
die() { printf '[install-deps] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# 1. Debian packages
# ---------------------------------------------------------------------------
APT_PACKAGES=(
  protobuf-compiler
  python3-venv
  python3-pip
  curl
  ca-certificates
  build-essential
  pkg-config
)

# Runtime dependencies of the agent and its end-to-end tests: containerd + runc,
# the CNI plugins (/usr/lib/cni), a registry to pull from, busybox for the test
# image, and the network tools the tests and the CNI plugins call.
APT_PACKAGES+=(
  containerd
  runc
  containernetworking-plugins
  docker-registry
  busybox-static
  iptables
  iproute2
)

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  fi
fi

if command -v dpkg-query >/dev/null 2>&1; then
  missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    if [ "$status" != "install ok installed" ]; then
      missing+=("$pkg")
    fi
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
      die "missing Debian packages: ${missing[*]} (run this script as root, or install sudo)"
    fi
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q || die "apt-get update failed"
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" \
      || die "apt-get install ${missing[*]} failed"
  else
    say "Debian packages present"
  fi
else
  say "WARNING: dpkg-query not found (not Debian?); checking commands only"
fi

for cmd in protoc cc pkg-config python3 containerd ctr runc ip iptables; do
  command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' not found on PATH after package installation"
done
for f in /usr/bin/docker-registry /usr/bin/busybox /usr/lib/cni/bridge /usr/lib/cni/portmap /usr/lib/cni/host-local /usr/lib/cni/loopback; do
  [ -x "$f" ] || die "$f missing after package installation"
done

# ---------------------------------------------------------------------------
# 1b. containerd running, IPv4 forwarding on (the agent's CNI bridge needs both)
# ---------------------------------------------------------------------------
CONTAINERD_SOCK=/run/containerd/containerd.sock
CONTAINERD_LOG=/var/log/berth-ci-containerd.log
CONTAINERD_WAIT="${CONTAINERD_WAIT:-30}"   # seconds

containerd_answers() {
  [ -S "$CONTAINERD_SOCK" ] && "${SUDO[@]}" timeout 5 ctr --address "$CONTAINERD_SOCK" version >/dev/null 2>&1
}

if containerd_answers; then
  say "containerd is running ($CONTAINERD_SOCK)"
else
  if [ "$(id -u)" -ne 0 ] && [ "${#SUDO[@]}" -eq 0 ]; then
    die "containerd is not running and starting it needs root (run this script as root, or install sudo)"
  fi
  if [ "$(cat /proc/1/comm 2>/dev/null)" = "systemd" ] && command -v systemctl >/dev/null 2>&1; then
    say "starting containerd (systemctl start containerd)"
    "${SUDO[@]}" systemctl start containerd || die "systemctl start containerd failed (see: journalctl -u containerd)"
  else
    say "starting containerd in the background (log: $CONTAINERD_LOG)"
    # setsid: its own session, so it outlives this script and a Ctrl-C of the test run.
    "${SUDO[@]}" sh -c "setsid nohup containerd >>'$CONTAINERD_LOG' 2>&1 </dev/null &" \
      || die "could not start containerd"
  fi
  deadline=$(( $(date +%s) + CONTAINERD_WAIT ))
  until containerd_answers; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail -n 30 "$CONTAINERD_LOG" 2>/dev/null >&2 || true
      die "containerd did not answer on $CONTAINERD_SOCK within ${CONTAINERD_WAIT}s (log: $CONTAINERD_LOG, or journalctl -u containerd)"
    fi
    sleep 0.2
  done
  say "containerd is up ($CONTAINERD_SOCK)"
fi

if [ "$(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null)" != "1" ]; then
  say "enabling net.ipv4.ip_forward"
  # (not `sysctl`: procps is not on every minimal image)
  echo 1 | "${SUDO[@]}" tee /proc/sys/net/ipv4/ip_forward >/dev/null \
    || die "could not set net.ipv4.ip_forward=1 (writing /proc/sys/net/ipv4/ip_forward failed)"
fi

# ---------------------------------------------------------------------------
# 2. Rust toolchain (installed by rustup on CI machines; never downloaded here)
# ---------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
  die "no Rust toolchain: 'cargo' is not on PATH (nor in ~/.cargo/bin).
  Install Rust with rustup (https://rustup.rs) or your distribution's 'cargo' package,
  then re-run. This script does not download toolchains."
fi
say "cargo: $(cargo --version)"

# ---------------------------------------------------------------------------
# 3. Python virtualenv with the AWS CLI, boto3 and pytest
# ---------------------------------------------------------------------------
# name -> exact version ("" = any version)
PY_REQS=(
  "awscli==1.46.2"
  "boto3"
  "pytest"
  "pytest-timeout"
  "bcrypt"          # htpasswd file of the tests' registry with basic auth
)

PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
  say "creating virtualenv $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create a virtualenv with '$PYTHON -m venv' (is python3-venv installed?)"
fi

# Print the requirements that are missing or at the wrong version.
need_install="$("$VENV/bin/python" - "${PY_REQS[@]}" <<'EOF'
import sys
from importlib import metadata
for req in sys.argv[1:]:
    name, _, want = req.partition("==")
    try:
        have = metadata.version(name)
    except metadata.PackageNotFoundError:
        print(req)
        continue
    if want and have != want:
        print(req)
EOF
)" || die "could not inspect the virtualenv $VENV"

if [ -n "$need_install" ]; then
  # shellcheck disable=SC2086
  say "pip installing: $(echo $need_install)"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $need_install \
    || die "pip install failed for: $(echo $need_install)"
else
  say "virtualenv up to date ($VENV)"
fi

"$VENV/bin/aws" --version >/dev/null 2>&1 || die "$VENV/bin/aws does not run"
"$VENV/bin/python" -c 'import boto3, pytest, pytest_timeout, bcrypt' >/dev/null 2>&1 \
  || die "boto3/pytest/pytest-timeout/bcrypt not importable in $VENV"
say "aws: $("$VENV/bin/aws" --version 2>&1)"
say "done"
