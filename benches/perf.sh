#!/usr/bin/env bash
# One command, one run, the whole table: reactor against a peer on every load below,
# each server on one core, with the user-space share of its CPU from perf.
#
#   HTTP hello, wrk -t1 -c100 and -c1000: reactor --protocol http --threads 1 against
#       nginx with one worker (access log off, the same "Hello, World!" body; the config
#       of benches/compare.sh, from benches/lib.sh)
#   HTTP churn, a new connection per request, $CHURN_CONNS at a time: `ab -c` (HTTP/1.0,
#       no keep-alive) and `wrk -t1 -H 'Connection: close'` (HTTP/1.1; ab sends only
#       HTTP/1.0): requests/s are connections/s, CPU per request is CPU per connection;
#       both again with each server accepting a connection only once its request has
#       come (reactor --defer-accept, nginx `listen ... deferred`: TCP_DEFER_ACCEPT)
#   HTTP open loop, `reactor-bench --rate R --conns $OPEN_CONNS` at $OPEN_PERCENTS % of
#       nginx's maximum, measured first in this run with the same client (reactor-bench
#       closed loop, $OPEN_CONNS connections, median of min(ROUNDS, 3) runs): p50, p99,
#       p99.9, max; the points also go to a data file and a chart (--chart)
#   HTTP busy connections: $BUSY_CONNS connections each sending one request a second
#       (`reactor-bench --rate $BUSY_CONNS --conns $BUSY_CONNS`, the client in its own
#       process): server VmRSS held during the load per connection (nginx: its worker's
#       VmRSS; the master's does not move with connections)
#   HTTPS, a new connection and handshake per request (`reactor-bench --tls
#       --conn-requests 1 --conns $TLS_CONNS`), full, and resumed (`--resume`; both servers
#       read one ticket key): benches/tls.sh's certificate and nginx TLS config (lib.sh)
#   echo 64 B, 100 connections x 1 in flight, and 1,000 connections x 16 in flight
#       (pipelined), load from reactor-bench: reactor --protocol echo --threads 1
#       against benches/tokio-echo (tokio, one worker thread, 4 KB reads)
#   echo 64 KB bulk, $BULK_CONNS connections x 1 in flight: reactor against tokio-echo
#       --buffer-size set to reactor's read size (SCRATCH in src/core/drive.rs): MB/s
#       and server CPU per MB
#
# Servers run on CPU $SERVER_CPU, the client (and perf, strace) on CPU $CLIENT_CPU. Each
# round runs every load against every server in turn (A B A B; the order flips every
# other round). Each figure is the median over $ROUNDS rounds with the min-max next to
# it; each ratio is the median of the rounds' own ratios (reactor / peer in the same
# round) with their min-max, marked "~" when that min-max straddles 1 (no difference
# shown). Server CPU per request = utime+stime ticks of the server process (nginx: its
# worker) over the load, from /proc/PID/stat, divided by the requests served. The user
# share: `perf record -e cpu-clock -F 1000 -p PID` during every load on every server,
# the fraction of samples at user addresses; user CPU per request = CPU per request x
# that share ("n/a" without a working perf).
#
# Rounds: the default is 7 rounds of 6 s (about 35 minutes in all). On this 2-core
# shared machine one echo ratio read 0.90 in one 3-round run and 1.32 in another on the
# same day; the median of 7 stands with up to 3 disturbed rounds, and 7 rounds of 6 s is
# what benches/ab.sh settled on for the same question. Where a ratio's min-max is still
# wider than the gap it shows (or marked ~), raise ROUNDS before quoting it.
#
# reactor has one backend (epoll/kqueue through mio). A binary from before the io_uring
# backend was removed (REACTOR_BIN) that has `--io` and starts with `--io uring` runs
# twice, `--io epoll` and `--io uring`, and the tables gain the uring rows.
#
# A second table, from the same run: syscalls per request on a fixed number of requests
# (100 connections x $SYSCALL_REQUESTS each, one in flight, the server's own protocol),
# counted by `strace -c -f` (which slows the server, so it batches more events per wait
# than at full speed) and, with perf, by the syscalls tracepoints at full speed; and
# server RSS per idle connection with $IDLE_CONNS connections held open (a fresh
# server; VmRSS is user space only, the kernel's socket memory is in no process).
#
# Usage: benches/perf.sh [--quick] [--out FILE] [--chart FILE]
#   --quick       1 round of 2 s, 2,000 idle and busy connections: a smoke test (its
#                 chart goes to ${TMPDIR:-/tmp}/perf-quick.svg unless --chart is given)
#   --out FILE    also write the tables to FILE
#   --chart FILE  the open-loop chart (default docs/perf.svg), its points next to it
#                 (FILE with .dat for .svg), drawn by benches/chart.sh --load
# Environment: ROUNDS (7), DURATION (6 s), IDLE_CONNS (10000), BUSY_CONNS (10000),
#   CHURN_CONNS (50), OPEN_CONNS (100), OPEN_PERCENTS ("50 80 95"), TLS_CONNS (32),
#   BULK_CONNS (10), SYSCALL_REQUESTS (200), SERVER_CPU (0), CLIENT_CPU (1),
#   REACTOR_BIN (a reactor binary to use instead of the one built here),
#   REACTOR_FEATURES (cargo features for the build), ONLY (a subset of the loads to run,
#   e.g. ONLY="bulk tlsresume"; "idle" for the syscalls and idle connections: to look
#   again at one row, not for the table).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
. benches/lib.sh

COMMAND_LINE="benches/perf.sh $*"
ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-6}
IDLE_CONNS=${IDLE_CONNS:-10000}
BUSY_CONNS=${BUSY_CONNS:-10000}
CHURN_CONNS=${CHURN_CONNS:-50}
OPEN_CONNS=${OPEN_CONNS:-100}
OPEN_PERCENTS=${OPEN_PERCENTS:-50 80 95}
TLS_CONNS=${TLS_CONNS:-32}
BULK_CONNS=${BULK_CONNS:-10}
SYSCALL_REQUESTS=${SYSCALL_REQUESTS:-200}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
OUT=""
CHART=""
QUICK=0
USAGE_LINES=$(awk '/^# Usage:/ {u = NR} /^set -euo/ {print u "," NR - 1; exit}' "$0")
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1; ROUNDS=1; DURATION=2; IDLE_CONNS=2000; BUSY_CONNS=2000 ;;
        --out) OUT=${2:?--out needs a file}; shift ;;
        --chart) CHART=${2:?--chart needs a file}; shift ;;
        -h|--help) sed -n "2,${USAGE_LINES#*,}p" "$0"; exit 0 ;;
        *) echo "perf.sh: unknown argument $1" >&2; sed -n "${USAGE_LINES}p" "$0" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$CHART" ]; then
    if [ "$QUICK" = 1 ]; then CHART=${TMPDIR:-/tmp}/perf-quick.svg; else CHART=docs/perf.svg; fi
fi
CHART_DATA=${CHART%.svg}.dat
for v in ROUNDS DURATION BUSY_CONNS CHURN_CONNS OPEN_CONNS TLS_CONNS BULK_CONNS; do
    if ! [[ "${!v}" =~ ^[1-9][0-9]*$ ]]; then echo "perf.sh: $v must be a positive integer" >&2; exit 2; fi
done
if ! [[ "$IDLE_CONNS" =~ ^[0-9]+$ && "$OPEN_PERCENTS" =~ ^[0-9\ ]+$ ]]; then
    echo "perf.sh: IDLE_CONNS must be an integer, OPEN_PERCENTS integers" >&2
    exit 2
fi

log() { echo "perf: $*" >&2; }
STARTED=$(date +%s)

# --- tools ---------------------------------------------------------------------------
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v ab >/dev/null 2>&1 || need+=(apache2-utils)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    install_missing "${need[@]}" || { echo "perf.sh: could not install ${need[*]}" >&2; exit 1; }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# perf and strace are optional: their figures are n/a without them.
command -v perf >/dev/null 2>&1 || install_missing linux-perf || true
command -v strace >/dev/null 2>&1 || install_missing strace || true

WORK=$(mktemp -d)
SERVER_PID=""
MEASURED_PID=""
PERF_PID=""
TRACER_PID=""
# shellcheck disable=SC2317  # called by the trap
cleanup() {
    local p
    for p in "$TRACER_PID" "$PERF_PID" "$SERVER_PID"; do
        if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi
    done
    if [ -n "$SERVER_PID" ]; then wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

HAVE_PERF=0
if command -v perf >/dev/null 2>&1 &&
    perf record -e cpu-clock -q -o "$WORK/probe.data" -- true >/dev/null 2>&1; then
    HAVE_PERF=1
else
    log "perf is missing or does not work here: user CPU is n/a"
fi
HAVE_STRACE=0
if command -v strace >/dev/null 2>&1; then HAVE_STRACE=1; else log "no strace: its syscall counts are n/a"; fi

# --- builds --------------------------------------------------------------------------
features=()
if [ -n "${REACTOR_FEATURES:-}" ]; then features=(--features "$REACTOR_FEATURES"); fi
log "building reactor (cargo build --release ${features[*]})"
cargo build --release --bins -q ${features[@]+"${features[@]}"}
REACTOR=${REACTOR_BIN:-$(release_dir)/reactor}
BENCH=$(release_dir)/reactor-bench
if [ ! -x "$REACTOR" ]; then echo "perf.sh: $REACTOR is not an executable" >&2; exit 2; fi
log "building the tokio peer (benches/tokio-echo)"
cargo build --release -q --manifest-path benches/tokio-echo/Cargo.toml
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
    TOKIO=$(release_dir)/tokio-echo
else
    TOKIO=benches/tokio-echo/target/release/tokio-echo
fi
# reactor's read size, the tokio peer's buffer on the bulk echo.
SCRATCH_EXPR=$(awk '/^const SCRATCH: usize =/ {sub(/^[^=]*= */, ""); sub(/;.*$/, ""); print; exit}' src/core/drive.rs)
if [[ "$SCRATCH_EXPR" =~ ^[0-9\ *]+$ ]]; then
    SCRATCH=$((SCRATCH_EXPR))
else
    SCRATCH=65536
    log "no SCRATCH in src/core/drive.rs: the bulk echo's tokio reads $SCRATCH bytes"
fi
TOKIO_VERSION=$(awk '/^name = "tokio"$/ {getline; gsub(/"/, "", $3); print $3; exit}' benches/tokio-echo/Cargo.lock)
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
for v in IDLE_CONNS BUSY_CONNS; do
    if [ "$(ulimit -n)" -lt $((${!v} + 200)) ]; then
        log "open-files limit $(ulimit -n) is below $v=${!v}: expect refused connections"
    fi
done
# The certificate, key and ticket key of the HTTPS loads (as benches/tls.sh's).
mkdir -p "$WORK/tls"
make_tls_files "$WORK/tls"
mapfile -t REACTOR_TLS < <(reactor_tls_args "$WORK/tls")
mapfile -t BENCH_TLS < <(bench_tls_args "$WORK/tls")

# --- servers -------------------------------------------------------------------------
# Configurations: reactor-http-BACKEND, nginx, reactor-tls-BACKEND, nginx-tls,
# reactor-echo-BACKEND, tokio, tokio-bulk (reads of reactor's SCRATCH size).
IO_FLAG=0
BACKENDS=(epoll)
if "$REACTOR" --help 2>&1 | grep -Eq -- '(^|[[:space:],])--io([[:space:]=,]|$)'; then
    IO_FLAG=1
fi

# server_cmd NAME PORT: sets CMD, the command line of server configuration NAME.
server_cmd() {
    local name=$1 addr=127.0.0.1:$2 io=()
    case "$name" in
        reactor-*)
            if [ "$IO_FLAG" = 1 ]; then io=(--io "${name##*-}"); fi
            local proto=${name#reactor-} tls=()
            proto=${proto%-*}
            if [ "$proto" = tls ]; then proto=http; tls=("${REACTOR_TLS[@]}"); fi
            if [ "$proto" = httpd ]; then proto=http; tls=(--defer-accept); fi
            CMD=("$REACTOR" --protocol "$proto" --threads 1 --addr "$addr" --idle-timeout 0
                --stats-interval 0 ${io[@]+"${io[@]}"} ${tls[@]+"${tls[@]}"}) ;;
        nginx)
            write_nginx_conf "$WORK/nginx.conf" "$2" "$WORK"
            CMD=("$NGINX" -c "$WORK/nginx.conf" -g 'daemon off;' -p "$WORK") ;;
        nginx-deferred)
            write_nginx_conf "$WORK/nginx.conf" "$2" "$WORK" "" deferred
            CMD=("$NGINX" -c "$WORK/nginx.conf" -g 'daemon off;' -p "$WORK") ;;
        nginx-tls)
            write_nginx_conf "$WORK/nginx.conf" "$2" "$WORK" "$WORK/tls"
            CMD=("$NGINX" -c "$WORK/nginx.conf" -g 'daemon off;' -p "$WORK") ;;
        tokio) CMD=("$TOKIO" --addr "$addr" --threads 1) ;;
        tokio-bulk) CMD=("$TOKIO" --addr "$addr" --threads 1 --buffer-size "$SCRATCH") ;;
        *) echo "perf.sh: no server $name" >&2; return 1 ;;
    esac
}

# start_server NAME: starts it on a fresh port on CPU $SERVER_CPU; sets PORT,
# SERVER_PID and MEASURED_PID (the process that serves: nginx's worker).
start_server() {
    local name=$1
    PORT=$(free_port)
    server_cmd "$name" "$PORT"
    taskset -c "$SERVER_CPU" "${CMD[@]}" >"$WORK/$name.log" 2>&1 &
    SERVER_PID=$!
    if ! wait_port "$PORT" "$SERVER_PID"; then
        log "$name did not start: ${CMD[*]}"
        sed 's/^/    /' "$WORK/$name.log" | head -n 10 >&2
        stop_server
        return 1
    fi
    MEASURED_PID=$SERVER_PID
    if [ "${name%%-*}" = nginx ] && ! MEASURED_PID=$(worker_of "$SERVER_PID"); then
        log "no nginx worker"
        stop_server
        return 1
    fi
}

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
    MEASURED_PID=""
    sleep 0.3
}

if [ "$IO_FLAG" = 1 ]; then
    if start_server reactor-echo-uring; then
        stop_server
        # A reactor that logs its backend and says another one fell back.
        if grep -Eq 'io=(epoll|auto)' "$WORK/reactor-echo-uring.log"; then
            log "reactor --io uring runs on another backend: $(grep -Eo 'io=[a-z]+' "$WORK/reactor-echo-uring.log" | head -n 1); epoll only"
        else
            BACKENDS+=(uring)
        fi
    else
        log "reactor has --io but --io uring does not start: epoll only"
    fi
fi
log "reactor backends: ${BACKENDS[*]}"

# --- measurements --------------------------------------------------------------------
# Lines "LOAD SERVER METRIC VALUE" in $RESULTS; the same with the round first in
# $ROUND_RESULTS, for the per-round ratios.
RESULTS=$WORK/results
ROUND_RESULTS=$WORK/round-results
: >"$RESULTS"
: >"$ROUND_RESULTS"
round=0
# record LOAD SERVER METRIC VALUE (in round $round)
record() {
    echo "$1 $2 $3 $4" >>"$RESULTS"
    echo "$round $1 $2 $3 $4" >>"$ROUND_RESULTS"
}

# The open loop's loads, one per percentage of nginx's maximum (the rate is set once
# that maximum is measured).
OPEN_LOADS=()
for p in $OPEN_PERCENTS; do OPEN_LOADS+=("open$p"); done
LOADS=(http100 http1000 churn10 churn11 churn10d churn11d "${OPEN_LOADS[@]}" busy tlsfull tlsresume echo1 echo16 bulk)
IDLE_ROWS=1
if [ -n "${ONLY:-}" ]; then
    mapfile -t LOADS < <(printf '%s\n' "${LOADS[@]}" | grep -Fx -f <(tr ' ' '\n' <<<"$ONLY") || true)
    mapfile -t OPEN_LOADS < <(printf '%s\n' "${OPEN_LOADS[@]}" | grep -Fx -f <(tr ' ' '\n' <<<"$ONLY") || true)
    if ! grep -qw idle <<<"$ONLY"; then IDLE_ROWS=0; fi
fi
load_label() {
    case "$1" in
        http100) echo "HTTP hello, wrk -t1 -c100" ;;
        http1000) echo "HTTP hello, wrk -t1 -c1000" ;;
        churn10) echo "HTTP/1.0 churn, ab -c$CHURN_CONNS (a new connection per request)" ;;
        churn11) echo "HTTP/1.1 churn, wrk -t1 -c$CHURN_CONNS -H 'Connection: close'" ;;
        churn10d) echo "HTTP/1.0 churn, ab -c$CHURN_CONNS, deferred accept" ;;
        churn11d) echo "HTTP/1.1 churn, wrk -t1 -c$CHURN_CONNS -H 'Connection: close', deferred accept" ;;
        open*) echo "HTTP open loop, ${1#open}% of nginx's max ($(open_rate "$1") req/s, $OPEN_CONNS conns)" ;;
        busy) echo "HTTP, $BUSY_CONNS conns x 1 req/s (open loop)" ;;
        tlsfull) echo "HTTPS, full handshake per request ($TLS_CONNS conns)" ;;
        tlsresume) echo "HTTPS, resumed handshake per request ($TLS_CONNS conns)" ;;
        echo1) echo "echo 64 B, 100 conns x 1 in flight" ;;
        echo16) echo "echo 64 B, 1,000 conns x 16 in flight" ;;
        bulk) echo "echo 64 KB bulk, $BULK_CONNS conns x 1 in flight" ;;
    esac
}
# servers_of LOAD: the configurations measured on LOAD, reactor's first, the peer last.
servers_of() {
    local b proto=http peer=nginx
    case "$1" in
        echo*) proto="echo"; peer=tokio ;;
        churn*d) proto="httpd"; peer=nginx-deferred ;;
        bulk) proto="echo"; peer=tokio-bulk ;;
        tls*) proto="tls"; peer=nginx-tls ;;
    esac
    for b in "${BACKENDS[@]}"; do echo "reactor-$proto-$b"; done
    echo "$peer"
}
# open_rate LOAD: the offered requests/s of an open-loop load (percent of NGINX_MAX).
open_rate() {
    awk -v m="${NGINX_MAX:-0}" -v p="${1#open}" 'BEGIN {printf "%d\n", m * p / 100}'
}

# perf_start PID / perf_stop FILE: sample PID's CPU (all its threads) into FILE.
perf_start() {
    [ "$HAVE_PERF" = 1 ] || return 0
    taskset -c "$CLIENT_CPU" perf record -e cpu-clock -F 1000 -p "$1" -o "$WORK/perf.data" \
        --no-buildid -q >/dev/null 2>&1 &
    PERF_PID=$!
    sleep 0.3
}
perf_stop() {
    [ -n "$PERF_PID" ] || return 0
    kill -INT "$PERF_PID" 2>/dev/null || true
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
}
# user_share: the fraction of the samples in $WORK/perf.data at user-space addresses.
user_share() {
    if [ "$HAVE_PERF" != 1 ] || [ ! -s "$WORK/perf.data" ]; then echo nan; return; fi
    perf script -i "$WORK/perf.data" -F ip 2>/dev/null |
        awk '{n++; if (length($1) >= 16 && $1 ~ /^ffff/) k++}
            END {if (n < 50) print "nan"; else printf "%.4f\n", 1 - k / n}'
}
# perf_samples: how many samples $WORK/perf.data holds (for the log).
perf_samples() {
    perf script -i "$WORK/perf.data" -F ip 2>/dev/null | wc -l
}

# run_wrk ARGS...: wrk -t1 on the client core for $DURATION s; sets reqs, rps, p99, errs.
run_wrk() {
    out=$(timeout -k 5 $((DURATION + 60)) taskset -c "$CLIENT_CPU" wrk -t1 -d"${DURATION}s" \
        --latency "$@" 2>&1) || true
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2; exit}' <<<"$out" | to_ms)
    errs=$(awk '/Socket errors/ {gsub(/,/, ""); print $4 + $6 + $8 + $10} /Non-2xx/ {print $NF}' <<<"$out" |
        awk '{s += $1} END {print s + 0}')
}
# run_ab URL: ab (HTTP/1.0, a connection per request) for $DURATION s; sets the same.
run_ab() {
    # -n after -t: a cap well above what one ab process reaches (it sizes its tables on it).
    out=$(timeout -k 5 $((DURATION + 60)) taskset -c "$CLIENT_CPU" ab -q -c "$CHURN_CONNS" \
        -t "$DURATION" -n $((50000 * DURATION)) "$1" 2>&1) || true
    reqs=$(awk '/^Complete requests:/ {print $3}' <<<"$out")
    rps=$(awk '/^Requests per second:/ {print $4}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2; exit}' <<<"$out")
    errs=$(awk '/^Failed requests:/ {print $3} /^Non-2xx responses:/ {print $3}' <<<"$out" |
        awk '{s += $1} END {print s + 0}')
}
# run_bench ARGS...: reactor-bench on the client core; sets out (its JSON), reqs, rps,
# p99, errs.
run_bench() {
    out=$(timeout -k 5 $((DURATION + 90)) taskset -c "$CLIENT_CPU" "$BENCH" --addr "127.0.0.1:$PORT" \
        --json --quiet "$@" 2>&1) || true
    reqs=$(json_num "$out" requests_ok)
    rps=$(json_num "$out" requests_per_sec)
    p99=$(json_num "$out" p99_ms)
    errs=$(awk -v a="$(json_num "$out" requests_failed)" -v b="$(json_num "$out" conns_failed)" \
        'BEGIN {print a + b}')
}

# measure LOAD NAME ROUND: one run of LOAD against server NAME.
measure() {
    local load=$1 name=$2 round=$3 t0 t1 c0 c1 out reqs rps p99 share errs=0 m
    start_server "$name" || { record "$load" "$name" failed 1; return 0; }
    local url="http://127.0.0.1:$PORT/"
    perf_start "$MEASURED_PID"
    c0=$(core_ticks "$CLIENT_CPU")
    t0=$(cpu_ticks "$MEASURED_PID")
    case "$load" in
        http*) run_wrk -c"${load#http}" "$url" ;;
        churn10 | churn10d) run_ab "$url" ;;
        churn11 | churn11d) run_wrk -c"$CHURN_CONNS" -H 'Connection: close' "$url" ;;
        open*) run_bench --protocol http --conns "$OPEN_CONNS" --rate "$(open_rate "$load")" \
            --duration "$DURATION" ;;
        busy) run_bench --protocol http --conns "$BUSY_CONNS" --rate "$BUSY_CONNS" --warmup 2 \
            --duration "$DURATION" --source-ips 127.0.0.1,127.0.0.2 --server-pid "$MEASURED_PID" ;;
        tlsfull) run_bench --protocol http "${BENCH_TLS[@]}" --conns "$TLS_CONNS" --conn-requests 1 \
            --duration "$DURATION" ;;
        tlsresume) run_bench --protocol http "${BENCH_TLS[@]}" --conns "$TLS_CONNS" --conn-requests 1 \
            --resume --duration "$DURATION" ;;
        echo1) run_bench --protocol echo --size 64 --conns 100 --duration "$DURATION" ;;
        echo16) run_bench --protocol echo --size 64 --conns 1000 --pipeline 16 --duration "$DURATION" ;;
        bulk) run_bench --protocol echo --size 65536 --conns "$BULK_CONNS" --duration "$DURATION" ;;
    esac
    t1=$(cpu_ticks "$MEASURED_PID")
    c1=$(core_ticks "$CLIENT_CPU")
    perf_stop
    share=$(user_share)
    if [ "$HAVE_PERF" = 1 ] && awk -v s="$share" 'BEGIN {exit !(s == "nan" || s < 0.01)}'; then
        log "$load on $name: user share $share from $(perf_samples) perf samples (suspicious)"
    fi
    if ! [[ "$reqs" =~ ^[0-9]+$ ]] || [ "$reqs" -eq 0 ]; then
        log "$load on $name: no requests served; the client said:"
        head -n 20 <<<"$out" | sed 's/^/    /' >&2
        record "$load" "$name" failed 1
        stop_server
        return 0
    fi
    if [ "$errs" != 0 ]; then log "$load on $name: $errs errors"; fi
    local cpu_us
    cpu_us=$(awk -v t=$((t1 - t0)) -v r="$reqs" -v hz="$CLK_TCK" 'BEGIN {printf "%.4f", t / hz * 1e6 / r}')
    if [ "$load" = busy ]; then
        # The connections' set-up (and the warm-up) out: reactor-bench's own figure over
        # the measured seconds.
        cpu_us=$(json_num "$out" server_cpu_us_per_request)
    fi
    record "$load" "$name" rps "$rps"
    record "$load" "$name" p99_ms "$p99"
    record "$load" "$name" cpu_us "$cpu_us"
    record "$load" "$name" user_share "$share"
    record "$load" "$name" user_us "$(awk -v c="$cpu_us" -v s="$share" 'BEGIN {if (s == "nan" || c == "nan") print "nan"; else printf "%.4f", c * s}')"
    record "$load" "$name" errors "$errs"
    record "$load" "$name" client_busy "$(awk -v a="$c0" -v b="$c1" 'BEGIN {split(a, x, " "); split(b, y, " "); if (y[2] > x[2]) printf "%.1f", 100 * (y[1] - x[1]) / (y[2] - x[2]); else print "nan"}')"
    case "$load" in
        open* | busy | tls* | echo* | bulk)
            for m in p50_ms p999_ms max_ms; do record "$load" "$name" "$m" "$(json_num "$out" "$m")"; done ;;
    esac
    case "$load" in
        busy)
            record "$load" "$name" held "$(awk -v a="$(json_num "$out" conns_established)" \
                -v b="$(json_num "$out" conns_closed_by_server)" 'BEGIN {print a - b}')"
            record "$load" "$name" rss_before_kib "$(json_num "$out" server_rss_before_kib)"
            record "$load" "$name" rss_peak_kib "$(json_num "$out" server_rss_peak_kib)"
            record "$load" "$name" bytes_per_conn "$(json_num "$out" server_bytes_per_conn)" ;;
        tlsresume)
            record "$load" "$name" resumed "$(awk -v r="$(json_num "$out" tls_resumed)" \
                -v c="$(json_num "$out" conns_established)" 'BEGIN {if (c > 0) printf "%.3f", r / c; else print "nan"}')" ;;
        bulk)
            # Bytes echoed (each way) per second, and server CPU (ms) per MB echoed.
            record "$load" "$name" mb_per_s "$(awk -v r="$reqs" -v s="$rps" 'BEGIN {printf "%.1f", s * 65536 / 1e6}')"
            record "$load" "$name" cpu_ms_per_mb "$(awk -v t=$((t1 - t0)) -v r="$reqs" -v hz="$CLK_TCK" \
                'BEGIN {printf "%.4f", t / hz * 1e3 / (r * 65536 / 1e6)}')" ;;
    esac
    # The last round's profile of each server, for the hot spots at the end.
    if [ "$round" = "$ROUNDS" ] && [ -s "$WORK/perf.data" ]; then
        cp "$WORK/perf.data" "$WORK/$load-$name.perf"
    fi
    stop_server
}

# syscall_run NAME: the fixed-count run; prints reactor-bench's requests_ok.
syscall_run() {
    local proto=http
    case "$1" in *echo* | tokio) proto="echo" ;; esac
    local out
    out=$(timeout -k 5 120 taskset -c "$CLIENT_CPU" "$BENCH" --addr "127.0.0.1:$PORT" \
        --protocol "$proto" --size 64 --conns 100 --requests "$SYSCALL_REQUESTS" --json --quiet 2>&1) || true
    json_num "$out" requests_ok
}

# Syscall names counted as reads, writes and waits.
READS="read readv recvfrom recvmsg"
WRITES="write writev sendto sendmsg"
WAITS="epoll_wait epoll_pwait epoll_pwait2 io_uring_enter"

# syscalls_strace NAME: strace -c -f over the fixed-count run; records per-request counts.
syscalls_strace() {
    local name=$1 reqs
    timeout -k 5 180 taskset -c "$CLIENT_CPU" strace -c -f -p "$MEASURED_PID" -o "$WORK/strace.txt" \
        2>/dev/null &
    TRACER_PID=$!
    sleep 0.5
    reqs=$(syscall_run "$name")
    kill -INT "$TRACER_PID" 2>/dev/null || true
    wait "$TRACER_PID" 2>/dev/null || true
    TRACER_PID=""
    [[ "$reqs" =~ ^[0-9]+$ ]] && [ "$reqs" -gt 0 ] || return 0
    # Rows: % time, seconds, usecs/call, calls, [errors], syscall.
    awk -v reqs="$reqs" -v reads="$READS" -v writes="$WRITES" -v waits="$WAITS" '
        BEGIN {split(reads, a, " "); for (i in a) R[a[i]] = 1; split(writes, a, " "); for (i in a) W[a[i]] = 1
               split(waits, a, " "); for (i in a) P[a[i]] = 1}
        $1 ~ /^[0-9.]+$/ && NF >= 5 {
            if ($NF == "total") all = $4
            else if ($NF in R) r += $4; else if ($NF in W) w += $4; else if ($NF in P) p += $4 }
        END {printf "st_read %.3f\nst_write %.3f\nst_wait %.3f\nst_all %.3f\n", r / reqs, w / reqs, p / reqs, all / reqs}
    ' "$WORK/strace.txt" | while read -r metric value; do record syscalls "$name" "$metric" "$value"; done
}

# syscalls_perf NAME: the same run, counted with the syscalls tracepoints (full speed).
syscalls_perf() {
    local name=$1 reqs ev=() n
    [ "$HAVE_PERF" = 1 ] || return 0
    for n in $READS $WRITES $WAITS; do
        if [ -d "/sys/kernel/tracing/events/syscalls/sys_enter_$n" ] ||
            [ -d "/sys/kernel/debug/tracing/events/syscalls/sys_enter_$n" ]; then
            ev+=(-e "syscalls:sys_enter_$n")
        fi
    done
    [ ${#ev[@]} -gt 0 ] || return 0
    timeout -k 5 180 taskset -c "$CLIENT_CPU" perf stat -x, -o "$WORK/pstat.txt" \
        -e raw_syscalls:sys_enter "${ev[@]}" -p "$MEASURED_PID" >/dev/null 2>&1 &
    TRACER_PID=$!
    sleep 0.5
    reqs=$(syscall_run "$name")
    kill -INT "$TRACER_PID" 2>/dev/null || true
    wait "$TRACER_PID" 2>/dev/null || true
    TRACER_PID=""
    [[ "$reqs" =~ ^[0-9]+$ ]] && [ "$reqs" -gt 0 ] || return 0
    awk -F, -v reqs="$reqs" -v reads="$READS" -v writes="$WRITES" -v waits="$WAITS" '
        BEGIN {split(reads, a, " "); for (i in a) R[a[i]] = 1; split(writes, a, " "); for (i in a) W[a[i]] = 1
               split(waits, a, " "); for (i in a) P[a[i]] = 1}
        $1 ~ /^[0-9]+$/ {
            e = $3; if (e == "raw_syscalls:sys_enter") all = $1
            sub(/^syscalls:sys_enter_/, "", e)
            if (e in R) r += $1; else if (e in W) w += $1; else if (e in P) p += $1 }
        END {printf "pf_read %.3f\npf_write %.3f\npf_wait %.3f\npf_all %.3f\n", r / reqs, w / reqs, p / reqs, all / reqs}
    ' "$WORK/pstat.txt" | while read -r metric value; do record syscalls "$name" "$metric" "$value"; done
}

# idle NAME: a fresh server, $IDLE_CONNS idle connections held 3 s: RSS per connection.
idle() {
    local name=$1 out held
    start_server "$name" || return 0
    out=$(timeout -k 5 120 taskset -c "$CLIENT_CPU" "$BENCH" --addr "127.0.0.1:$PORT" --mode idle \
        --conns "$IDLE_CONNS" --duration 3 --source-ips 127.0.0.1,127.0.0.2 \
        --server-pid "$MEASURED_PID" --json --quiet 2>&1) || true
    held=$(awk -v a="$(json_num "$out" conns_established)" -v b="$(json_num "$out" conns_closed_by_server)" \
        'BEGIN {print a - b}')
    if [ "$held" != "$IDLE_CONNS" ]; then log "idle on $name: $held of $IDLE_CONNS connections held"; fi
    record idle "$name" held "$held"
    record idle "$name" bytes_per_conn "$(json_num "$out" server_bytes_per_conn)"
    stop_server
}

CONFIGS=()
for b in "${BACKENDS[@]}"; do CONFIGS+=("reactor-http-$b"); done
CONFIGS+=(nginx)
for b in "${BACKENDS[@]}"; do CONFIGS+=("reactor-echo-$b"); done
CONFIGS+=(tokio)

# reorder ROUND ITEM...: the items, reversed on even rounds.
reorder() {
    local round=$1; shift
    if [ $((round % 2)) = 0 ]; then printf '%s\n' "$@" | tac; else printf '%s\n' "$@"; fi
}

# nginx's maximum requests/s with the open loop's client in closed loop: the rates of the
# open-loop loads.
MAX_RUNS=$((ROUNDS < 3 ? ROUNDS : 3))
if [ ${#OPEN_LOADS[@]} = 0 ]; then MAX_RUNS=0; fi
for i in $(seq "$MAX_RUNS"); do
    log "nginx's maximum, run $i/$MAX_RUNS: reactor-bench closed loop, $OPEN_CONNS conns"
    if start_server nginx; then
        run_bench --protocol http --conns "$OPEN_CONNS" --duration "$DURATION"
        record max nginx rps "$rps"
        stop_server
    fi
done
NGINX_MAX=$(median "max nginx rps" "$RESULTS")
if [ ${#OPEN_LOADS[@]} = 0 ]; then
    :
elif [ "$NGINX_MAX" = nan ]; then
    log "no maximum for nginx: the open-loop loads are skipped"
    mapfile -t LOADS < <(printf '%s\n' "${LOADS[@]}" | grep -v '^open' || true)
    OPEN_LOADS=()
else
    log "nginx's maximum: $NGINX_MAX requests/s; open loop at $(for l in "${OPEN_LOADS[@]}"; do printf '%s ' "$(open_rate "$l")"; done)requests/s"
fi

log "${ROUNDS} rounds of ${DURATION} s per load; servers on CPU $SERVER_CPU, client on CPU $CLIENT_CPU; perf $HAVE_PERF, strace $HAVE_STRACE"
for round in $(seq "$ROUNDS"); do
    for load in "${LOADS[@]}"; do
        mapfile -t servers < <(servers_of "$load")
        while read -r name; do
            log "round $round/$ROUNDS: $(load_label "$load") on $name"
            measure "$load" "$name" "$round"
        done < <(reorder "$round" "${servers[@]}")
    done
    [ "$IDLE_ROWS" = 1 ] || continue
    while read -r name; do
        log "round $round/$ROUNDS: syscalls and $IDLE_CONNS idle connections on $name"
        if start_server "$name"; then
            if [ "$HAVE_STRACE" = 1 ]; then syscalls_strace "$name"; fi
            syscalls_perf "$name"
            stop_server
        fi
        idle "$name"
    done < <(reorder "$round" "${CONFIGS[@]}")
done

# --- tables --------------------------------------------------------------------------
# cell KEY DIGITS: "median (min-max)" of KEY ("load server metric"), or n/a.
cell() {
    local m lo hi
    m=$(median "$1" "$RESULTS")
    read -r lo hi < <(minmax "$1" "$RESULTS")
    awk -v m="$m" -v lo="$lo" -v hi="$hi" -v d="$2" -v r="$ROUNDS" 'BEGIN {
        if (m == "nan") { print "n/a"; exit }
        if (r > 1) printf "%.*f (%.*f-%.*f)\n", d, m, d, lo, d, hi; else printf "%.*f\n", d, m }'
}
# ratio KEY_A KEY_B: A / B of each round that measured both (keys "load server metric"):
# "median (min-max)", with " ~" when the min-max straddles 1; n/a if no round has both.
ratio() {
    local a b
    read -ra a <<<"$1"
    read -ra b <<<"$2"
    awk -v l="${a[0]}" -v x="${a[1]}" -v y="${b[1]}" -v m="${a[2]}" '
        $2 == l && $4 == m && $5 != "nan" {if ($3 == x) A[$1] = $5; else if ($3 == y) B[$1] = $5}
        END {for (r in A) if ((r in B) && B[r] + 0 != 0) print A[r] / B[r]}' "$ROUND_RESULTS" | sort -g |
        awk '{v[NR] = $1}
            END {
                if (NR == 0) {print "n/a"; exit}
                m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
                if (NR == 1) printf "%.2f\n", m
                else printf "%.2f (%.2f-%.2f)%s\n", m, v[1], v[NR], (v[1] <= 1 && v[NR] >= 1) ? " ~" : ""}'
}
# pair LOAD METRIC DIGITS: the cells "reactor | peer | reactor/peer" of METRIC on LOAD
# (reactor's first backend).
pair() {
    local s
    mapfile -t s < <(servers_of "$1")
    echo "$(cell "$1 ${s[0]} $2" "$3") | $(cell "$1 ${s[-1]} $2" "$3") | $(ratio "$1 ${s[0]} $2" "$1 ${s[-1]} $2")"
}
server_label() {
    case "$1" in
        reactor-tls-*) echo "reactor (TLS)" ;;
        reactor-httpd-*) echo "reactor --defer-accept" ;;
        reactor-*-epoll) if [ "$IO_FLAG" = 1 ]; then echo "reactor (epoll)"; else echo reactor; fi ;;
        reactor-*-uring) echo "reactor (uring)" ;;
        nginx) echo "nginx, 1 worker" ;;
        nginx-tls) echo "nginx, 1 worker (TLS)" ;;
        nginx-deferred) echo "nginx, 1 worker, listen deferred" ;;
        tokio) echo "tokio $TOKIO_VERSION, 1 worker" ;;
        tokio-bulk) echo "tokio $TOKIO_VERSION, 1 worker, $SCRATCH B reads" ;;
    esac
}

cpu_model=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
uring=0
if [ ${#BACKENDS[@]} -gt 1 ]; then uring=1; fi
{
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC') · machine: $(nproc) CPUs, ${cpu_model:-unknown CPU}, Linux $(uname -r)"
    echo "Command: \`$COMMAND_LINE\` (ROUNDS=$ROUNDS DURATION=$DURATION IDLE_CONNS=$IDLE_CONNS BUSY_CONNS=$BUSY_CONNS CHURN_CONNS=$CHURN_CONNS OPEN_CONNS=$OPEN_CONNS OPEN_PERCENTS=\"$OPEN_PERCENTS\" TLS_CONNS=$TLS_CONNS BULK_CONNS=$BULK_CONNS SERVER_CPU=$SERVER_CPU CLIENT_CPU=$CLIENT_CPU)"
    echo "Servers: reactor $("$REACTOR" --version 2>/dev/null | awk '{print $2}') ($REACTOR, backends: ${BACKENDS[*]}), nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///'), tokio $TOKIO_VERSION (benches/tokio-echo); each pinned to CPU $SERVER_CPU, one thread/worker"
    echo "Clients: wrk -t1 (HTTP hello, HTTP/1.1 churn), ab (HTTP/1.0 churn), reactor-bench one thread (open loop, busy connections, HTTPS, echo), pinned to CPU $CLIENT_CPU; median of $ROUNDS alternating rounds of $DURATION s, (min-max) across rounds"
    echo "CPU/request: server utime+stime from /proc/PID/stat over the run / requests served; user CPU/request: that x the share of perf cpu-clock samples (1 kHz) outside the kernel$([ "$HAVE_PERF" = 1 ] || echo " (perf unavailable: n/a)")"
    echo
    if [ "$uring" = 1 ]; then
        echo "| load | reactor CPU/request (µs) | peer CPU/request (µs) | ratio | reactor user CPU/request (µs) | ratio | requests/s ratio | uring/epoll CPU, user |"
        echo "|---|---|---|---|---|---|---|---|"
    else
        echo "| load | reactor CPU/request (µs) | peer CPU/request (µs) | ratio | reactor user CPU/request (µs) | ratio | requests/s ratio |"
        echo "|---|---|---|---|---|---|---|"
    fi
    for load in "${LOADS[@]}"; do
        mapfile -t servers < <(servers_of "$load")
        peer=${servers[-1]}
        for name in "${servers[@]}"; do
            [ "$name" != "$peer" ] || continue
            label="$(load_label "$load") (peer: $(server_label "$peer"))"
            if [ "$uring" = 1 ]; then label="$label, $(server_label "$name")"; fi
            row="| $label | $(cell "$load $name cpu_us" 2) | $(cell "$load $peer cpu_us" 2) | $(ratio "$load $name cpu_us" "$load $peer cpu_us")"
            row="$row | $(cell "$load $name user_us" 3) | $(ratio "$load $name user_us" "$load $peer user_us")"
            row="$row | $(ratio "$load $name rps" "$load $peer rps")"
            if [ "$uring" = 1 ]; then
                epoll=${name%-*}-epoll
                if [ "$name" = "$epoll" ]; then
                    row="$row | -"
                else
                    row="$row | $(ratio "$load $name cpu_us" "$load $epoll cpu_us"), $(ratio "$load $name user_us" "$load $epoll user_us")"
                fi
            fi
            echo "$row |"
        done
    done
    echo
    echo "Ratios: reactor / peer in each round, median (min-max) over the rounds; ~: the min-max straddles 1, no difference shown. CPU ratio < 1: reactor uses less CPU per request than its peer; requests/s ratio > 1: reactor served more (open-loop and busy loads are offered a fixed rate: there requests/s only shows whether both kept up)."
    echo
    echo "Per server. Client core busy: CPU $CLIENT_CPU from /proc/stat over the run (near 100%: the client limits requests/s, compare CPU/request)."
    echo
    echo "| load | server | requests/s | p99 (ms) | CPU/request (µs) | user CPU/request (µs) | user share | client core busy (%) |"
    echo "|---|---|---|---|---|---|---|---|"
    for load in "${LOADS[@]}"; do
        mapfile -t servers < <(servers_of "$load")
        for name in "${servers[@]}"; do
            share=$(awk -v s="$(median "$load $name user_share" "$RESULTS")" 'BEGIN {if (s == "nan") print "n/a"; else printf "%.1f%%\n", 100 * s}')
            echo "| $(load_label "$load") | $(server_label "$name") | $(cell "$load $name rps" 0) | $(cell "$load $name p99_ms" 2) | $(cell "$load $name cpu_us" 2) | $(cell "$load $name user_us" 3) | $share | $(cell "$load $name client_busy" 0) |"
        done
    done
    failed=$(awk '$3 == "failed" || ($3 == "errors" && $4 != 0) {print $1 " on " $2}' "$RESULTS" | sort | uniq -c |
        awk '{c = $1; $1 = ""; printf "%s%s (%d runs)", (NR > 1 ? ", " : ""), substr($0, 2), c}')
    if [ -n "$failed" ]; then echo; echo "Runs that failed or had errors: $failed"; fi
    echo
    echo "New connection per request (churn): requests/s are connections/s, CPU per request is server CPU per connection (accept, request, answer, close). ab sends HTTP/1.0 without keep-alive; wrk sends HTTP/1.1 with \`Connection: close\` and opens a new connection after each answer. Deferred accept: reactor --defer-accept against nginx's \`listen ... deferred\` (both TCP_DEFER_ACCEPT: the kernel hands a connection over once its request has come)."
    echo
    echo "| load | reactor conns/s | nginx conns/s | ratio | reactor CPU/conn (µs) | nginx CPU/conn (µs) | ratio |"
    echo "|---|---|---|---|---|---|---|"
    for load in churn10 churn11 churn10d churn11d; do
        echo "| $(load_label "$load") | $(pair "$load" rps 0) | $(pair "$load" cpu_us 1) |"
    done
    if [ ${#OPEN_LOADS[@]} -gt 0 ]; then
        echo
        echo "Open loop (reactor-bench --rate, $OPEN_CONNS connections, latency from each request's scheduled send time, so queueing counts): nginx's maximum, reactor-bench closed loop with $OPEN_CONNS connections, median of $MAX_RUNS runs in this run: $(cell "max nginx rps" 0) requests/s (client core busy, closed loop: see the HTTP hello rows for how close a one-thread client is to its limit). Chart: $CHART, points: $CHART_DATA."
        echo
        echo "| offered load | server | p50 (ms) | p99 (ms) | p99.9 (ms) | max (ms) | served req/s | p99 reactor/nginx |"
        echo "|---|---|---|---|---|---|---|---|"
        for load in "${OPEN_LOADS[@]}"; do
            mapfile -t servers < <(servers_of "$load")
            for name in "${servers[0]}" "${servers[-1]}"; do
                r="-"
                if [ "$name" = "${servers[0]}" ]; then r=$(ratio "$load $name p99_ms" "$load ${servers[-1]} p99_ms"); fi
                echo "| ${load#open}% of max, $(open_rate "$load") req/s | $(server_label "$name") | $(cell "$load $name p50_ms" 3) | $(cell "$load $name p99_ms" 3) | $(cell "$load $name p999_ms" 3) | $(cell "$load $name max_ms" 2) | $(cell "$load $name rps" 0) | $r |"
            done
        done
    fi
    echo
    echo "Busy connections: $BUSY_CONNS connections, each sending one request a second (reactor-bench --rate $BUSY_CONNS --conns $BUSY_CONNS, 2 s warm-up, then $DURATION s). VmRSS from /proc/PID/status (nginx: its worker, the master is not counted), sampled through the load; per connection = (peak - before the connections opened) / connections. User space only: the kernel's socket memory is in no process."
    echo
    echo "| server | conns held | VmRSS before (KiB) | VmRSS under load, peak (KiB) | bytes per busy conn | p99 (ms) | CPU/request (µs) |"
    echo "|---|---|---|---|---|---|---|"
    mapfile -t servers < <(servers_of busy)
    for name in "${servers[0]}" "${servers[-1]}"; do
        echo "| $(server_label "$name") | $(cell "busy $name held" 0) | $(cell "busy $name rss_before_kib" 0) | $(cell "busy $name rss_peak_kib" 0) | $(cell "busy $name bytes_per_conn" 0) | $(cell "busy $name p99_ms" 2) | $(cell "busy $name cpu_us" 1) |"
    done
    echo
    echo "Bytes per busy connection, reactor/nginx: $(ratio "busy ${servers[0]} bytes_per_conn" "busy ${servers[-1]} bytes_per_conn")."
    echo
    echo "HTTPS, a new TCP connection and TLS handshake per request (reactor-bench --tls --conn-requests 1 --conns $TLS_CONNS, closed with a reset; TLS 1.3, ECDSA P-256; resumed: the client offers its last session ticket, both servers read one ticket key). The certificate and nginx config are benches/tls.sh's."
    echo
    echo "| load | reactor handshakes/s | nginx handshakes/s | ratio | reactor CPU/handshake (µs) | nginx CPU/handshake (µs) | ratio | share resumed, reactor / nginx |"
    echo "|---|---|---|---|---|---|---|---|"
    for load in tlsfull tlsresume; do
        mapfile -t servers < <(servers_of "$load")
        share="-"
        if [ "$load" = tlsresume ]; then share="$(cell "$load ${servers[0]} resumed" 2) / $(cell "$load ${servers[-1]} resumed" 2)"; fi
        echo "| $(load_label "$load") | $(pair "$load" rps 0) | $(pair "$load" cpu_us 1) | $share |"
    done
    echo
    echo "Bulk echo: 64 KB messages (reactor-bench --protocol echo --size 65536 --conns $BULK_CONNS, 1 in flight each); the tokio peer reads into a $SCRATCH-byte buffer, reactor's read size (SCRATCH, src/core/drive.rs). MB/s: MB echoed back per second (10^6 bytes, each way); CPU per MB: server CPU (ms) per MB echoed."
    echo
    echo "| load | reactor MB/s | tokio MB/s | ratio | reactor CPU/MB (ms) | tokio CPU/MB (ms) | ratio |"
    echo "|---|---|---|---|---|---|---|"
    echo "| $(load_label bulk) | $(pair bulk mb_per_s 1) | $(pair bulk cpu_ms_per_mb 3) |"
    echo
    echo "Syscalls per request (100 connections x $SYSCALL_REQUESTS requests, 1 in flight; HTTP servers on HTTP, echo servers on echo 64 B); strace -c -f slows the server, so it sees fewer waits per request than the tracepoint count at full speed (perf stat -e syscalls:sys_enter_*). Reads: read/readv/recvfrom/recvmsg; writes: write/writev/sendto/sendmsg; waits: epoll_wait/epoll_pwait/epoll_pwait2/io_uring_enter. Server RSS per idle connection: a fresh server holding $IDLE_CONNS idle connections for 3 s, (peak VmRSS - VmRSS before) / connections (user space only: kernel socket memory is in no process)."
    echo
    echo "| server | strace: reads | writes | waits | all syscalls | perf: reads | writes | waits | all syscalls | RSS per idle connection (bytes) | connections held |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|"
    for name in "${CONFIGS[@]}"; do
        row="| $(server_label "$name") $(case "$name" in *http* | nginx) echo "(HTTP)" ;; *) echo "(echo)" ;; esac)"
        for m in st_read st_write st_wait st_all pf_read pf_write pf_wait pf_all; do
            row="$row | $(cell "syscalls $name $m" 2)"
        done
        echo "$row | $(cell "idle $name bytes_per_conn" 0) | $(cell "idle $name held" 0) |"
    done
    if [ "$HAVE_PERF" = 1 ]; then
        echo
        echo "Hot spots on echo 64 B 100x1, last round (perf report --sort dso,sym; % of all the server's samples): the top kernel symbols, then the top user-space ones."
        for name in $(servers_of echo1); do
            [ -s "$WORK/echo1-$name.perf" ] || continue
            perf report -i "$WORK/echo1-$name.perf" --stdio --sort dso,sym -q 2>/dev/null |
                sed '/^$/d' >"$WORK/report.txt" || true
            echo
            echo "$(server_label "$name"):"
            echo '```'
            grep -F '[k]' "$WORK/report.txt" | head -n 6 || true
            grep -vF '[k]' "$WORK/report.txt" | head -n 8 || true
            echo '```'
        done
    fi
    echo
    echo "Whole run: $(( $(date +%s) - STARTED )) s."
} >"$WORK/table.md"
cat "$WORK/table.md"
if [ -n "$OUT" ]; then cp "$WORK/table.md" "$OUT"; fi
# The open loop's points (medians) and its chart.
if [ ${#OPEN_LOADS[@]} -gt 0 ]; then
    mkdir -p "$(dirname "$CHART_DATA")"
    {
        echo "# benches/perf.sh open loop, $(date -u '+%Y-%m-%d %H:%M UTC'), \`$COMMAND_LINE\` (ROUNDS=$ROUNDS DURATION=$DURATION OPEN_CONNS=$OPEN_CONNS): medians over the rounds, ms"
        echo "# offered_rps percent_of_nginx_max reactor_p50 reactor_p99 reactor_p999 reactor_max nginx_p50 nginx_p99 nginx_p999 nginx_max"
        for load in "${OPEN_LOADS[@]}"; do
            mapfile -t servers < <(servers_of "$load")
            line="$(open_rate "$load") ${load#open}"
            for name in "${servers[0]}" "${servers[-1]}"; do
                for m in p50_ms p99_ms p999_ms max_ms; do line="$line $(median "$load $name $m" "$RESULTS")"; done
            done
            echo "$line"
        done
    } >"$CHART_DATA"
    bash benches/chart.sh --load "$CHART_DATA" \
        "reactor vs nginx, open loop, $OPEN_CONNS conns, one core each, $(date -u +%Y-%m-%d)" "$CHART" ||
        log "no chart (gnuplot missing?)"
    log "open-loop points in $CHART_DATA, chart $CHART"
fi
exit 0
