#!/usr/bin/env bash
# Portcullis benchmarks: the gateway and the library against the bare upstream, nginx and the
# Express security stack, all driven by wrk with the same load in one run. See bench/README.md.
#
#   bash bench/run.sh                 # full run (~7 min once built)
#   BENCH_QUICK=1 bash bench/run.sh   # 2 s per target: a smoke run of the script itself
#
# Environment:
#   BENCH_DURATION     wrk duration per target (default 10s; 2s with BENCH_QUICK=1)
#   BENCH_WARMUP       warm-up before each measured run (default 1s)
#   BENCH_CONNECTIONS  open connections (default 64)
#   BENCH_THREADS      wrk threads (default 2)
#   BENCH_ROUNDS       alternating head-to-head rounds for the targets, and as many paired
#                      rounds (two targets loaded at once; default 3; 1 quick)
#   BENCH_ROUND        wrk duration of each head-to-head run (default 5s; 1s quick)
#   CARGO_TARGET_DIR   where cargo builds (the usual meaning)
#
# Nothing is pinned: servers, wrk and the OS share every core, as on a developer's machine.
# The figures are those of one run on one machine; compare ratios, not absolute numbers.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/bench
if [[ ${BENCH_QUICK:-0} == 1 ]]; then
    DURATION=${BENCH_DURATION:-2s}
    ROUNDS=${BENCH_ROUNDS:-1}
    ROUND=${BENCH_ROUND:-1s}
else
    DURATION=${BENCH_DURATION:-10s}
    ROUNDS=${BENCH_ROUNDS:-3}
    ROUND=${BENCH_ROUND:-5s}
fi
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_ROUNDS must be a positive integer" >&2; exit 2; }
WARMUP=${BENCH_WARMUP:-1s}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}

log() { printf '==> %s\n' "$*" >&2; }
die() {
    printf 'bench/run.sh: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# What the run needs: Debian packages, Node packages, the release builds.

SUDO=()
[[ $(id -u) -eq 0 ]] || SUDO=(sudo)
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    "${SUDO[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

node_modules_ok() {
    local m
    for m in express helmet express-rate-limit csrf-csrf cookie-parser; do
        [[ -f $BENCH/express/node_modules/$m/package.json ]] || return 1
    done
}
if ! node_modules_ok; then
    log "installing the Express stack into bench/express/node_modules (npm)"
    (cd "$BENCH/express" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi

# Every target alike with the `dist` profile (release + fat LTO, one codegen unit; see the
# workspace Cargo.toml): the gateway as shipped, and the baselines built the same way.
log "building the binaries (cargo --profile dist: release with fat LTO; a few minutes cold)"
(
    cd "$ROOT"
    cargo build --profile dist --quiet -p portcullis-gateway --bin portcullis --example bench_upstream \
        --example bench_bare_proxy
    cargo build --profile dist --quiet -p portcullis --example bench_axum
)
if [[ -n ${CARGO_TARGET_DIR:-} ]]; then
    TARGET=$CARGO_TARGET_DIR
else
    TARGET=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
        sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
fi
PORTCULLIS=$TARGET/dist/portcullis
UPSTREAM=$TARGET/dist/examples/bench_upstream
AXUM=$TARGET/dist/examples/bench_axum
BARE_PROXY=$TARGET/dist/examples/bench_bare_proxy
for bin in "$PORTCULLIS" "$UPSTREAM" "$AXUM" "$BARE_PROXY"; do
    [[ -x $bin ]] || die "$bin was not built"
done

# ---------------------------------------------------------------------------------------------
# Processes, ports and clean-up.

TMP=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-bench.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

TAKEN=" "
# Listening ports come from below the kernel's ephemeral range: a port picked from inside it
# could be taken, before its server binds it, as the source port of an outgoing connection
# (a proxy's upstream pool, a store client), and the server would then fail to bind.
read -r EPHEMERAL_LOW _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || EPHEMERAL_LOW=32768
[[ $EPHEMERAL_LOW =~ ^[0-9]+$ ]] && ((EPHEMERAL_LOW > 12000)) || EPHEMERAL_LOW=32768
# free_port VAR: a loopback port nothing listens on, not handed out before.
free_port() {
    local p
    while :; do
        p=$((10000 + RANDOM % (EPHEMERAL_LOW - 10000)))
        [[ $TAKEN == *" $p "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            TAKEN+="$p "
            printf -v "$1" '%s' "$p"
            return
        fi
    done
}

# start NAME COMMAND...: runs COMMAND in the background, output in $TMP/NAME.log; sets LAST_PID.
start() {
    local name=$1
    shift
    "$@" >"$TMP/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# wait_http NAME PID URL: until URL answers (any status), or fail with the log.
wait_http() {
    local name=$1 pid=$2 url=$3 i
    for ((i = 0; i < 300; i++)); do
        if curl -s -o /dev/null --max-time 1 "$url"; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$TMP/$name.log" >&2 || true
            die "$name exited before answering on $url"
        fi
        sleep 0.1
    done
    tail -n 20 "$TMP/$name.log" >&2 || true
    die "$name did not answer on $url within 30 s"
}

# children PID: the ids of PID's direct children (nginx's workers).
children() {
    local stat ppid
    for stat in /proc/[0-9]*/stat; do
        ppid=$(awk '{print $4}' "$stat" 2>/dev/null) || continue
        if [[ $ppid == "$1" ]]; then
            stat=${stat#/proc/}
            printf '%s\n' "${stat%/stat}"
        fi
    done
}

# reset_hwm PID...: resets each process's peak RSS (VmHWM) to its current RSS.
reset_hwm() {
    local pid
    for pid in "$@"; do
        echo 5 >"/proc/$pid/clear_refs" 2>/dev/null || true
    done
}

# hwm_kib PID...: the sum of the processes' peak RSS since the last reset, in KiB.
hwm_kib() {
    local pid total=0 kib
    for pid in "$@"; do
        kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${kib:-0}))
    done
    echo "$total"
}

# ---------------------------------------------------------------------------------------------
# Keys and tokens: HS256 secret, RSA key pair (openssl), tokens minted here with openssl so
# every target verifies the very same bytes.

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
BENCH_JWT_SECRET=$(openssl rand -hex 32)
BENCH_CSRF_SECRET=$(openssl rand -hex 32)
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$TMP/rsa.pem" 2>/dev/null
openssl pkey -in "$TMP/rsa.pem" -pubout -out "$TMP/rsa.pub.pem"
BENCH_JWT_PUBLIC_KEY=$(cat "$TMP/rsa.pub.pem")
export BENCH_JWT_SECRET BENCH_CSRF_SECRET BENCH_JWT_PUBLIC_KEY

# mint_jwt HS256|RS256: a token for `bench-user`, issuer and audience `portcullis`, 1 h.
mint_jwt() {
    local alg=$1 now header claims input sig
    now=$(date +%s)
    header=$(printf '{"alg":"%s","typ":"JWT"}' "$alg" | b64url)
    claims=$(printf '{"sub":"bench-user","roles":["user"],"iss":"portcullis","aud":"portcullis","iat":%d,"nbf":%d,"exp":%d}' \
        "$now" "$now" "$((now + 3600))" | b64url)
    input="$header.$claims"
    if [[ $alg == HS256 ]]; then
        sig=$(printf '%s' "$input" |
            openssl dgst -sha256 -mac HMAC -macopt "key:$BENCH_JWT_SECRET" -binary | b64url)
    else
        sig=$(printf '%s' "$input" | openssl dgst -sha256 -sign "$TMP/rsa.pem" -binary | b64url)
    fi
    printf '%s.%s' "$input" "$sig"
}
TOKEN_HS256=$(mint_jwt HS256)
TOKEN_RS256=$(mint_jwt RS256)
# The HS256 token with its signature's characters rotated by one.
sig=${TOKEN_HS256##*.}
FORGED="${TOKEN_HS256%.*}.${sig:1}${sig:0:1}"

# ---------------------------------------------------------------------------------------------
# The targets.

free_port P_UPSTREAM
free_port P_PORTCULLIS
free_port P_PORTCULLIS_REDIS
free_port P_PORTCULLIS_SQLITE
free_port P_REDIS
free_port P_NGINX
free_port P_EXPRESS
free_port P_AXUM
free_port P_AXUM_LAYER
free_port P_AXUM_HEADERS
free_port P_BARE_PROXY

log "starting the upstream, portcullis (memory, redis, sqlite stores), redis, nginx, express, axum"
start upstream "$UPSTREAM" "127.0.0.1:$P_UPSTREAM"
PID_UPSTREAM=$LAST_PID

start redis redis-server --bind 127.0.0.1 --port "$P_REDIS" --save '' --appendonly no \
    --daemonize no --dir "$TMP"
PID_REDIS=$LAST_PID

# portcullis_config NAME PORT STORE: $TMP/NAME/portcullis.toml from the template.
portcullis_config() {
    mkdir -p "$TMP/$1"
    sed -e "s|@PORT@|$2|g" -e "s|@UPSTREAM_PORT@|$P_UPSTREAM|g" -e "s|@STORE@|$3|g" \
        "$BENCH/portcullis.toml.tmpl" >"$TMP/$1/portcullis.toml"
    "$PORTCULLIS" check-config --config "$TMP/$1/portcullis.toml" >/dev/null ||
        die "the $1 config is refused"
}
portcullis_config portcullis "$P_PORTCULLIS" memory
portcullis_config portcullis-redis "$P_PORTCULLIS_REDIS" "redis://127.0.0.1:$P_REDIS/0"
portcullis_config portcullis-sqlite "$P_PORTCULLIS_SQLITE" "sqlite://ratelimit.db"
# No access log on either proxy: RUST_LOG=warn here, `access_log off` for nginx.
export RUST_LOG=warn
start portcullis "$PORTCULLIS" serve --config "$TMP/portcullis/portcullis.toml"
PID_PORTCULLIS=$LAST_PID
start portcullis-sqlite "$PORTCULLIS" serve --config "$TMP/portcullis-sqlite/portcullis.toml"
PID_PORTCULLIS_SQLITE=$LAST_PID

mkdir -p "$TMP/nginx"
NGINX_USER=""
# As root, nginx's workers would switch to `nobody`, who cannot enter $TMP.
[[ $(id -u) -eq 0 ]] && NGINX_USER="user root;"
sed -e "s|@USER@|$NGINX_USER|" -e "s|@DIR@|$TMP/nginx|g" -e "s|@PORT@|$P_NGINX|g" \
    -e "s|@UPSTREAM_PORT@|$P_UPSTREAM|g" "$BENCH/nginx.conf.tmpl" >"$TMP/nginx/nginx.conf"
"$NGINX" -t -q -e "$TMP/nginx/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" ||
    die "nginx refused $TMP/nginx/nginx.conf"
start nginx "$NGINX" -e "$TMP/nginx/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" \
    -g 'daemon off;'
PID_NGINX=$LAST_PID

start express env PORT="$P_EXPRESS" NODE_ENV=production node "$BENCH/express/app.js"
PID_EXPRESS=$LAST_PID
start axum "$AXUM" --listen "127.0.0.1:$P_AXUM" --layer none
PID_AXUM=$LAST_PID
start axum-layer "$AXUM" --listen "127.0.0.1:$P_AXUM_LAYER" --layer public
PID_AXUM_LAYER=$LAST_PID
start axum-headers "$AXUM" --listen "127.0.0.1:$P_AXUM_HEADERS" --layer headers
PID_AXUM_HEADERS=$LAST_PID
# The reference point: a bare thread-per-core hyper proxy adding nginx's constant headers.
start hyper-proxy "$BARE_PROXY" "127.0.0.1:$P_BARE_PROXY" "127.0.0.1:$P_UPSTREAM"
PID_BARE_PROXY=$LAST_PID

wait_http upstream "$PID_UPSTREAM" "http://127.0.0.1:$P_UPSTREAM/"
for ((i = 0; i < 100; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$P_REDIS") 2>/dev/null && break
    kill -0 "$PID_REDIS" 2>/dev/null || die "redis-server exited: $(tail -n 5 "$TMP/redis.log")"
    sleep 0.1
done
# Redis is up: the Redis-backed gateway can start.
start portcullis-redis "$PORTCULLIS" serve --config "$TMP/portcullis-redis/portcullis.toml"
PID_PORTCULLIS_REDIS=$LAST_PID
wait_http portcullis "$PID_PORTCULLIS" "http://127.0.0.1:$P_PORTCULLIS/"
wait_http portcullis-redis "$PID_PORTCULLIS_REDIS" "http://127.0.0.1:$P_PORTCULLIS_REDIS/"
wait_http portcullis-sqlite "$PID_PORTCULLIS_SQLITE" "http://127.0.0.1:$P_PORTCULLIS_SQLITE/"
wait_http nginx "$PID_NGINX" "http://127.0.0.1:$P_NGINX/"
wait_http express "$PID_EXPRESS" "http://127.0.0.1:$P_EXPRESS/"
wait_http axum "$PID_AXUM" "http://127.0.0.1:$P_AXUM/"
wait_http axum-layer "$PID_AXUM_LAYER" "http://127.0.0.1:$P_AXUM_LAYER/"
wait_http axum-headers "$PID_AXUM_HEADERS" "http://127.0.0.1:$P_AXUM_HEADERS/"
wait_http hyper-proxy "$PID_BARE_PROXY" "http://127.0.0.1:$P_BARE_PROXY/"

# target NAME: sets T_PORT and T_PIDS (the processes whose RSS is the target's).
target() {
    case $1 in
    upstream) T_PORT=$P_UPSTREAM T_PIDS=("$PID_UPSTREAM") ;;
    portcullis) T_PORT=$P_PORTCULLIS T_PIDS=("$PID_PORTCULLIS") ;;
    portcullis+redis) T_PORT=$P_PORTCULLIS_REDIS T_PIDS=("$PID_PORTCULLIS_REDIS") ;;
    portcullis+sqlite) T_PORT=$P_PORTCULLIS_SQLITE T_PIDS=("$PID_PORTCULLIS_SQLITE") ;;
    # The master and its workers together.
    nginx) T_PORT=$P_NGINX T_PIDS=("$PID_NGINX") && mapfile -t -O 1 T_PIDS < <(children "$PID_NGINX") ;;
    express) T_PORT=$P_EXPRESS T_PIDS=("$PID_EXPRESS") ;;
    axum) T_PORT=$P_AXUM T_PIDS=("$PID_AXUM") ;;
    axum+layer) T_PORT=$P_AXUM_LAYER T_PIDS=("$PID_AXUM_LAYER") ;;
    axum+headers) T_PORT=$P_AXUM_HEADERS T_PIDS=("$PID_AXUM_HEADERS") ;;
    hyper-proxy) T_PORT=$P_BARE_PROXY T_PIDS=("$PID_BARE_PROXY") ;;
    *) die "unknown target $1" ;;
    esac
}

# status_of URL [CURL ARGS...]: the HTTP status of one request.
status_of() {
    local url=$1
    shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "$url"
}

# ---------------------------------------------------------------------------------------------
# Sanity checks: each target enforces what it claims before it is measured.

log "checking that every target enforces its controls"
FAILED=0
expect() { # WHAT WANT GOT
    if [[ $2 != "$3" ]]; then
        printf '  FAIL %s: expected %s, got %s\n' "$1" "$2" "$3" >&2
        FAILED=1
    fi
}
for t in portcullis portcullis+redis portcullis+sqlite axum+layer express; do
    target "$t"
    base="http://127.0.0.1:$T_PORT"
    expect "$t GET /api/public" 200 "$(status_of "$base/api/public")"
    expect "$t GET /api/user/me without a token" 401 "$(status_of "$base/api/user/me")"
    expect "$t GET /api/user/me with a forged token" 401 \
        "$(status_of "$base/api/user/me" -H "Authorization: Bearer $FORGED")"
    expect "$t GET /api/user/me HS256" 200 \
        "$(status_of "$base/api/user/me" -H "Authorization: Bearer $TOKEN_HS256")"
    expect "$t GET /api/user/me RS256" 200 \
        "$(status_of "$base/api/user/me" -H "Authorization: Bearer $TOKEN_RS256")"
    expect "$t DELETE /api/public" 405 "$(status_of "$base/api/public" -X DELETE)"
done
expect "nginx GET /api/public" 200 "$(status_of "http://127.0.0.1:$P_NGINX/api/public")"
expect "nginx DELETE /api/public" 403 "$(status_of "http://127.0.0.1:$P_NGINX/api/public" -X DELETE)"
head -c 2000000 /dev/zero >"$TMP/2mb.bin"
for t in portcullis axum+layer express nginx; do
    target "$t"
    expect "$t POST of 2 MB" 413 "$(status_of "http://127.0.0.1:$T_PORT/api/public" \
        -X POST -H 'Content-Type: application/octet-stream' --data-binary @"$TMP/2mb.bin")"
done
# CSP nonces: two responses, two different policies.
csp_of() { curl -s -D - -o /dev/null "$1" | tr -d '\r' | awk -F': ' 'tolower($1) == "content-security-policy" {print $2}'; }
c1=$(csp_of "http://127.0.0.1:$P_PORTCULLIS/api/public")
c2=$(csp_of "http://127.0.0.1:$P_PORTCULLIS/api/public")
if [[ -z $c1 || $c1 == "$c2" || $c1 != *"'nonce-"* ]]; then
    printf '  FAIL portcullis CSP nonce: %q then %q\n' "$c1" "$c2" >&2
    FAILED=1
fi
((FAILED == 0)) || die "a target does not enforce what it should (logs in $TMP)"

# The response headers each proxy adds, to judge how equivalent the configs are.
header_names() {
    curl -s -D - -o /dev/null "$1" | tr -d '\r' |
        awk -F': ' 'NR > 1 && NF > 1 {print tolower($1)}' |
        grep -vxE 'date|content-length|content-type|connection|keep-alive|etag' | sort | tr '\n' ' '
}
HEADERS=""
for t in portcullis nginx axum+layer express; do
    target "$t"
    HEADERS+=$(printf '  %-11s %s' "$t:" "$(header_names "http://127.0.0.1:$T_PORT/api/public")")$'\n'
done

# ---------------------------------------------------------------------------------------------
# Load.

cat >"$TMP/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d sockerr=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
EOF
{
    printf 'wrk.method = "POST"\nwrk.body = string.rep("x", 65536)\n'
    printf 'wrk.headers["Content-Type"] = "application/octet-stream"\n'
    cat "$TMP/report.lua"
} >"$TMP/post.lua"

ROWS=$TMP/rows.tsv
: >"$ROWS"
HZ=$(getconf CLK_TCK)
# The whole machine's busy CPU time so far, in clock ticks: user, nice, system, irq, softirq
# (every process — wrk, upstream, server — and the kernel; not idle, iowait or steal).
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }
# measure SCENARIO TARGET PATH MODE [WRK ARGS...]: warm-up, then the measured run; one row.
# MODE `ok` reports served requests per second, `refusals` refused ones.
measure() {
    local scenario=$1 name=$2 path=$3 mode=$4 script=$TMP/report.lua
    shift 4
    [[ $scenario == POST* ]] && script=$TMP/post.lua
    target "$name"
    local url="http://127.0.0.1:$T_PORT$path"
    log "$scenario: $name"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$script" "$@" "$url" >/dev/null 2>&1 || true
    reset_hwm "${T_PIDS[@]}"
    local out busy0 busy1
    busy0=$(busy_ticks)
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$script" "$@" "$url" 2>&1) ||
        die "wrk failed on $name: $out"
    busy1=$(busy_ticks)
    local line
    line=$(grep '^BENCH ' <<<"$out") || die "no report from wrk on $name: $out"
    local rss
    rss=$(hwm_kib "${T_PIDS[@]}")
    # scenario, target, mode, requests, duration_us, p50_us, p99_us, non2xx, sockerr, rss_kib,
    # machine CPU ns per answer
    awk -v s="$scenario" -v t="$name" -v m="$mode" -v rss="$rss" -v busy=$((busy1 - busy0)) \
        -v hz="$HZ" '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        cpu = v["requests"] > 0 ? busy / hz * 1e9 / v["requests"] : 0
        printf "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", s, t, m, v["requests"], v["duration_us"],
            v["p50_us"], v["p99_us"], v["non2xx"], v["sockerr"], rss, cpu
    }' <<<"$line" >>"$ROWS"
}
# not_possible SCENARIO TARGET WHY: a row for what the target cannot do.
not_possible() { printf '%s\t%s\tn/a\t%s\n' "$1" "$2" "$3" >>"$ROWS"; }

S_GET="GET /api/public"
S_HS="GET /api/user/me HS256"
S_RS="GET /api/user/me RS256"
S_POST="POST 64 KiB"
S_LIM="GET /api/limited (refusals/s)"
S_ONE="GET /api/public, 1 connection"
AUTH_HS=(-H "Authorization: Bearer $TOKEN_HS256")
AUTH_RS=(-H "Authorization: Bearer $TOKEN_RS256")

log "load: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (after a $WARMUP warm-up)"
for t in upstream portcullis portcullis+redis portcullis+sqlite nginx hyper-proxy express axum \
    axum+layer axum+headers; do
    measure "$S_GET" "$t" /api/public ok
done
for t in portcullis express axum+layer; do
    measure "$S_HS" "$t" /api/user/me ok "${AUTH_HS[@]}"
done
not_possible "$S_HS" nginx "no JWT verification without NGINX Plus or a module"
for t in portcullis express axum+layer; do
    measure "$S_RS" "$t" /api/user/me ok "${AUTH_RS[@]}"
done
not_possible "$S_RS" nginx "no JWT verification without NGINX Plus or a module"
for t in upstream portcullis nginx express axum axum+layer; do
    measure "$S_POST" "$t" /api/upload ok
done
for t in portcullis nginx express axum+layer; do
    measure "$S_LIM" "$t" /api/limited refusals
done
# Latency without queueing: one connection, one request at a time (wrk takes the last -t/-c).
# The p50 difference with the upstream's row is what the proxy adds to each request.
for t in upstream portcullis nginx axum axum+layer; do
    measure "$S_ONE" "$t" /api/public ok -t1 -c1
done

# Head to head: the issue's target ratios from alternating rounds, so a noisy minute on a
# shared machine hits every side of a ratio alike; the medians are reported.
H2H=$TMP/h2h.tsv
: >"$H2H"
H2H_TARGETS=(upstream portcullis nginx hyper-proxy axum axum+layer axum+headers express)
log "head to head: $ROUNDS alternating rounds of wrk -t$THREADS -c$CONNECTIONS -d$ROUND"
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${H2H_TARGETS[@]}"; do
        target "$t"
        url="http://127.0.0.1:$T_PORT/api/public"
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$TMP/report.lua" "$url" >/dev/null 2>&1 || true
        out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$ROUND" --latency -s "$TMP/report.lua" "$url" 2>&1) ||
            die "wrk failed on $t: $out"
        line=$(grep '^BENCH ' <<<"$out") || die "no report from wrk on $t: $out"
        # round, target, 2xx per second, p99 (µs)
        awk -v r="$r" -v t="$t" '{
            for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            printf "%d\t%s\t%.0f\t%d\n", r, t, (v["requests"] - v["non2xx"]) / (v["duration_us"] / 1e6), v["p99_us"]
        }' <<<"$line" >>"$H2H"
    done
done

# Paired rounds: two targets loaded at once, each by its own wrk with half the threads and
# connections. Whatever else the machine is doing slows both alike, so the ratio of their
# rates moves far less from round to round than the alternating rounds' (a check of the
# ratios above, from the same run; each side gets about half the machine).
PAIRS=$TMP/pairs.tsv
: >"$PAIRS"
PAIR_THREADS=$(((THREADS + 1) / 2))
PAIR_CONNECTIONS=$(((CONNECTIONS + 1) / 2))
log "paired rounds: $ROUNDS rounds of two wrk -t$PAIR_THREADS -c$PAIR_CONNECTIONS -d$ROUND at once"
for ((r = 1; r <= ROUNDS; r++)); do
    for pair in portcullis:nginx axum+layer:axum axum+headers:axum; do
        a=${pair%%:*} b=${pair##*:}
        target "$a"
        url_a="http://127.0.0.1:$T_PORT/api/public"
        target "$b"
        url_b="http://127.0.0.1:$T_PORT/api/public"
        wrk -t"$PAIR_THREADS" -c"$PAIR_CONNECTIONS" -d"$ROUND" -s "$TMP/report.lua" "$url_a" \
            >"$TMP/pair.a" 2>&1 &
        wa=$!
        wrk -t"$PAIR_THREADS" -c"$PAIR_CONNECTIONS" -d"$ROUND" -s "$TMP/report.lua" "$url_b" \
            >"$TMP/pair.b" 2>&1 &
        wb=$!
        wait "$wa" || die "wrk failed on $a: $(cat "$TMP/pair.a")"
        wait "$wb" || die "wrk failed on $b: $(cat "$TMP/pair.b")"
        # round, pair, 2xx per second of each side
        for side in a b; do
            grep '^BENCH ' "$TMP/pair.$side" || die "no report from wrk on $pair: $(cat "$TMP/pair.$side")"
        done | awk -v r="$r" -v p="$a/$b" '{
            for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
            rate[NR] = (v["requests"] - v["non2xx"]) / (v["duration_us"] / 1e6)
        } END { printf "%d\t%s\t%.0f\t%.0f\n", r, p, rate[1], rate[2] }' >>"$PAIRS"
    done
done

# ---------------------------------------------------------------------------------------------
# The table. Ratios compare req/s with the bare upstream's and nginx's rows of the same
# scenario; where that scenario has no such row, with their `GET /api/public` row (marked *).

printf '\nPortcullis benchmarks — %s — %s cores, %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')" \
    "$(nproc)" "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
printf 'load: wrk -t%s -c%s -d%s --latency, after a %s warm-up, same machine, nothing pinned\n\n' \
    "$THREADS" "$CONNECTIONS" "$DURATION" "$WARMUP"
awk -F'\t' -v get="$S_GET" '
    function fmt_us(us) { return us >= 1000 ? sprintf("%.2f ms", us / 1000) : sprintf("%d µs", us) }
    {
        n++; s[n] = $1; t[n] = $2; m[n] = $3
        if ($3 == "n/a") { why[n] = $4; next }
        sec = $5 / 1e6
        rate[n] = ($3 == "refusals" ? $8 : $4 - $8) / sec
        p50[n] = $6; p99[n] = $7; bad[n] = $8; sock[n] = $9; rss[n] = $10; cpu[n] = $11
        ref[$1 "|" $2] = rate[n]
    }
    function ratio(i, who,   r, mark) {
        mark = ""
        r = ref[s[i] "|" who]
        if (r == "") { r = ref[get "|" who]; mark = "*" }
        if (r == "" || r == 0) return "-"
        return sprintf("%.2f%s", rate[i] / r, mark)
    }
    END {
        printf "%-30s %-18s %10s %10s %10s %9s %11s %9s %9s %8s\n", "scenario", "target", "req/s",
            "p50", "p99", "max RSS", "CPU/answer", "/upstream", "/nginx", "non-2xx"
        for (i = 1; i <= n; i++) {
            if (m[i] == "n/a") {
                printf "%-30s %-18s %10s   (%s)\n", s[i], t[i], "n/a", why[i]
                continue
            }
            printf "%-30s %-18s %10.0f %10s %10s %6.1f MiB %8.1f µs %9s %9s %8d\n", s[i], t[i],
                rate[i], fmt_us(p50[i]), fmt_us(p99[i]), rss[i] / 1024, cpu[i] / 1000,
                ratio(i, "upstream"), ratio(i, "nginx"), bad[i] + sock[i]
        }
    }' "$ROWS"
cat <<'EOF'

Notes:
  * ratio against the target's `GET /api/public` row (the scenario has no such row).
  req/s counts 2xx answers; on /api/limited it counts refusals (429) per second instead.
  "1 connection": wrk -t1 -c1, one request in flight; the p50 over the upstream's p50 is the
  latency the proxy adds per request (at 64 connections p50 is mostly queueing).
  non-2xx counts non-2xx answers plus socket errors (expected only on /api/limited).
  max RSS: peak resident memory (VmHWM, reset before the run) of the serving process;
  nginx is master + workers. express is one Node process.
  CPU/answer: the whole machine's busy CPU time during the run (every process, wrk and the
  upstream included, and the kernel; from /proc/stat) per answer. With every core busy,
  req/s is about cores / CPU per answer, so differences in this column are what one target
  costs more than another, wherever it is spent. Anything else running on the machine
  counts too: compare rows of one run on an otherwise idle machine.
  nginx, stock modules: no JWT (HS256/RS256 rows n/a), no CSRF tokens or Origin checks, no
  CSP nonces (its CSP is static), 403 instead of 405 for a refused method, no path
  canonicalisation, per-instance per-IP limits only, no RateLimit headers.
  Express verifies the JWT with node:crypto (no JWT package in that stack).
  axum+headers: the bare axum app adding the layer's 14 response headers as constants, the
  floor under axum+layer (the header bytes cost the server's encoder, the kernel and wrk).
  hyper-proxy: a bare thread-per-core hyper proxy (examples/bench_bare_proxy.rs) adding
  nginx's constant headers: no routing, limits, timeouts or audit. What hyper's two HTTP/1
  stacks and the runtime cost alone (portcullis serves bodiless requests with its own
  HTTP/1.1 code instead, and hyper only the rest).
EOF
printf '\nHeaders on GET /api/public (besides date, content-*, connection, etag):\n%s' "$HEADERS"

printf '\nHead to head, GET /api/public: %s alternating rounds of wrk -t%s -c%s -d%s --latency\n\n' \
    "$ROUNDS" "$THREADS" "$CONNECTIONS" "$ROUND"
# The added p50 comes from the main table's one-connection rows.
ADDED_P50=$(awk -F'\t' -v one="$S_ONE" '$1 == one && $2 == "upstream" {u = $6}
    $1 == one && $2 == "portcullis" {p = $6} END {if (u != "" && p != "") print p - u}' "$ROWS")
awk -F'\t' -v added="$ADDED_P50" '
    function median(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function verdict(ok) { return ok ? "met" : "not met" }
    { rate[$1, $2] = $3; p99[$1, $2] = $4; if ($1 > rounds) rounds = $1 }
    END {
        printf "%-6s %9s %11s %9s %12s %9s %11s %13s %9s %17s %18s %16s %18s %16s %22s\n", "round",
            "upstream", "portcullis", "nginx", "hyper-proxy", "axum", "axum+layer", "axum+headers",
            "express", "portcullis/nginx", "hyper-proxy/nginx", "axum+layer/axum",
            "axum+headers/axum", "axum+layer/expr", "p99 portcullis/nginx"
        for (r = 1; r <= rounds; r++) {
            a[r] = rate[r, "portcullis"] / rate[r, "nginx"]
            b[r] = rate[r, "axum+layer"] / rate[r, "axum"]
            f[r] = rate[r, "axum+headers"] / rate[r, "axum"]
            h[r] = rate[r, "hyper-proxy"] / rate[r, "nginx"]
            c[r] = rate[r, "axum+layer"] / rate[r, "express"]
            d[r] = (p99[r, "portcullis"] - p99[r, "nginx"]) / 1000
            printf "%-6d %9d %11d %9d %12d %9d %11d %13d %9d %17.2f %18.2f %16.2f %18.2f %16.1f %11.2f / %.2f ms\n",
                r, rate[r, "upstream"], rate[r, "portcullis"], rate[r, "nginx"],
                rate[r, "hyper-proxy"], rate[r, "axum"], rate[r, "axum+layer"],
                rate[r, "axum+headers"], rate[r, "express"], a[r], h[r], b[r], f[r], c[r],
                p99[r, "portcullis"] / 1000, p99[r, "nginx"] / 1000
        }
        ma = median(a, rounds); mb = median(b, rounds); mc = median(c, rounds); md = median(d, rounds)
        mf = median(f, rounds); mh = median(h, rounds)
        printf "%-6s %9s %11s %9s %12s %9s %11s %13s %9s %17.2f %18.2f %16.2f %18.2f %16.1f %+19.2f ms\n",
            "median", "", "", "", "", "", "", "", "", ma, mh, mb, mf, mc, md
        printf "\nThe issue'"'"'s targets (medians of the rounds above; added p50 from the 1-connection rows):\n"
        printf "  portcullis / nginx req/s          >= 1.0     %6.2f    %s (a bare hyper proxy: %.2f)\n",
            ma, verdict(ma >= 1.0), mh
        printf "  portcullis p99 - nginx p99        <= +1 ms   %+6.2f ms %s\n", md, verdict(md <= 1.0)
        printf "  axum+layer / express req/s        >= 10      %6.1f    %s\n", mc, verdict(mc >= 10)
        printf "  axum+layer / axum req/s           >= 0.8     %6.2f    %s (the 14 headers alone: %.2f)\n",
            mb, verdict(mb >= 0.8), mf
        if (added != "")
            printf "  added p50 over the upstream       <= 150 us  %6d us %s\n", added, verdict(added <= 150)
    }' "$H2H"

printf '\nPaired rounds, GET /api/public: two targets at once, wrk -t%s -c%s -d%s on each\n\n' \
    "$PAIR_THREADS" "$PAIR_CONNECTIONS" "$ROUND"
awk -F'\t' '
    function median(a, n,   i, j, t) {
        for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j - 1] > a[j]; j--) { t = a[j]; a[j] = a[j - 1]; a[j - 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { x[$2, $1] = $3; y[$2, $1] = $4; if ($1 > rounds) rounds = $1 }
    END {
        split("portcullis/nginx axum+layer/axum axum+headers/axum", names, " ")
        printf "%-6s", "round"
        for (k = 1; k <= 3; k++) printf " %32s", names[k]
        printf "\n"
        for (r = 1; r <= rounds; r++) {
            printf "%-6d", r
            for (k = 1; k <= 3; k++) {
                q[k, r] = x[names[k], r] / y[names[k], r]
                printf " %13d / %-9d %6.2f", x[names[k], r], y[names[k], r], q[k, r]
            }
            printf "\n"
        }
        printf "%-6s", "median"
        for (k = 1; k <= 3; k++) {
            for (r = 1; r <= rounds; r++) v[r] = q[k, r]
            m[k] = median(v, rounds)
            printf " %32.2f", m[k]
        }
        printf "\n\nThe same ratios, paired (medians): portcullis / nginx %.2f, axum+layer / axum %.2f (the 14 headers alone: %.2f).\n",
            m[1], m[2], m[3]
        printf "The targets above are judged on the alternating rounds; the paired ones check them.\n"
    }' "$PAIRS"
