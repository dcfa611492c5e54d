#!/usr/bin/env bash
# Draws benches/compare.sh's results as one SVG: reactor's and nginx's latency by
# percentile (closed loop, log scale), and server memory per idle connection.
#
# Usage: benches/chart.sh REACTOR.hdr NGINX.hdr REACTOR_BYTES NGINX_BYTES TITLE OUT.svg
#   *.hdr: reactor-bench --hdr-out files; *_BYTES: server bytes per idle connection.
# Needs gnuplot (Debian: gnuplot-nox; installed if missing and running as root).
set -euo pipefail

if [ $# -ne 6 ]; then
    sed -n '2,7p' "$0" >&2
    exit 2
fi
reactor_hdr=$1 nginx_hdr=$2 reactor_bytes=$3 nginx_bytes=$4 title=$5 out=$6

if ! command -v gnuplot >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "chart.sh: needs gnuplot (apt-get install gnuplot-nox)" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnuplot-nox >/dev/null
fi

bars=$(mktemp)
trap 'rm -f "$bars"' EXIT
printf 'reactor %s\nnginx %s\n' "$reactor_bytes" "$nginx_bytes" >"$bars"

gnuplot <<GP
set terminal svg size 1000,420 dynamic font "sans,12" background rgb "white"
set output "$out"
set multiplot layout 1,2 title "$title"

set title "Latency by percentile (reactor-bench, closed loop)"
set logscale x 10
set xrange [1:1000000]
set xtics ("0%%" 1, "90%%" 10, "99%%" 100, "99.9%%" 1000, "99.99%%" 10000, "99.999%%" 100000, "99.9999%%" 1000000)
set logscale y 10
set ylabel "latency (ms)"
set grid
set key top left
plot "$reactor_hdr" using 3:2 with lines lw 2 lc rgb "#1f77b4" title "reactor", \
     "$nginx_hdr" using 3:2 with lines lw 2 lc rgb "#d62728" title "nginx"

unset logscale
unset xrange
unset xtics
set xtics
set title "Server memory per idle connection (VmRSS)"
set ylabel "bytes"
set yrange [0:*]
set style fill solid 0.8
set boxwidth 0.5
unset key
plot "$bars" using 0:2:xtic(1) with boxes lc rgb "#2ca02c", \
     "$bars" using 0:2:(sprintf("%.0f", \$2)) with labels offset 0,1 notitle
unset multiplot
GP
echo "chart.sh: wrote $out" >&2
