#!/usr/bin/env bash
# Install what is missing, build berth (release), and start `berth dev`.
#
#   scripts/dev.sh                       # API on https://127.0.0.1:7700, data in ~/.berth/dev
#   scripts/dev.sh --api-addr 0.0.0.0:7700 --data-dir /srv/berth   # extra arguments go to `berth dev`
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
"$REPO/scripts/install-deps.sh"
echo "[dev] building berth (release; the first build takes a few minutes)"
cargo build --release -p berth
echo "[dev] the AWS CLI is in $REPO/.venv/bin (export PATH=\"$REPO/.venv/bin:\$PATH\")"
exec "$REPO/target/release/berth" dev "$@"
