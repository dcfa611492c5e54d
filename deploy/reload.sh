#!/usr/bin/env bash
# Restart reactor without losing a connection: start the idle instance of the
# reactor@ pair, wait until it answers /health, then stop (drain) the running one.
# With net.ipv4.tcp_migrate_req=1, connections queued on the old listener move to the
# new one when it closes.
set -euo pipefail

declare -A metrics=([blue]=127.0.0.1:9101 [green]=127.0.0.1:9102)
if systemctl is-active --quiet reactor@blue; then
    old=blue new=green
else
    old=green new=blue
fi
systemctl start "reactor@$new"
for _ in $(seq 1 100); do
    if curl -fsS "http://${metrics[$new]}/health" >/dev/null 2>&1; then
        systemctl stop "reactor@$old"
        echo "reactor: $old -> $new"
        exit 0
    fi
    sleep 0.1
done
echo "reactor@$new did not become healthy; $old keeps serving" >&2
systemctl stop "reactor@$new"
exit 1
