#!/usr/bin/env bash
# CPU per request of the io_uring backend against epoll, one server thread on core 0 and
# the client on core 1, alternating A B A B so that a noisy machine hurts both alike:
#
#   echo 64 B, 100 connections x 1 in flight and 1000 x 16 (reactor-bench)
#   HTTP hello, wrk -t1 -c100 and -c1000
#
# CPU is the server's utime+stime (/proc/PID/stat) over the run divided by the requests
# it answered (its own final counter). Then the server's RSS per idle connection at
# 10,000 idle connections (reactor-bench --mode idle), for both.
#
# Needs a build with the feature: cargo build --release --features uring
# Usage: bash benches/uring.sh [ROUNDS] [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}/release
BIN=$T/reactor
BENCH=$T/reactor-bench
ROUNDS=${1:-3}
DUR=${2:-8}
TICK=$(getconf CLK_TCK)
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
ulimit -n "$(ulimit -Hn)"

port=18500
start_server() { # io protocol
    port=$((port + 1))
    taskset -c 0 "$BIN" --io "$1" --protocol "$2" --threads 1 --addr "127.0.0.1:$port" \
        --stats-interval 0 2>"$LOG" &
    pid=$!
    for _ in $(seq 100); do
        grep -q "listening on" "$LOG" && return 0
        sleep 0.05
    done
    echo "server did not start" >&2
    cat "$LOG" >&2
    exit 1
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

stop_server() {
    kill -TERM "$pid"
    wait "$pid" || true
}

# io load-name protocol client-command... (PORT in the command is replaced)
measure() {
    local io=$1 name=$2 proto=$3
    shift 3
    start_server "$io" "$proto"
    local args=()
    for a in "$@"; do args+=("${a//PORT/$port}"); done
    local t0
    t0=$(ticks "$pid")
    taskset -c 1 "${args[@]}" >/dev/null 2>&1
    local t1
    t1=$(ticks "$pid")
    stop_server
    local reqs
    if [ "$proto" = echo ]; then
        # An echo "request" of the server's counter is a read, which depends on how
        # reads coalesce: count the client's 64-byte messages instead.
        reqs=$(($(grep -o 'stopped: .*' "$LOG" | grep -o ' bytes_in=[0-9]*' | cut -d= -f2) / 64))
    else
        reqs=$(grep -o 'stopped: .*' "$LOG" | grep -o ' requests=[0-9]*' | cut -d= -f2)
    fi
    awk -v n="$name" -v io="$io" -v t=$((t1 - t0)) -v r="$reqs" -v hz="$TICK" 'BEGIN {
        printf "%-12s %-6s requests=%-9d cpu_s=%-6.2f us_per_request=%.3f\n", n, io, r, t / hz, (r ? t / hz * 1e6 / r : 0)
    }'
}

loads=(
    "echo-100x1 echo $BENCH --addr 127.0.0.1:PORT --protocol echo --conns 100 --pipeline 1 --duration $DUR --quiet"
    "echo-1000x16 echo $BENCH --addr 127.0.0.1:PORT --protocol echo --conns 1000 --pipeline 16 --duration $DUR --quiet"
    "http-c100 http wrk -t1 -c100 -d${DUR}s http://127.0.0.1:PORT/"
    "http-c1000 http wrk -t1 -c1000 -d${DUR}s http://127.0.0.1:PORT/"
)
for load in "${loads[@]}"; do
    read -r -a words <<<"$load"
    # ONLY=echo-1000x16 (a pattern) runs only the loads it matches (and the idle runs
    # only if it matches "idle").
    # shellcheck disable=SC2053 # ONLY is a pattern
    [[ -n "${ONLY:-}" && "${words[0]}" != $ONLY ]] && continue
    for _ in $(seq "$ROUNDS"); do
        for io in epoll uring; do
            measure "$io" "${words[0]}" "${words[1]}" "${words[@]:2}"
        done
    done
done

# shellcheck disable=SC2053 # ONLY is a pattern
[[ -n "${ONLY:-}" && idle != $ONLY ]] && exit 0
# Idle memory, cold (a fresh server) and warm (after a second of load: what the shard
# keeps whatever the connections, its buffer pool and, with io_uring, the pages of the
# receive buffer ring, is then in the "before" figure).
for warm in cold warm; do
    for io in epoll uring; do
        start_server "$io" echo
        if [ "$warm" = warm ]; then
            taskset -c 1 "$BENCH" --addr "127.0.0.1:$port" --protocol echo --conns 1000 \
                --pipeline 16 --duration 1 --quiet >/dev/null 2>&1
        fi
        taskset -c 1 "$BENCH" --addr "127.0.0.1:$port" --protocol echo --mode idle --conns 10000 \
            --duration 3 --server-pid "$pid" --quiet 2>&1 | grep "server:" | sed "s/^/idle $warm $io: /"
        stop_server
    done
done
