#!/usr/bin/env bash
# The feedback loop across processes (examples/loop/README.md): three demo backends, Prometheus,
# the controller and a proxy it steers over xDS, each its own process on 127.0.0.1. Ctrl-C
# stops them all. Needs `prometheus` on the PATH (Debian: apt-get install prometheus) and a
# built gofe (cargo build --release; or set GOFE=path).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
gofe="${GOFE:-$here/../../target/release/gofe}"
data="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$data"' EXIT
for i in 1 2 3; do
  "$gofe" backend --listen "127.0.0.1:910$i" --name "web-$i" --control "127.0.0.1:920$i" &
  pids+=($!)
done
prometheus --config.file="$here/prometheus.yml" --storage.tsdb.path="$data" \
  --web.listen-address=127.0.0.1:9090 --log.level=warn &
pids+=($!)
"$gofe" controller run --config "$here/controller.yaml" &
pids+=($!)
"$gofe" proxy --bootstrap "$here/bootstrap.yaml" &
pids+=($!)
echo "up: curl http://127.0.0.1:8080/   ·   gofe controller explain web"
echo "break web-3: curl -X POST 'http://127.0.0.1:9203/fault?fail_ratio=0.5'"
wait
