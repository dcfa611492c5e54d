#!/usr/bin/env bash
# Two reactor binaries against each other: does a change cost CPU or memory?
#
#   benches/ab.sh OLD NEW [ROUNDS] [SECONDS]
#
# OLD and NEW are reactor binaries (build the old one from a worktree:
# `git worktree add /tmp/old REV && cargo build --release --manifest-path
# /tmp/old/Cargo.toml`). On the four loads of benches/perf.sh (HTTP hello, wrk -t1
# -c100 and -c1000; echo 64 B, 100 connections x 1 and 1,000 x 16 pipelined, from
# reactor-bench) each round runs OLD and NEW in turn, the order flipping every round,
# server on CPU $SERVER_CPU with --threads 1, client on CPU $CLIENT_CPU. The figure is
# server CPU per request (utime+stime over the load / requests answered), the median
# over ROUNDS (7) rounds of SECONDS (6) each with the min-max, and NEW/OLD per round.
# Then RSS per idle connection, 10,000 held 3 s, each binary with --idle-timeout 0 and
# with its default timeout. A ratio whose min-max straddles 1 is noise.
# Environment: LOADS, the loads to run (default "http100 http1000 echo1 echo16"; also
# churn10, a new connection per request from `ab -c50`, and churn11, from `wrk -c50 -H
# 'Connection: close'`, where the figure is CPU per connection); IDLE=0 skips the idle
# connections; SERVER_ARGS, more flags for both servers (e.g. --defer-accept).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh

if [ $# -lt 2 ]; then sed -n '2,15p' "$0" >&2; exit 2; fi
OLD=$1 NEW=$2 ROUNDS=${3:-7} SECONDS_EACH=${4:-6}
SERVER_CPU=${SERVER_CPU:-0} CLIENT_CPU=${CLIENT_CPU:-1}
for b in "$OLD" "$NEW"; do
    [ -x "$b" ] || { echo "ab.sh: $b is not an executable" >&2; exit 2; }
done
command -v wrk >/dev/null 2>&1 || install_missing wrk
read -ra LOADS <<<"${LOADS:-http100 http1000 echo1 echo16}"
read -ra SERVER_ARGS <<<"${SERVER_ARGS:-}"
if printf '%s\n' "${LOADS[@]}" | grep -q '^churn10$'; then
    command -v ab >/dev/null 2>&1 || install_missing apache2-utils
fi
cargo build --release -q --bin reactor-bench
BENCH=$(release_dir)/reactor-bench
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PID=""

# start BIN PROTO [ARGS...]: a server on a fresh port; sets PORT and PID.
start() {
    local bin=$1 proto=$2
    shift 2
    PORT=$(free_port)
    taskset -c "$SERVER_CPU" "$bin" --addr "127.0.0.1:$PORT" --protocol "$proto" \
        --threads 1 --stats-interval 0 "${SERVER_ARGS[@]}" "$@" >"$WORK/server.log" 2>&1 &
    PID=$!
    wait_port "$PORT" "$PID" || { cat "$WORK/server.log" >&2; exit 1; }
}
stop() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
}

# run BIN LOAD: prints the server's CPU per request in microseconds.
run() {
    local bin=$1 load=$2 t0 t1 out reqs
    case "$load" in
        http* | churn*) start "$bin" http --idle-timeout 0 ;;
        echo*) start "$bin" echo --idle-timeout 0 ;;
    esac
    t0=$(cpu_ticks "$PID")
    case "$load" in
        http*)
            out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c"${load#http}" -d"${SECONDS_EACH}s" \
                "http://127.0.0.1:$PORT/" 2>&1) || true
            reqs=$(awk '/requests in/ {print $1}' <<<"$out") ;;
        echo*)
            local conns=100 pipeline=1
            if [ "$load" = echo16 ]; then conns=1000; pipeline=16; fi
            out=$(taskset -c "$CLIENT_CPU" "$BENCH" --addr "127.0.0.1:$PORT" --protocol echo \
                --size 64 --conns "$conns" --pipeline "$pipeline" --duration "$SECONDS_EACH" \
                --json --quiet 2>&1) || true
            reqs=$(json_num "$out" requests_ok) ;;
        churn10)
            out=$(taskset -c "$CLIENT_CPU" ab -q -c 50 -t "$SECONDS_EACH" \
                -n $((50000 * SECONDS_EACH)) "http://127.0.0.1:$PORT/" 2>&1) || true
            reqs=$(awk '/^Complete requests:/ {print $3}' <<<"$out") ;;
        churn11)
            out=$(taskset -c "$CLIENT_CPU" wrk -t1 -c50 -d"${SECONDS_EACH}s" \
                -H 'Connection: close' "http://127.0.0.1:$PORT/" 2>&1) || true
            reqs=$(awk '/requests in/ {print $1}' <<<"$out") ;;
    esac
    t1=$(cpu_ticks "$PID")
    stop
    awk -v t=$((t1 - t0)) -v r="${reqs:-0}" -v hz="$CLK_TCK" \
        'BEGIN {if (r > 0) printf "%.4f\n", t / hz * 1e6 / r; else print "nan"}'
}

RESULTS=$WORK/results
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    for load in "${LOADS[@]}"; do
        if [ $((round % 2)) = 1 ]; then
            a=$(run "$OLD" "$load"); b=$(run "$NEW" "$load")
        else
            b=$(run "$NEW" "$load"); a=$(run "$OLD" "$load")
        fi
        echo "round $round $load: old $a new $b us/request" >&2
        {
            echo "$load old $a"
            echo "$load new $b"
            awk -v a="$a" -v b="$b" -v l="$load" \
                'BEGIN {if (a > 0 && b != "nan") printf "%s ratio %.4f\n", l, b / a}'
        } >>"$RESULTS"
    done
done

echo "server CPU per request, us: median (min-max) of $ROUNDS rounds of $SECONDS_EACH s"
printf '%-9s %-24s %-24s %s\n' load old new new/old
for load in "${LOADS[@]}"; do
    cell() { echo "$(median "$load $1" "$RESULTS") ($(minmax "$load $1" "$RESULTS" | tr ' ' '-'))"; }
    printf '%-9s %-24s %-24s %s\n' "$load" "$(cell old)" "$(cell new)" "$(cell ratio)"
done

[ "${IDLE:-1}" = 0 ] && exit 0
echo "RSS per idle connection, bytes (10,000 held 3 s)"
for which in old new; do
    bin=$OLD
    [ "$which" = new ] && bin=$NEW
    for proto in http echo; do
        for timeout in 0 default; do
            args=()
            [ "$timeout" = 0 ] && args=(--idle-timeout 0)
            start "$bin" "$proto" "${args[@]}"
            out=$(taskset -c "$CLIENT_CPU" "$BENCH" --addr "127.0.0.1:$PORT" --mode idle \
                --conns 10000 --duration 3 --source-ips 127.0.0.1,127.0.0.2 \
                --server-pid "$PID" --json --quiet 2>&1) || true
            stop
            echo "$which $proto idle-timeout=$timeout: $(json_num "$out" server_bytes_per_conn) B" \
                "($(json_num "$out" conns_established) held)"
        done
    done
done
