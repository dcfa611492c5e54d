#!/usr/bin/env bash
# A long soak of reactor under a mixed load in which every answer is checked, with the
# servers' memory, descriptors and threads sampled throughout.
#
# bash benches/soak.sh [DURATION] [--out DIR] [--chart FILE | --no-chart]
#   DURATION: how long the load runs, "30m" (the default), "60s", "90" (seconds), "2h".
#   --out DIR: where the samples (DIR/soak.csv) and every process's output go (default: a
#   new temporary directory; printed). --chart FILE: the SVG drawn from the samples
#   (default docs/soak.svg); --no-chart draws none, so gnuplot is not needed.
#
# Four servers on 127.0.0.1, one protocol each, each on one thread with --metrics-addr:
#   A  http over TLS (certificate, key, session-ticket key), worker pool (--work sleep:1ms)
#   B  echo with a memory budget (--max-buffer-memory 64MiB)
#   C  json behind the PROXY protocol v2, worker pool (--work sleep:2ms)
#   D  plain http, accepts deferred until the request comes (--defer-accept)
# The load runs in cycles. Each starts, for LOAD seconds (an eighth of the run, 10 to 60):
#   A  reactor-chaos over TLS (exchanges ending in keep-alive, half-close, graceful close,
#      slow reading, abort, reset); reactor-bench with a new connection per request, one
#      with full handshakes and one with resumed ones; reactor-bench TLS keep-alive
#   B  reactor-chaos through its fault proxy (latency, jitter, bandwidth, slicing, stalls,
#      cuts); reactor-chaos of slow readers, aborts and resets; reactor-bench keep-alive
#   C  reactor-chaos with a PROXY v2 header on every connection
#   D  reactor-bench with a new connection per request (churn); reactor-bench keep-alive;
#      reactor-chaos
# then pauses: it waits until no server has a connection open, checks that each has as
# many descriptors open as at the start, and takes a sample at rest. Every RELOAD seconds
# (3 minutes; a sixth of a shorter run, at least 15 s) A gets a new certificate, key and
# ticket key and a SIGHUP, and its reload counter (reactor_tls_reloads_total) must rise.
#
# Every 10 s it writes a row per server to DIR/soak.csv: time_s, server, rss_kib (VmRSS),
# fds (/proc/PID/fd), threads, buffers_lent, connections_open, heap_bytes (from /metrics:
# reactor_buffers_lent, reactor_connections_open, reactor_buffer_memory_bytes), at_rest
# (1: taken in a pause with every connection closed, or before the first load).
#
# It fails (exit 1) when a reactor-chaos run exits non-zero (an answer lost or corrupt, a
# connection failed) or a reactor-bench run reports a failed request or connection; when
# a server exits or stops answering /metrics; when connections stay open or descriptors
# do not come back to their count at the start in a pause; when a reload is not counted;
# when a server does not stop cleanly on SIGTERM at the end; and when RSS grows by more
# than 1 MiB per 10 minutes after the warm-up.
#
# The RSS slope is a least-squares fit over the samples taken at rest after the warm-up
# (the first 5 minutes; a third of a run shorter than 10 minutes). Samples under load
# are left out: RSS then includes the buffers of requests in flight and swings with
# where in a burst the sample falls. At rest only what the server keeps is left (pooled
# buffers, its own structures, the allocator's caches), which is what a leak would grow.
# The warm-up is left out because pools, worker stacks and allocator arenas fill then.
# With fewer than 4 samples to fit the check is skipped, and the script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh

usage() { sed -n '5,10p' "$0" >&2; exit 2; }

duration=30m out="" chart=docs/soak.svg draw=1
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=${2:?}; shift 2 ;;
        --chart) chart=${2:?}; shift 2 ;;
        --no-chart) draw=0; shift ;;
        -h|--help) usage ;;
        -*) echo "soak.sh: unknown option $1" >&2; usage ;;
        *) duration=$1; shift ;;
    esac
done
total=$(parse_duration "$duration") || { echo "soak.sh: bad duration '$duration'" >&2; usage; }
[ "$total" -ge 20 ] || { echo "soak.sh: run for 20 s at least" >&2; exit 2; }

clamp() { local v=$1; [ "$v" -lt "$2" ] && v=$2; [ "$v" -gt "$3" ] && v=$3; echo "$v"; }
load_secs=$(clamp $((total / 8)) 10 60)
reload_every=$(clamp $((total / 6)) 15 180)
if [ "$total" -ge 600 ]; then warmup=300; else warmup=$((total / 3)); fi
SAMPLE_EVERY=10
# RSS growth allowed after the warm-up, in MiB per 10 minutes.
MAX_SLOPE=1

missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ "$draw" = 0 ] || command -v gnuplot >/dev/null 2>&1 || missing+=(gnuplot-nox)
install_missing "${missing[@]}" || exit 1

cargo build --release -q --bins
bin=$(release_dir)
out=${out:-$(mktemp -d "${TMPDIR:-/tmp}/reactor-soak.XXXXXX")}
mkdir -p "$out/logs" "$out/tls"
out=$(cd "$out" && pwd)
csv=$out/soak.csv
tls=$out/tls
make_tls_files "$tls"

# On exit, every process this script started and has not waited for yet (its jobs: the
# servers and a cycle's loads) is stopped, by pid.
cleanup() {
    local left
    mapfile -t left < <(jobs -p)
    [ ${#left[@]} -gt 0 ] || return 0
    kill -TERM "${left[@]}" 2>/dev/null || true
    for _ in $(seq 50); do
        mapfile -t left < <(jobs -pr)
        [ ${#left[@]} -gt 0 ] || return 0
        sleep 0.1
    done
    kill -KILL "${left[@]}" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

failed=0
fail() {
    echo "soak.sh: FAIL: $*" >&2
    failed=1
}

# The servers.
servers=(A B C D)
declare -A port mport pid fd0 desc
desc[A]="http+TLS+pool" desc[B]="echo+budget+faults" desc[C]="json+PROXY v2+pool" desc[D]="http churn, deferred accept"
for s in "${servers[@]}"; do
    port[$s]=$(free_port)
    mport[$s]=$(free_port)
done
mapfile -t tls_args < <(reactor_tls_args "$tls")
start_server() {
    local s=$1; shift
    "$bin/reactor" --addr "127.0.0.1:${port[$s]}" --threads 1 \
        --metrics-addr "127.0.0.1:${mport[$s]}" --stats-interval 10s "$@" \
        >"$out/logs/server-$s.log" 2>&1 &
    pid[$s]=$!
}
pool=(--workers 2 --workers-max 4 --worker-idle 5s)
start_server A --protocol http "${tls_args[@]}" "${pool[@]}" --work sleep:1ms
start_server B --protocol echo --max-buffer-memory 64MiB
start_server C --protocol json --proxy-protocol v2 "${pool[@]}" --work sleep:2ms
start_server D --protocol http --defer-accept
for s in "${servers[@]}"; do
    if ! { wait_port "${port[$s]}" "${pid[$s]}" && wait_port "${mport[$s]}" "${pid[$s]}"; }; then
        echo "soak.sh: server $s did not start:" >&2
        tail -n 20 "$out/logs/server-$s.log" >&2
        exit 1
    fi
    scrape_metrics "${mport[$s]}" >/dev/null
    fd0[$s]=$(fd_count "${pid[$s]}")
done

echo "soak.sh: ${total}s in cycles of ${load_secs}s of load, then a pause; samples every" \
    "${SAMPLE_EVERY}s; reload every ${reload_every}s; RSS slope after ${warmup}s; output in $out" >&2
for s in "${servers[@]}"; do
    echo "  $s ${desc[$s]}: pid ${pid[$s]}, 127.0.0.1:${port[$s]}, metrics :${mport[$s]}," \
        "${fd0[$s]} descriptors" >&2
done

t0=$SECONDS
elapsed() { echo $((SECONDS - t0)); }
echo "time_s,server,rss_kib,fds,threads,buffers_lent,connections_open,heap_bytes,at_rest" >"$csv"

# sample AT_REST: a row per server.
sample() {
    local s t m rss fds threads
    t=$(elapsed)
    for s in "${servers[@]}"; do
        if ! { rss=$(proc_status "${pid[$s]}" VmRSS) && fds=$(fd_count "${pid[$s]}") &&
            threads=$(proc_status "${pid[$s]}" Threads); }; then
            fail "server $s (pid ${pid[$s]}) is gone"
            return
        fi
        m=$(scrape_metrics "${mport[$s]}") || { fail "server $s: /metrics did not answer"; return; }
        echo "$t,$s,$rss,$fds,$threads,$(metric "$m" reactor_buffers_lent),$(metric "$m" reactor_connections_open),$(metric "$m" reactor_buffer_memory_bytes),$1" >>"$csv"
    done
}

# reload: a new certificate, key and ticket key for A, a SIGHUP, and the counter must rise.
reloads=0
reload() {
    if ! { issue_tls_leaf "$tls" && new_ticket_key "$tls"; }; then
        fail "could not renew the TLS files"
        return
    fi
    kill -HUP "${pid[A]}"
    reloads=$((reloads + 1))
    local m ok refused
    for _ in $(seq 100); do
        m=$(scrape_metrics "${mport[A]}") || true
        ok=$(metric "$m" reactor_tls_reloads_total 'result="ok"')
        refused=$(metric "$m" reactor_tls_reloads_total 'result="refused"')
        [ "$refused" = 0 ] || { fail "server A refused reload $reloads (reactor_tls_reloads_total{result=\"refused\"} $refused)"; return; }
        [ "$ok" -lt "$reloads" ] || return 0
        sleep 0.1
    done
    fail "server A: reload $reloads not counted after 10 s (reactor_tls_reloads_total{result=\"ok\"} $ok)"
}

next_sample=0 next_reload=$reload_every
# tick: the servers still run; a sample and a reload when due.
tick() {
    local s
    for s in "${servers[@]}"; do
        kill -0 "${pid[$s]}" 2>/dev/null || {
            fail "server $s (pid ${pid[$s]}) exited; its log ends:"
            tail -n 20 "$out/logs/server-$s.log" >&2
            return
        }
    done
    if [ "$(elapsed)" -ge "$next_sample" ]; then
        sample 0
        next_sample=$((next_sample + SAMPLE_EVERY))
    fi
    if [ "$(elapsed)" -ge "$next_reload" ]; then
        reload
        next_reload=$((next_reload + reload_every))
    fi
}

# The loads of a cycle, and the totals per server.
declare -A requests answers lost
for s in "${servers[@]}"; do requests[$s]=0 answers[$s]=0 lost[$s]=0; done
load_pids=() load_server=() load_tool=() load_name=()
# load SERVER TOOL NAME ARGS...: reactor-TOOL (chaos or bench) against SERVER, in the
# background, for the cycle's LOAD seconds.
load() {
    local s=$1 tool=$2 name=$3
    shift 3
    local args=(--addr "127.0.0.1:${port[$s]}" --json)
    if [ "$tool" = chaos ]; then
        args+=(--duration "${load_secs}s")
        [[ " $* " == *" --timeout "* ]] || args+=(--timeout 30s)
    else
        args+=(--duration "$load_secs" --timeout 30 --quiet)
    fi
    "$bin/reactor-$tool" "${args[@]}" "$@" >"$out/logs/cycle$cycle-$s-$name.json" \
        2>"$out/logs/cycle$cycle-$s-$name.err" &
    load_pids+=("$!") load_server+=("$s") load_tool+=("$tool") load_name+=("$name")
}
start_loads() {
    local tca=(--tls-ca "$tls/ca.pem" --server-name localhost)
    mapfile -t tb < <(bench_tls_args "$tls")
    load_pids=() load_server=() load_tool=() load_name=()
    load A chaos chaos-tls --protocol http "${tca[@]}" --conns 12
    load A bench tls-full --protocol http "${tb[@]}" --conn-requests 1 --conns 2 --rate 100
    load A bench tls-resumed --protocol http "${tb[@]}" --conn-requests 1 --resume --conns 2 --rate 200
    load A bench tls-keepalive --protocol http "${tb[@]}" --conns 20 --rate 1000
    # A connection the fault proxy cuts sometimes waits out the client's --timeout (it is
    # counted cut, not lost): a shorter one here keeps the cycle's tail short.
    load B chaos chaos-faults --protocol echo --conns 12 --timeout 10s \
        --faults latency=5ms,jitter=5ms,rate=256k,slice=1-64,pause=0-2ms,stall=2%:200ms,cut=2%
    load B chaos chaos-slow --protocol echo --conns 8 --behaviours slow-read,abort,reset
    load B bench keepalive --protocol echo --conns 20 --pipeline 4 --size 1024 --rate 4000
    load C chaos chaos-proxy --protocol json --proxy-header v2 --conns 16
    load D bench churn --protocol http --conn-requests 1 --conns 4 --rate 500
    load D bench keepalive --protocol http --conns 50 --rate 4000
    load D chaos chaos --protocol http --conns 12
}
# finish_loads: wait for the cycle's loads (ticking), then add up and check their reports.
finish_loads() {
    local deadline=$((SECONDS + load_secs + 120)) i p alive rc json req ans bad bad2
    while :; do
        alive=0
        for p in "${load_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 1 ] || break
        tick
        if [ "$SECONDS" -gt "$deadline" ]; then
            fail "cycle $cycle: loads still running $((load_secs + 120)) s after they started"
            for p in "${load_pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
        fi
        [ "$failed" = 0 ] || break
        sleep 1
    done
    if [ "$failed" != 0 ]; then
        for p in "${load_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
        wait "${load_pids[@]}" 2>/dev/null || true
        echo "soak.sh: cycle $cycle's loads stopped" >&2
        return
    fi
    for i in "${!load_pids[@]}"; do
        if wait "${load_pids[$i]}"; then rc=0; else rc=$?; fi
        local s=${load_server[$i]} what="cycle $cycle: ${load_name[$i]} against server ${load_server[$i]}"
        local base=$out/logs/cycle$cycle-$s-${load_name[$i]}
        json=$(cat "$base.json")
        # chaos: requests, answers checked, lost + corrupt; bench: ok + failed, ok, failed.
        if [ "${load_tool[$i]}" = chaos ]; then
            req=$(json_get "$json" requests) ans=$(json_get "$json" answers)
            bad=$(json_get "$json" lost) bad2=$(json_get "$json" corrupt)
        else
            req=0 ans=$(json_get "$json" requests_ok) bad=$(json_get "$json" requests_failed) bad2=0
        fi
        if [[ ! "$req $ans $bad $bad2" =~ ^[0-9]+\ [0-9]+\ [0-9]+\ [0-9]+$ ]]; then
            fail "$what: no report (exit $rc); its output ends:"
            tail -n 5 "$base.err" >&2
            continue
        fi
        bad=$((bad + bad2))
        [ "${load_tool[$i]}" = chaos ] || req=$((ans + bad))
        requests[$s]=$((requests[$s] + req)) answers[$s]=$((answers[$s] + ans)) lost[$s]=$((lost[$s] + bad))
        if [ "$rc" != 0 ] || [ "$bad" != 0 ]; then
            fail "$what: exit $rc, $bad lost or corrupt of $req; its output ends (all in $base.*):"
            tail -n 5 "$base.err" >&2
        fi
    done
}

# pause: wait until no server has a connection open, check the descriptors, take the
# sample at rest at the next sampling time.
pause() {
    local s m conns fds deadline=$((SECONDS + 60))
    for s in "${servers[@]}"; do
        while :; do
            m=$(scrape_metrics "${mport[$s]}") || { fail "server $s: /metrics did not answer"; return; }
            conns=$(metric "$m" reactor_connections_open)
            [ "$conns" != 0 ] || break
            if [ "$SECONDS" -gt "$deadline" ]; then
                fail "cycle $cycle: server $s still has $conns connections open 60 s after the load"
                return
            fi
            tick
            [ "$failed" = 0 ] || return
            sleep 0.2
        done
    done
    for s in "${servers[@]}"; do
        deadline=$((SECONDS + 15))
        while fds=$(fd_count "${pid[$s]}") && [ "$fds" != "${fd0[$s]}" ]; do
            if [ "$SECONDS" -gt "$deadline" ]; then
                fail "cycle $cycle: server $s has $fds descriptors open at rest, ${fd0[$s]} at the start" \
                    "(list in $out/logs/fds-$s-cycle$cycle)"
                ls -l "/proc/${pid[$s]}/fd" >"$out/logs/fds-$s-cycle$cycle" 2>&1 || true
                return
            fi
            sleep 0.2
        done
    done
    while [ "$(elapsed)" -lt "$next_sample" ]; do
        tick
        [ "$failed" = 0 ] || return
        sleep 0.2
    done
    sample 1
    next_sample=$((next_sample + SAMPLE_EVERY))
}

sample 1
next_sample=$SAMPLE_EVERY
cycle=0
while [ "$failed" = 0 ] && { [ "$cycle" = 0 ] || [ $(($(elapsed) + load_secs)) -le "$total" ]; }; do
    cycle=$((cycle + 1))
    echo "soak.sh: cycle $cycle at $(elapsed)s" >&2
    start_loads
    finish_loads
    [ "$failed" = 0 ] || break
    pause
done
run_secs=$(elapsed)

# Stop the servers: each must drain and exit 0 on SIGTERM.
declare -A final_metrics
declare -A running
for s in "${servers[@]}"; do
    final_metrics[$s]=$(scrape_metrics "${mport[$s]}" || true)
    echo "${final_metrics[$s]}" >"$out/logs/metrics-$s.txt"
    running[$s]=0
    if kill -TERM "${pid[$s]}" 2>/dev/null; then running[$s]=1; fi
done
for s in "${servers[@]}"; do
    if wait "${pid[$s]}" 2>/dev/null; then rc=0; else rc=$?; fi
    [ "$rc" = 0 ] || [ "${running[$s]}" = 0 ] ||
        fail "server $s exited $rc on SIGTERM (log: $out/logs/server-$s.log)"
done

# The summary, from the totals and the CSV.
slope_of() {
    awk -F, -v s="$1" -v w="$warmup" 'NR > 1 && $2 == s && $NF == 1 && $1 >= w {
            n++; sx += $1; sy += $3; sxx += $1 * $1; sxy += $1 * $3 }
        END { d = n * sxx - sx * sx
              if (n < 4 || d == 0) print "-", n + 0
              else printf "%.3f %d\n", (n * sxy - sx * sy) / d * 600 / 1024, n }' "$csv"
}
echo
echo "soak.sh: ${run_secs}s, $cycle cycles of ${load_secs}s load; A reloaded $reloads times; samples in $csv"
printf '%-6s %-20s %10s %10s %6s %9s %9s %9s %8s %9s %8s %9s\n' server what requests answers lost \
    "RSS0 MiB" "RSS1 MiB" "RSSmax" "slope" "fds0/1" threads reloads
slope_note=""
for s in "${servers[@]}"; do
    read -r rss_start rss_end rss_max fds_end th_min th_max < <(awk -F, -v s="$s" 'NR > 1 && $2 == s {
            if (!n++) { first = $3; tmin = $5 } last = $3; if ($3 > max) max = $3; fds = $4
            if ($5 < tmin) tmin = $5; if ($5 > tmax) tmax = $5 }
        END { printf "%.1f %.1f %.1f %d %d %d\n", first / 1024, last / 1024, max / 1024, fds, tmin, tmax }' "$csv")
    read -r slope n < <(slope_of "$s")
    if [ "$slope" = - ]; then
        slope_note="RSS slope not checked: $n samples at rest after the ${warmup}s warm-up, 4 needed"
    elif awk -v v="$slope" -v m="$MAX_SLOPE" 'BEGIN { exit !(v > m) }'; then
        fail "server $s: RSS grows by $slope MiB per 10 minutes at rest after ${warmup}s (more than $MAX_SLOPE)"
    fi
    r=-
    [ "$s" != A ] || r=$(metric "${final_metrics[A]}" reactor_tls_reloads_total 'result="ok"')
    printf '%-6s %-20s %10s %10s %6s %9s %9s %9s %8s %9s %8s %9s\n' "$s" "${desc[$s]}" "${requests[$s]}" \
        "${answers[$s]}" "${lost[$s]}" "$rss_start" "$rss_end" "$rss_max" "$slope" \
        "${fd0[$s]}/$fds_end" "$th_min-$th_max" "$r"
done
echo "(slope: MiB per 10 minutes, least squares over the samples at rest after ${warmup}s; answers: checked answers, aborted and reset exchanges are not waited for)"
[ -z "$slope_note" ] || echo "soak.sh: $slope_note"

if [ "$draw" = 1 ]; then
    bash benches/chart.sh --soak "$csv" \
        "reactor soak, $((run_secs / 60)) min $((run_secs % 60)) s: A ${desc[A]}, B ${desc[B]}, C ${desc[C]}, D ${desc[D]}" \
        "$chart" || fail "the chart could not be drawn"
fi
if [ "$failed" != 0 ]; then
    echo "soak.sh: FAILED (see above; logs in $out/logs)" >&2
    exit 1
fi
echo "soak.sh: OK"
