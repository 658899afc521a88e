#!/usr/bin/env bash
# Reverse-proxy benchmark: gofe vs nginx vs haproxy, side by side, on 127.0.0.1.
#
#   bench/proxy.sh                      # build gofe (release), install what is missing, run
#   GOFE_BIN=target/release/gofe bench/proxy.sh   # skip the build
#
# One run starts a fast backend (a second nginx: one worker, `return 200 "ok\n"`, on CPU 1),
# gofe, nginx and haproxy as reverse proxies in front of it (each on CPU 0, one worker/thread,
# upstream keep-alive, HTTP/1.1), then measures with wrk (on CPU 1) the backend direct and each
# proxy, interleaved (direct, gofe, nginx, haproxy, then again ...), REPS times per load level.
# It prints the median per row: requests/s, p50/p99 latency, the proxy's CPU use and requests/s
# per proxy core, idle and loaded RSS, and each row's requests/s ratio to nginx.
#
# Knobs (environment):
#   GOFE_BIN=path        use this gofe binary instead of building one
#   GOFE_REF=rev         build that commit (from `git archive`) instead of the work tree
#   ACCESS_LOG=1         gofe and nginx write an access log (gofe: Envoy's default text format
#                        to a file, through its writer thread; nginx: its combined format, to a
#                        file, unbuffered as by default; haproxy logs nothing: it logs to syslog
#                        only). With GOFE_BASE_BIN=same binary, gofe-base runs without one, so the
#                        log's cost is measured in the same run.
#   TRACING=1            gofe with tracing at 1 % (target gofe-t1, port +5, admin +6) and 100 %
#                        (gofe-t100, port +7, admin +10) random sampling, exporting OTLP/HTTP to
#                        a local sink that reads and discards (proxy/tests/fixtures/
#                        otlp_receiver.py --discard, port +11, on the load CPU), beside gofe
#                        without tracing and nginx with its access log (combined, to a file);
#                        haproxy is left out to keep the run short. The report adds the spans
#                        exported, dropped and failed per gofe.
#   GOFE_BASE_BIN=path   also measure this second gofe binary (target `gofe-base`, port +4,
#                        admin +8) in the same run, for before/after comparisons of gofe itself
#   CARGO_TARGET_DIR=dir cargo target dir for the build (default /var/cache/gofe-target-bench)
#   REPS=3               repetitions per configuration (interleaved)
#   DURATION=10s         wrk duration per measurement
#   CONNS=64             connections of the throughput run
#   LOW_CONNS="8 1"      connections of the lower-concurrency (latency) runs, a list
#   WARMUP=2s            unrecorded warm-up per target before the measurements
#   PROXY_CPU=0 LOAD_CPU=1   CPUs for the proxies / for wrk and the backend
#   PORT_BASE=18080      backend = base, gofe = +1, nginx = +2, haproxy = +3, gofe admin = +9
#   OUT=file.md          also write the markdown report here
#   KEEP_WORKDIR=1       keep the temporary directory (configs, logs, raw wrk output)
#   NICE=-10             nice level of every server and of wrk (same for all targets), so that
#                        other work on a shared machine disturbs the runs less; 0 to disable.
#                        Under autogroup scheduling the run gets a session (setsid) of its own
#                        and that group gets the nice level.
#
# Every server this script starts is stopped on exit (trap EXIT), also on failure. Any non-2xx
# response or socket error during a measurement makes the script fail: a broken configuration
# cannot produce a flattering number.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

REPS="${REPS:-3}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-64}"
LOW_CONNS="${LOW_CONNS:-8 1}"
WARMUP="${WARMUP:-2s}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
PORT_BASE="${PORT_BASE:-18080}"
OUT="${OUT:-}"
KEEP_WORKDIR="${KEEP_WORKDIR:-0}"
NICE="${NICE:--10}"

BACKEND_PORT=$((PORT_BASE))
GOFE_PORT=$((PORT_BASE + 1))
NGINX_PORT=$((PORT_BASE + 2))
HAPROXY_PORT=$((PORT_BASE + 3))
GOFE_ADMIN_PORT=$((PORT_BASE + 9))
GOFE_BASE_PORT=$((PORT_BASE + 4))
GOFE_BASE_ADMIN_PORT=$((PORT_BASE + 8))
GOFE_BASE_BIN="${GOFE_BASE_BIN:-}"
ACCESS_LOG="${ACCESS_LOG:-0}"
TRACING="${TRACING:-0}"
GOFE_T1_PORT=$((PORT_BASE + 5))
GOFE_T1_ADMIN_PORT=$((PORT_BASE + 6))
GOFE_T100_PORT=$((PORT_BASE + 7))
GOFE_T100_ADMIN_PORT=$((PORT_BASE + 10))
SINK_PORT=$((PORT_BASE + 11))

if [[ "$TRACING" == 1 ]]; then
    TARGETS=(direct gofe gofe-t1 gofe-t100 nginx)
elif [[ -n "$GOFE_BASE_BIN" ]]; then
    TARGETS=(direct gofe-base gofe nginx haproxy)
else
    TARGETS=(direct gofe nginx haproxy)
fi

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    printf '[bench] FAILED: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
ensure_tools() {
    local missing=()
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
    command -v haproxy >/dev/null 2>&1 || [[ -x /usr/sbin/haproxy ]] || missing+=(haproxy)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
    command -v ss >/dev/null 2>&1 || missing+=(iproute2)
    command -v lscpu >/dev/null 2>&1 || missing+=(util-linux)
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        [[ $(id -u) -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    PATH="$PATH:/usr/sbin:/sbin"
    PRIO=()
    if [[ "$NICE" != 0 ]]; then
        if [[ "$(nice -n "$NICE" nice 2>/dev/null)" == "$(($(nice) + NICE))" ]]; then
            PRIO=(nice -n "$NICE")
        else
            log "cannot run at nice $NICE; running at the default priority"
            NICE=0
        fi
    fi
    NGINX="$(command -v nginx)"
    HAPROXY="$(command -v haproxy)"
    local ncpu
    ncpu="$(nproc --all)"
    ((PROXY_CPU < ncpu && LOAD_CPU < ncpu)) || die "need CPUs $PROXY_CPU and $LOAD_CPU; have $ncpu"
    [[ "$PROXY_CPU" != "$LOAD_CPU" ]] || die "PROXY_CPU and LOAD_CPU must differ"
}

build_gofe() {
    if [[ -n "${GOFE_BIN:-}" ]]; then
        [[ -x "$GOFE_BIN" ]] || die "GOFE_BIN=$GOFE_BIN is not executable"
        GOFE="$(cd "$(dirname "$GOFE_BIN")" && pwd)/$(basename "$GOFE_BIN")"
        return
    fi
    local target="${CARGO_TARGET_DIR:-/var/cache/gofe-target-bench}" src="$REPO"
    if [[ -n "${GOFE_REF:-}" ]]; then
        # Build exactly that commit, from a clean export (the work tree is left alone).
        src="$target/src-$GOFE_REF"
        rm -rf "$src"
        mkdir -p "$src"
        git -C "$REPO" archive "$GOFE_REF" | tar -x -C "$src"
        GOFE_COMMIT="$(git -C "$REPO" rev-parse --short "$GOFE_REF")"
    fi
    log "building gofe (release) from $src into $target"
    (cd "$src" && CARGO_TARGET_DIR="$target" cargo build --release --bin gofe) >&2
    GOFE="$target/release/gofe"
}

# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------
WORKDIR=""
PIDS=()
WRK_PID=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    if [[ -n "${WRK_PID:-}" ]]; then
        kill -TERM "$WRK_PID" 2>/dev/null || true
        wait "$WRK_PID" 2>/dev/null || true
    fi
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid did not stop on TERM; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "$WORKDIR" && -d "$WORKDIR" ]]; then
        if [[ "$KEEP_WORKDIR" == 1 || $status -ne 0 ]]; then
            log "kept $WORKDIR (configs, server logs, raw wrk output)"
        else
            rm -rf "$WORKDIR"
        fi
    fi
    exit "$status"
}

render() { # template output port [admin-port] [access-log: 1 or 0] [tracing: sampling percent]
    local gofe_log="" nginx_log="access_log off;" gofe_tracing=""
    if [[ "${5:-$ACCESS_LOG}" == 1 ]]; then
        gofe_log="    access_log: [{ path: \"$WORKDIR/gofe-access-$3.log\" }]"
        nginx_log="access_log $WORKDIR/nginx-access.log combined;"
    fi
    # With TRACING=1, nginx (the peer) always logs; gofe's log follows ACCESS_LOG.
    if [[ "$TRACING" == 1 ]]; then
        nginx_log="access_log $WORKDIR/nginx-access.log combined;"
    fi
    if [[ -n "${6:-}" ]]; then
        gofe_tracing="    tracing: { random_sampling: { value: $6 }, provider: { opentelemetry: { service_name: \"bench\", max_cache_size: 8192, http_service: { http_uri: { uri: \"http://127.0.0.1:$SINK_PORT/v1/traces\" } } } } }"
    fi
    sed -e "s|@WORKDIR@|$WORKDIR|g" \
        -e "s|@BACKEND_PORT@|$BACKEND_PORT|g" \
        -e "s|@ADMIN_PORT@|${4:-$GOFE_ADMIN_PORT}|g" \
        -e "s|@GOFE_ACCESS_LOG@|$gofe_log|g" \
        -e "s|@GOFE_TRACING@|$gofe_tracing|g" \
        -e "s|@NGINX_ACCESS_LOG@|$nginx_log|g" \
        -e "s|@PORT@|$3|g" "$1" >"$2"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_http() { # port what
    for _ in $(seq 1 100); do
        if curl -sS -o /dev/null --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    die "$2 did not answer on 127.0.0.1:$1 (logs in $WORKDIR)"
}

start_servers() {
    local p
    for p in "$BACKEND_PORT" "$GOFE_PORT" "$NGINX_PORT" "$HAPROXY_PORT" "$GOFE_ADMIN_PORT"; do
        port_free "$p" || die "port $p is already in use (set PORT_BASE)"
    done
    mkdir -p "$WORKDIR/nginx-backend-tmp" "$WORKDIR/nginx-proxy-tmp"
    chmod 755 "$WORKDIR"
    render "$HERE/nginx-backend.conf.tmpl" "$WORKDIR/nginx-backend.conf" "$BACKEND_PORT"
    render "$HERE/nginx.conf.tmpl" "$WORKDIR/nginx-proxy.conf" "$NGINX_PORT"
    render "$HERE/haproxy.cfg.tmpl" "$WORKDIR/haproxy.cfg" "$HAPROXY_PORT"
    render "$HERE/gofe.yaml.tmpl" "$WORKDIR/gofe.yaml" "$GOFE_PORT"

    "$NGINX" -t -q -p "$WORKDIR" -c "$WORKDIR/nginx-backend.conf" || die "backend nginx config"
    "$NGINX" -t -q -p "$WORKDIR" -c "$WORKDIR/nginx-proxy.conf" || die "proxy nginx config"
    "$HAPROXY" -c -q -f "$WORKDIR/haproxy.cfg" || die "haproxy config"
    "$GOFE" check "$WORKDIR/gofe.yaml" >/dev/null || die "gofe config"
    if [[ -n "$GOFE_BASE_BIN" ]]; then
        for p in "$GOFE_BASE_PORT" "$GOFE_BASE_ADMIN_PORT"; do
            port_free "$p" || die "port $p is already in use (set PORT_BASE)"
        done
        render "$HERE/gofe.yaml.tmpl" "$WORKDIR/gofe-base.yaml" "$GOFE_BASE_PORT" "$GOFE_BASE_ADMIN_PORT" 0
        "$GOFE_BASE_BIN" check "$WORKDIR/gofe-base.yaml" >/dev/null || die "gofe-base config"
    fi

    if [[ "$TRACING" == 1 ]]; then
        for p in "$GOFE_T1_PORT" "$GOFE_T1_ADMIN_PORT" "$GOFE_T100_PORT" "$GOFE_T100_ADMIN_PORT" "$SINK_PORT"; do
            port_free "$p" || die "port $p is already in use (set PORT_BASE)"
        done
        render "$HERE/gofe.yaml.tmpl" "$WORKDIR/gofe-t1.yaml" "$GOFE_T1_PORT" "$GOFE_T1_ADMIN_PORT" "$ACCESS_LOG" 1
        render "$HERE/gofe.yaml.tmpl" "$WORKDIR/gofe-t100.yaml" "$GOFE_T100_PORT" "$GOFE_T100_ADMIN_PORT" "$ACCESS_LOG" 100
        "$GOFE" check "$WORKDIR/gofe-t1.yaml" >/dev/null || die "gofe-t1 config"
        "$GOFE" check "$WORKDIR/gofe-t100.yaml" >/dev/null || die "gofe-t100 config"
        log "starting the OTLP sink on CPU $LOAD_CPU, port $SINK_PORT"
        "${PRIO[@]}" taskset -c "$LOAD_CPU" python3 "$REPO/proxy/tests/fixtures/otlp_receiver.py" \
            --discard --port "$SINK_PORT" </dev/null >"$WORKDIR/sink.out" 2>&1 &
        PIDS+=($!)
        SINK_PID=$!
        for _ in $(seq 1 100); do
            grep -q '^port ' "$WORKDIR/sink.out" 2>/dev/null && break
            sleep 0.1
        done
        grep -q '^port ' "$WORKDIR/sink.out" || die "the OTLP sink did not start (logs in $WORKDIR)"
    fi

    log "starting backend nginx on CPU $LOAD_CPU, port $BACKEND_PORT"
    "${PRIO[@]}" taskset -c "$LOAD_CPU" "$NGINX" -p "$WORKDIR" -c "$WORKDIR/nginx-backend.conf" \
        >"$WORKDIR/nginx-backend.out" 2>&1 &
    PIDS+=($!)
    BACKEND_PID=$!
    wait_http "$BACKEND_PORT" "backend nginx"

    log "starting gofe proxy on CPU $PROXY_CPU, port $GOFE_PORT"
    RUST_LOG="${RUST_LOG:-warn}" "${PRIO[@]}" taskset -c "$PROXY_CPU" "$GOFE" proxy \
        --config "$WORKDIR/gofe.yaml" --drain-timeout 1s >"$WORKDIR/gofe.out" 2>&1 &
    PIDS+=($!)
    GOFE_PID=$!

    if [[ -n "$GOFE_BASE_BIN" ]]; then
        log "starting gofe-base ($GOFE_BASE_BIN) on CPU $PROXY_CPU, port $GOFE_BASE_PORT"
        RUST_LOG="${RUST_LOG:-warn}" "${PRIO[@]}" taskset -c "$PROXY_CPU" "$GOFE_BASE_BIN" proxy \
            --config "$WORKDIR/gofe-base.yaml" --drain-timeout 1s >"$WORKDIR/gofe-base.out" 2>&1 &
        PIDS+=($!)
        GOFE_BASE_PID=$!
    fi

    if [[ "$TRACING" == 1 ]]; then
        local pct
        for pct in 1 100; do
            log "starting gofe-t$pct (tracing at $pct %) on CPU $PROXY_CPU"
            RUST_LOG="${RUST_LOG:-warn}" "${PRIO[@]}" taskset -c "$PROXY_CPU" "$GOFE" proxy \
                --config "$WORKDIR/gofe-t$pct.yaml" --drain-timeout 1s >"$WORKDIR/gofe-t$pct.out" 2>&1 &
            PIDS+=($!)
            if [[ $pct == 1 ]]; then GOFE_T1_PID=$!; else GOFE_T100_PID=$!; fi
        done
    fi

    log "starting nginx proxy on CPU $PROXY_CPU, port $NGINX_PORT"
    "${PRIO[@]}" taskset -c "$PROXY_CPU" "$NGINX" -p "$WORKDIR" -c "$WORKDIR/nginx-proxy.conf" \
        >"$WORKDIR/nginx-proxy.out" 2>&1 &
    PIDS+=($!)
    NGINX_PID=$!

    if [[ " ${TARGETS[*]} " == *" haproxy "* ]]; then
        log "starting haproxy on CPU $PROXY_CPU, port $HAPROXY_PORT"
        "${PRIO[@]}" taskset -c "$PROXY_CPU" "$HAPROXY" -db -f "$WORKDIR/haproxy.cfg" \
            >"$WORKDIR/haproxy.out" 2>&1 &
        PIDS+=($!)
        HAPROXY_PID=$!
    fi

    wait_http "$GOFE_PORT" "gofe"
    [[ -z "$GOFE_BASE_BIN" ]] || wait_http "$GOFE_BASE_PORT" "gofe-base"
    if [[ "$TRACING" == 1 ]]; then
        wait_http "$GOFE_T1_PORT" "gofe-t1"
        wait_http "$GOFE_T100_PORT" "gofe-t100"
    fi
    wait_http "$NGINX_PORT" "nginx proxy"
    [[ -z "${HAPROXY_PID:-}" ]] || wait_http "$HAPROXY_PORT" "haproxy"
}

# PIDs of a server: the process and its children (nginx: master + workers).
server_pids() {
    local pid=$1
    echo "$pid"
    ps -o pid= --ppid "$pid" 2>/dev/null | tr -d ' ' || true
}

pid_of() {
    case "$1" in
        direct) echo "$BACKEND_PID" ;;
        gofe) echo "$GOFE_PID" ;;
        gofe-base) echo "$GOFE_BASE_PID" ;;
        gofe-t1) echo "$GOFE_T1_PID" ;;
        gofe-t100) echo "$GOFE_T100_PID" ;;
        nginx) echo "$NGINX_PID" ;;
        haproxy) echo "$HAPROXY_PID" ;;
    esac
}

port_of() {
    case "$1" in
        direct) echo "$BACKEND_PORT" ;;
        gofe) echo "$GOFE_PORT" ;;
        gofe-base) echo "$GOFE_BASE_PORT" ;;
        gofe-t1) echo "$GOFE_T1_PORT" ;;
        gofe-t100) echo "$GOFE_T100_PORT" ;;
        nginx) echo "$NGINX_PORT" ;;
        haproxy) echo "$HAPROXY_PORT" ;;
    esac
}

rss_kib() { # pid -> summed VmRSS (KiB) of it and its children
    local total=0 p v
    for p in $(server_pids "$1"); do
        v="$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)"
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

cpu_ticks() { # pid -> summed utime+stime (clock ticks) of it and its children
    local total=0 p v
    for p in $(server_pids "$1"); do
        # Fields after the ")" of comm: utime and stime are the 12th and 13th.
        v="$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}' || true)"
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

cpu_stat() { # cpu -> "busy total" jiffies of that CPU, from /proc/stat (all processes)
    awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat
}

busy_frac() { # "busy total" before, "busy total" after -> busy fraction
    awk -v a="$1" -v b="$2" 'BEGIN {split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%.2f", (d > 0 ? (y[1] - x[1]) / d : 0)}'
}

check_alive() {
    local t pid
    for t in "${TARGETS[@]}"; do
        pid="$(pid_of "$t")"
        kill -0 "$pid" 2>/dev/null || die "$t (pid $pid) died; logs in $WORKDIR"
    done
}

# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
to_ms() { # wrk latency ("812.00us", "1.23ms", "1.01s") -> milliseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n *= 60000;
        else if (v ~ /s$/) n *= 1000
        printf "%.3f", n }'
}

# Runs wrk once and appends a result line to $RESULTS:
#   target conns rep rps p50_ms p99_ms cpu_cores rss_kib
measure() { # target conns rep duration record(0|1)
    local target=$1 conns=$2 rep=$3 duration=$4 record=$5
    local port pid raw t0 t1 c0 c1 wall s0p s0l s1p s1l
    port="$(port_of "$target")"
    pid="$(pid_of "$target")"
    raw="$WORKDIR/wrk-$target-c$conns-r$rep.txt"
    c0="$(cpu_ticks "$pid")"
    s0p="$(cpu_stat "$PROXY_CPU")"
    s0l="$(cpu_stat "$LOAD_CPU")"
    t0="$(date +%s.%N)"
    # In the background so that a signal is handled at once, not when wrk ends.
    "${PRIO[@]}" taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"$duration" --timeout 5s --latency \
        "http://127.0.0.1:$port/" >"$raw" 2>&1 &
    WRK_PID=$!
    local wrk_status=0
    wait "$WRK_PID" || wrk_status=$?
    WRK_PID=""
    if ((wrk_status)); then
        cat "$raw" >&2
        die "wrk failed against $target"
    fi
    t1="$(date +%s.%N)"
    c1="$(cpu_ticks "$pid")"
    s1p="$(cpu_stat "$PROXY_CPU")"
    s1l="$(cpu_stat "$LOAD_CPU")"
    local rss
    rss="$(rss_kib "$pid")"
    check_alive

    local rps p50 p99 non2xx sockerr
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$raw")"
    p50="$(awk '$1 == "50%" {print $2}' "$raw")"
    p99="$(awk '$1 == "99%" {print $2}' "$raw")"
    non2xx="$(awk -F': *' '/Non-2xx or 3xx responses/ {print $2}' "$raw")"
    sockerr="$(awk '/Socket errors/ {gsub(",", ""); print $4 + $6 + $8 + $10}' "$raw")"
    if [[ -z "$rps" || -z "$p50" || -z "$p99" ]]; then
        cat "$raw" >&2
        die "could not parse wrk output for $target"
    fi
    if [[ -n "$non2xx" && "$non2xx" != 0 ]]; then
        cat "$raw" >&2
        die "$target returned $non2xx non-2xx/3xx responses"
    fi
    if [[ -n "$sockerr" && "$sockerr" != 0 ]]; then
        cat "$raw" >&2
        die "$target had $sockerr socket errors"
    fi
    awk -v r="$rps" 'BEGIN { exit !(r > 0) }' || die "$target served 0 requests/s"
    wall="$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')"
    local cores
    cores="$(awk -v c="$((c1 - c0))" -v hz="$CLK_TCK" -v w="$wall" 'BEGIN {printf "%.2f", c / hz / w}')"
    if [[ "$record" == 1 ]]; then
        printf '%s %s %s %s %s %s %s %s %s %s\n' "$target" "$conns" "$rep" "$rps" \
            "$(to_ms "$p50")" "$(to_ms "$p99")" "$cores" "$rss" \
            "$(busy_frac "$s0p" "$s1p")" "$(busy_frac "$s0l" "$s1l")" >>"$RESULTS"
        log "$(printf '%-8s c=%-3s rep %s: %10s req/s  p50 %8s  p99 %8s  cpu %s  rss %s KiB' \
            "$target" "$conns" "$rep" "$rps" "$p50" "$p99" "$cores" "$rss") cpu$PROXY_CPU busy $(busy_frac "$s0p" "$s1p") cpu$LOAD_CPU busy $(busy_frac "$s0l" "$s1l")"
    fi
}

median() { sort -g | awk '{v[NR] = $1} END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

field() { # target conns column -> values
    awk -v t="$1" -v c="$2" -v col="$3" '$1 == t && $2 == c {print $col}' "$RESULTS"
}

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
report() {
    local t c rps p50 p99 cores perc ratio p99ratio label nginx_rps nginx_p99 idle loaded
    for c in "$CONNS" $LOW_CONNS; do
        nginx_rps="$(field nginx "$c" 4 | median)"
        nginx_p99="$(field nginx "$c" 6 | median)"
        echo "**wrk -t1 -c$c** (median of $REPS)"
        echo
        echo "| target | req/s | p50 ms | p99 ms | proxy CPU (cores) | req/s per proxy core | req/s vs nginx | p99 vs nginx |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|"
        for t in "${TARGETS[@]}"; do
            rps="$(field "$t" "$c" 4 | median)"
            p50="$(field "$t" "$c" 5 | median)"
            p99="$(field "$t" "$c" 6 | median)"
            cores="$(field "$t" "$c" 7 | median)"
            ratio="$(awk -v a="$rps" -v b="$nginx_rps" 'BEGIN {printf "%.2f", a / b}')"
            p99ratio="$(awk -v a="$p99" -v b="$nginx_p99" 'BEGIN {printf "%.2f", a / b}')"
            perc="$(awk -v a="$rps" -v c="$cores" 'BEGIN { if (c > 0) printf "%.0f", a / c; else print "-" }')"
            label="$t"
            if [[ "$t" == direct ]]; then
                # No proxy: the backend's own CPU is shown in parentheses for reference.
                label="direct (backend, no proxy)"
                cores="($cores)"
                perc="-"
            fi
            printf '| %s | %.0f | %s | %s | %s | %s | %s | %s |\n' \
                "$label" "$rps" "$p50" "$p99" "$cores" "$perc" "$ratio" "$p99ratio"
        done
        echo
    done
    echo "**Memory and CPU** (RSS = VmRSS, nginx = master + worker; idle = after start, before any"
    echo "request; loaded = largest value right after a c=$CONNS run; CPU busy = median share of"
    echo "that CPU in use during the c=$CONNS runs, by every process on it, including other work on"
    echo "the machine)"
    echo
    echo "| target | idle RSS MiB | loaded RSS MiB | CPU $PROXY_CPU busy (proxy) | CPU $LOAD_CPU busy (wrk + backend) |"
    echo "|---|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        label="$t"
        [[ "$t" != direct ]] || label="direct (the backend nginx)"
        idle="$(awk -v k="${IDLE_RSS[$t]}" 'BEGIN {printf "%.1f", k / 1024}')"
        loaded="$(field "$t" "$CONNS" 8 | sort -n | tail -1 | awk '{printf "%.1f", $1 / 1024}')"
        printf '| %s | %s | %s | %s | %s |\n' "$label" "$idle" "$loaded" \
            "$(field "$t" "$CONNS" 9 | median)" "$(field "$t" "$CONNS" 10 | median)"
    done
}

main() {
    ensure_tools
    build_gofe
    CLK_TCK="$(getconf CLK_TCK)"
    WORKDIR="$(mktemp -d /tmp/gofe-bench.XXXXXX)"
    RESULTS="$WORKDIR/results.txt"
    : >"$RESULTS"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    # Room for every connection of wrk, the proxies and the backend.
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    start_servers

    # Sanity: every target answers 200 "ok" (the proxies really forward to the backend).
    local t body code
    for t in "${TARGETS[@]}"; do
        code="$(curl -sS -o "$WORKDIR/probe-$t" -w '%{http_code}' --max-time 2 "http://127.0.0.1:$(port_of "$t")/")"
        body="$(cat "$WORKDIR/probe-$t")"
        [[ "$code" == 200 && "$body" == ok ]] || die "$t answered $code '$body', not 200 'ok'"
    done

    sleep 1
    declare -gA IDLE_RSS
    for t in "${TARGETS[@]}"; do
        IDLE_RSS[$t]="$(rss_kib "$(pid_of "$t")")"
    done
    log "idle RSS KiB: $(for t in "${TARGETS[@]}"; do printf '%s=%s ' "$t" "${IDLE_RSS[$t]}"; done)"

    log "warm-up: $WARMUP per target at c=$CONNS (not recorded)"
    for t in "${TARGETS[@]}"; do
        measure "$t" "$CONNS" 0 "$WARMUP" 0
    done

    local rep c
    for rep in $(seq 1 "$REPS"); do
        for c in "$CONNS" $LOW_CONNS; do
            for t in "${TARGETS[@]}"; do
                measure "$t" "$c" "$rep" "$DURATION" 1
            done
        done
    done

    if [[ "$TRACING" == 1 ]]; then
        # Let each exporter send what it holds (its schedule_delay is 5 s), then read its counters.
        sleep 6
        local admin
        for t in gofe-t1 gofe-t100; do
            if [[ $t == gofe-t1 ]]; then admin=$GOFE_T1_ADMIN_PORT; else admin=$GOFE_T100_ADMIN_PORT; fi
            curl -sS --max-time 5 "http://127.0.0.1:$admin/metrics" >"$WORKDIR/metrics-$t.txt"
        done
    fi

    local gofe_commit dirty
    if [[ -n "${GOFE_COMMIT:-}" ]]; then
        gofe_commit="$GOFE_COMMIT"
    elif [[ -n "${GOFE_BIN:-}" ]]; then
        gofe_commit="binary $GOFE_BIN"
    else
        gofe_commit="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        dirty="$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | head -1)"
        [[ -z "$dirty" ]] || gofe_commit="$gofe_commit + uncommitted changes"
    fi

    {
        echo "### Run of $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "- command: \`${GOFE_REF:+GOFE_REF=$GOFE_REF }${GOFE_BASE_BIN:+GOFE_BASE_BIN=$GOFE_BASE_BIN }TRACING=$TRACING ACCESS_LOG=$ACCESS_LOG REPS=$REPS DURATION=$DURATION NICE=$NICE CONNS=$CONNS LOW_CONNS=\"$LOW_CONNS\" bench/proxy.sh\`"
        echo "- machine: $(nproc) CPUs ($(lscpu | awk -F': *' '/^Model name/ {print $2; exit}')), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r)"
        echo "- versions: $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $("$HAPROXY" -v | head -1 | awk '{print "HAProxy " $3}'), $(wrk -v 2>&1 | head -1 | awk '{print "wrk " $2}'), gofe $gofe_commit ($("$GOFE" --version))${GOFE_BASE_BIN:+, gofe-base = binary $GOFE_BASE_BIN}"
        echo "- method: proxies pinned to CPU $PROXY_CPU with one worker/thread each; backend nginx (1 worker) and wrk (-t1) pinned to CPU $LOAD_CPU; all of them at nice $NICE; each measurement \`wrk -t1 -c<N> -d$DURATION --latency\`; $REPS repetitions interleaved (${TARGETS[*]}, then again), median per cell; loaded RSS is the largest VmRSS right after a c=$CONNS run; nginx RSS sums master + worker."
        echo
        report
        if [[ "$TRACING" == 1 ]]; then
            echo
            echo "**Spans** (each gofe's \`/metrics\` 6 s after the last run, past its 5 s schedule_delay; warm-up and probes included)"
            echo
            echo "| target | exported | dropped (queue full) | failed (export) |"
            echo "|---|---:|---:|---:|"
            local series
            for t in gofe-t1 gofe-t100; do
                printf '| %s |' "$t"
                for series in exported dropped failed; do
                    printf ' %s |' "$(awk -v s="gofe_tracing_spans_${series}_total{listener=\"bench\"}" '$1 == s {printf "%.0f", $2}' "$WORKDIR/metrics-$t.txt")"
                done
                echo
            done
        fi
    } >"$WORKDIR/report.md"

    echo
    cat "$WORKDIR/report.md"
    if [[ -n "$OUT" ]]; then
        cp "$WORKDIR/report.md" "$OUT"
        log "report written to $OUT"
    fi
    echo
    echo "raw results (target conns rep req/s p50_ms p99_ms server_cpu_cores rss_kib cpu${PROXY_CPU}_busy cpu${LOAD_CPU}_busy):"
    cat "$RESULTS"
}

# With autogroup scheduling (CONFIG_SCHED_AUTOGROUP, on by default in many kernels), a nice value
# only ranks processes inside their session's group: against other sessions' builds it does
# nothing. So run the benchmark in a session of its own and give that group the nice level.
in_own_session() {
    [[ "$NICE" != 0 && -z "${GOFE_BENCH_SESSION:-}" ]] || return 1
    [[ "$(cat /proc/sys/kernel/sched_autogroup_enabled 2>/dev/null)" == 1 ]] || return 1
    command -v setsid >/dev/null 2>&1 || return 1
    local child status
    GOFE_BENCH_SESSION=1 setsid --wait bash "${BASH_SOURCE[0]}" "$@" &
    child=$!
    trap 'kill -TERM "$child" 2>/dev/null || true' INT TERM
    while true; do
        status=0
        wait "$child" || status=$?
        kill -0 "$child" 2>/dev/null || break
    done
    exit "$status"
}

if [[ -n "${GOFE_BENCH_SESSION:-}" ]]; then
    echo "$NICE" >/proc/self/autogroup 2>/dev/null || log "cannot set the autogroup's nice level"
else
    in_own_session "$@" || true
fi
main "$@"
