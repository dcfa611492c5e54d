#!/usr/bin/env bash
# Draws benchmark results as SVG with gnuplot.
#
# benches/chart.sh REACTOR.hdr NGINX.hdr REACTOR_BYTES NGINX_BYTES TITLE OUT.svg
#   benches/compare.sh's results: reactor's and nginx's latency by percentile (closed
#   loop, log scale), and server memory per idle connection. *.hdr: reactor-bench
#   --hdr-out files; *_BYTES: server bytes per idle connection.
# benches/chart.sh --load DATA TITLE OUT.svg
#   benches/perf.sh's open loop: p50 and p99 latency (log scale) against offered load
#   for reactor and nginx. DATA: lines "offered_rps percent_of_nginx_max reactor_p50
#   reactor_p99 reactor_p999 reactor_max nginx_p50 nginx_p99 nginx_p999 nginx_max" (ms).
# benches/chart.sh --soak CSV TITLE OUT.svg
#   benches/soak.sh's samples: RSS, heap, descriptors, threads, connections and buffers
#   lent over time, a line per server; the samples taken at rest are dotted on RSS.
# Needs gnuplot (Debian: gnuplot-nox; installed if missing and running as root).
set -euo pipefail
# shellcheck source=benches/lib.sh
. "$(dirname "$0")/lib.sh"

usage() { sed -n '2,15p' "$0" >&2; exit 2; }
if ! command -v gnuplot >/dev/null 2>&1; then
    install_missing gnuplot-nox || { echo "chart.sh: needs gnuplot (apt-get install gnuplot-nox)" >&2; exit 1; }
fi

if [ "${1:-}" = --load ]; then
    [ $# -eq 4 ] || usage
    data=$2 title=$3 out=$4
    gnuplot <<GP
set terminal svg size 800,480 dynamic font "sans,12" background rgb "white"
set output "$out"
set title "$title"
set xlabel "offered load (requests/s, open loop)"
set ylabel "latency (ms)"
set logscale y 10
set grid
set key top left
set xrange [0:*]
plot "$data" using 1:4 with linespoints lw 2 pt 7 lc rgb "#1f77b4" title "reactor p99", \
     "$data" using 1:3 with linespoints lw 1 dt 2 pt 6 lc rgb "#1f77b4" title "reactor p50", \
     "$data" using 1:8 with linespoints lw 2 pt 5 lc rgb "#d62728" title "nginx p99", \
     "$data" using 1:7 with linespoints lw 1 dt 2 pt 4 lc rgb "#d62728" title "nginx p50"
GP
    echo "chart.sh: wrote $out" >&2
    exit 0
fi

if [ "${1:-}" = --soak ]; then
    [ $# -eq 4 ] || usage
    csv=$2 title=$3 out=$4
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
    # One file per server (columns as in the CSV, space-separated), and one of its samples
    # at rest.
    awk -F, -v d="$dir" 'NR > 1 {
            name = $2; rest = $NF; gsub(/,/, " "); print > (d "/" name ".dat")
            if (rest == 1) print > (d "/" name ".rest")
        }' "$csv"
    servers=$(awk -F, 'NR > 1 && !seen[$2]++ {printf "%s ", $2}' "$csv")
    gnuplot <<GP
set terminal svg size 1000,900 dynamic font "sans,12" background rgb "white"
set output "$out"
set multiplot layout 3,2 title "$title"
servers = "$servers"
colors = "#1f77b4 #d62728 #2ca02c #ff7f0e #9467bd #8c564b"
file(i) = sprintf("$dir/%s.dat", word(servers, i))
rest(i) = sprintf("$dir/%s.rest", word(servers, i))
set termoption noenhanced
set grid
set key top left horizontal
set offsets 0, 0, graph 0.2, 0
set xlabel "time (s)"
set yrange [0:*]
# CSV: time_s server rss_kib fds threads buffers_lent connections_open heap_bytes at_rest
set title "RSS (MiB; dots: at rest)"
plot for [i=1:words(servers)] file(i) using 1:(\$3/1024) with lines lw 2 lc rgb word(colors, i) title word(servers, i), \
     for [i=1:words(servers)] rest(i) using 1:(\$3/1024) with points pt 7 ps 0.8 lc rgb word(colors, i) notitle
set title "Heap held (MiB, reactor_buffer_memory_bytes)"
plot for [i=1:words(servers)] file(i) using 1:(\$8/1048576) with lines lw 2 lc rgb word(colors, i) title word(servers, i)
set title "Open descriptors"
plot for [i=1:words(servers)] file(i) using 1:4 with lines lw 2 lc rgb word(colors, i) title word(servers, i)
set title "Threads"
plot for [i=1:words(servers)] file(i) using 1:5 with lines lw 2 lc rgb word(colors, i) title word(servers, i)
set title "Connections open"
plot for [i=1:words(servers)] file(i) using 1:7 with lines lw 2 lc rgb word(colors, i) title word(servers, i)
set title "Buffers lent (4 KB)"
plot for [i=1:words(servers)] file(i) using 1:6 with lines lw 2 lc rgb word(colors, i) title word(servers, i)
unset multiplot
GP
    echo "chart.sh: wrote $out" >&2
    exit 0
fi

[ $# -eq 6 ] || usage
reactor_hdr=$1 nginx_hdr=$2 reactor_bytes=$3 nginx_bytes=$4 title=$5 out=$6

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
