#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: a deterministic measure
# for comparing two gofe binaries on a machine too noisy for requests/s to tell them apart.
#
#   bench/callgrind.sh BIN [BIN ...]
#
# For each binary: starts the bench backend (nginx, `return 200 "ok\n"`) and gofe under
# `valgrind --tool=callgrind` (pinned to one CPU, so gofe runs its single-threaded runtime, as
# in bench/proxy.sh), sends WARMUP requests with h2load (HTTP/1.1, CONNS connections, so the
# connections and upstream pools exist), zeroes the counters (`callgrind_control --zero`),
# sends exactly N more requests, dumps the counters, and prints instructions per request and
# the top functions (self cost, callgrind_annotate). Results stay in OUTDIR.
#
# Knobs (environment): N=20000 WARMUP=2000 CONNS=64 PORT_BASE=19080 OUTDIR=/tmp/gofe-callgrind
#                      TOP=40 (functions listed per binary)
#                      VG_EXTRA="--cache-sim=yes" (or "--dump-instr=yes"): more valgrind options
#
# Needs valgrind, h2load (Debian: nghttp2-client) and nginx. The proxy's idle background work
# (timers, admin) during the measured window is counted too; it is small against N requests
# (the script also reports an idle window of the same binary, IDLE=5 seconds, for scale).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
N="${N:-20000}"
WARMUP="${WARMUP:-2000}"
CONNS="${CONNS:-64}"
PORT_BASE="${PORT_BASE:-19080}"
OUTDIR="${OUTDIR:-/tmp/gofe-callgrind}"
TOP="${TOP:-40}"
IDLE="${IDLE:-5}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
PATH="$PATH:/usr/sbin:/sbin"

(($# > 0)) || {
    echo "usage: $0 BIN [BIN ...]" >&2
    exit 2
}
for tool in valgrind callgrind_control callgrind_annotate h2load nginx curl; do
    command -v "$tool" >/dev/null || {
        echo "missing: $tool" >&2
        exit 1
    }
done

BACKEND_PORT=$PORT_BASE
GOFE_PORT=$((PORT_BASE + 1))
ADMIN_PORT=$((PORT_BASE + 9))
WORKDIR="$(mktemp -d /tmp/gofe-callgrind-work.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORKDIR"
}
trap cleanup EXIT
mkdir -p "$OUTDIR" "$WORKDIR/nginx-backend-tmp"
chmod 755 "$WORKDIR"

render() { # template output port
    sed -e "s|@WORKDIR@|$WORKDIR|g" -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" \
        -e "s|@ADMIN_PORT@|$ADMIN_PORT|g" -e "s|@PORT@|$3|g" "$1" >"$2"
}
wait_http() {
    for _ in $(seq 1 600); do
        curl -sS -o /dev/null --max-time 2 "http://127.0.0.1:$1/" 2>/dev/null && return 0
        sleep 0.2
    done
    echo "nothing answers on port $1" >&2
    exit 1
}
load() { # requests
    taskset -c "$LOAD_CPU" h2load --h1 -n "$1" -c "$CONNS" -m 1 "http://127.0.0.1:$GOFE_PORT/" \
        >"$WORKDIR/h2load.out" 2>&1
    grep -q "succeeded, 0 failed, 0 errored" "$WORKDIR/h2load.out" &&
        grep -q "status codes: $1 2xx" "$WORKDIR/h2load.out" || {
        cat "$WORKDIR/h2load.out" >&2
        echo "h2load: not every request succeeded" >&2
        exit 1
    }
}

render "$HERE/nginx-backend.conf.tmpl" "$WORKDIR/nginx-backend.conf" "$BACKEND_PORT"
render "$HERE/gofe.yaml.tmpl" "$WORKDIR/gofe.yaml" "$GOFE_PORT"
taskset -c "$LOAD_CPU" nginx -p "$WORKDIR" -c "$WORKDIR/nginx-backend.conf" \
    >"$WORKDIR/nginx.out" 2>&1 &
PIDS+=($!)
wait_http "$BACKEND_PORT"

printf '| binary | instructions (Ir) for %d requests | Ir per request | idle %ss Ir |\n|---|---:|---:|---:|\n' "$N" "$IDLE" >"$OUTDIR/summary.md"
for bin in "$@"; do
    name="$(basename "$bin")"
    out="$OUTDIR/callgrind.$name"
    rm -f "$out".*
    RUST_LOG=warn taskset -c "$PROXY_CPU" valgrind --tool=callgrind --collect-systime=no ${VG_EXTRA:-} \
        --callgrind-out-file="$out.%p" "$bin" proxy --config "$WORKDIR/gofe.yaml" \
        --drain-timeout 1s >"$WORKDIR/gofe-$name.out" 2>&1 &
    vpid=$!
    PIDS+=($vpid)
    wait_http "$GOFE_PORT"
    load "$WARMUP"
    callgrind_control --zero "$vpid" >/dev/null 2>&1
    sleep "$IDLE"
    callgrind_control --dump=idle "$vpid" >/dev/null 2>&1
    callgrind_control --zero "$vpid" >/dev/null 2>&1
    load "$N"
    callgrind_control --dump=measured "$vpid" >/dev/null 2>&1
    kill -TERM "$vpid"
    wait "$vpid" 2>/dev/null || true
    # Dumps are numbered in order: .1 = idle, .2 = measured (.0 or the unnumbered one = exit).
    idle_file="$(ls "$out.$vpid".1 2>/dev/null || true)"
    meas_file="$(ls "$out.$vpid".2 2>/dev/null || true)"
    [[ -n "$idle_file" && -n "$meas_file" ]] || {
        ls "$out".* >&2
        echo "callgrind dumps missing" >&2
        exit 1
    }
    ir="$(awk '/^summary:/ {print $2}' "$meas_file")"
    idle="$(awk '/^summary:/ {print $2}' "$idle_file")"
    printf '| %s | %s | %d | %s |\n' "$bin" "$ir" "$((ir / N))" "$idle" >>"$OUTDIR/summary.md"
    callgrind_annotate --threshold=100 "$meas_file" >"$WORKDIR/annotate.txt" 2>/dev/null
    head -n $((TOP + 25)) "$WORKDIR/annotate.txt" >"$OUTDIR/top.$name.txt"
    callgrind_annotate --inclusive=yes --threshold=100 "$meas_file" >"$WORKDIR/annotate.txt" 2>/dev/null
    head -n $((TOP + 25)) "$WORKDIR/annotate.txt" >"$OUTDIR/inclusive.$name.txt"
    cp "$meas_file" "$OUTDIR/measured.$name.out"
done
cat "$OUTDIR/summary.md"
echo "top functions: $OUTDIR/top.*.txt, inclusive: $OUTDIR/inclusive.*.txt" >&2
