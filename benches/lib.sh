# shellcheck shell=bash
# Helpers shared by the benchmark scripts (benches/compare.sh, perf.sh, tls.sh, ab.sh, soak.sh).
# Sourced, not run: `. benches/lib.sh` from the repository root.

# install_missing PKG...: apt-get install the given Debian packages (as root only).
# Returns 1 if they could not be installed.
install_missing() {
    [ $# -gt 0 ] || return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "need $*: run as root or install them" >&2
        return 1
    fi
    echo "installing $*" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}

# release_dir: the directory of cargo's release binaries (honours CARGO_TARGET_DIR).
release_dir() {
    local t=${CARGO_TARGET_DIR:-target}
    (cd "$t/release" && pwd)
}

# free_port: a TCP port nothing listens on, on 127.0.0.1.
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

# wait_port PORT [PID]: wait up to 10 s for something to listen on PORT; fails at once
# if PID (the server) exits first.
wait_port() {
    for _ in $(seq 100); do
        if [ -n "${2:-}" ] && ! kill -0 "$2" 2>/dev/null; then
            return 1
        fi
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listening on port $1" >&2
    return 1
}

# cpu_ticks PID: the process's utime+stime (all its threads), in clock ticks.
# (Fields 14 and 15 of /proc/PID/stat; the command name, field 2, has no spaces here.)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# shellcheck disable=SC2034  # used by the scripts that source this file
CLK_TCK=$(getconf CLK_TCK)

# core_ticks CPU: "busy total" jiffies of one core, from /proc/stat.
core_ticks() {
    awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}

# wrk prints 512.00us, 1.20ms, 2.00s
to_ms() {
    awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } printf "%.3f", v }'
}

# json_num JSON KEY: a number from reactor-bench --json (pretty printed, one key a line;
# the keys read are unique in the report, nested ones included), or nan if absent/null.
json_num() {
    awk -v k="\"$2\":" '$1 == k {v = $2; sub(/,$/, "", v); print (v == "null" ? "nan" : v); found = 1; exit}
        END {if (!found) print "nan"}' <<<"$1"
}

# json_get JSON KEY: the first number of "KEY": in JSON, one line or pretty printed
# (reactor-chaos --json, reactor-bench --json), or nan if absent or null.
json_get() {
    local v
    v=$(grep -o "\"$2\": *[-0-9.eE+]*" <<<"$1" | head -n 1 | sed 's/.*: *//')
    echo "${v:-nan}"
}

# values KEY FILE: the values of the lines "KEY value" of FILE (KEY may have spaces).
values() {
    awk -v k="$1" '{v = $NF; $NF = ""; sub(/ +$/, ""); if ($0 == k) print v}' "$2"
}

# median KEY FILE: the median of the values of KEY (nan if none).
median() {
    values "$1" "$2" | { grep -v nan || true; } | sort -g |
        awk '{a[NR]=$1} END {if (NR == 0) print "nan"; else if (NR % 2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2] + a[NR/2+1]) / 2}'
}

# minmax KEY FILE: "min max" of the values of KEY (nan nan if none).
minmax() {
    values "$1" "$2" | { grep -v nan || true; } | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {if (NR == 0) print "nan nan"; else print lo, hi}'
}

# write_nginx_conf FILE PORT DIR [TLSDIR]: one worker, no access log, keep-alive for ever,
# the same "Hello, World!" body as reactor --protocol http. With TLSDIR (made by
# make_tls_files) it serves TLS 1.2 and 1.3 on that certificate and reads its session
# tickets from TLSDIR/ticket.key. Start it with `nginx -c FILE -g 'daemon on;'` (or off);
# its pid file is DIR/nginx.pid.
write_nginx_conf() {
    local ssl="" tls=""
    if [ -n "${4:-}" ]; then
        ssl=" ssl"
        tls="ssl_certificate $4/cert.pem; ssl_certificate_key $4/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3; ssl_session_ticket_key $4/ticket.key;"
    fi
    mkdir -p "$3/nginx"
    cat >"$1" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $3/nginx.pid;
error_log $3/nginx-error.log warn;
events { worker_connections 20000; multi_accept on; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    client_body_temp_path $3/nginx;
    proxy_temp_path $3/nginx;
    fastcgi_temp_path $3/nginx;
    uwsgi_temp_path $3/nginx;
    scgi_temp_path $3/nginx;
    server {
        listen 127.0.0.1:$2$ssl backlog=4096${5:+ $5};
        $tls
        location / { default_type text/plain; return 200 "Hello, World!"; }
    }
}
EOF
}

# make_tls_files DIR: an ECDSA P-256 CA (DIR/ca.pem) and a leaf for localhost and
# 127.0.0.1 (DIR/cert.pem, the chain; DIR/key.pem), and one session-ticket key for both
# servers (DIR/ticket.key, 48 bytes: nginx reads it as name, AES-128 key and HMAC key;
# reactor as name and AES-256-GCM key).
make_tls_files() {
    (
        cd "$1" || exit 1
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout ca.key -out ca.pem -days 2 -subj "/CN=bench CA" 2>/dev/null
    ) || return 1
    issue_tls_leaf "$1" && new_ticket_key "$1"
}

# issue_tls_leaf DIR: a new key and leaf certificate for localhost and 127.0.0.1, signed
# by make_tls_files's CA in DIR (DIR/key.pem, DIR/cert.pem: the leaf then the CA). Each
# file is written aside and renamed into place, so a reader never sees half of one.
issue_tls_leaf() {
    (
        cd "$1" || exit 1
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout key.new -out leaf.csr -subj /CN=localhost 2>/dev/null
        printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >ext.cnf
        openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile ext.cnf -out leaf.pem 2>/dev/null
        cat leaf.pem ca.pem >cert.new
        mv key.new key.pem
        mv cert.new cert.pem
    )
}

# new_ticket_key DIR: a new 48-byte session-ticket key in DIR/ticket.key (mode 0600),
# renamed into place.
new_ticket_key() {
    (
        cd "$1" || exit 1
        openssl rand -out ticket.new 48
        chmod 600 ticket.new
        mv ticket.new ticket.key
    )
}

# reactor_tls_args DIR / bench_tls_args DIR: the flags, one a line (for mapfile), that
# make reactor serve TLS with make_tls_files's certificate and ticket key, and that make
# reactor-bench speak TLS to either server and check that certificate.
reactor_tls_args() {
    printf '%s\n' --tls-cert "$1/cert.pem" --tls-key "$1/key.pem" --tls-ticket-keys "$1/ticket.key"
}
bench_tls_args() {
    printf '%s\n' --tls --ca "$1/ca.pem" --server-name localhost
}

# worker_of PID: nginx's worker, the first child of its master PID (waits up to 5 s for
# it); fails if there is none.
worker_of() {
    local w
    for _ in $(seq 50); do
        w=$(pgrep -P "$1" | head -n 1 || true)
        if [ -n "$w" ]; then echo "$w"; return 0; fi
        sleep 0.1
    done
    return 1
}

# parse_duration SPEC: SPEC ("90", "90s", "30m", "2h") in seconds; fails on anything else.
parse_duration() {
    [[ $1 =~ ^([0-9]+)([smh]?)$ ]] || return 1
    local n=$((10#${BASH_REMATCH[1]}))
    case ${BASH_REMATCH[2]} in
        m) echo $((n * 60)) ;;
        h) echo $((n * 3600)) ;;
        *) echo "$n" ;;
    esac
}

# scrape_metrics PORT: the Prometheus text of reactor's --metrics-addr 127.0.0.1:PORT.
scrape_metrics() { curl -sf --max-time 5 "http://127.0.0.1:$1/metrics"; }

# metric TEXT NAME [LABEL]: the sum of metric NAME's samples in TEXT (scrape_metrics's)
# over every label set, or only those whose labels contain LABEL (`result="ok"`); 0 if none.
metric() {
    awk -v n="$2" -v l="${3:-}" '/^#/ {next}
        {name = $1; sub(/[{].*/, "", name); if (name == n && (l == "" || index($1, l))) s += $2}
        END {printf "%.0f\n", s}' <<<"$1"
}

# proc_status PID FIELD: the number of FIELD in /proc/PID/status (VmRSS in KiB, Threads).
proc_status() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }

# fd_count PID: the process's open file descriptors.
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }
