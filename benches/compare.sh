#!/usr/bin/env bash
# Side-by-side: reactor against nginx, same machine, same core, same load.
#
# Each server gets one core (taskset -c $SERVER_CPU, reactor --threads 1, nginx one
# worker, access log off, the same "Hello, World!" body); the load runs on another core
# ($CLIENT_CPU). The servers are measured alternately (A B A B ...), $ROUNDS rounds, and
# the median of each figure is printed with the ratio reactor/nginx. Figures:
#   - wrk -t1: requests/s, latency avg and p99, server CPU (utime+stime) per request;
#   - reactor-bench (closed loop): requests/s, p50/p99/p99.9, server CPU per request;
#   - reactor-bench --rate (open loop, no coordinated omission): p50/p99/p99.9;
#   - server RSS (VmRSS, user space only) per connection with $IDLE_CONNS idle ones.
#
# Usage: benches/compare.sh [--quick] [--out FILE] [--chart FILE]
#   --quick       short runs (2 s, 1 round, 2,000 idle connections): a smoke test
#   --out FILE    also write the markdown table to FILE
#   --chart FILE  the SVG chart (latency by percentile, memory per idle connection;
#                 default docs/compare.svg; drawn by benches/chart.sh with gnuplot)
# Environment: DURATION (s), ROUNDS, CONNS, IDLE_CONNS, RATE, SERVER_CPU, CLIENT_CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-100}
IDLE_CONNS=${IDLE_CONNS:-10000}
RATE=${RATE:-20000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=""
CHART=docs/compare.svg
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) DURATION=2; ROUNDS=1; IDLE_CONNS=2000; RATE=5000 ;;
        --out) OUT=${2:?--out needs a file}; shift ;;
        --chart) CHART=${2:?--chart needs a file}; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1" >&2; sed -n '13,18p' "$0" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "compare: $*" >&2; }

# --- tools -------------------------------------------------------------------------
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
    install_missing "${need[@]}" || { echo "compare.sh: could not install ${need[*]}" >&2; exit 1; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
cargo build --release -q
REACTOR=$(release_dir)/reactor
BENCH=$(release_dir)/reactor-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d)
SERVER_PID=""
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    if [ -f "$WORK/nginx.pid" ]; then kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- servers -------------------------------------------------------------------------
# start_server NAME PORT: sets SERVER_PID (the process that does the work).
start_server() {
    local name=$1 port=$2
    case "$name" in
        reactor)
            taskset -c "$SERVER_CPU" "$REACTOR" --protocol http --threads 1 \
                --addr "127.0.0.1:$port" --idle-timeout 0 2>"$WORK/reactor.log" &
            SERVER_PID=$!
            wait_port "$port"
            ;;
        nginx)
            write_nginx_conf "$WORK/nginx.conf" "$port" "$WORK"
            taskset -c "$SERVER_CPU" "$NGINX" -c "$WORK/nginx.conf" -g 'daemon on;' -p "$WORK"
            wait_port "$port"
            # The worker does the work; measure it.
            SERVER_PID=$(worker_of "$(cat "$WORK/nginx.pid")")
            ;;
    esac
}

stop_server() {
    local name=$1
    if [ "$name" = nginx ]; then
        kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
        for _ in $(seq 50); do [ -f "$WORK/nginx.pid" ] || break; sleep 0.1; done
        rm -f "$WORK/nginx.pid"
    else
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
    sleep 0.5
}

# --- one round of every measurement against one server ---------------------------------
# Appends "metric value" lines to $WORK/NAME.txt
measure() {
    local name=$1 port f
    port=$(free_port)
    f="$WORK/$name.txt"
    start_server "$name" "$port"
    local url="http://127.0.0.1:$port/"

    # wrk, one thread on the client core.
    local t0 t1 out reqs
    t0=$(cpu_ticks "$SERVER_PID")
    out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url")
    t1=$(cpu_ticks "$SERVER_PID")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    {
        echo "wrk_rps $(awk '/Requests\/sec/ {print $2}' <<<"$out")"
        echo "wrk_avg_ms $(awk '$1 == "Latency" && $2 ~ /^[0-9]/ {print $2; exit}' <<<"$out" | to_ms)"
        echo "wrk_p99_ms $(awk '$1 == "99%" {print $2; exit}' <<<"$out" | to_ms)"
        echo "wrk_cpu_us $(awk -v t=$((t1 - t0)) -v r="$reqs" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz * 1e6 / r}')"
    } >>"$f"

    # reactor-bench closed loop, then open loop at a fixed rate.
    local j
    j=$(taskset -c "$CLIENT_CPU" "$BENCH" --addr "127.0.0.1:$port" --protocol http \
        --conns "$CONNS" --duration "$DURATION" --warmup 1 --server-pid "$SERVER_PID" --json --quiet \
        --hdr-out "$WORK/$name.hdr")
    {
        echo "bench_rps $(jq_num "$j" requests_per_sec)"
        echo "bench_p50_ms $(jq_num "$j" p50_ms)"
        echo "bench_p99_ms $(jq_num "$j" p99_ms)"
        echo "bench_p999_ms $(jq_num "$j" p999_ms)"
        echo "bench_cpu_us $(jq_num "$j" server_cpu_us_per_request)"
    } >>"$f"
    j=$(taskset -c "$CLIENT_CPU" "$BENCH" --addr "127.0.0.1:$port" --protocol http \
        --conns "$CONNS" --rate "$RATE" --duration "$DURATION" --warmup 1 --json --quiet)
    {
        echo "open_p50_ms $(jq_num "$j" p50_ms)"
        echo "open_p99_ms $(jq_num "$j" p99_ms)"
        echo "open_p999_ms $(jq_num "$j" p999_ms)"
    } >>"$f"

    # Memory with idle connections (two source addresses, for ephemeral ports).
    j=$(taskset -c "$CLIENT_CPU" "$BENCH" --addr "127.0.0.1:$port" --mode idle \
        --conns "$IDLE_CONNS" --duration 3 --source-ips 127.0.0.1,127.0.0.2 \
        --server-pid "$SERVER_PID" --json --quiet)
    {
        echo "idle_open $(jq_num "$j" conns_established)"
        echo "idle_rss_kib $(jq_num "$j" server_rss_peak_kib)"
        echo "idle_bytes_per_conn $(jq_num "$j" server_bytes_per_conn)"
    } >>"$f"
    stop_server "$name"
}

# A number from reactor-bench --json, to 3 decimals.
jq_num() {
    awk -v v="$(json_num "$1" "$2")" 'BEGIN { if (v == "nan") print v; else printf "%.3f\n", v }'
}

log "reactor vs nginx: ${ROUNDS} rounds, ${DURATION}s runs, ${CONNS} connections, server on CPU ${SERVER_CPU}, client on CPU ${CLIENT_CPU}"
for round in $(seq "$ROUNDS"); do
    for name in reactor nginx; do
        log "round $round: $name"
        measure "$name"
    done
done

row() { # label metric better(higher|lower)
    local r n ratio
    r=$(median "$2" "$WORK/reactor.txt")
    n=$(median "$2" "$WORK/nginx.txt")
    ratio=$(awk -v r="$r" -v n="$n" 'BEGIN { if (n + 0 == 0) print "-"; else printf "%.2f", r / n }')
    printf '| %s | %s | %s | %s (%s is better) |\n' "$1" "$r" "$n" "$ratio" "$3"
}

{
    echo "$(date -u +%Y-%m-%d) · $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo) · $(uname -r) · nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///') · median of $ROUNDS alternating rounds of ${DURATION}s"
    echo
    echo "| figure | reactor | nginx | ratio reactor/nginx |"
    echo "|---|---|---|---|"
    row "wrk -t1 -c$CONNS: requests/s" wrk_rps higher
    row "wrk: latency avg (ms)" wrk_avg_ms lower
    row "wrk: latency p99 (ms)" wrk_p99_ms lower
    row "wrk: server CPU per request (µs)" wrk_cpu_us lower
    row "reactor-bench -c$CONNS: requests/s" bench_rps higher
    row "reactor-bench: p50 (ms)" bench_p50_ms lower
    row "reactor-bench: p99 (ms)" bench_p99_ms lower
    row "reactor-bench: p99.9 (ms)" bench_p999_ms lower
    row "reactor-bench: server CPU per request (µs)" bench_cpu_us lower
    row "open loop $RATE req/s: p50 (ms)" open_p50_ms lower
    row "open loop $RATE req/s: p99 (ms)" open_p99_ms lower
    row "open loop $RATE req/s: p99.9 (ms)" open_p999_ms lower
    row "$IDLE_CONNS idle connections: held open" idle_open higher
    row "$IDLE_CONNS idle connections: server VmRSS (KiB)" idle_rss_kib lower
    row "idle: server bytes per connection" idle_bytes_per_conn lower
} | tee "$WORK/table.md"
[ -n "$OUT" ] && cp "$WORK/table.md" "$OUT"
# The last round's latency distributions, and the median memory per idle connection.
bash benches/chart.sh "$WORK/reactor.hdr" "$WORK/nginx.hdr" \
    "$(median idle_bytes_per_conn "$WORK/reactor.txt")" \
    "$(median idle_bytes_per_conn "$WORK/nginx.txt")" \
    "reactor vs nginx, $(date -u +%Y-%m-%d), one core each, $CONNS connections, ${DURATION}s" \
    "$CHART" || log "no chart (gnuplot missing?)"
exit 0
