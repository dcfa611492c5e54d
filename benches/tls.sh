#!/usr/bin/env bash
# TLS side by side: reactor (--tls-cert/--tls-key, rustls unbuffered) and nginx
# (nginx-light, 1 worker, access_log off, `return 200 "Hello, World!"`), on the same
# ECDSA P-256 certificate (a CA and a leaf made here with openssl), TLS 1.2 and 1.3.
# Everything on 127.0.0.1; servers pinned to CPU $SERVER_CPU, the client
# (reactor-bench --tls --ca) to CPU $CLIENT_CPU. Each figure is measured on a freshly
# started server, reactor and nginx alternately, for --rounds rounds; the table gives
# the medians.
#
#   handshakes/s:   --conns 32 --conn-requests 1 (a new connection and a full
#                   handshake per request; closed with a reset, no TIME_WAIT)
#   resumed:        the same with --resume: the client offers its session back, and
#                   both servers read their tickets from one key file (reactor
#                   --tls-ticket-keys, nginx ssl_session_ticket_key); the share of
#                   handshakes that did resume is in the table
#   keep-alive:     --conns 50, one request in flight each: requests/s and server CPU
#                   per request (from /proc, via --server-pid)
#   idle:           --mode idle --conns N for N in $IDLE_CONNS: server RSS growth per
#                   idle TLS connection after the handshake (nginx: its worker's RSS)
#
# Usage: benches/tls.sh [--rounds R] [--duration S]   (defaults 3 and 10)
# Environment: SERVER_CPU (0), CLIENT_CPU (1), IDLE_CONNS ("2000 10000").
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh

ROUNDS=3
DURATION=10
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
IDLE_CONNS=${IDLE_CONNS:-2000 10000}
while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=${2:?--rounds needs a number}; shift ;;
        --duration) DURATION=${2:?--duration needs seconds}; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "tls.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
for tool in openssl nginx jq taskset; do
    command -v "$tool" >/dev/null || { echo "tls.sh: $tool is missing (apt-get install nginx-light jq)" >&2; exit 2; }
done
ulimit -n 20000 2>/dev/null || true

cargo build --release --bins -q
REACTOR=$(release_dir)/reactor
BENCH=$(release_dir)/reactor-bench

tmp=$(mktemp -d)
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# The certificate (a CA and a leaf for localhost/127.0.0.1) and one ticket key for both
# servers; nginx's configuration is benches/compare.sh's with TLS (all from lib.sh).
make_tls_files "$tmp"
PORT=$(free_port)
write_nginx_conf "$tmp/nginx.conf" "$PORT" "$tmp" "$tmp"
mapfile -t reactor_tls < <(reactor_tls_args "$tmp")
mapfile -t bench_tls < <(bench_tls_args "$tmp")

# Starts server $1 (reactor|nginx); sets server_pid (to kill) and measured_pid (the
# process that serves: nginx's worker).
start() {
    case "$1" in
        reactor)
            taskset -c "$SERVER_CPU" "$REACTOR" --addr "127.0.0.1:$PORT" --protocol http \
                --threads 1 "${reactor_tls[@]}" >"$tmp/reactor.log" 2>&1 &
            server_pid=$!
            measured_pid=$server_pid
            ;;
        nginx)
            taskset -c "$SERVER_CPU" nginx -c "$tmp/nginx.conf" -g 'daemon off;' -p "$tmp" \
                -e "$tmp/nginx-error.log" &
            server_pid=$!
            measured_pid=""
            ;;
    esac
    if wait_port "$PORT" "$server_pid" && { [ "$1" != nginx ] || measured_pid=$(worker_of "$server_pid"); }; then
        return
    fi
    echo "tls.sh: $1 did not start" >&2
    exit 1
}

stop() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    sleep 0.5
}

bench() {
    taskset -c "$CLIENT_CPU" "$BENCH" --addr "127.0.0.1:$PORT" "${bench_tls[@]}" --json --quiet \
        --server-pid "$measured_pid" "$@"
}

# results: lines "server figure value"
results=$tmp/results
: >"$results"
record() { echo "$1 $2 $3" >>"$results"; }

for round in $(seq "$ROUNDS"); do
    for server in reactor nginx; do
        echo "round $round: $server" >&2
        start "$server"
        # A short warm-up, so the baselines see warm pools and session caches.
        bench --conns 10 --duration 1 >/dev/null
        r=$(bench --conns 32 --conn-requests 1 --duration "$DURATION")
        record "$server" hs_per_sec "$(jq .requests_per_sec <<<"$r")"
        record "$server" hs_cpu_us "$(jq .server_cpu_us_per_request <<<"$r")"
        r=$(bench --conns 32 --conn-requests 1 --resume --duration "$DURATION")
        record "$server" rs_per_sec "$(jq .requests_per_sec <<<"$r")"
        record "$server" rs_cpu_us "$(jq .server_cpu_us_per_request <<<"$r")"
        record "$server" rs_share "$(jq '.tls_resumed / ([.conns_established, 1] | max)' <<<"$r")"
        r=$(bench --conns 50 --duration "$DURATION")
        record "$server" ka_per_sec "$(jq .requests_per_sec <<<"$r")"
        record "$server" ka_cpu_us "$(jq .server_cpu_us_per_request <<<"$r")"
        stop
        for n in $IDLE_CONNS; do
            start "$server"
            bench --conns 10 --duration 1 >/dev/null
            r=$(bench --mode idle --conns "$n" --duration 3 --source-ips 127.0.0.1,127.0.0.2 \
                --threads 1)
            record "$server" "idle_$n" "$(jq .server_bytes_per_conn <<<"$r")"
            stop
        done
    done
done

median() {
    awk -v s="$1" -v f="$2" '$1 == s && $2 == f { print $3 }' "$results" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
row() {
    local label=$1 fig=$2 fmt=$3 a b
    a=$(median reactor "$fig")
    b=$(median nginx "$fig")
    # shellcheck disable=SC2059
    printf "| %s | $fmt | $fmt | %.2f |\n" "$label" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN { print (b > 0 ? a / b : 0) }')"
}

echo
echo "TLS, one core each ($(nproc) CPUs; server CPU $SERVER_CPU, client CPU $CLIENT_CPU), $ROUNDS rounds of ${DURATION} s, medians"
echo
echo "| figure | reactor | nginx | reactor / nginx |"
echo "|---|---:|---:|---:|"
row "handshakes/s (new connection per request)" hs_per_sec "%.0f"
row "server CPU per handshake+request (us)" hs_cpu_us "%.1f"
row "resumed handshakes/s (new connection per request)" rs_per_sec "%.0f"
row "server CPU per resumed handshake+request (us)" rs_cpu_us "%.1f"
row "share of handshakes resumed" rs_share "%.2f"
row "keep-alive HTTPS requests/s (50 conns)" ka_per_sec "%.0f"
row "server CPU per keep-alive request (us)" ka_cpu_us "%.2f"
for n in $IDLE_CONNS; do
    row "server RSS per idle TLS connection at $n (bytes)" "idle_$n" "%.0f"
done
# A run on this project's 2-core machine (benches/tls.sh --rounds 3 --duration 5):
# reactor 4,036 handshakes/s vs nginx 2,176 (202 vs 455 us of server CPU each; the
# client, on one core, limits the handshake rate, so the CPU figure is the sturdier
# one); keep-alive 9.5 vs 16.8 us of server CPU per request; 3.7 KB vs 14.6 KB of server
# RSS per idle TLS connection at both 2,000 and 10,000 connections.
