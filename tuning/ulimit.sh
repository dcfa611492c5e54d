#!/usr/bin/env bash
# Open-files limits for reactor: what they are, what to set, and where.
#
# Usage: tuning/ulimit.sh [--pid PID] [--nofile N] [--install] [--root DIR]
#   (no option)   show the soft and hard open-files limits of this shell and of a
#                 running reactor (found with pgrep), and the snippets that set N
#   --pid PID     the reactor process to look at (from /proc/PID/limits)
#   --nofile N    the limit to recommend (default 1048576: room for 1M connections)
#   --install     write the snippets (root): $ROOT/etc/security/limits.d/90-reactor.conf
#                 and $ROOT/etc/systemd/system/reactor.service.d/90-nofile.conf
#   --root DIR    install under DIR instead of / (for a test or an image build)
#   -h, --help    this text
# Exit codes: 0 done; 1 a limit could not be read or written; 2 bad usage.
set -uo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
die_usage() { echo "ulimit.sh: $*" >&2; usage >&2; exit 2; }
fail() { echo "ulimit.sh: $*" >&2; exit 1; }

pid=""
nofile=1048576
install=0
root=""
while [ $# -gt 0 ]; do
    case "$1" in
        --pid) [ $# -ge 2 ] || die_usage "--pid needs a value"; pid=$2; shift ;;
        --nofile) [ $# -ge 2 ] || die_usage "--nofile needs a value"; nofile=$2; shift ;;
        --install) install=1 ;;
        --root) [ $# -ge 2 ] || die_usage "--root needs a directory"; root=$2; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die_usage "unknown option: $1" ;;
    esac
    shift
done
[[ $nofile =~ ^[0-9]+$ ]] || die_usage "--nofile takes a number"
[ -z "$pid" ] || [[ $pid =~ ^[0-9]+$ ]] || die_usage "--pid takes a number"

soft=$(ulimit -Sn)
hard=$(ulimit -Hn)
nr_open=$(cat /proc/sys/fs/nr_open 2>/dev/null || echo unknown)
echo "this shell:   soft $soft, hard $hard open files (fs.nr_open, the ceiling for any process: $nr_open)"

if [ -z "$pid" ]; then
    pid=$(pgrep -x reactor 2>/dev/null | head -n 1 || true)
fi
if [ -n "$pid" ]; then
    [ -r "/proc/$pid/limits" ] || fail "no process $pid (or its limits cannot be read)"
    read -r psoft phard < <(awk '/^Max open files/ {print $4, $5}' "/proc/$pid/limits")
    open=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    echo "process $pid: soft $psoft, hard $phard open files, $open open now"
    echo "  (reactor raises its soft limit to the hard one at start and logs it)"
else
    echo "no running reactor found (give --pid PID to look at one)"
fi

if [ "$hard" != unlimited ] && [ "$hard" -lt "$nofile" ]; then
    cat <<TXT

The hard limit ($hard) is what stops you: a process may raise its soft limit only up
to the hard one, so reactor can hold at most about $((hard - 32)) connections here.
Raising the hard limit takes root: set it for the service (systemd LimitNOFILE=, below)
or for login sessions (limits.conf, below; log in again), or start reactor from a root
shell after 'ulimit -Hn $nofile'. It cannot exceed fs.nr_open ($nr_open):
'tuning/sysctl.sh apply' raises that too.
TXT
fi
if [ "$nr_open" != unknown ] && [ "$nofile" -gt "$nr_open" ]; then
    echo
    echo "Note: $nofile is above fs.nr_open ($nr_open); raise fs.nr_open first (tuning/sysctl.sh apply --profile c1m)."
fi

limits_conf="# reactor: open files for 1 connection each (tuning/ulimit.sh)
*    soft nofile $nofile
*    hard nofile $nofile
root soft nofile $nofile
root hard nofile $nofile"
systemd_conf="# reactor: open files for 1 connection each (tuning/ulimit.sh)
[Service]
LimitNOFILE=$nofile"

cat <<TXT

For login sessions, /etc/security/limits.d/90-reactor.conf:
$limits_conf

For a systemd service, a drop-in such as /etc/systemd/system/reactor.service.d/90-nofile.conf
(then 'systemctl daemon-reload' and restart the service):
$systemd_conf
TXT

if [ "$install" = 1 ]; then
    if [ -z "$root" ] && [ "$(id -u)" != 0 ]; then
        fail "--install needs root (try sudo); nothing was written"
    fi
    d1="$root/etc/security/limits.d"
    d2="$root/etc/systemd/system/reactor.service.d"
    mkdir -p "$d1" "$d2" || fail "cannot create $d1 or $d2"
    printf '%s\n' "$limits_conf" >"$d1/90-reactor.conf" || fail "cannot write $d1/90-reactor.conf"
    printf '%s\n' "$systemd_conf" >"$d2/90-nofile.conf" || fail "cannot write $d2/90-nofile.conf"
    echo
    echo "wrote $d1/90-reactor.conf and $d2/90-nofile.conf"
fi
