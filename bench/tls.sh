#!/usr/bin/env bash
# TLS termination benchmark: gofe vs nginx, side by side, on 127.0.0.1, same certificate, same
# backend, same run.
#
#   GOFE=target/release/gofe bench/tls.sh             # the lead's run (a release binary)
#   GOFE=target/debug/gofe DURATION=2 REPS=1 bench/tls.sh   # a quick check of the script only
#
# One run makes an ECDSA P-256 certificate for localhost (openssl), starts a fast backend (an
# nginx worker answering "ok\n", on LOAD_CPU), gofe and nginx terminating TLS in front of it
# (each on PROXY_CPU under taskset, one worker/thread, upstream keep-alive over cleartext
# HTTP/1.1), then measures each proxy, interleaved (gofe, nginx, gofe, ...), REPS times:
#
#   keep-alive   wrk, CONNS connections kept open (HTTP/1.1 over TLS): requests/s of TLS
#                termination on one core
#   h2           h2load, CONNS clients over h2 (ALPN), 10 streams each, kept open
#   handshakes   wrk with `Connection: close`: every request on a new connection, a full
#                handshake each (wrk resumes no session): new handshakes/s
#   h2 clients   h2load, HS_CLIENTS clients doing 2 requests each (one handshake per client),
#                repeated for the duration: handshakes/s over h2
#
# It prints the median per row and gofe's ratio to nginx. Debug-binary numbers say nothing
# about gofe: publish only release numbers.
#
# Knobs (environment):
#   GOFE=path (or GOFE_BIN)  the gofe binary (required; this script builds nothing)
#   DURATION=10              seconds per measurement ("10" or "10s")
#   REPS=3                   repetitions per target (interleaved)
#   CONNS=64                 connections of the keep-alive rows
#   HS_CONNS=16              concurrent connections of the wrk handshake row
#   HS_CLIENTS=200           clients per h2load round of the h2 handshake row
#   PROXY_CPU=0 LOAD_CPU=1   CPUs of the proxies / of the load generators and the backend
#   PORT_BASE=18180          backend = base, gofe = +1, nginx = +2, gofe admin = +3
#   OUT=file.md              also write the markdown report here
#   KEEP_WORKDIR=1           keep the temporary directory (configs, logs, raw output)
#
# Every server this script starts is stopped on exit (trap EXIT), also on failure. A non-2xx
# response or a socket error during a measurement makes the script fail.
set -euo pipefail

DURATION="${DURATION:-10}"
DURATION="${DURATION%s}"
REPS="${REPS:-3}"
CONNS="${CONNS:-64}"
HS_CONNS="${HS_CONNS:-16}"
HS_CLIENTS="${HS_CLIENTS:-200}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
PORT_BASE="${PORT_BASE:-18180}"
OUT="${OUT:-}"
KEEP_WORKDIR="${KEEP_WORKDIR:-0}"
GOFE="${GOFE:-${GOFE_BIN:-}}"

BACKEND_PORT=$((PORT_BASE))
GOFE_PORT=$((PORT_BASE + 1))
NGINX_PORT=$((PORT_BASE + 2))
GOFE_ADMIN_PORT=$((PORT_BASE + 3))
TARGETS=(gofe nginx)
ROWS=(keep-alive h2 handshakes h2-clients)

log() { printf '[tls-bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
    printf '[tls-bench] FAILED: %s\n' "$*" >&2
    exit 1
}

[[ -n "$GOFE" && -x "$GOFE" ]] || die "set GOFE=path/to/gofe (an executable)"
GOFE="$(cd "$(dirname "$GOFE")" && pwd)/$(basename "$GOFE")"

ensure_tools() {
    local missing=()
    command -v wrk >/dev/null 2>&1 || missing+=(wrk)
    command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
    command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
    if ((${#missing[@]})); then
        log "installing: ${missing[*]}"
        [[ $(id -u) -eq 0 ]] || die "need root to apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    PATH="$PATH:/usr/sbin:/sbin"
    NGINX="$(command -v nginx)"
    local ncpu
    ncpu="$(nproc --all)"
    ((PROXY_CPU < ncpu && LOAD_CPU < ncpu)) || die "need CPUs $PROXY_CPU and $LOAD_CPU; have $ncpu"
    [[ "$PROXY_CPU" != "$LOAD_CPU" ]] || die "PROXY_CPU and LOAD_CPU must differ"
}

WORKDIR=""
PIDS=()

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n "$WORKDIR" && -d "$WORKDIR" ]]; then
        if [[ "$KEEP_WORKDIR" == 1 || $status -ne 0 ]]; then
            log "kept $WORKDIR (configs, server logs, raw output)"
        else
            rm -rf "$WORKDIR"
        fi
    fi
    exit "$status"
}

write_configs() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost \
        -keyout "$WORKDIR/key.pem" -out "$WORKDIR/cert.pem" 2>/dev/null
    mkdir -p "$WORKDIR"/tmp-backend "$WORKDIR"/tmp-proxy
    cat >"$WORKDIR/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORKDIR/backend.pid;
error_log $WORKDIR/backend.error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $WORKDIR/tmp-backend;
    proxy_temp_path $WORKDIR/tmp-backend;
    fastcgi_temp_path $WORKDIR/tmp-backend;
    uwsgi_temp_path $WORKDIR/tmp-backend;
    scgi_temp_path $WORKDIR/tmp-backend;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$BACKEND_PORT backlog=4096;
        location / { default_type text/plain; return 200 "ok\n"; }
    }
}
CONF
    # nginx terminating TLS: one worker on PROXY_CPU, the same certificate, h2 and http/1.1,
    # kept-alive upstream connections, the forwarding headers gofe adds.
    cat >"$WORKDIR/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORKDIR/nginx.pid;
error_log $WORKDIR/nginx.error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $WORKDIR/tmp-proxy;
    proxy_temp_path $WORKDIR/tmp-proxy;
    fastcgi_temp_path $WORKDIR/tmp-proxy;
    uwsgi_temp_path $WORKDIR/tmp-proxy;
    scgi_temp_path $WORKDIR/tmp-proxy;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    upstream backend {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        # "listen ... http2" works on Debian's 1.22 and, deprecated, on later releases.
        listen 127.0.0.1:$NGINX_PORT ssl http2 backlog=4096;
        ssl_certificate $WORKDIR/cert.pem;
        ssl_certificate_key $WORKDIR/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Request-ID \$request_id;
        }
    }
}
CONF
    cat >"$WORKDIR/gofe.yaml" <<CONF
listeners:
  - name: bench
    address: "127.0.0.1:$GOFE_PORT"
    tls:
      certificate_chain: "$WORKDIR/cert.pem"
      private_key: "$WORKDIR/key.pem"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: bench
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: backend } }]
clusters:
  - name: backend
    connect_timeout: 1s
    endpoints: [{ address: "127.0.0.1:$BACKEND_PORT" }]
admin: { address: "127.0.0.1:$GOFE_ADMIN_PORT" }
CONF
}

wait_ready() { # url
    for _ in $(seq 1 100); do
        if curl -skf -o /dev/null "$1"; then
            return 0
        fi
        sleep 0.1
    done
    die "$1 did not answer"
}

start_servers() {
    taskset -c "$LOAD_CPU" "$NGINX" -c "$WORKDIR/backend.conf" >"$WORKDIR/backend.out" 2>&1 &
    PIDS+=($!)
    taskset -c "$PROXY_CPU" "$NGINX" -c "$WORKDIR/nginx.conf" >"$WORKDIR/nginx.out" 2>&1 &
    PIDS+=($!)
    # One core: Tokio starts one worker.
    RUST_LOG=warn taskset -c "$PROXY_CPU" "$GOFE" proxy --config "$WORKDIR/gofe.yaml" \
        >"$WORKDIR/gofe.out" 2>&1 &
    PIDS+=($!)
    wait_ready "http://127.0.0.1:$BACKEND_PORT/"
    wait_ready "https://127.0.0.1:$NGINX_PORT/"
    wait_ready "https://127.0.0.1:$GOFE_PORT/"
    # The same certificate on both.
    local a b
    a="$(openssl s_client -connect "127.0.0.1:$GOFE_PORT" -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint)"
    b="$(openssl s_client -connect "127.0.0.1:$NGINX_PORT" -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint)"
    [[ -n "$a" && "$a" == "$b" ]] || die "gofe and nginx present different certificates"
}

port_of() {
    case "$1" in
    gofe) echo "$GOFE_PORT" ;;
    nginx) echo "$NGINX_PORT" ;;
    esac
}

# A wrk run; prints requests/s. Fails on errors or non-2xx responses.
wrk_run() { # port connections out [extra args...]
    local port=$1 conns=$2 out=$3
    shift 3
    taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${DURATION}s" "$@" \
        "https://127.0.0.1:$port/" >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
    if grep -qE 'Non-2xx|Socket errors' "$out"; then
        die "errors in $out: $(grep -E 'Non-2xx|Socket errors' "$out")"
    fi
    awk '/^Requests\/sec/ {print $2}' "$out"
}

# An h2load run; prints requests/s. Fails unless every request succeeded with 2xx.
h2load_run() { # out args...
    local out=$1
    shift
    taskset -c "$LOAD_CPU" h2load "$@" >"$out" 2>&1 || die "h2load failed: $(cat "$out")"
    local line
    line="$(grep '^requests:' "$out")"
    awk '/^requests:/ { if ($4 != $8 || $10 != 0 || $12 != 0) exit 1 }' "$out" ||
        die "failed requests in $out: $line"
    grep -q "status codes: $(awk '/^requests:/ {print $8}' "$out") 2xx" "$out" ||
        die "non-2xx responses in $out: $(grep '^status codes' "$out")"
    awk '/^finished in/ {gsub(",", "", $4); print $4}' "$out"
}

measure() { # target row rep
    local port out
    port="$(port_of "$1")"
    out="$WORKDIR/raw-$1-$2-$3.txt"
    case "$2" in
    keep-alive) wrk_run "$port" "$CONNS" "$out" ;;
    handshakes) wrk_run "$port" "$HS_CONNS" "$out" -H "Connection: close" ;;
    h2) h2load_run "$out" -c "$CONNS" -m 10 -D "$DURATION" --warm-up-time=1 \
        "https://127.0.0.1:$port/" ;;
    h2-clients)
        # Rounds of HS_CLIENTS clients, 2 requests each (a handshake per client), until the
        # duration is spent; requests/s over all rounds, each request half a handshake.
        local reqs=0 start_ns elapsed_ns stop=$((SECONDS + DURATION))
        start_ns="$(date +%s%N)"
        while ((SECONDS < stop)); do
            h2load_run "$out" -c "$HS_CLIENTS" -n $((2 * HS_CLIENTS)) -m 1 \
                "https://127.0.0.1:$port/" >/dev/null
            reqs=$((reqs + 2 * HS_CLIENTS))
        done
        elapsed_ns=$(($(date +%s%N) - start_ns))
        awk -v q="$reqs" -v t="$elapsed_ns" 'BEGIN {printf "%.2f\n", q / (t / 1e9) / 2}'
        ;;
    esac
}

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

main() {
    ensure_tools
    WORKDIR="$(mktemp -d /tmp/gofe-tls-bench.XXXXXX)"
    trap cleanup EXIT INT TERM
    write_configs
    start_servers
    log "gofe $("$GOFE" --version 2>/dev/null || echo '?'), nginx $("$NGINX" -v 2>&1 | sed 's/.*\///')"
    declare -A results
    local rep row t v
    for rep in $(seq 1 "$REPS"); do
        for row in "${ROWS[@]}"; do
            for t in "${TARGETS[@]}"; do
                v="$(measure "$t" "$row" "$rep")"
                log "rep $rep $row $t: $v"
                results["$t $row"]+="$v "
            done
        done
    done
    {
        echo "TLS termination, one core each (taskset -c $PROXY_CPU), load on CPU $LOAD_CPU, ${DURATION}s x $REPS, medians"
        echo
        echo "| row | unit | gofe | nginx | gofe / nginx |"
        echo "|---|---|---:|---:|---:|"
        for row in "${ROWS[@]}"; do
            local g n unit
            g="$(tr ' ' '\n' <<<"${results["gofe $row"]}" | grep . | median)"
            n="$(tr ' ' '\n' <<<"${results["nginx $row"]}" | grep . | median)"
            case "$row" in
            keep-alive) unit="requests/s (wrk, $CONNS conns, HTTP/1.1)" ;;
            h2) unit="requests/s (h2load, $CONNS clients x 10 streams)" ;;
            handshakes) unit="new handshakes/s (wrk, Connection: close, $HS_CONNS conns)" ;;
            h2-clients) unit="new handshakes/s (h2load, $HS_CLIENTS clients x 2 requests)" ;;
            esac
            echo "| $row | $unit | $g | $n | $(awk -v g="$g" -v n="$n" 'BEGIN {printf "%.2f", g / n}') |"
        done
    } | tee "${OUT:-/dev/null}"
}

main "$@"
