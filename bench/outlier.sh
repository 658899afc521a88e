#!/usr/bin/env bash
# One failing backend in four, outlier detection off vs on, driven by wrk.
#
#   GOFE_BIN=target/release/gofe bench/outlier.sh
#
# Starts four `gofe backend` processes (the fourth answers every request with 500), then for each
# setting a gofe proxy (round robin over the four; "on" adds `consecutive_5xx: 5,
# base_ejection_time: 30s, max_ejection_percent: 50`), runs `wrk -t1 -c$CONNS -d$DURATION`
# against it, and reads wrk's own count of non-2xx/3xx responses and, from the proxy's
# /metrics, how many requests reached the failing backend. The same measurement as
# `cargo bench -p gofe-proxy --bench outlier`, with an independent load generator in its own
# process. Everything on 127.0.0.1; every process started here is stopped on exit.
#
# Knobs: GOFE_BIN (required), DURATION=10s, CONNS=32, PORT_BASE=18180 (backends +0..+3,
# proxy +4, admin +5).
set -euo pipefail

GOFE_BIN="${GOFE_BIN:?set GOFE_BIN to a gofe binary (cargo build --release --bin gofe)}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-32}"
PORT_BASE="${PORT_BASE:-18180}"
PROXY_PORT=$((PORT_BASE + 4))
ADMIN_PORT=$((PORT_BASE + 5))

command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
command -v curl >/dev/null || { echo "needs curl" >&2; exit 1; }

WORKDIR="$(mktemp -d /tmp/gofe-outlier.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORKDIR"
}
trap cleanup EXIT

wait_http() {
    for _ in $(seq 1 100); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" && return 0
        sleep 0.1
    done
    echo "nothing answered on 127.0.0.1:$1" >&2
    exit 1
}

for i in 0 1 2 3; do
    extra=()
    [[ $i != 3 ]] || extra=(--fail-ratio 1 --fail-status 500)
    "$GOFE_BIN" backend --listen "127.0.0.1:$((PORT_BASE + i))" --name "b$i" "${extra[@]}" \
        >"$WORKDIR/b$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 0 1 2 3; do wait_http $((PORT_BASE + i)); done

bad="127.0.0.1:$((PORT_BASE + 3))"
echo "| outlier detection | requests | failed (wrk non-2xx/3xx) | client-seen error rate | requests sent to the bad backend |"
echo "| --- | ---: | ---: | ---: | ---: |"
for mode in off on; do
    od=""
    [[ $mode == off ]] || od='    outlier_detection: { consecutive_5xx: 5, base_ejection_time: "30s", max_ejection_percent: 50 }'
    cat >"$WORKDIR/gofe-$mode.yaml" <<EOF
listeners:
  - address: "127.0.0.1:$PROXY_PORT"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: web } }]
clusters:
  - name: web
$od
    endpoints:
      - { address: "127.0.0.1:$PORT_BASE" }
      - { address: "127.0.0.1:$((PORT_BASE + 1))" }
      - { address: "127.0.0.1:$((PORT_BASE + 2))" }
      - { address: "$bad" }
admin: { address: "127.0.0.1:$ADMIN_PORT" }
EOF
    RUST_LOG=warn "$GOFE_BIN" proxy --config "$WORKDIR/gofe-$mode.yaml" --drain-timeout 1s \
        >"$WORKDIR/proxy-$mode.log" 2>&1 &
    proxy=$!
    PIDS+=("$proxy")
    wait_http "$ADMIN_PORT"
    # Readiness probe through the proxy is left out on purpose: it would be a request too.
    wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$PROXY_PORT/" >"$WORKDIR/wrk-$mode.txt" 2>&1
    total="$(awk '/requests in/ {print $1}' "$WORKDIR/wrk-$mode.txt")"
    failed="$(awk -F': *' '/Non-2xx or 3xx responses/ {print $2}' "$WORKDIR/wrk-$mode.txt")"
    failed="${failed:-0}"
    to_bad="$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" |
        awk -v ep="$bad" 'index($0, "gofe_upstream_requests_total{") == 1 && index($0, "endpoint=\"" ep "\"") { s += $NF } END { print s + 0 }')"
    rate="$(awk -v f="$failed" -v t="$total" 'BEGIN { printf "%.4f%%", (t > 0 ? 100 * f / t : 0) }')"
    echo "| $mode | $total | $failed | $rate | $to_bad |"
    kill -TERM "$proxy"
    wait "$proxy" 2>/dev/null || true
done
