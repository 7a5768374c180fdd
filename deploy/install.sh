#!/usr/bin/env bash
# Install a built berth binary and the server and agent units on this machine (as root).
#   deploy/install.sh target/release/berth
set -euo pipefail
BIN="${1:-target/release/berth}"
DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[ -x "$BIN" ] || { echo "no berth binary at $BIN (build it: cargo build --release -p berth)" >&2; exit 1; }
install -m 0755 "$BIN" /usr/local/bin/berth
install -d -m 0750 /etc/berth /var/lib/berth
[ -f /etc/berth/server.toml ] || install -m 0600 "$DIR/server.toml" /etc/berth/server.toml
install -m 0644 "$DIR/berth-server.service" /etc/systemd/system/berth-server.service
install -m 0644 "$DIR/berth-agent.service" /etc/systemd/system/berth-agent.service
[ -f /etc/berth/agent.env ] || printf 'BERTH_SERVERS=127.0.0.1:7701\nBERTH_CLUSTER=default\nBERTH_JOIN_TOKEN=\n' > /etc/berth/agent.env
/usr/local/bin/berth validate --config /etc/berth/server.toml || echo "edit /etc/berth/server.toml, then: systemctl enable --now berth-server"
systemctl daemon-reload 2>/dev/null || true
echo "installed; start with: systemctl enable --now berth-server"
echo "on machines that run containers: apt-get install containerd runc containernetworking-plugins, fill /etc/berth/agent.env, then systemctl enable --now berth-agent"
