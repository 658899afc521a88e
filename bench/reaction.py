#!/usr/bin/env python3
"""Reaction and recovery times of the loop at its defaults, across processes.

What it measures: one backend in four starts failing half its requests (503) for a fixed time
and is then healed; how long the proxy's own passive outlier detection and the controller's
decisions (arriving at the proxy over xDS) take to eject it, how many client requests fail
meanwhile, and how long after the heal the endpoint is healthy again and back at full weight.

How: every part is its own process on 127.0.0.1, on free ports picked at run time:

  * 4 x `gofe backend --control` (web-1..4);
  * Debian's `prometheus` (its own temporary config and TSDB directory) scraping the proxy's
    admin `/metrics` every `--scrape` seconds (not started with `--source embedded`);
  * `gofe controller run` with a controller file that sets only what it must (proxy_config,
    signals.source, the Prometheus url and scrape_interval, or the embedded scraper's target,
    admin, xds), so the decision interval, the rate window and the whole ejection policy are
    the defaults (`--policy` adds a `policy:` to show shorter settings);
  * `gofe proxy --bootstrap`, steered over xDS; the proxy configuration the controller serves
    is one listener -> cluster `web` (round robin, no retries) of the 4 backends, with the
    chart's passive outlier detection (charts/gofe/files/proxy.yaml: consecutive_5xx 5,
    interval 10s, base_ejection_time 30s, max_ejection_percent 10) or, with `--no-outlier`,
    none.

An open-loop client (threads, http.client keep-alive) sends `--rate` requests/s through the
proxy all along and counts requests and errors (non-2xx or no answer) per second. After a
warm-up of at least three rate windows, web-4 gets `POST /fault?fail_ratio=0.5&fail_status=503`
(`--fail-ratio`) for `--fault` seconds, then `fail_ratio=0`. The proxy's admin `/config_dump` is polled every
100 ms; from web-4's `health_status`, `health_source`, `outlier.state` and `effective_weight`:

  od_eject     fault -> the proxy's own outlier detection ejects it (outlier state not closed)
  ctl_eject    fault -> the controller's ejection is at the proxy (controller: unhealthy or weight 0)
  err          client error rate over the fault, and over its first 10 s
  readmitted   heal -> the controller readmits it for good: its half-open trial passed (the
               start of the last period in which /decisions says `ramping` or `serving`)
  full         heal -> back at full weight at the proxy for good (effective weight >= 90 % of
               its weight before the fault, the outlier breaker closed, until the end)
  expected     two scrape intervals plus two decision intervals (what controller/src/config.rs
               promises for a fault to show in the decisions)

The JSON line also has `serving_after_heal_s` (the proxy sends it requests again for good,
trial weight included), the timeline of web-4's states at the proxy, the controller's
decisions for it with their reasons, and the proxy's ejection counters.

The run ends when the endpoint has been at full weight for 5 s, or `--recover-max` seconds
after the heal. Everything started is stopped at the end, on errors and on Ctrl-C.

Run (needs `prometheus` on the PATH, and a built gofe):

  bench/reaction.py --gofe target/release/gofe --source prometheus --scrape 15
  bench/reaction.py --source prometheus --scrape 15 --no-outlier
  bench/reaction.py --source embedded
  bench/reaction.py --scrape 5 --policy '{ base_ejection_time: "10s", slow_start_window: "10s" }' \
      --od-base-ejection 10s        # shorter ejections and ramp (not the defaults)

Output: a Markdown table row (`--header` prints the table's head first), then one JSON line
with every number; `--keep` keeps the temporary directory (configs and every process's log);
`--table FILE...` prints the table again from earlier runs' output.
"""

import argparse
import http.client
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))

# The chart's passive outlier detection (charts/gofe/files/proxy.yaml).
CHART_OUTLIER = """    outlier_detection:
      consecutive_5xx: 5
      interval: "10s"
      base_ejection_time: "30s"
      max_ejection_percent: 10
"""

HEADER = (
    "| source | scrape | proxy's outlier detection | window s | expected s | proxy ejects s "
    "| controller ejects s | errors in fault | errors in first 10 s | readmitted after heal s "
    "| full weight after heal s |\n"
    "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def http_post(url, timeout=2.0):
    req = urllib.request.Request(url, data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


class Procs:
    """The processes this run started; stop() ends each by its own id."""

    def __init__(self, logdir):
        self.logdir = logdir
        self.procs = []

    def start(self, name, argv):
        log = open(os.path.join(self.logdir, name + ".log"), "wb")
        p = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches this script only; it stops them in order
        )
        self.procs.append((name, p, log))
        return p

    def check(self):
        for name, p, _ in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode} (see {self.logdir}/{name}.log)")

    def stop(self):
        for _, p, _ in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for _, p, log in reversed(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            log.close()
        self.procs = []


def wait_for(what, check, timeout, procs):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        procs.check()
        try:
            if check():
                return
        except Exception as e:  # noqa: BLE001 - not up yet
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what} ({last})")


class Client:
    """Open loop: a scheduler emits `rate` send times per second; workers send them."""

    def __init__(self, host, port, rate, workers=16):
        self.host, self.port, self.rate = host, port, rate
        self.q = queue.Queue()
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.t0 = None
        self.reqs = {}  # second -> requests
        self.errs = {}  # second -> errors
        self.late = 0  # sends more than 1 s behind schedule
        self.threads = [threading.Thread(target=self._schedule, daemon=True)]
        self.threads += [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]

    def start(self):
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()

    def _schedule(self):
        i = 0
        while not self.stop_ev.is_set():
            due = self.t0 + i / self.rate
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            self.q.put(due)
            i += 1

    def _work(self):
        conn = None
        while not self.stop_ev.is_set():
            try:
                due = self.q.get(timeout=0.5)
            except queue.Empty:
                continue
            if time.monotonic() - due > 1.0:
                self.late += 1
            ok = False
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "/")
                r = conn.getresponse()
                r.read()
                ok = 200 <= r.status < 300
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception:  # noqa: BLE001 - an error is what we count
                if conn is not None:
                    conn.close()
                conn = None
            sec = int(due - self.t0)
            with self.lock:
                self.reqs[sec] = self.reqs.get(sec, 0) + 1
                if not ok:
                    self.errs[sec] = self.errs.get(sec, 0) + 1

    def window(self, a, b):
        """Requests and errors sent in [a, b) seconds of the client's clock (monotonic times)."""
        lo, hi = int(a - self.t0), int(b - self.t0)
        with self.lock:
            n = sum(self.reqs.get(s, 0) for s in range(lo, hi))
            e = sum(self.errs.get(s, 0) for s in range(lo, hi))
        return n, e

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=6)


class Poller:
    """Polls the proxy's /config_dump every 100 ms; keeps web-4's state on each change."""

    def __init__(self, admin, address, every=0.1):
        self.url = f"http://{admin}/config_dump"
        self.address = address
        self.every = every
        self.stop_ev = threading.Event()
        self.samples = []  # (monotonic, state tuple), a sample per change
        self.last = None
        self.errors = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def state(ep):
        o = ep.get("outlier") or {}
        return (
            ep.get("health_status"), ep.get("health_source"), o.get("state"),
            ep.get("weight"), ep.get("effective_weight"),
        )

    def current(self):
        _, body = http_get(self.url)
        for ep in json.loads(body).get("endpoints", []):
            if ep.get("cluster") == "web" and ep.get("address") == self.address:
                return self.state(ep)
        return None

    def _run(self):
        while not self.stop_ev.is_set():
            t = time.monotonic()
            try:
                s = self.current()
            except Exception:  # noqa: BLE001
                self.errors += 1
                s = None
            if s is not None and s != self.last:
                self.samples.append((t, s))
                self.last = s
            self.stop_ev.wait(max(0.0, self.every - (time.monotonic() - t)))

    def start(self):
        self.thread.start()

    def stop(self):
        self.stop_ev.set()
        self.thread.join(timeout=3)


class DecisionPoller:
    """Polls the controller's /decisions/web every 0.5 s; keeps web-4's decided state and its
    reason on each change of state, health, weight or reason."""

    def __init__(self, admin, address, every=0.5):
        self.url = f"http://{admin}/decisions/web"
        self.address = address
        self.every = every
        self.stop_ev = threading.Event()
        self.samples = []  # (monotonic, (state, healthy, weight), reason)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        last = None
        while not self.stop_ev.is_set():
            t = time.monotonic()
            try:
                _, body = http_get(self.url)
                for ep in json.loads(body).get("endpoints", []):
                    if ep.get("endpoint") == self.address:
                        k = (ep.get("state"), ep.get("healthy"), ep.get("weight"))
                        if (k, ep.get("reason")) != last:
                            self.samples.append((t, k, ep.get("reason")))
                            last = (k, ep.get("reason"))
            except Exception:  # noqa: BLE001
                pass
            self.stop_ev.wait(self.every)

    def start(self):
        self.thread.start()

    def stop(self):
        self.stop_ev.set()
        self.thread.join(timeout=3)


def first_after(samples, t, pred):
    for ts, s in samples:
        if ts >= t and pred(s):
            return ts
    return None


def last_period_start(samples, t, pred):
    """Start of the period after t during which pred holds to the end: t if it held at t and
    never broke, None if it does not hold at the end."""
    start = None
    for ts, s in samples:
        if ts <= t:
            start = t if pred(s) else None
        elif pred(s):
            start = ts if start is None else start
        else:
            start = None
    return start


def controller_yaml(args, ports, proxy_yaml):
    if args.source == "prometheus":
        signals = (
            "signals:\n  source: prometheus\n"
            f"  prometheus: {{ url: \"http://127.0.0.1:{ports['prom']}\", "
            f"scrape_interval: \"{args.scrape}s\" }}\n"
        )
    else:
        signals = (
            "signals:\n  source: embedded\n"
            f"  embedded: {{ targets: [\"127.0.0.1:{ports['proxy_admin']}\"] }}\n"
        )
    policy = f"policy: {args.policy}\n" if args.policy else ""
    return (
        "# bench/reaction.py: only what must be set; every timing and the policy are defaults.\n"
        f"proxy_config: \"{proxy_yaml}\"\n{signals}{policy}"
        f"admin: {{ address: \"127.0.0.1:{ports['ctl_admin']}\" }}\n"
        f"xds: {{ address: \"127.0.0.1:{ports['xds']}\" }}\n"
    )


def proxy_yaml(args, ports):
    eps = "".join(
        f"      - {{ address: \"127.0.0.1:{p}\" }}\n" for p in ports["backends"]
    )
    return (
        "listeners:\n"
        "  - name: \"http\"\n"
        f"    address: \"127.0.0.1:{ports['listener']}\"\n"
        "    filters:\n"
        "      - type: \"router\"\n"
        "        config:\n"
        "          virtual_hosts:\n"
        "            - name: \"all\"\n"
        "              domains: [\"*\"]\n"
        "              routes:\n"
        "                - match: { prefix: \"/\" }\n"
        "                  route: { cluster: \"web\" }\n"
        "clusters:\n"
        "  - name: \"web\"\n"
        "    lb_policy: \"round_robin\"\n"
        "    connect_timeout: \"1s\"\n"
        + ("" if args.no_outlier else CHART_OUTLIER.replace('"30s"', f'"{args.od_base_ejection}"'))
        + "    endpoints:\n" + eps
    )


def run(args):
    interval = 2.0  # the controller's default decision interval
    scrape = args.scrape if args.source == "prometheus" else interval
    window = 2 * scrape + interval  # SignalsConfig::window's default
    expected = 2 * scrape + 2 * interval  # config.rs: "about two scrape intervals plus two decision intervals"
    warmup = max(args.warmup, 3 * window)

    tmp = tempfile.mkdtemp(prefix="gofe-reaction-")
    procs = Procs(tmp)
    client = poller = None
    ports = {
        "backends": [free_port() for _ in range(4)],
        "controls": [free_port() for _ in range(4)],
        "prom": free_port(), "ctl_admin": free_port(), "xds": free_port(),
        "proxy_admin": free_port(), "listener": free_port(),
    }
    faulty = f"127.0.0.1:{ports['backends'][3]}"
    control = f"127.0.0.1:{ports['controls'][3]}"
    try:
        for i, (bp, cp) in enumerate(zip(ports["backends"], ports["controls"]), 1):
            procs.start(f"web-{i}", [args.gofe, "backend", "--listen", f"127.0.0.1:{bp}",
                                     "--name", f"web-{i}", "--control", f"127.0.0.1:{cp}"])
        px = os.path.join(tmp, "proxy.yaml")
        with open(px, "w") as f:
            f.write(proxy_yaml(args, ports))
        cy = os.path.join(tmp, "controller.yaml")
        with open(cy, "w") as f:
            f.write(controller_yaml(args, ports, px))
        by = os.path.join(tmp, "bootstrap.yaml")
        with open(by, "w") as f:
            f.write(
                "node: { id: \"proxy-1\", cluster: \"web\" }\n"
                f"xds_server: {{ address: \"127.0.0.1:{ports['xds']}\" }}\n"
                f"static_resources: {{ admin: {{ address: \"127.0.0.1:{ports['proxy_admin']}\" }} }}\n"
            )
        if args.source == "prometheus":
            py = os.path.join(tmp, "prometheus.yml")
            with open(py, "w") as f:
                f.write(
                    f"global: {{ scrape_interval: {args.scrape}s, evaluation_interval: {args.scrape}s, "
                    f"scrape_timeout: {min(args.scrape, 10)}s }}\n"
                    "scrape_configs:\n  - job_name: gofe-proxy\n"
                    f"    static_configs: [ {{ targets: [\"127.0.0.1:{ports['proxy_admin']}\"] }} ]\n"
                )
            procs.start("prometheus", [
                args.prometheus, f"--config.file={py}", f"--storage.tsdb.path={tmp}/tsdb",
                f"--web.listen-address=127.0.0.1:{ports['prom']}", "--log.level=warn",
            ])
        procs.start("controller", [args.gofe, "controller", "run", "--config", cy])
        procs.start("proxy", [args.gofe, "proxy", "--bootstrap", by])

        for cp in ports["controls"]:
            wait_for("backend control", lambda cp=cp: http_get(f"http://127.0.0.1:{cp}/fault")[0] == 200, 30, procs)
        if args.source == "prometheus":
            wait_for("prometheus", lambda: http_get(f"http://127.0.0.1:{ports['prom']}/-/ready")[0] == 200, 60, procs)
        poller = Poller(f"127.0.0.1:{ports['proxy_admin']}", faulty)
        # The controller's first publication: the endpoint's health set by the controller.
        wait_for("the controller's endpoints at the proxy",
                 lambda: (poller.current() or (None, None))[1] == "controller", 60, procs)

        client = Client("127.0.0.1", ports["listener"], args.rate)
        client.start()
        poller.start()
        dpoller = DecisionPoller(f"127.0.0.1:{ports['ctl_admin']}", faulty)
        dpoller.start()
        log(f"warm-up {warmup:.0f}s (window {window:.0f}s)")
        sleep_checked(warmup, procs)
        base = poller.last
        base_weight = base[4] if base else None
        if not base or base[0] != "healthy" or not base_weight:
            raise RuntimeError(f"{faulty} not healthy at full weight after the warm-up: {base}")

        t_fault = time.monotonic()
        http_post(f"http://{control}/fault?fail_ratio={args.fail_ratio}&fail_status=503")
        log(f"fault on {faulty} for {args.fault}s")
        sleep_checked(args.fault, procs)
        t_heal = time.monotonic()
        http_post(f"http://{control}/fault?fail_ratio=0")
        log("healed")

        def full(s):
            return s[0] == "healthy" and s[2] in (None, "closed") and (s[4] or 0) >= 0.9 * base_weight

        def serving(s):
            return s[0] == "healthy" and s[2] in (None, "closed") and (s[4] or 0) > 0

        end = t_heal + args.recover_max
        while time.monotonic() < end:
            sleep_checked(0.5, procs)
            s = poller.last
            t = poller.samples[-1][0] if poller.samples else 0
            if s and full(s) and t >= t_heal and time.monotonic() - t >= 5:
                break
            if s and full(s) and t < t_heal and time.monotonic() - t_heal >= 5:
                break  # never left full weight
        t_end = time.monotonic()
        client.stop()
        poller.stop()
        dpoller.stop()
        snap = list(poller.samples)
        try:
            _, m = http_get(f"http://127.0.0.1:{ports['proxy_admin']}/metrics")
            proxy_ejections = [
                line for line in m.decode().splitlines()
                if "eject" in line and not line.startswith("#") and faulty in line
                and not line.rstrip().endswith(" 0")
            ]
        except Exception as e:  # noqa: BLE001
            proxy_ejections = [str(e)]

        def rel(t, t_ref):
            return None if t is None else round(t - t_ref, 1)

        od = first_after(snap, t_fault, lambda s: s[2] not in (None, "closed"))
        ctl = first_after(snap, t_fault, lambda s: s[1] == "controller" and (s[0] != "healthy" or s[3] == 0))
        n_f, e_f = client.window(t_fault, t_heal)
        n_10, e_10 = client.window(t_fault, t_fault + 10)
        n_w, e_w = client.window(t_fault - warmup + 5, t_fault)
        n_r, e_r = client.window(t_heal, t_end)
        healthy = last_period_start(snap, t_heal, serving)
        readmitted = last_period_start(
            [(ts, k) for ts, k, _ in dpoller.samples], t_heal,
            lambda k: k[0] in ("ramping", "serving") and k[1])
        full_at = last_period_start(snap, t_heal, full)
        ejections_ctl = sum(
            1 for (_, a), (ts, b) in zip(snap, snap[1:])
            if ts >= t_fault and a[0] == "healthy" and b[0] != "healthy"
        )
        ejections_od = sum(
            1 for (_, a), (ts, b) in zip(snap, snap[1:])
            if ts >= t_fault and a[2] == "closed" and b[2] == "open"
        )
        try:
            _, dec = http_get(f"http://127.0.0.1:{ports['ctl_admin']}/decisions/web")
            decisions = json.loads(dec)
        except Exception as e:  # noqa: BLE001
            decisions = {"error": str(e)}
        procs.check()
        result = {
            "source": args.source,
            "scrape_s": args.scrape if args.source == "prometheus" else None,
            "outlier_detection": not args.no_outlier,
            "policy": args.policy, "od_base_ejection": args.od_base_ejection,
            "interval_s": interval, "window_s": window, "expected_ctl_eject_s": expected,
            "rate": args.rate, "fault_s": args.fault, "fail_ratio": args.fail_ratio, "warmup_s": warmup,
            "od_eject_s": rel(od, t_fault), "ctl_eject_s": rel(ctl, t_fault),
            "od_ejections": ejections_od, "ctl_ejections": ejections_ctl,
            "requests_fault": n_f, "errors_fault": e_f,
            "error_pct_fault": round(100 * e_f / n_f, 2) if n_f else None,
            "requests_first10": n_10, "errors_first10": e_10,
            "error_pct_first10": round(100 * e_10 / n_10, 2) if n_10 else None,
            "errors_warmup": e_w, "requests_warmup": n_w,
            "errors_after_heal": e_r, "requests_after_heal": n_r,
            "serving_after_heal_s": rel(healthy, t_heal),
            "readmitted_after_heal_s": rel(readmitted, t_heal),
            "full_after_heal_s": rel(full_at, t_heal),
            "recover_max_s": args.recover_max,
            "base_weight": base_weight, "client_late": client.late, "poll_errors": poller.errors,
            "timeline": [
                {"t": round(ts - t_fault, 2), "health": s[0], "source": s[1], "outlier": s[2],
                 "weight": s[3], "effective_weight": s[4]}
                for ts, s in snap
            ],
            "decisions": [
                {"t": round(ts - t_fault, 2), "state": k[0], "healthy": k[1], "weight": k[2], "reason": why}
                for ts, k, why in dpoller.samples
            ],
            "proxy_ejection_metrics": proxy_ejections,
            "decisions_at_end": decisions,
        }
        return result
    finally:
        if client:
            client.stop()
        if poller:
            poller.stop()
        procs.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def sleep_checked(seconds, procs):
    end = time.monotonic() + seconds
    while True:
        procs.check()
        d = end - time.monotonic()
        if d <= 0:
            return
        time.sleep(min(d, 0.5))


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fmt(v, unit=""):
    return "–" if v is None else f"{v}{unit}"


def row(r):
    scrape = f"{r['scrape_s']} s" if r["scrape_s"] else "per decision"
    od = "chart's" if r["outlier_detection"] else "off"
    if r.get("outlier_detection") and r.get("od_base_ejection", "30s") != "30s":
        od += f", base_ejection_time {r['od_base_ejection']}"
    if r.get("fail_ratio", 0.5) != 0.5:
        od += f"; web-4 fails {r['fail_ratio']:.0%}"
    if r.get("policy"):
        od += f"; controller policy `{r['policy']}`"
    never = f"> {r['recover_max_s']:g}"
    return (
        f"| {r['source']} | {scrape} | {od} | {r['window_s']:g} | {r['expected_ctl_eject_s']:g} "
        f"| {fmt(r['od_eject_s'])} | {fmt(r['ctl_eject_s'])} | {fmt(r['error_pct_fault'], '%')} "
        f"| {fmt(r['error_pct_first10'], '%')} | {fmt(r['readmitted_after_heal_s']) if r['readmitted_after_heal_s'] is not None else never} "
        f"| {fmt(r['full_after_heal_s']) if r['full_after_heal_s'] is not None else never} |"
    )


def table(paths):
    """Re-renders the rows of earlier runs from their JSON lines (files of this script's output)."""
    print(HEADER)
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.startswith("{"):
                    r = json.loads(line)
                    if "readmitted_after_heal_s" not in r:  # output of an earlier version
                        heal = r["fault_s"]
                        t = last_period_start(
                            [(d["t"], d) for d in r["decisions"]], heal,
                            lambda d: d["state"] in ("ramping", "serving") and d["healthy"])
                        r["readmitted_after_heal_s"] = None if t is None else round(t - heal, 1)
                    print(row(r))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gofe", default=os.environ.get("GOFE", os.path.join(HERE, "..", "target", "release", "gofe")))
    ap.add_argument("--prometheus", default=shutil.which("prometheus") or "prometheus")
    ap.add_argument("--source", choices=["prometheus", "embedded"], default="prometheus")
    ap.add_argument("--scrape", type=int, default=15, help="Prometheus' scrape interval, seconds")
    ap.add_argument("--no-outlier", action="store_true", help="no passive outlier detection in the proxy")
    ap.add_argument("--policy", metavar="YAML", help="the controller's policy (a YAML flow mapping, "
                    "e.g. '{ base_ejection_time: \"10s\" }'); default: none, every policy default")
    ap.add_argument("--od-base-ejection", default="30s", help="the proxy's base_ejection_time (the chart's: 30s)")
    ap.add_argument("--fail-ratio", type=float, default=0.5, help="the share of web-4's requests that fail")
    ap.add_argument("--rate", type=float, default=100.0, help="client requests per second")
    ap.add_argument("--fault", type=float, default=60.0, help="seconds web-4 fails half its requests")
    ap.add_argument("--warmup", type=float, default=30.0, help="at least this, and three rate windows")
    ap.add_argument("--recover-max", type=float, default=180.0, help="give up this long after the heal")
    ap.add_argument("--header", action="store_true", help="print the table's head first")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--table", nargs="+", metavar="FILE", help="only print the table of earlier runs' output files")
    args = ap.parse_args()
    if args.table:
        table(args.table)
        return 0

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        r = run(args)
    except KeyboardInterrupt:
        log("interrupted; everything started was stopped")
        return 130
    except Exception as e:  # noqa: BLE001
        log(f"error: {e}")
        return 1
    if args.header:
        print(HEADER)
    print(row(r))
    print(json.dumps(r, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
