#!/usr/bin/env bash
# Fuzzes each target for SECONDS, one after the other:
#
#   fuzz/run.sh SECONDS [TARGET...]      (targets: http json chunked proxy; all by default)
#
# Installs cargo-fuzz if it is missing (a nightly toolchain must be there already),
# builds the targets, seeds each corpus from fuzz/seeds/TARGET, then runs
# `cargo +nightly fuzz run TARGET -- -max_total_time=SECONDS ...`, and prints for each
# target the executions and the CPU seconds it took. Exits non-zero if any target
# crashed (or hung), after printing the panic and the artifact's path; replay one with
# `cargo +nightly fuzz run TARGET ARTIFACT`. FUZZ_JOBS runs that many targets at once
# (default 1). FUZZ_ARGS adds libFuzzer options;
# FUZZ_FEATURES=tolerate-known fuzzes on past the bugs listed in fuzz/regressions.md.
set -euo pipefail

usage="usage: fuzz/run.sh SECONDS [TARGET...]"
secs=${1:?$usage}
shift
if ! [[ $secs =~ ^[1-9][0-9]*$ ]]; then
    echo "$usage (SECONDS is a positive whole number, not '$secs')" >&2
    exit 2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(http json chunked proxy)
fi
extra=()
read -r -a extra <<<"${FUZZ_ARGS:-}"
features=()
if [ -n "${FUZZ_FEATURES:-}" ]; then
    features=(--features "$FUZZ_FEATURES")
fi

cd "$(dirname "$0")"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo fuzz needs a nightly toolchain (rustup toolchain list)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

echo "== building the fuzz targets"
cargo +nightly fuzz build "${features[@]}"

mkdir -p target/logs
TIMEFORMAT='%U %S'
failed=()
summary=()
for t in "${targets[@]}"; do
    if [ ! -d "seeds/$t" ]; then
        echo "fuzz/run.sh: no target '$t' (no fuzz/seeds/$t)" >&2
        exit 2
    fi
done

# Fuzzes one target; leaves its summary line in target/logs/T.line and its exit code
# in target/logs/T.rc.
fuzz_one() {
    local t=$1 log rc=0 user sys cpu runs corpus line
    mkdir -p "corpus/$t" "artifacts/$t"
    for seed in "seeds/$t"/*; do
        [ -e "corpus/$t/${seed##*/}" ] || cp "$seed" "corpus/$t/"
    done
    log="target/logs/$t.log"
    echo "== fuzzing $t for ${secs}s (log: fuzz/$log)"
    # `time` reports the CPU of the whole run (cargo's check that the build is fresh
    # included) on the group's stderr.
    { time cargo +nightly fuzz run "${features[@]}" "$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 \
        -print_final_stats=1 "${extra[@]}" >"$log" 2>&1 || rc=$?; } 2>"target/logs/$t.time"
    read -r user sys <"target/logs/$t.time"
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.1f", u + s }')
    # libFuzzer's final stats; after a crash, its last status line.
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    if [ -z "$runs" ]; then
        runs=$(sed -n 's/^#\([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
    fi
    corpus=$(find "corpus/$t" -type f | wc -l)
    line="$t: ${runs:-0} executions, ${cpu} CPU seconds, corpus ${corpus} inputs"
    if [ "$rc" -ne 0 ]; then
        line="$line, FAILED (exit $rc)"
        echo "-- $t failed (from fuzz/$log):"
        # The panic (or sanitizer report) and where libFuzzer wrote the input.
        awk 'p == 0 && /panicked at|ERROR: AddressSanitizer|ALARM: working/ { p = 1; print; next }
             p == 1 && /^stack backtrace:|^==[0-9]+==/ { p = 2 }
             p == 1' "$log" | head -n 40
        grep -h -m 1 'Test unit written to' "$log" || true
    fi
    echo "$line"
    echo "$line" >"target/logs/$t.line"
    echo "$rc" >"target/logs/$t.rc"
}

# FUZZ_JOBS targets at a time (CI: one per core).
jobs=${FUZZ_JOBS:-1}
running=0
for t in "${targets[@]}"; do
    fuzz_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true
for t in "${targets[@]}"; do
    summary+=("$(cat "target/logs/$t.line")")
    [ "$(cat "target/logs/$t.rc")" = 0 ] || failed+=("$t")
done

echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]}; inputs under fuzz/artifacts/" >&2
    exit 1
fi
