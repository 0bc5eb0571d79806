#!/usr/bin/env bash
# Instructions per request, counted by callgrind: repeatable on a shared machine, where req/s
# swings by ±10 % between runs (the same binary and config give the same count).
#
#   bash bench/callgrind.sh [CONFIG]     # the gateway, with a config template holding @PORT@
#                                        # and @UPSTREAM_PORT@ (bench/portcullis.toml.tmpl, the
#                                        # default, or bench/portcullis-controls-off.toml.tmpl)
#   bash bench/callgrind.sh axum         # bench_axum --layer none    (the library face, bare)
#   bash bench/callgrind.sh axum+layer   # bench_axum --layer public  (behind SecurityLayer)
#   bash bench/callgrind.sh axum+headers # bench_axum --layer headers (its 14 headers, constant)
#   bash bench/callgrind.sh hyper-proxy  # bench_bare_proxy (the reference proxy)
#   bash bench/callgrind.sh nginx        # nginx with bench/nginx.conf.tmpl, one worker and no
#                                        # master (the process callgrind watches serves)
#   bash bench/callgrind.sh layer        # the layer alone, in-process: bench_axum --loop, the
#                                        # same request through the bare router and through
#                                        # SecurityLayer, no sockets (no hyper, no kernel)
#
# Builds the dist profile, starts the target (the gateway with one worker) under
# `valgrind --tool=callgrind` (and bench_upstream behind the proxies), warms up for 2 s,
# zeroes the counters, drives it with `wrk -t1 -c4 -d10s` on GET /api/public, dumps, and
# prints the instructions per request. The profile stays in $CALLGRIND_OUT (default
# target/callgrind.out.*) for `callgrind_annotate --inclusive=yes`.
# Needs valgrind and wrk (Debian packages; installed when missing).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
pkgs=(valgrind wrk curl openssl)
[[ ${1:-} == nginx ]] && pkgs+=(nginx)
for pkg in "${pkgs[@]}"; do
    [[ $pkg == nginx && -x /usr/sbin/nginx ]] && continue
    if ! command -v "$pkg" >/dev/null 2>&1; then
        sudo=""
        [[ $(id -u) -eq 0 ]] || sudo=sudo
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null
    fi
done
WHAT=${1:-bench/portcullis.toml.tmpl}
if [[ $WHAT == layer ]]; then
    cargo build --profile dist --quiet -p portcullis --example bench_axum
    TARGET=${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
    export BENCH_JWT_SECRET
    BENCH_JWT_SECRET=$(openssl rand -hex 32)
    # Instructions for N requests, start-up included: two runs tell the per-request count.
    count() {
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \
            "$TARGET/dist/examples/bench_axum" --layer "$1" --loop "$2" 2>&1 |
            sed -n 's/.*Collected : //p'
    }
    declare -A per
    for mode in none public; do
        per[$mode]=$((($(count "$mode" 21000) - $(count "$mode" 1000)) / 20000))
    done
    echo "in-process, per request: bare router ${per[none]}  behind SecurityLayer ${per[public]}  the layer's own $((per[public] - per[none]))"
    exit 0
fi
case $WHAT in
    axum) MODE=none ;;
    axum+layer) MODE=public ;;
    axum+headers) MODE=headers ;;
    hyper-proxy) MODE=proxy ;;
    nginx) MODE=nginx ;;
    *)
        [[ -f $WHAT ]] || {
            echo "callgrind.sh: $WHAT is neither a config template nor one of axum, axum+layer, axum+headers, hyper-proxy, nginx, layer" >&2
            exit 2
        }
        MODE=gateway
        ;;
esac
case $MODE in
    gateway) cargo build --profile dist --quiet -p portcullis-gateway --bin portcullis --example bench_upstream ;;
    proxy) cargo build --profile dist --quiet -p portcullis-gateway --example bench_bare_proxy --example bench_upstream ;;
    nginx) cargo build --profile dist --quiet -p portcullis-gateway --example bench_upstream ;;
    *) cargo build --profile dist --quiet -p portcullis --example bench_axum ;;
esac
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
PORT=$(free_port)
export BENCH_JWT_SECRET BENCH_CSRF_SECRET BENCH_JWT_PUBLIC_KEY
BENCH_JWT_SECRET=$(openssl rand -hex 32)
BENCH_CSRF_SECRET=$(openssl rand -hex 32)
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/rsa.pem" 2>/dev/null
BENCH_JWT_PUBLIC_KEY=$(openssl pkey -in "$TMP/rsa.pem" -pubout)
OUT=${CALLGRIND_OUT:-$TARGET/callgrind.out}
rm -f "$OUT".*
if [[ $MODE == gateway || $MODE == proxy || $MODE == nginx ]]; then
    "$TARGET/dist/examples/bench_upstream" "127.0.0.1:$UP" >/dev/null 2>&1 &
    PIDS+=($!)
fi
case $MODE in
    gateway)
        sed -e "s|@PORT@|$PORT|g" -e "s|@UPSTREAM_PORT@|$UP|g" -e "s|@STORE@|memory|g" \
            -e 's/^workers = .*/workers = 1/' "$WHAT" >"$TMP/portcullis.toml"
        CMD=("$TARGET/dist/portcullis" serve --config "$TMP/portcullis.toml")
        ;;
    proxy) CMD=("$TARGET/dist/examples/bench_bare_proxy" "127.0.0.1:$PORT" "127.0.0.1:$UP") ;;
    nginx)
        mkdir -p "$TMP/nginx"
        user=""
        [[ $(id -u) -eq 0 ]] && user="user root;"
        # One worker serving in the foreground process: what callgrind counts is nginx's work.
        sed -e "s|@USER@|$user daemon off; master_process off;|" -e "s|@DIR@|$TMP/nginx|g" \
            -e "s|@PORT@|$PORT|g" -e "s|@UPSTREAM_PORT@|$UP|g" \
            -e 's/^worker_processes .*/worker_processes 1;/' bench/nginx.conf.tmpl >"$TMP/nginx/nginx.conf"
        CMD=("$(command -v nginx || echo /usr/sbin/nginx)" -e "$TMP/nginx/error.log" -p "$TMP/nginx"
            -c "$TMP/nginx/nginx.conf")
        ;;
    *) CMD=("$TARGET/dist/examples/bench_axum" --listen "127.0.0.1:$PORT" --layer "$MODE") ;;
esac
# shellcheck disable=SC2086 # CALLGRIND_OPTS holds several options, split on purpose.
RUST_LOG=warn valgrind --tool=callgrind ${CALLGRIND_OPTS:-} --callgrind-out-file="$OUT" "${CMD[@]}" \
    >"$TMP/valgrind.log" 2>&1 &
VG=$!
PIDS+=("$VG")
url="http://127.0.0.1:$PORT/api/public"
for _ in $(seq 1 150); do
    curl -s -o /dev/null "$url" && break
    kill -0 "$VG" 2>/dev/null || {
        echo "callgrind.sh: $WHAT exited: $(tail -n 5 "$TMP/valgrind.log")" >&2
        exit 1
    }
    sleep 0.2
done
wrk -t1 -c4 -d2s "$url" >/dev/null
callgrind_control -z "$VG" >/dev/null
n=$(wrk -t1 -c4 -d10s "$url" | awk '/requests in/ {print $1}')
callgrind_control -d "$VG" >/dev/null
sleep 1
dump=$(ls -t "$OUT".* | head -1)
ir=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "$WHAT: requests: $n  instructions: $ir  per request: $((ir / n))  profile: $dump"
