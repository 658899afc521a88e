#!/usr/bin/env bash
# Benchmark of gofe's metrics adapter: 100 concurrent HPA-like pollers (closed loop, each
# re-asks as soon as it has an answer) against `gofe adapter` in front of a real Prometheus
# holding 100 services' request counters. Reports p50/p90/p99 response latency and the
# Prometheus queries per second it caused, with the cache on (freshness 15 s, the HPA's
# default sync period) and off (freshness 0 s: only concurrent identical requests share a
# query).
#
# "all hits" uses a freshness longer than the run, so after the warm-up every answer comes from
# the cache: it measures the hit path alone. With 15 s, each selector's entry expires once per
# 15 s and the request that finds it expired waits for Prometheus: with 100 selectors those
# misses are ~0.7 % of the paced requests, i.e. they are what p99 shows.
# Prometheus queries per second come from Prometheus' own /metrics counters.
#
# Usage: metrics-adapter/bench/run.sh [SECONDS_PER_RUN]   (needs prometheus, promtool, python3)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN=${1:-15}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/gofe-target-adapter}
PROM_PORT=${PROM_PORT:-19090}
ADAPTER_PORT=${ADAPTER_PORT:-16443}

for tool in prometheus promtool python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y prometheus python3)" >&2; exit 1; }
done

cargo build --release -q --bin gofe
cargo build --release -q -p gofe-metrics-adapter --example hpa_pollers
GOFE=$CARGO_TARGET_DIR/release/gofe
POLLERS=$CARGO_TARGET_DIR/release/examples/hpa_pollers

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# 100 services, 2 endpoints each, samples every 5 s from 30 min ago to 30 min ahead (so every
# rate() window is covered whenever the adapter asks).
python3 - "$WORK/fixture.om" <<'PY'
import sys, time
t0 = int(time.time()) // 5 * 5
with open(sys.argv[1], "w") as f:
    for s in range(100):
        for e in range(2):
            name = f'gofe_upstream_requests_total{{cluster="svc-{s}",endpoint="10.1.{s}.{e}:80",code_class="2xx"}}'
            for i in range(721):
                ts = t0 - 1800 + 5 * i
                f.write(f"{name} {100000 + (s + 1) * 5 * i} {ts}\n")
    f.write("# EOF\n")
PY
promtool tsdb create-blocks-from openmetrics "$WORK/fixture.om" "$WORK/data" >/dev/null
printf 'global:\n  scrape_interval: 15s\n' > "$WORK/prometheus.yml"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/data" \
  --storage.tsdb.retention.time=1y --web.listen-address=127.0.0.1:$PROM_PORT >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:$PROM_PORT/-/ready >/dev/null && break; sleep 0.2; done

run() { # label freshness distinct interval_ms
  "$GOFE" --log-format text adapter --insecure-local --listen 127.0.0.1:$ADAPTER_PORT \
    --prometheus-url http://127.0.0.1:$PROM_PORT --cache-freshness "$2" >"$WORK/adapter.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$ADAPTER_PORT/readyz >/dev/null && break; sleep 0.1; done
  printf '%-44s %s\n' "$1" "$("$POLLERS" http://127.0.0.1:$ADAPTER_PORT 100 "$SECONDS_PER_RUN" "$3" "$4" http://127.0.0.1:$PROM_PORT)"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "100 pollers, ${SECONDS_PER_RUN}s per run"
echo "-- paced: each poller every 100 ms (1000 req/s in all; 100 real HPAs at 15 s send ~7 req/s)"
run "all hits (5m > run), 100 selectors"      5m  100 100
run "cached (15s), 10 distinct selectors"      15s 10  100
run "cached (15s), 100 distinct selectors"     15s 100 100
run "uncached (0s), 10 distinct selectors"     0s  10  100
run "uncached (0s), 100 distinct selectors"    0s  100 100
echo "-- closed loop: each poller asks again as soon as it has an answer (saturation)"
run "all hits (5m > run), 100 selectors"      5m  100 0
run "cached (15s), 10 distinct selectors"      15s 10  0
run "cached (15s), 100 distinct selectors"     15s 100 0
run "uncached (0s), 10 distinct selectors"     0s  10  0
run "uncached (0s), 100 distinct selectors"    0s  100 0
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
