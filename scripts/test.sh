#!/usr/bin/env bash
# Build everything and run all tests: Rust unit tests, then the Python
# integration suite (real `berth` processes driven by the real AWS CLI/boto3).
#
#   scripts/test.sh                  # everything
#   scripts/test.sh -k clusters      # extra arguments go to pytest
#
# Exits non-zero if any step fails. The last line of a passing run is pytest's
# summary line.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

section() { printf '\n======================== %s ========================\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

section "install dependencies"
"$REPO/scripts/install-deps.sh"

section "cargo build --workspace --all-targets"
cargo build --workspace --all-targets

section "cargo test --workspace (unit tests)"
cargo test --workspace

section "integration tests (pytest)"
export BERTH_BIN="$REPO/target/debug/berth"
export AWS_BIN="$REPO/.venv/bin/aws"
exec "$REPO/.venv/bin/python" -m pytest tests -v -x --timeout=600 "$@"
