#!/usr/bin/env python3
"""The sidecar-injection webhook's latency at a paced rate, beside nginx over the same TLS.

`gofe controller run` serves the admission webhook (`webhook:` in its file) on 127.0.0.1 with a
self-signed certificate (openssl); open-loop pollers send `admission.k8s.io/v1` AdmissionReviews
of a Pod to inject at RATE per second for SECONDS, each on a kept-alive HTTPS connection (as the
API server's client pools them), and every answer is checked: allowed, with a JSONPatch that adds
the sidecar. The peer is nginx on the same certificate answering a canned AdmissionReview of the
same size with `return 200`: the floor for TLS, HTTP and this client, measured in the same run.

    bench/webhook.py [--gofe target/release/gofe] [--rate 100] [--seconds 30] [--conns 4]

Prints a Markdown table (p50, p90, p99, max in ms, answers checked) and one JSON line per server.
Needs `openssl` and `nginx` (Debian packages). Everything it starts it stops.
"""

import argparse
import base64
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

REVIEW = json.dumps({
    "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
    "request": {
        "uid": "b9a1c3f0-0000-4000-8000-000000000001",
        "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE", "namespace": "shop",
        "object": {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-", "namespace": "shop",
                         "labels": {"app": "web"}, "annotations": {}},
            "spec": {"containers": [{"name": "web", "image": "nginx",
                                     "ports": [{"containerPort": 8080}]}]},
        },
    },
}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port}")


def check_gofe(body: bytes) -> bool:
    answer = json.loads(body)
    r = answer.get("response", {})
    if not r.get("allowed") or r.get("uid") != "b9a1c3f0-0000-4000-8000-000000000001":
        return False
    patch = json.loads(base64.b64decode(r.get("patch", "")))
    return any("gofe" in json.dumps(op) for op in patch)


def check_peer(body: bytes) -> bool:
    return json.loads(body).get("response", {}).get("allowed") is True


def run_load(port: int, ctx: ssl.SSLContext, rate: float, seconds: float, conns: int, check) -> dict:
    """Open loop: request i is due at start + i / rate; each of `conns` threads takes every
    conns-th one on its own connection. Latency counts from the due time (no coordinated
    omission): a late send is the server's delay too."""
    total = int(rate * seconds)
    start = time.monotonic() + 0.5
    latencies: list[float] = []
    bad = [0]
    lock = threading.Lock()

    def worker(k: int) -> None:
        conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
        mine = []
        wrong = 0
        for i in range(k, total, conns):
            due = start + i / rate
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            try:
                conn.request("POST", "/inject", body=REVIEW,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200 and check(body)
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                conn.close()
                conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
            mine.append(time.monotonic() - due)
            wrong += 0 if ok else 1
        conn.close()
        with lock:
            latencies.extend(mine)
            bad[0] += wrong

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0

    return {"requests": len(latencies), "bad": bad[0], "p50_ms": q(0.50), "p90_ms": q(0.90),
            "p99_ms": q(0.99), "max_ms": latencies[-1] * 1000 if latencies else 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gofe", default=os.environ.get("GOFE_BIN", "target/release/gofe"))
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--conns", type=int, default=4)
    args = ap.parse_args()
    for tool in ("openssl", "nginx"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found (Debian: apt-get install {tool})")
    work = tempfile.mkdtemp(prefix="gofe-webhook-bench-")
    procs: list[subprocess.Popen] = []
    try:
        crt, key = os.path.join(work, "tls.crt"), os.path.join(work, "tls.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                        "-days", "1", "-keyout", key, "-out", crt], check=True, capture_output=True)
        ctx = ssl.create_default_context(cafile=crt)
        hook, admin, nginx_port = free_port(), free_port(), free_port()
        with open(os.path.join(work, "proxy.yaml"), "w") as f:
            f.write("clusters:\n  - { name: web, endpoints: [] }\n")
        with open(os.path.join(work, "controller.yaml"), "w") as f:
            f.write(f"proxy_config: proxy.yaml\nadmin: {{ address: \"127.0.0.1:{admin}\" }}\n"
                    f"webhook:\n  address: \"127.0.0.1:{hook}\"\n  cert_file: tls.crt\n  key_file: tls.key\n"
                    f"  sidecar: {{ image: \"gofe:bench\", xds_address: \"gofe-controller:18000\" }}\n")
        log = open(os.path.join(work, "controller.log"), "w")
        procs.append(subprocess.Popen([args.gofe, "controller", "run", "--config",
                                       os.path.join(work, "controller.yaml")],
                                      stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "RUST_LOG": "warn"}))
        wait_port(hook, "gofe's webhook")
        # The peer answers a canned AdmissionReview as large as gofe's answer.
        sample = http.client.HTTPSConnection("localhost", hook, context=ctx, timeout=10)
        sample.request("POST", "/inject", body=REVIEW, headers={"Content-Type": "application/json"})
        canned = sample.getresponse().read()
        sample.close()
        answer = json.loads(canned)
        answer["response"].pop("patch", None)
        answer["response"].pop("patchType", None)
        peer_body = json.dumps(answer)
        peer_body += " " * max(0, len(canned) - len(peer_body))
        if "'" in peer_body:
            raise SystemExit("the canned answer has a quote nginx's return cannot carry")
        with open(os.path.join(work, "nginx.conf"), "w") as f:
            f.write(f"""worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  server {{
    listen 127.0.0.1:{nginx_port} ssl;
    ssl_certificate {crt};
    ssl_certificate_key {key};
    keepalive_requests 100000;
    location = /inject {{ default_type application/json; return 200 '{peer_body}'; }}
  }}
}}
""")
        procs.append(subprocess.Popen(["nginx", "-p", work, "-c", os.path.join(work, "nginx.conf"),
                                       "-g", "daemon off;"], stderr=subprocess.DEVNULL))
        wait_port(nginx_port, "nginx")
        results = {}
        for name, port, check in (("gofe webhook", hook, check_gofe), ("nginx (canned answer)", nginx_port, check_peer)):
            run_load(port, ctx, args.rate, 3, args.conns, check)  # warm-up
            results[name] = run_load(port, ctx, args.rate, args.seconds, args.conns, check)
        print(f"\n{int(args.rate)} AdmissionReviews/s for {args.seconds:.0f} s, {args.conns} kept-alive connections\n")
        print("| server | requests | wrong answers | p50 ms | p90 ms | p99 ms | max ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, r in results.items():
            print(f"| {name} | {r['requests']} | {r['bad']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
                  f"{r['p99_ms']:.2f} | {r['max_ms']:.2f} |")
        for name, r in results.items():
            print(json.dumps({"server": name, **r}))
        return 0 if all(r["bad"] == 0 for r in results.values()) else 1
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
