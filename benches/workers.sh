#!/usr/bin/env bash
# The worker-pool benchmark: reactor's worker pool against the seeds' own design (a
# fixed pool of 32 goroutines fed by a bounded job queue, benches/seedpool), and
# reactor's pool-off path against an older build. All on 127.0.0.1.
#
#   a. sleep load: each message's handler sleeps 10 ms.
#      reactor --threads 1 --work sleep:10ms --workers 4 --workers-max 32 --worker-idle 2s
#      seedpool -pool 32 -sleep 10ms
#      client: reactor-bench --conns 40 --pipeline 50. Ideal: 32 / 10 ms = 3,200 req/s.
#      Figures: requests/s, p50/p99, server peak RSS, server threads (at start, peak
#      sampled every 0.5 s, and 4 s after the load: the pool should shrink back).
#      Servers on CPU $SERVER_CPU, client on CPU $CLIENT_CPU.
#   b. spin load: each handler busy-loops 100 us.
#      reactor --threads 1 --work spin:100us --workers 2
#      seedpool -pool 2 -spin 100us
#      client: reactor-bench --conns 40 --pipeline 16. Ideal: 2 cores / 100 us = 20,000
#      req/s. Servers on CPUs 0,1 (they need both), client NOT pinned: on a 2-core
#      machine it takes its CPU from the same two cores, so the ideal is out of reach.
#   c. overhead, worker pool off: reactor --threads 1 (no work flags) against the
#      binary given by --before (skipped if none); client --conns 100 --pipeline 1.
#      Figures: requests/s, p50/p99, server CPU per request.
# Servers are measured alternately (A B A B ...) for --rounds rounds; the tables give
# the median of each figure and the ratio. A server that rejects its flags (e.g. a
# reactor without --work) is reported and skipped; the rest goes on.
#
# Usage: benches/workers.sh [--quick] [--rounds R] [--duration S] [--before PATH] [--out FILE]
#   --quick          1 round of 3 s: a smoke test
#   --rounds R       rounds per load (default 3)
#   --duration S     seconds of load per run (default 10)
#   --before PATH    an older reactor binary for part c
#   --out FILE       also write the tables to FILE
# Environment: SERVER_CPU (0), CLIENT_CPU (1), WARMUP (reactor-bench --warmup, 0),
#   PARTS (which loads to run, default "a b c").
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '26,33p' "$0"; }

ROUNDS=3
DURATION=10
QUICK=0
BEFORE=""
OUT=""
OPT_ROUNDS=""
OPT_DURATION=""
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
WARMUP=${WARMUP:-0}
PARTS=${PARTS:-a b c}
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --rounds) OPT_ROUNDS=${2:?--rounds needs a number}; shift ;;
        --duration) OPT_DURATION=${2:?--duration needs seconds}; shift ;;
        --before) BEFORE=${2:?--before needs a path}; shift ;;
        --out) OUT=${2:?--out needs a file}; shift ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "workers.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then ROUNDS=1; DURATION=3; fi
ROUNDS=${OPT_ROUNDS:-$ROUNDS}
DURATION=${OPT_DURATION:-$DURATION}
if ! [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
    echo "workers.sh: --rounds must be a positive integer" >&2; exit 2
fi
if ! [[ "$DURATION" =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
    echo "workers.sh: --duration must be a number of seconds" >&2; exit 2
fi
if [ -n "$BEFORE" ]; then
    if [ ! -x "$BEFORE" ]; then
        echo "workers.sh: --before $BEFORE is not an executable file" >&2; exit 2
    fi
    BEFORE=$(cd "$(dirname "$BEFORE")" && pwd)/$(basename "$BEFORE")
fi

log() { echo "workers: $*" >&2; }

# --- tools ---------------------------------------------------------------------------
need=()
command -v go >/dev/null 2>&1 || need+=(golang-go)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    if [ "$(id -u)" -ne 0 ]; then
        echo "workers.sh: need ${need[*]}; run as root or install them" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

log "building reactor (cargo build --release)"
cargo build --release -q
TARGET=${CARGO_TARGET_DIR:-target}
REACTOR=$(cd "$TARGET/release" && pwd)/reactor
BENCH=$(cd "$TARGET/release" && pwd)/reactor-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d)
SERVER_PID=""
SAMPLER_PID=""
BENCH_PID=""
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    if [ -n "$BENCH_PID" ]; then kill "$BENCH_PID" 2>/dev/null || true; fi
    if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "building the Go peer (benches/seedpool)"
gocache=$(go env GOCACHE 2>/dev/null || true)
if [ -z "$gocache" ] || [ "$gocache" = off ]; then
    export GOCACHE="${TMPDIR:-/tmp}/seedpool-gocache"
fi
(cd benches/seedpool && go build -o "$WORK/seedpool" .)
SEEDPOOL=$WORK/seedpool

# Does reactor take these flags? (Only the flag names are checked, in --help.)
reactor_has() {
    local help f
    help=$("$REACTOR" --help 2>&1 || true)
    for f in "$@"; do
        grep -Eq -- "(^|[[:space:],])$f([[:space:]=,]|\$)" <<<"$help" || return 1
    done
}

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
        return
    fi
    local p
    while :; do
        p=$((20000 + RANDOM % 30000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}

# --- servers -------------------------------------------------------------------------
# server_cmd NAME PORT: sets CMD (the server's command line) and CPUS (its taskset list).
server_cmd() {
    local name=$1 addr=127.0.0.1:$2
    case "$name" in
        a-reactor)
            CPUS=$SERVER_CPU
            CMD=("$REACTOR" --protocol json --threads 1 --addr "$addr" \
                --work sleep:10ms --workers 4 --workers-max 32 --worker-idle 2s) ;;
        a-seed)
            CPUS=$SERVER_CPU
            CMD=("$SEEDPOOL" -addr "$addr" -pool 32 -sleep 10ms) ;;
        b-reactor)
            CPUS=0,1
            CMD=("$REACTOR" --protocol json --threads 1 --addr "$addr" \
                --work spin:100us --workers 2) ;;
        b-seed)
            CPUS=0,1
            CMD=("$SEEDPOOL" -addr "$addr" -pool 2 -spin 100us) ;;
        c-reactor)
            CPUS=$SERVER_CPU
            CMD=("$REACTOR" --protocol json --threads 1 --addr "$addr") ;;
        c-before)
            CPUS=$SERVER_CPU
            CMD=("$BEFORE" --protocol json --threads 1 --addr "$addr") ;;
        *) echo "workers.sh: no server $name" >&2; return 1 ;;
    esac
}

# start_server NAME PORT: starts it, sets SERVER_PID; fails (with its log) if the server
# exits or does not listen within 10 s.
start_server() {
    local name=$1 port=$2
    server_cmd "$name" "$port" || return 1
    taskset -c "$CPUS" "${CMD[@]}" >"$WORK/$name.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" 2>/dev/null || true
            SERVER_PID=""
            log "$name exited at start: ${CMD[*]}"
            sed 's/^/    /' "$WORK/$name.log" | head -n 10 >&2
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    log "$name: nothing listening on port $port after 10 s"
    stop_server
    return 1
}

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
    sleep 0.5
}

# proc_field PID FIELD: a field of /proc/PID/status (Threads, VmRSS in KiB), or nan.
proc_field() {
    awk -v f="$2:" '$1 == f {print $2; found = 1} END {if (!found) print "nan"}' \
        "/proc/$1/status" 2>/dev/null || echo nan
}

# sampler PID FILE: "threads rss_kib" every 0.5 s while PID lives.
sampler() {
    while kill -0 "$1" 2>/dev/null; do
        echo "$(proc_field "$1" Threads) $(proc_field "$1" VmRSS)" >>"$2"
        sleep 0.5
    done
}

# json_num JSON KEY: a number from reactor-bench --json (pretty printed, one key a line;
# the keys it reads are unique in the report), or nan if absent or null.
json_num() {
    awk -v k="\"$2\":" '$1 == k {v = $2; sub(/,$/, "", v); print (v == "null" ? "nan" : v); found = 1; exit}
        END {if (!found) print "nan"}' <<<"$1"
}

# fmt DIGITS VALUE: VALUE rounded to DIGITS decimals (nan stays nan).
fmt() {
    awk -v d="$1" -v v="$2" 'BEGIN { if (v ~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/) printf "%.*f\n", d, v; else print "nan" }'
}

# measure PART NAME: one run of load PART against server NAME; appends "metric value"
# lines to $WORK/NAME.txt. Returns 1 if the server would not start.
measure() {
    local part=$1 name=$2 port f j rc=0 samples client=()
    port=$(free_port)
    f="$WORK/$name.txt"
    start_server "$name" "$port" || return 1
    local bench=("$BENCH" --addr "127.0.0.1:$port" --protocol json --duration "$DURATION"
        --warmup "$WARMUP" --server-pid "$SERVER_PID" --json --quiet)
    case "$part" in
        a) bench+=(--conns 40 --pipeline 50); client=(taskset -c "$CLIENT_CPU") ;;
        b) bench+=(--conns 40 --pipeline 16) ;; # the client is not pinned (see above)
        c) bench+=(--conns 100 --pipeline 1); client=(taskset -c "$CLIENT_CPU") ;;
    esac
    echo "threads_start $(proc_field "$SERVER_PID" Threads)" >>"$f"
    samples="$WORK/samples"
    : >"$samples"
    sampler "$SERVER_PID" "$samples" &
    SAMPLER_PID=$!
    # In the background, so that a signal's trap runs at once (bash defers traps while
    # a foreground command runs).
    ${client[@]+"${client[@]}"} "${bench[@]}" >"$WORK/bench.json" &
    BENCH_PID=$!
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=""
    j=$(cat "$WORK/bench.json")
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
    if [ "$rc" -ne 0 ]; then
        log "$name: reactor-bench exited with $rc (failed requests or connections): $(json_num "$j" requests_failed) failed requests, first error: $(awk -F'": ' '/"first_error"/ {print $2}' <<<"$j")"
    fi
    local rss_bench rss_sampled
    rss_bench=$(json_num "$j" server_rss_peak_kib)
    rss_sampled=$(awk '$2 ~ /^[0-9]+$/ && $2 > m {m = $2} END {print (m ? m : "nan")}' "$samples")
    {
        echo "rps $(fmt 0 "$(json_num "$j" requests_per_sec)")"
        echo "p50_ms $(json_num "$j" p50_ms)"
        echo "p99_ms $(json_num "$j" p99_ms)"
        echo "failed $(json_num "$j" requests_failed)"
        echo "cpu_us $(fmt 2 "$(json_num "$j" server_cpu_us_per_request)")"
        echo "rss_kib $(awk -v a="$rss_bench" -v b="$rss_sampled" 'BEGIN {
            if (a == "nan") print b; else if (b == "nan" || a + 0 >= b + 0) print a; else print b }')"
        echo "threads_peak $(awk '$1 ~ /^[0-9]+$/ && $1 > m {m = $1} END {print (m ? m : "nan")}' "$samples")"
    } >>"$f"
    if [ "$part" = a ]; then
        sleep 4
        echo "threads_idle $(proc_field "$SERVER_PID" Threads)" >>"$f"
    fi
    stop_server
}

median() { # metric file
    [ -f "$2" ] || { echo "-"; return; }
    awk -v m="$1" '$1 == m && $2 ~ /^-?[0-9.]+(e[-+]?[0-9]+)?$/ {print $2}' "$2" | sort -g |
        awk '{a[NR] = $1} END {if (NR == 0) print "-"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'
}

ratio() { # a b
    awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2f", a / b }'
}

# run_part PART SERVER...: alternate the servers for $ROUNDS rounds; a server that will
# not start is dropped (with a message) and the part goes on with the others.
run_part() {
    local part=$1 round name live=()
    shift
    live=("$@")
    for round in $(seq "$ROUNDS"); do
        local next=()
        for name in "${live[@]}"; do
            log "load $part, round $round/$ROUNDS: $name"
            if measure "$part" "$name"; then
                next+=("$name")
            else
                log "load $part: skipping $name"
                echo "skipped" >"$WORK/$name.skipped"
            fi
        done
        live=("${next[@]+"${next[@]}"}")
        [ ${#live[@]} -gt 0 ] || break
    done
}

# row LABEL METRIC A B [better]: a table row with the medians of two servers and A/B.
row() {
    local a b
    a=$(median "$2" "$WORK/$3.txt")
    b=$(median "$2" "$WORK/$4.txt")
    printf '| %s | %s | %s | %s%s |\n' "$1" "$a" "$b" "$(ratio "$a" "$b")" "${5:+ ($5 is better)}"
}

status_of() { # NAME: why a column is empty
    if [ -f "$WORK/$1.skipped" ]; then echo "skipped (would not start)"
    elif [ -f "$WORK/$1.txt" ]; then echo "ran"
    else echo "not run"; fi
}

has_part() { [[ " $PARTS " == *" $1 "* ]]; }

# --- the loads -------------------------------------------------------------------------
log "${ROUNDS} rounds of ${DURATION}s per load; loads: $PARTS; servers on CPU $SERVER_CPU (0,1 for load b), client on CPU $CLIENT_CPU"
WORK_FLAGS_NOTE=""
if has_part a || has_part b; then
    if reactor_has --work --workers --workers-max --worker-idle; then
        ab_reactor=1
    else
        ab_reactor=0
        WORK_FLAGS_NOTE="this reactor has no --work/--workers/--workers-max/--worker-idle flags (worker pool not built in): its side of loads a and b was skipped"
        log "$WORK_FLAGS_NOTE"
    fi
fi
if has_part a; then
    if [ "$ab_reactor" = 1 ]; then run_part a a-reactor a-seed; else run_part a a-seed; fi
fi
if has_part b; then
    if [ "$ab_reactor" = 1 ]; then run_part b b-reactor b-seed; else run_part b b-seed; fi
fi
if has_part c; then
    if [ -n "$BEFORE" ]; then run_part c c-reactor c-before; else run_part c c-reactor; fi
fi

# --- tables ----------------------------------------------------------------------------
ideal_row() { # LABEL METRIC NAME IDEAL
    local v
    v=$(median "$2" "$WORK/$3.txt")
    printf '| %s | %s | %s | %s |\n' "$1" "$v" "$4" "$(ratio "$v" "$4")"
}

{
    echo "$(date -u +%Y-%m-%d) · $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo) · $(uname -r) · $(go version | awk '{print $3}') · reactor $(git rev-parse --short HEAD 2>/dev/null || echo '?') · median of $ROUNDS alternating rounds of ${DURATION}s"
    [ -z "$WORK_FLAGS_NOTE" ] || { echo; echo "Note: $WORK_FLAGS_NOTE."; }
    if has_part a; then
        echo
        echo "### a. sleep 10 ms per message: reactor --workers 4..32 vs the seeds' fixed pool of 32 goroutines"
        echo
        echo "40 connections × pipeline 50; server on CPU $SERVER_CPU, client on CPU $CLIENT_CPU. reactor: $(status_of a-reactor); Go peer: $(status_of a-seed)."
        echo
        echo "| figure | reactor | Go peer (seedpool -pool 32) | ratio reactor/Go |"
        echo "|---|---|---|---|"
        row "requests/s (ideal 3,200)" rps a-reactor a-seed higher
        row "latency p50 (ms)" p50_ms a-reactor a-seed lower
        row "latency p99 (ms)" p99_ms a-reactor a-seed lower
        row "failed requests" failed a-reactor a-seed
        row "server CPU per request (µs)" cpu_us a-reactor a-seed lower
        row "server peak VmRSS (KiB)" rss_kib a-reactor a-seed lower
        row "server threads at start" threads_start a-reactor a-seed
        row "server threads at peak (sampled every 0.5 s)" threads_peak a-reactor a-seed
        row "server threads 4 s after the load" threads_idle a-reactor a-seed
        echo
        echo "| against the ideal | measured | ideal | ratio |"
        echo "|---|---|---|---|"
        ideal_row "reactor requests/s" rps a-reactor 3200
        ideal_row "Go peer requests/s" rps a-seed 3200
    fi
    if has_part b; then
        echo
        echo "### b. spin 100 µs per message on 2 workers: reactor vs seedpool -pool 2"
        echo
        echo "40 connections × pipeline 16; servers on CPUs 0,1, client NOT pinned (it shares the two cores, so the ideal is out of reach on a 2-core machine). reactor: $(status_of b-reactor); Go peer: $(status_of b-seed)."
        echo
        echo "| figure | reactor | Go peer (seedpool -pool 2 -spin 100us) | ratio reactor/Go |"
        echo "|---|---|---|---|"
        row "requests/s (ideal 20,000)" rps b-reactor b-seed higher
        row "latency p50 (ms)" p50_ms b-reactor b-seed lower
        row "latency p99 (ms)" p99_ms b-reactor b-seed lower
        row "failed requests" failed b-reactor b-seed
        row "server CPU per request (µs, ideal 100)" cpu_us b-reactor b-seed lower
        row "server peak VmRSS (KiB)" rss_kib b-reactor b-seed lower
        row "server threads at peak" threads_peak b-reactor b-seed
        echo
        echo "| against the ideal | measured | ideal | ratio |"
        echo "|---|---|---|---|"
        ideal_row "reactor requests/s" rps b-reactor 20000
        ideal_row "Go peer requests/s" rps b-seed 20000
    fi
    if has_part c; then
        echo
        echo "### c. overhead with the worker pool off: reactor --threads 1 vs before"
        echo
        echo "100 connections × pipeline 1; server on CPU $SERVER_CPU, client on CPU $CLIENT_CPU. reactor: $(status_of c-reactor); before: ${BEFORE:-none given (--before PATH)}, $(status_of c-before)."
        echo
        echo "| figure | reactor | before | ratio reactor/before |"
        echo "|---|---|---|---|"
        row "requests/s" rps c-reactor c-before higher
        row "latency p50 (ms)" p50_ms c-reactor c-before lower
        row "latency p99 (ms)" p99_ms c-reactor c-before lower
        row "failed requests" failed c-reactor c-before
        row "server CPU per request (µs)" cpu_us c-reactor c-before lower
        row "server peak VmRSS (KiB)" rss_kib c-reactor c-before lower
        row "server threads at peak" threads_peak c-reactor c-before
    fi
} | tee "$WORK/tables.md"
if [ -n "$OUT" ]; then cp "$WORK/tables.md" "$OUT"; fi
exit 0
