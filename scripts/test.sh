#!/usr/bin/env bash
# Runs every test of the workspace on a fresh machine: installs what the tests need when it is
# missing (Debian packages, npm packages into a local folder), starts servers on free loopback
# ports with throwaway data folders, runs the tests, and stops the servers even on failure.
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -p portcullis --test route_bypass   # extra args go to cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

APT_UPDATED=0
# ensure_pkg COMMAND PACKAGE... : installs the Debian packages when COMMAND is missing.
ensure_pkg() {
  local cmd=$1; shift
  if command -v "$cmd" >/dev/null 2>&1; then return 0; fi
  log "installing $* (for $cmd)"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ "$APT_UPDATED" -eq 0 ]; then
    $sudo apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# The Rust toolchain is on the machine (rustup); make sure it is on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi

# Throwaway folder for servers' data, removed on exit whatever happens.
WORK=$(mktemp -d -t portcullis-test.XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

export PORTCULLIS_TEST_WORK="$WORK"

# Servers the tests start themselves (on free loopback ports, throwaway data folders).
ensure_pkg redis-server redis-server
ensure_pkg redis-cli redis-tools
# The gateway's browser tests (nonce_gateway.rs, nextjs.rs): headless Chromium driven by
# playwright-core, and npm for it and for the Next.js test app (installed into their folders
# under crates/portcullis-gateway/tests/ by the tests themselves).
ensure_pkg chromium chromium
ensure_pkg node nodejs
ensure_pkg npm npm

log "cargo test (workspace)"
if [ "$#" -gt 0 ]; then
  cargo test "$@"
else
  cargo test --workspace --all-targets --no-fail-fast
  # Doc tests are part of the suite: every public item's example must compile and pass.
  cargo test --workspace --doc --no-fail-fast
fi
