#!/usr/bin/env bash
# Benchmark of gofe's metrics adapter, against a real Prometheus backfilled by promtool.
#
# external: 100 concurrent HPA-like pollers (closed loop, each re-asks as soon as it has an
# answer, or paced) against `gofe adapter` in front of a real Prometheus holding 100 services'
# request counters. Reports p50/p90/p99 response latency and the Prometheus queries per second
# it caused, with the cache on (freshness 15 s, the HPA's default sync period) and off
# (freshness 0 s: only concurrent identical requests share a query).
#
# "all hits" uses a freshness longer than the run, so after the warm-up every answer comes from
# the cache: it measures the hit path alone. With 15 s, each selector's entry expires once per
# 15 s and the request that finds it expired waits for Prometheus: with 100 selectors those
# misses are ~0.7 % of the paced requests, i.e. they are what p99 shows.
# Prometheus queries per second come from Prometheus' own /metrics counters.
#
# custom: custom.metrics.k8s.io as an HPA asks it: 100 pollers asking
# `pods/*/http_requests_per_second?labelSelector=app=svc-N` (N = poller mod selectors) and 10
# asking one Object metric (an Ingress), each every 110 ms (1,000 requests/s in all), with a
# prometheus-adapter rules file. The Pods a selector selects come from an API-server stand-in
# (examples/api_stand_in.rs: discovery documents and Pod lists; no API server runs here),
# reached through a kubeconfig. For every cached run the script checks, from Prometheus' own
# counters, that queries <= distinct keys (selectors + 1 Object) x intervals, where intervals =
# floor(seconds / freshness) + 1, that series listings <= 2 rules x relists, and that Pod lists
# <= selectors x intervals; a violation fails the script.
#
# Usage: metrics-adapter/bench/run.sh [SECONDS_PER_RUN] [all|external|custom]
#        (needs prometheus, promtool, python3, curl)
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_PER_RUN=${1:-15}
WHAT=${2:-all}
API_PORT=${API_PORT:-16080}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/gofe-target-adapter}
PROM_PORT=${PROM_PORT:-19090}
ADAPTER_PORT=${ADAPTER_PORT:-16443}

for tool in prometheus promtool python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y prometheus python3)" >&2; exit 1; }
done

cargo build --release -q --bin gofe
cargo build --release -q -p gofe-metrics-adapter --example hpa_pollers --example api_stand_in
GOFE=$CARGO_TARGET_DIR/release/gofe
POLLERS=$CARGO_TARGET_DIR/release/examples/hpa_pollers
STAND_IN=$CARGO_TARGET_DIR/release/examples/api_stand_in

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
    # custom metrics: the same services' pods (namespace bench), and one Ingress
    for s in range(100):
        for e in range(2):
            name = f'http_requests_total{{namespace="bench",pod="svc-{s}-{e}"}}'
            for i in range(721):
                f.write(f"{name} {100000 + (s + 1) * 5 * i} {t0 - 1800 + 5 * i}\n")
    for i in range(721):
        f.write(f'ingress_requests_total{{namespace="bench",ingress="front"}} {100000 + 50 * i} {t0 - 1800 + 5 * i}\n')
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
if [ "$WHAT" = all ] || [ "$WHAT" = external ]; then
echo "== external.metrics.k8s.io: 100 pollers, ${SECONDS_PER_RUN}s per run"
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
fi

if [ "$WHAT" = all ] || [ "$WHAT" = custom ]; then
cat > "$WORK/custom-rules.yaml" <<'YAML'
rules:
- seriesQuery: 'http_requests_total{namespace!="",pod!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
      pod: {resource: pod}
  name: {matches: "^(.*)_total$", as: "${1}_per_second"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)
- seriesQuery: 'ingress_requests_total{namespace!="",ingress!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
      ingress: {group: networking.k8s.io, resource: ingress}
  name: {matches: "^(.*)_total$", as: "${1}_per_second"}
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)
YAML
"$STAND_IN" 127.0.0.1:$API_PORT 100 2 >"$WORK/stand-in.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:$API_PORT/stats >/dev/null && break; sleep 0.1; done
cat > "$WORK/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters: [{name: stand-in, cluster: {server: "http://127.0.0.1:$API_PORT"}}]
users: [{name: adapter, user: {token: bench}}]
contexts: [{name: bench, context: {cluster: stand-in, user: adapter, namespace: bench}}]
current-context: bench
KC
FAILED=0
custom_run() { # label freshness selectors interval_ms
  KUBECONFIG="$WORK/kubeconfig" "$GOFE" --log-format text adapter --insecure-local \
    --listen 127.0.0.1:$ADAPTER_PORT --prometheus-url http://127.0.0.1:$PROM_PORT \
    --cache-freshness "$2" --config "$WORK/custom-rules.yaml" >"$WORK/adapter.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$ADAPTER_PORT/readyz >/dev/null && break; sleep 0.1; done
  local out
  out=$(HPA_PATH='/apis/custom.metrics.k8s.io/v1beta2/namespaces/bench/pods/*/http_requests_per_second?labelSelector=app%3Dsvc-{i}' \
    OBJECT_PATH='/apis/custom.metrics.k8s.io/v1beta2/namespaces/bench/ingresses.networking.k8s.io/front/ingress_requests_per_second' \
    OBJECT_POLLERS=10 API_STATS_URL=http://127.0.0.1:$API_PORT/stats \
    "$POLLERS" http://127.0.0.1:$ADAPTER_PORT 100 "$SECONDS_PER_RUN" "$3" "$4" http://127.0.0.1:$PROM_PORT)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local verdict
  verdict=$(python3 - "$out" "$2" "$3" <<'PY'
import sys
fields = dict(kv.split("=", 1) for kv in sys.argv[1].split())
freshness, selectors = sys.argv[2], int(sys.argv[3])
units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
num = freshness.rstrip("smh")
f = float(num) * units[freshness[len(num):]]
if fields.get("errors", "1") != "0":
    print("FAIL: errors"); sys.exit()
if f == 0:
    print("(uncached: no bound)"); sys.exit()
seconds = float(fields["seconds"])
intervals = int(seconds // f) + 1
keys = selectors + 1
q, series, lists = float(fields["prometheus_queries"]), float(fields["prometheus_series"]), float(fields["api_lists"])
relists = 2 * (int(seconds // 60) + 1)
ok = q <= keys * intervals and series <= relists and lists <= selectors * intervals
print(f"{'ok' if ok else 'FAIL'}: queries {q:.0f} <= {keys} keys x {intervals} intervals = {keys * intervals}; "
      f"series {series:.0f} <= {relists}; pod lists {lists:.0f} <= {selectors * intervals}")
PY
)
  printf '%-44s %s\n%-44s %s\n' "$1" "$out" "" "bound $verdict"
  case "$verdict" in FAIL*) FAILED=1 ;; esac
}
echo "== custom.metrics.k8s.io: 100 Pods-metric pollers + 10 Object-metric pollers, each every 110 ms (1000 req/s), ${SECONDS_PER_RUN}s per run"
custom_run "all hits (5m > run), 10 selectors"        5m  10  110
custom_run "all hits (5m > run), 100 selectors"       5m  100 110
custom_run "cached (15s), 10 selectors"               15s 10  110
custom_run "cached (15s), 100 selectors"              15s 100 110
custom_run "uncached (0s), 10 selectors"              0s  10  110
custom_run "uncached (0s), 100 selectors"             0s  100 110
echo "-- closed loop (saturation)"
custom_run "cached (15s), 100 selectors"              15s 100 0
[ "$FAILED" = 0 ] || { echo "the bounded-queries check failed" >&2; exit 1; }
fi
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
