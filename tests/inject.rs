//! `gofe inject` as a user runs it: manifests on stdin or in files, injected manifests on
//! stdout, a line per pod template on stderr, and errors naming the document and field; and
//! `gofe inject init --dry-run`, whose bootstrap the proxy's own parser accepts.

#![allow(unreachable_pub)]

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

fn gofe(args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gofe"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gofe runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

const MANIFESTS: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: web, namespace: shop }\nspec:\n  selector: { matchLabels: { app: web } }\n  template:\n    metadata:\n      labels: { app: web }\n      annotations: { gofe.io/proxy-cpu: 300m }\n    spec:\n      containers: [{ name: web, image: nginx }]\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata: { name: report }\nspec:\n  schedule: '@daily'\n  jobTemplate:\n    spec:\n      template:\n        metadata: { annotations: { gofe.io/inject: disabled } }\n        spec: { restartPolicy: Never, containers: [{ name: r, image: r }] }\n";

#[test]
fn gofe_inject_adds_the_proxy_and_a_second_run_changes_nothing() {
    let (ok, out, err) = gofe(
        &["inject", "--image", "r.example/gofe:1", "--legacy-sidecar"],
        MANIFESTS,
    );
    assert!(ok, "{err}");
    assert_eq!(
        err,
        "stdin: Deployment shop/web: injected\nstdin: CronJob report: gofe.io/inject: disabled, unchanged\n"
    );
    let docs: Vec<Value> = serde_saphyr::from_multiple(&out).unwrap();
    assert_eq!(docs.len(), 2);
    let containers = docs[0]["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers[1]["name"], "gofe-proxy");
    assert_eq!(containers[1]["image"], "r.example/gofe:1");
    assert_eq!(containers[1]["resources"]["requests"]["cpu"], "300m");
    assert!(docs[1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        .get("initContainers")
        .is_none());
    let (ok, again, err) = gofe(
        &["inject", "--image", "r.example/gofe:1", "--legacy-sidecar"],
        &out,
    );
    assert!(ok, "{err}");
    assert_eq!(again, out);
    assert!(
        err.starts_with("stdin: Deployment shop/web: already injected, unchanged\n"),
        "{err}"
    );
}

#[test]
fn gofe_inject_reports_malformed_input_by_document_and_field() {
    let bad = MANIFESTS.replace(
        "containers: [{ name: web, image: nginx }]",
        "containers: [{ image: nginx }]",
    );
    let (ok, out, err) = gofe(&["inject"], &bad);
    assert!(!ok);
    assert!(out.is_empty());
    assert!(
        err.contains("stdin: document 0 (Deployment shop/web): spec.template.spec.containers[0].name: a container needs a name"),
        "{err}"
    );
    let (ok, _, err) = gofe(&["inject", "--proxy-cpu", "lots"], MANIFESTS);
    assert!(!ok);
    assert!(
        err.contains("--proxy-cpu: expected a Kubernetes quantity"),
        "{err}"
    );
}

#[test]
fn the_init_container_s_bootstrap_is_one_the_proxy_accepts() {
    let (ok, out, err) = gofe(
        &[
            "inject",
            "init",
            "--dry-run",
            "--bootstrap-out=/var/run/gofe/bootstrap.yaml",
            "--xds-address=gofe-controller.gofe-system.svc:18000",
            "--capture",
            "--skip-outbound-ports=5432",
        ],
        "",
    );
    assert!(ok, "{err}");
    let (bootstrap, rules): (Vec<&str>, Vec<&str>) =
        out.lines().partition(|l| !l.starts_with("iptables "));
    let dir = std::env::temp_dir().join(format!("gofe-inject-init-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bootstrap.yaml");
    std::fs::write(&path, bootstrap.join("\n")).unwrap();
    let b = gofe_proxy::xds::bootstrap::Bootstrap::load(&path).expect("the proxy accepts it");
    assert_eq!(
        b.xds_server.address,
        "gofe-controller.gofe-system.svc:18000"
    );
    let _ = std::fs::remove_dir_all(&dir);
    // The capture listeners, on the ports the rules redirect to, pass the proxy's validation.
    let capture: Vec<(&str, bool)> = b
        .static_resources
        .listeners
        .iter()
        .map(|l| (l.address.as_str(), l.use_original_dst))
        .collect();
    assert_eq!(capture, [("0.0.0.0:15001", true), ("0.0.0.0:15006", true)]);
    assert!(gofe_proxy::config::validate(&b.static_resources).is_empty());
    for port in [15001, 15006] {
        let redirect = format!("-j REDIRECT --to-ports {port}");
        assert!(rules.iter().any(|r| r.ends_with(&redirect)), "{rules:?}");
    }
    assert!(
        rules.contains(&"iptables -t nat -A GOFE_OUTPUT -p tcp --dport 5432 -j RETURN"),
        "{rules:?}"
    );
    assert!(
        rules.contains(&"iptables -t nat -A GOFE_OUTPUT -m owner --uid-owner 2102 -j RETURN"),
        "{rules:?}"
    );
}
