#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: repeatable on a shared machine,
# where req/s swings by ±10 % between runs (the same binary and config give the same count).
#
#   bash bench/callgrind.sh [CONFIG]   # a template with @PORT@ and @UPSTREAM_PORT@ (as
#                                      # bench/portcullis.toml.tmpl, the default, or
#                                      # bench/portcullis-controls-off.toml.tmpl)
#
# Builds the dist profile, starts bench_upstream and the gateway (one worker) under
# `valgrind --tool=callgrind`, warms up for 2 s, zeroes the counters, drives it with
# `wrk -t1 -c4 -d10s` on GET /api/public, dumps, and prints the instructions per request.
# The profile stays in $CALLGRIND_OUT (default target/callgrind.out.*) for callgrind_annotate.
# Needs valgrind and wrk (Debian packages; installed when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
for pkg in valgrind wrk curl openssl; do
    if ! command -v "$pkg" >/dev/null 2>&1; then
        sudo=""
        [[ $(id -u) -eq 0 ]] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null
    fi
done
cargo build --profile dist --quiet -p portcullis-gateway --bin portcullis --example bench_upstream
TARGET=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [[ -n $p ]] && kill "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port)
GW=$(free_port)
export BENCH_JWT_SECRET BENCH_CSRF_SECRET BENCH_JWT_PUBLIC_KEY
BENCH_JWT_SECRET=$(openssl rand -hex 32)
BENCH_CSRF_SECRET=$(openssl rand -hex 32)
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/rsa.pem" 2>/dev/null
BENCH_JWT_PUBLIC_KEY=$(openssl pkey -in "$TMP/rsa.pem" -pubout)
CONFIG=${1:-bench/portcullis.toml.tmpl}
sed -e "s|@PORT@|$GW|g" -e "s|@UPSTREAM_PORT@|$UP|g" -e "s|@STORE@|memory|g" \
    -e 's/^workers = .*/workers = 1/' "$CONFIG" >"$TMP/portcullis.toml"
OUT=${CALLGRIND_OUT:-$TARGET/callgrind.out}
rm -f "$OUT".*
"$TARGET/dist/examples/bench_upstream" "127.0.0.1:$UP" >/dev/null 2>&1 &
PIDS+=($!)
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT" \
    "$TARGET/dist/portcullis" serve --config "$TMP/portcullis.toml" >"$TMP/valgrind.log" 2>&1 &
VG=$!
PIDS+=("$VG")
url="http://127.0.0.1:$GW/api/public"
for _ in $(seq 1 150); do
    curl -s -o /dev/null "$url" && break
    sleep 0.2
done
wrk -t1 -c4 -d2s "$url" >/dev/null
callgrind_control -z "$VG" >/dev/null
n=$(wrk -t1 -c4 -d10s "$url" | awk '/requests in/ {print $1}')
callgrind_control -d "$VG" >/dev/null
sleep 1
dump=$(ls -t "$OUT".* | head -1)
ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "requests: $n  instructions: $ir  per request: $((ir / n))  profile: $dump"
