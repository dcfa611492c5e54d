#!/usr/bin/env bash
# Kernel settings for holding 10K to 1M TCP connections: check, apply, revert.
#
# Usage: tuning/sysctl.sh check|apply|revert [options]
#   check           print each setting: current, recommended, whether it meets the
#                   profile, and why; exit 0 if all meet it, 1 otherwise (no root needed)
#   apply           save the current values (first apply only), then write the
#                   recommended ones (root)
#   revert          restore exactly the values saved by the first apply (root)
# Options:
#   --profile P     c10k (default), c100k or c1m
#   --scope S       all (default) or net: only net.* settings, which belong to the
#                   network namespace; fs.* settings belong to the whole host
#   --dry-run       apply/revert: print what would be written, write nothing
#   --persist       apply: also write $SYSCTL_D/90-reactor.conf so the values survive
#                   a reboot (revert removes it)
#   --state FILE    where apply saves the original values
#                   (default /var/lib/reactor-tuning/sysctl.state)
#   --sysctl-d DIR  directory for --persist (default /etc/sysctl.d)
#   -h, --help      this text
# Exit codes: 0 done / all settings meet the profile; 1 a setting does not meet it, or
# the command could not be carried out; 2 bad usage.
set -uo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
die_usage() { echo "sysctl.sh: $*" >&2; usage >&2; exit 2; }
fail() { echo "sysctl.sh: $*" >&2; exit 1; }

cmd=""
profile=c10k
scope=all
dry_run=0
persist=0
state=/var/lib/reactor-tuning/sysctl.state
sysctl_d=/etc/sysctl.d
while [ $# -gt 0 ]; do
    case "$1" in
        check|apply|revert)
            [ -z "$cmd" ] || die_usage "one subcommand at a time"
            cmd=$1 ;;
        --profile) [ $# -ge 2 ] || die_usage "--profile needs a value"; profile=$2; shift ;;
        --profile=*) profile=${1#*=} ;;
        --scope) [ $# -ge 2 ] || die_usage "--scope needs a value"; scope=$2; shift ;;
        --scope=*) scope=${1#*=} ;;
        --state) [ $# -ge 2 ] || die_usage "--state needs a file"; state=$2; shift ;;
        --state=*) state=${1#*=} ;;
        --sysctl-d) [ $# -ge 2 ] || die_usage "--sysctl-d needs a directory"; sysctl_d=$2; shift ;;
        --sysctl-d=*) sysctl_d=${1#*=} ;;
        --dry-run) dry_run=1 ;;
        --persist) persist=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die_usage "unknown subcommand or option: $1" ;;
    esac
    shift
done
[ -n "$cmd" ] || die_usage "no subcommand"
case "$profile" in c10k|c100k|c1m) ;; *) die_usage "unknown profile: $profile" ;; esac
case "$scope" in all|net) ;; *) die_usage "unknown scope: $scope" ;; esac

# The profile: key, rule, value per profile (c10k|c100k|c1m), and why.
# Rules: min (at least), max (at most), range (a low..high range that must cover the
# recommended one), eq (exactly; "-" in a profile's column means: leave it alone).
SETTINGS=(
"net.core.somaxconn|min|4096|16384|65535|listen backlog cap: a burst of connects past it is dropped (reactor asks for --backlog 4096)"
"net.ipv4.tcp_max_syn_backlog|min|8192|65536|262144|half-open connections queued during the handshake, for connect bursts"
"net.ipv4.ip_local_port_range|range|10000 65535|1024 65535|1024 65535|ephemeral ports per source address: bounds outgoing connections (load generators, proxies)"
"net.ipv4.tcp_tw_reuse|eq|1|1|1|reuse TIME_WAIT ports for new outgoing connections; affects only the connecting side"
"net.ipv4.tcp_migrate_req|eq|1|1|1|when a listener closes, move the connections in its accept queue to another listener of its SO_REUSEPORT group: restarting a server on the same address loses none"
"net.ipv4.tcp_fin_timeout|max|30|15|10|seconds in FIN_WAIT_2: orphaned closes free their memory sooner"
"net.core.netdev_max_backlog|min|4096|16384|65536|packets queued per CPU before the stack processes them"
"net.ipv4.tcp_keepalive_time|max|600|300|300|seconds of silence before keep-alive probes: dead peers are found sooner"
"net.ipv4.tcp_keepalive_intvl|max|30|15|15|seconds between keep-alive probes"
"net.ipv4.tcp_keepalive_probes|max|5|5|3|unanswered probes before the connection is dropped"
"net.ipv4.tcp_rmem|eq|-|4096 65536 6291456|4096 16384 4194304|min/default/max receive buffer: a smaller default keeps 100K+ mostly idle sockets in less kernel memory"
"net.ipv4.tcp_wmem|eq|-|4096 16384 4194304|4096 16384 4194304|min/default/max send buffer, as above"
"fs.file-max|min|200000|2000000|4000000|open files for the whole host"
"fs.nr_open|min|1048576|1048576|2097152|ceiling of any process's open-files limit (ulimit -n cannot exceed it)"
)

col() { # profile -> field index in a SETTINGS row
    case "$profile" in c10k) echo 3 ;; c100k) echo 4 ;; c1m) echo 5 ;; esac
}

path_of() { echo "/proc/sys/${1//.//}"; }
norm() { tr -s ' \t' '  ' | sed 's/^ //; s/ $//'; }
read_value() { # key -> value, or non-zero if this kernel/namespace lacks it
    local p
    p=$(path_of "$1")
    [ -r "$p" ] || return 1
    norm <"$p"
}
in_scope() { [ "$scope" = all ] || [[ $1 == net.* ]]; }

meets() { # rule current recommended
    local rule=$1 cur=$2 rec=$3
    case "$rule" in
        min) [ "$cur" -ge "$rec" ] ;;
        max) [ "$cur" -le "$rec" ] ;;
        eq) [ "$cur" = "$rec" ] ;;
        range)
            local cl ch rl rh
            read -r cl ch <<<"$cur"
            read -r rl rh <<<"$rec"
            [ "$cl" -le "$rl" ] && [ "$ch" -ge "$rh" ] ;;
    esac
}

# Rows in scope, with this profile's value: "key|rule|value|why".
rows() {
    local c row key rule val why
    c=$(col)
    for row in "${SETTINGS[@]}"; do
        IFS='|' read -r -a f <<<"$row"
        key=${f[0]} rule=${f[1]} val=${f[$((c - 1))]} why=${f[5]}
        in_scope "$key" || continue
        echo "$key|$rule|$val|$why"
    done
}

write_value() { # key value
    local p
    p=$(path_of "$1")
    if [ "$dry_run" = 1 ]; then
        echo "would write $1 = $2"
        return 0
    fi
    if printf '%s\n' "$2" >"$p" 2>/dev/null; then
        echo "wrote $1 = $2"
    else
        echo "could not write $1 = $2 (read-only here?), skipped" >&2
        return 1
    fi
}

do_check() {
    local bad=0 key rule val why cur status
    printf '%-32s %-22s %-22s %-8s %s\n' SETTING CURRENT RECOMMENDED STATUS WHY
    while IFS='|' read -r key rule val why; do
        if [ "$val" = - ]; then
            continue
        fi
        if ! cur=$(read_value "$key"); then
            printf '%-32s %-22s %-22s %-8s %s\n' "$key" "-" "$val" missing "not in this kernel or namespace: skipped"
            continue
        fi
        if meets "$rule" "$cur" "$val"; then
            status=ok
        else
            status=CHANGE
            bad=1
        fi
        printf '%-32s %-22s %-22s %-8s %s\n' "$key" "$cur" "$val" "$status" "$why"
    done < <(rows)
    if [ "$bad" = 1 ]; then
        echo "Some settings do not meet the $profile profile: 'sudo tuning/sysctl.sh apply --profile $profile'."
        return 1
    fi
    echo "All settings meet the $profile profile."
}

need_root() {
    [ "$dry_run" = 1 ] && return 0
    [ "$(id -u)" = 0 ] || fail "$cmd needs root (try sudo); nothing was changed"
}

do_apply() {
    need_root
    local key rule val why cur tmp
    # Save the originals once: applying twice must not overwrite them with our values.
    if [ ! -e "$state" ] && [ "$dry_run" = 0 ]; then
        mkdir -p "$(dirname "$state")" || fail "cannot create $(dirname "$state")"
        tmp="$state.tmp.$$"
        {
            echo "# reactor tuning/sysctl.sh state: original values, restored by revert"
            while IFS='|' read -r key rule val why; do
                cur=$(read_value "$key") || continue
                echo "$key=$cur"
            done < <(rows)
        } >"$tmp" || fail "cannot write the state file $state"
        mv "$tmp" "$state" || fail "cannot write the state file $state"
        echo "saved the current values in $state"
    elif [ -e "$state" ]; then
        echo "keeping the original values already saved in $state"
    fi
    local conf=()
    while IFS='|' read -r key rule val why; do
        [ "$val" = - ] && continue
        if ! cur=$(read_value "$key"); then
            echo "$key: not in this kernel or namespace, skipped"
            continue
        fi
        conf+=("$key = $val")
        if [ "$cur" = "$val" ]; then
            echo "$key = $val already"
            continue
        fi
        write_value "$key" "$val" || true
    done < <(rows)
    if [ "$persist" = 1 ]; then
        local file="$sysctl_d/90-reactor.conf"
        if [ "$dry_run" = 1 ]; then
            echo "would write $file"
        else
            mkdir -p "$sysctl_d" || fail "cannot create $sysctl_d"
            {
                echo "# Written by reactor tuning/sysctl.sh apply --profile $profile; removed by revert."
                printf '%s\n' "${conf[@]}"
            } >"$file" || fail "cannot write $file"
            echo "wrote $file"
        fi
    fi
}

do_revert() {
    need_root
    [ -e "$state" ] || fail "no state file at $state: nothing to revert (apply saves one)"
    local known line key val
    known=" $(for row in "${SETTINGS[@]}"; do printf '%s ' "${row%%|*}"; done)"
    # Validate the whole file before writing anything.
    local keys=() vals=()
    while IFS= read -r line || [ -n "$line" ]; do
        case "$line" in ''|'#'*) continue ;; esac
        if [[ ! $line =~ ^([a-z0-9_.-]+)=([0-9]+( [0-9]+)*)$ ]]; then
            fail "state file $state is corrupt (line: '$line'); refusing to revert. Fix or remove it and set the values by hand."
        fi
        key=${BASH_REMATCH[1]} val=${BASH_REMATCH[2]}
        [[ $known == *" $key "* ]] || fail "state file $state names an unknown setting '$key'; refusing to revert"
        keys+=("$key") vals+=("$val")
    done <"$state"
    [ ${#keys[@]} -gt 0 ] || fail "state file $state holds no values; refusing to revert"
    local i kept=()
    for i in "${!keys[@]}"; do
        if ! in_scope "${keys[$i]}"; then
            echo "${keys[$i]}: outside --scope $scope, left as is (still saved)"
            kept+=("${keys[$i]}=${vals[$i]}")
            continue
        fi
        if [ "$(read_value "${keys[$i]}" 2>/dev/null)" = "${vals[$i]}" ]; then
            echo "${keys[$i]} = ${vals[$i]} already"
            continue
        fi
        write_value "${keys[$i]}" "${vals[$i]}" || true
    done
    if [ "$dry_run" = 0 ] && [ ${#kept[@]} -gt 0 ]; then
        # Keep the originals not restored this time, for a later revert.
        { echo "# reactor tuning/sysctl.sh state: original values, restored by revert"
          printf '%s\n' "${kept[@]}"; } >"$state.tmp.$$" && mv "$state.tmp.$$" "$state"
        echo "kept ${#kept[@]} saved values outside --scope $scope in $state"
    elif [ "$dry_run" = 0 ]; then
        rm -f "$state"
        if [ -f "$sysctl_d/90-reactor.conf" ]; then
            rm -f "$sysctl_d/90-reactor.conf" && echo "removed $sysctl_d/90-reactor.conf"
        fi
        echo "reverted; removed $state"
    fi
}

case "$cmd" in
    check) do_check ;;
    apply) do_apply ;;
    revert) do_revert ;;
esac
