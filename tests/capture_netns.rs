//! Traffic capture end to end, in network namespaces made for the test: an "app" namespace
//! whose iptables rules `gofe inject init --capture` installs (the shipped binary, as the
//! init container runs it), the proxy running there as the excluded UID on the bootstrap that
//! same command wrote, and a "backend" namespace across a veth pair.
//!
//! ```text
//!   app netns (10.77.0.1)                                   backend netns (10.77.0.2)
//!   curl 10.77.0.2:8000 ─REDIRECT─▶ :15001 ─▶ route ─────────▶ :8001 canary (not :8000 web)
//!   line client :7000 ───REDIRECT─▶ :15001 ─▶ passthrough ───▶ :7000 line server
//!   line client :7001 (skipped) ──────────────────────────────▶ :7001 line server
//!   app :9080 ◀─ 127.0.0.1:9080 ◀─ route ◀─ :15006 ◀─REDIRECT─ curl 10.77.0.1:9080
//!   app :9090 ◀─ passthrough ◀──────────── :15006 ◀─REDIRECT─ line client 10.77.0.1:9090
//! ```
//!
//! Skips (printing why) only where namespaces or iptables are unavailable (not root, no
//! `ip`, no iptables); CI installs iptables (`.ci/run`). The namespaces and every process are
//! removed by a guard, also when an assertion fails.

#![allow(unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const GOFE: &str = env!("CARGO_BIN_EXE_gofe");
const APP_IP: &str = "10.77.0.1";
const BACKEND_IP: &str = "10.77.0.2";
const PROXY_UID: &str = "2102";
const ADMIN: &str = "127.0.0.1:15000";

/// Namespaces, processes and files of one run; all removed when dropped.
struct Lab {
    app: String,
    backend: String,
    dir: PathBuf,
    children: Vec<Child>,
    made: Vec<String>,
}

impl Lab {
    fn new() -> Result<Lab, String> {
        let id = std::process::id();
        let dir = std::env::temp_dir().join(format!("gofe-capture-{id}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut lab = Lab {
            app: format!("gofe-app-{id}"),
            backend: format!("gofe-be-{id}"),
            dir,
            children: Vec::new(),
            made: Vec::new(),
        };
        for ns in [lab.app.clone(), lab.backend.clone()] {
            run_quiet("ip", &["netns", "add", &ns])?;
            lab.made.push(ns);
        }
        let (app, backend) = (lab.app.clone(), lab.backend.clone());
        lab.exec_ok(
            &app,
            &[
                "ip", "link", "add", "gofe0", "type", "veth", "peer", "name", "gofe1", "netns",
                &backend,
            ],
        )?;
        for (ns, dev, ip) in [(&app, "gofe0", APP_IP), (&backend, "gofe1", BACKEND_IP)] {
            lab.exec_ok(ns, &["ip", "addr", "add", &format!("{ip}/24"), "dev", dev])?;
            lab.exec_ok(ns, &["ip", "link", "set", dev, "up"])?;
            lab.exec_ok(ns, &["ip", "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    fn exec(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .expect("ip runs")
    }

    fn exec_ok(&self, ns: &str, args: &[&str]) -> Result<String, String> {
        let out = self.exec(ns, args);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "{} in {ns}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// Starts `args` in `ns`, logging to a file of the lab's directory.
    fn spawn(&mut self, ns: &str, label: &str, args: &[&str]) {
        let log = std::fs::File::create(self.dir.join(format!("{label}.log"))).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("ip runs");
        self.children.push(child);
    }

    fn logs(&self, label: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{label}.log"))).unwrap_or_default()
    }

    /// Waits (bounded) until `host:port` accepts connections, from inside `ns`.
    fn wait_port(&self, ns: &str, host: &str, port: u16) {
        let out = self.exec(ns, &["python3", &peer(), "wait", host, &port.to_string()]);
        assert!(
            out.status.success(),
            "{host}:{port} never accepted in {ns}; proxy log:\n{}",
            self.logs("proxy")
        );
    }

    fn metrics(&self) -> String {
        self.exec_ok(
            &self.app,
            &["curl", "-sf", &format!("http://{ADMIN}/metrics")],
        )
        .expect("the admin answers")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.made {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_quiet(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{program}: {e}")),
    }
}

fn peer() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/line_peer.py")
        .display()
        .to_string()
}

/// The value of one sample line of `/metrics`.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn outbound(text: &str, prefix: &str) -> f64 {
    metric(
        text,
        &format!("gofe_tcp_proxy_connections_total{{stat_prefix=\"{prefix}\"}}"),
    )
}

/// Waits (bounded) until `path` holds a line; returns the file.
fn log_line(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().next().is_some() {
            return text;
        }
        assert!(Instant::now() < deadline, "nothing in {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An iptables program that works in a fresh namespace (nft first, then legacy), if any.
fn iptables(lab: &Lab) -> Option<String> {
    ["iptables", "iptables-nft", "iptables-legacy"]
        .into_iter()
        .find(|ipt| {
            lab.exec_ok(&lab.app, &[ipt, "-t", "nat", "-L", "-n"])
                .is_ok()
        })
        .map(str::to_owned)
}

#[test]
fn captured_traffic_goes_through_the_proxy_in_a_network_namespace() {
    let lab = match Lab::new() {
        Ok(lab) => lab,
        Err(e) => {
            println!("SKIPPED: network namespaces are not available here: {e}");
            return;
        }
    };
    let Some(ipt) = iptables(&lab) else {
        println!("SKIPPED: no working iptables in a network namespace (apt-get install iptables)");
        return;
    };
    let mut lab = lab;
    let app = lab.app.clone();
    let backend = lab.backend.clone();
    let dir = lab.dir.clone();
    // The proxy (another UID) writes its access logs here.
    Command::new("chmod")
        .arg("0777")
        .arg(&dir)
        .status()
        .unwrap();

    // The init container's work: rules in the app namespace, the bootstrap beside them.
    let bootstrap = dir.join("bootstrap.yaml");
    lab.exec_ok(
        &app,
        &[
            GOFE,
            "inject",
            "init",
            "--capture",
            &format!("--bootstrap-out={}", bootstrap.display()),
            "--xds-address=127.0.0.1:1",
            "--admin-port=15000",
            &format!("--proxy-uid={PROXY_UID}"),
            "--skip-outbound-ports=7001",
            &format!("--iptables={ipt}"),
        ],
    )
    .expect("gofe inject init installs the rules");
    let nat = lab.exec_ok(&app, &[&ipt, "-t", "nat", "-S"]).unwrap();
    assert!(nat.contains("--to-ports 15001"), "{nat}");

    // The sidecar's configuration: the bootstrap's static resources (its capture listeners)
    // plus what a control plane would publish for two destinations.
    let b = gofe_proxy::xds::bootstrap::Bootstrap::load(&bootstrap).expect("bootstrap loads");
    let mut config = b.static_resources;
    assert_eq!(config.listeners.len(), 2, "the two capture listeners");
    let out_log = dir.join("outbound.log");
    let in_log = dir.join("inbound.log");
    let route = |name: &str, addr: &str, cluster: &str, log: &Path| {
        format!(
            "  - name: {name}\n    address: \"{addr}\"\n    bind_to_port: false\n    access_log: [{{ path: \"{}\", format: \"%UPSTREAM_CLUSTER% %UPSTREAM_HOST% %RESPONSE_CODE%\\n\" }}]\n    filters:\n      - type: router\n        config:\n          virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: {cluster} }} }}]\n",
            log.display()
        )
    };
    let extra = format!(
        "listeners:\n{}{}clusters:\n  - {{ name: canary, endpoints: [{{ address: \"{BACKEND_IP}:8001\" }}] }}\n  - {{ name: app-local, endpoints: [{{ address: \"127.0.0.1:9080\" }}] }}\n",
        route("to-web", &format!("{BACKEND_IP}:8000"), "canary", &out_log),
        route("app-9080", &format!("{APP_IP}:9080"), "app-local", &in_log),
    );
    let extra = gofe_proxy::config::parse("extra.yaml", &extra).expect("extra config");
    config.listeners.extend(extra.listeners);
    config.clusters.extend(extra.clusters);
    assert!(gofe_proxy::config::validate(&config).is_empty());
    let config_path = dir.join("proxy.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let config_arg = config_path.display().to_string();

    // Backends across the veth, and the app's own servers.
    let p = peer();
    lab.spawn(
        &backend,
        "web",
        &[
            GOFE,
            "backend",
            "--listen",
            &format!("{BACKEND_IP}:8000"),
            "--name",
            "web",
        ],
    );
    lab.spawn(
        &backend,
        "canary",
        &[
            GOFE,
            "backend",
            "--listen",
            &format!("{BACKEND_IP}:8001"),
            "--name",
            "canary",
        ],
    );
    lab.spawn(
        &backend,
        "line-7000",
        &["python3", &p, "serve", BACKEND_IP, "7000", "line-7000"],
    );
    lab.spawn(
        &backend,
        "line-7001",
        &["python3", &p, "serve", BACKEND_IP, "7001", "line-7001"],
    );
    lab.spawn(
        &app,
        "app",
        &[GOFE, "backend", "--listen", "0.0.0.0:9080", "--name", "app"],
    );
    lab.spawn(
        &app,
        "app-line",
        &["python3", &p, "serve", "0.0.0.0", "9090", "app-line"],
    );
    // The proxy as its UID: the rules let its own connections out as they are.
    lab.spawn(
        &app,
        "proxy",
        &[
            "setpriv",
            &format!("--reuid={PROXY_UID}"),
            &format!("--regid={PROXY_UID}"),
            "--clear-groups",
            "--",
            GOFE,
            "proxy",
            "--config",
            &config_arg,
        ],
    );
    for port in [8000, 8001, 7000, 7001] {
        lab.wait_port(&backend, BACKEND_IP, port);
    }
    // Not the capture ports: a direct connection there is a refused loop (counted in 7.).
    for port in [9080, 9090, 15000] {
        lab.wait_port(&app, "127.0.0.1", port);
    }

    // 1. The app's plain connect to web:8000 is captured, and the route for that destination
    //    sends it to the canary on :8001 (without capture it would be "web").
    let answer = lab
        .exec_ok(
            &app,
            &[
                "curl",
                "-s",
                "-D",
                "-",
                &format!("http://{BACKEND_IP}:8000/hi"),
            ],
        )
        .unwrap();
    assert!(
        answer.contains("x-backend: canary"),
        "{answer}\n{}",
        lab.logs("proxy")
    );
    let line = log_line(&out_log);
    assert_eq!(line.trim(), format!("canary {BACKEND_IP}:8001 200"));

    // 2. A protocol that is not HTTP to a destination no listener has passes through.
    let hello = lab
        .exec_ok(&app, &["python3", &p, "client", BACKEND_IP, "7000", "ping"])
        .unwrap();
    assert_eq!(hello, "HELLO line-7000\nline-7000: ping\n");
    let m = lab.metrics();
    assert_eq!(outbound(&m, "gofe-outbound"), 1.0, "{m}");

    // 3. A skipped port is not redirected: it works, and the proxy never sees it. Nor are
    //    the proxy's own connections (to the canary in 1.): either would be a passthrough.
    let skipped = lab
        .exec_ok(&app, &["python3", &p, "client", BACKEND_IP, "7001", "hi"])
        .unwrap();
    assert_eq!(skipped, "HELLO line-7001\nline-7001: hi\n");
    let m = lab.metrics();
    assert_eq!(outbound(&m, "gofe-outbound"), 1.0, "{m}");

    // 4. Inbound HTTP to the app's port goes through the inbound listener, to 127.0.0.1.
    let answer = lab
        .exec_ok(
            &backend,
            &["curl", "-s", "-D", "-", &format!("http://{APP_IP}:9080/in")],
        )
        .unwrap();
    assert!(answer.contains("x-backend: app"), "{answer}");
    let line = log_line(&in_log);
    assert_eq!(line.trim(), "app-local 127.0.0.1:9080 200");

    // 5. Inbound TCP to another port passes through to the app.
    let hello = lab
        .exec_ok(&backend, &["python3", &p, "client", APP_IP, "9090", "in"])
        .unwrap();
    assert_eq!(hello, "HELLO app-line\napp-line: in\n");
    let m = lab.metrics();
    assert_eq!(outbound(&m, "gofe-inbound"), 1.0, "{m}");

    // 6. The admin port is not redirected inbound (kubelet probes it directly).
    let ready = lab
        .exec_ok(
            &backend,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &format!("http://{APP_IP}:15000/ready"),
            ],
        )
        .unwrap();
    assert_eq!(ready, "200");
    let m = lab.metrics();
    assert_eq!(outbound(&m, "gofe-inbound"), 1.0, "{m}");

    // 7. A connection straight to the capture port is not passed through to itself.
    let _ = lab.exec(
        &app,
        &["python3", &p, "client", "127.0.0.1", "15001", "loop"],
    );
    let m = lab.metrics();
    assert_eq!(
        metric(
            &m,
            "gofe_tcp_proxy_failures_total{reason=\"loop\",stat_prefix=\"gofe-outbound\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(outbound(&m, "gofe-outbound"), 1.0, "{m}");
    drop(lab);
}
