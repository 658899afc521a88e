//! The Helm chart (`charts/gofe`), first without Helm (the template text itself), then through
//! real Helm:
//!
//! - the committed CRD is exactly what `gofe controller crd` prints (drift check);
//! - every template is YAML once its template actions are taken out, along the first branch of
//!   every `if`/`with`/`range` and along the last (so both sides of an `else` are read);
//! - the RBAC grants exactly the API calls the controller makes (controller/src/kubernetes),
//!   with no wildcard, and the adapter is registered and bound as an aggregated API server;
//! - the configuration files the chart ships (charts/gofe/files), and the controller file as
//!   the chart assembles it from values.yaml, are accepted by gofe's own parsers;
//! - the Grafana dashboard (files/dashboards/gofe.json) queries only metric names the code
//!   exports;
//! - real Helm renders and lints the chart, every object is valid for the oldest and newest
//!   Kubernetes the chart supports, and bad values fail the schema: tests/helm_chart_check.py
//!   (PyPI's helm-python-sdk and kubernetes-validate; see its doc).
//!
//! What this cannot check: Helm's `lookup` against a cluster, and anything a live cluster
//! would (admission, the aggregator's TLS).

#![allow(unreachable_pub)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

/// What an inline `{{ ... }}` becomes.
const PLACEHOLDER: &str = "TEMPLATED";

fn chart() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
        .join("charts/gofe")
}

fn read(rel: &str) -> String {
    let path = chart().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// === the CRD ===

#[test]
fn crd_is_what_gofe_controller_crd_prints() {
    let out = Command::new(env!("CARGO_BIN_EXE_gofe"))
        .args(["controller", "crd"])
        .output()
        .expect("gofe runs");
    assert!(out.status.success(), "gofe controller crd failed: {out:?}");
    let printed = String::from_utf8(out.stdout).expect("UTF-8");
    let committed = read("crds/trafficpolicy.yaml");
    assert!(
        committed == printed,
        "charts/gofe/crds/trafficpolicy.yaml differs from `gofe controller crd`; regenerate it:\n  \
         cargo run -q -- controller crd > charts/gofe/crds/trafficpolicy.yaml"
    );
}

// === templates without Helm ===

/// Which side of each `if`/`with`/`range` block to keep.
#[derive(Clone, Copy, Debug)]
enum Branch {
    /// The first body (the condition holds).
    First,
    /// The last `else` body, or the body when there is no `else`.
    Last,
}

enum Node {
    Line(String),
    Block(Vec<Vec<Node>>),
}

enum Action {
    Open,
    Else,
    End,
    Other,
}

/// A line that is one template action and nothing else, and which kind.
fn whole_line_action(line: &str) -> Option<Action> {
    let t = line.trim();
    if !(t.starts_with("{{") && t.ends_with("}}")) || t[2..t.len() - 2].contains("}}") {
        return None;
    }
    let inner = t[2..t.len() - 2].trim_start_matches('-').trim();
    let word = inner.split_whitespace().next().unwrap_or_default();
    Some(match word {
        "if" | "with" | "range" | "define" => Action::Open,
        "else" => Action::Else,
        "end" => Action::End,
        _ => Action::Other,
    })
}

/// Parses lines up to the `end` (or `else`) that closes the current block.
fn parse_block<'a>(
    lines: &mut impl Iterator<Item = (usize, &'a str)>,
    name: &str,
    top: bool,
) -> (Vec<Node>, Option<Action>) {
    let mut nodes = Vec::new();
    while let Some((no, line)) = lines.next() {
        match whole_line_action(line) {
            None => nodes.push(Node::Line(line.to_owned())),
            Some(Action::Other) => {}
            Some(Action::Open) => {
                let mut branches = Vec::new();
                loop {
                    let (body, closed_by) = parse_block(lines, name, false);
                    branches.push(body);
                    match closed_by {
                        Some(Action::Else) => continue,
                        Some(Action::End) => break,
                        _ => panic!("{name}:{}: block never closed", no + 1),
                    }
                }
                nodes.push(Node::Block(branches));
            }
            Some(a @ (Action::Else | Action::End)) => {
                assert!(!top, "{name}:{}: else/end without a block", no + 1);
                return (nodes, Some(a));
            }
        }
    }
    (nodes, None)
}

/// Replaces every inline `{{ ... }}` with the placeholder.
fn substitute(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .unwrap_or_else(|| panic!("unclosed action in {line:?}"));
        out.push_str(PLACEHOLDER);
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    out
}

fn emit(nodes: &[Node], branch: Branch, out: &mut String) {
    for node in nodes {
        match node {
            Node::Line(line) => {
                out.push_str(&substitute(line));
                out.push('\n');
            }
            Node::Block(branches) => {
                let body = match branch {
                    Branch::First => &branches[0],
                    Branch::Last => branches.last().expect("a block has a body"),
                };
                emit(body, branch, out);
            }
        }
    }
}

/// The template as YAML text: whole-line actions out, inline ones replaced, one side of
/// every block kept.
fn render(name: &str, text: &str, branch: Branch) -> String {
    let mut lines = text.lines().enumerate();
    let (nodes, _) = parse_block(&mut lines, name, true);
    let mut out = String::new();
    emit(&nodes, branch, &mut out);
    out
}

/// The YAML documents of a text (split on `---` lines; documents of comments only dropped).
fn documents(name: &str, text: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String| {
        let has_content = current
            .lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
        if has_content {
            let doc: Value = gofe_yaml::from_str(current).unwrap_or_else(|p| {
                panic!(
                    "{name}: not YAML after removing template actions: {}\n{current}",
                    p.in_file(name)
                )
            });
            docs.push(doc);
        }
        current.clear();
    };
    for line in text.lines() {
        if line.trim_end() == "---" {
            flush(&mut current);
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    flush(&mut current);
    docs
}

/// Every Kubernetes object the templates hold, along one branch.
fn objects(branch: Branch) -> Vec<(String, Value)> {
    let dir = chart().join("templates");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("templates/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "templates found: {names:?}");
    let mut out = Vec::new();
    for name in names {
        let text = read(&format!("templates/{name}"));
        for doc in documents(&name, &render(&name, &text, branch)) {
            out.push((name.clone(), doc));
        }
    }
    out
}

#[test]
fn the_stripper_keeps_one_side_of_each_block() {
    let text =
        "a: 1\n{{- if .x }}\nb: {{ .y }}\n{{- else }}\nc: 3\n{{- end }}\n{{- include \"z\" . }}\n";
    assert_eq!(render("t", text, Branch::First), "a: 1\nb: TEMPLATED\n");
    assert_eq!(render("t", text, Branch::Last), "a: 1\nc: 3\n");
}

#[test]
fn every_template_is_kubernetes_yaml_along_either_branch() {
    for branch in [Branch::First, Branch::Last] {
        for (name, doc) in objects(branch) {
            for field in ["apiVersion", "kind"] {
                assert!(
                    doc[field].as_str().is_some_and(|s| !s.is_empty()),
                    "{name} ({branch:?}): a document without {field}: {doc}"
                );
            }
            assert!(
                doc["metadata"]["name"].as_str().is_some(),
                "{name} ({branch:?}): a document without metadata.name: {doc}"
            );
        }
    }
}

fn find<'a>(objects: &'a [(String, Value)], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .map(|(_, o)| o)
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// (apiGroup, resource) → verbs, from a role's rules; wildcards refused.
fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let strings = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .unwrap_or_else(|| panic!("rule without {key}: {rule}"))
                .iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect()
        };
        for group in strings("apiGroups") {
            for resource in strings("resources") {
                for verb in strings("verbs") {
                    for s in [&group, &resource, &verb] {
                        assert!(!s.contains('*'), "wildcard in {rule}");
                    }
                    out.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    out
}

fn set(items: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    items
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect()
}

#[test]
fn controller_rbac_is_exactly_the_calls_it_makes() {
    let controller = format!("{PLACEHOLDER}-controller");
    let lease_role = format!("{PLACEHOLDER}-controller-leader-election");
    for branch in [Branch::First, Branch::Last] {
        let objects = objects(branch);
        // controller/src/kubernetes.rs: reflectors (list + watch) on TrafficPolicies and
        // EndpointSlices, merge-patched .status, and kube's event Recorder (create, then
        // patch for a repeat).
        let cluster_role = find(&objects, "ClusterRole", &controller);
        assert_eq!(
            grants(cluster_role),
            set(&[
                ("gofe.io", "trafficpolicies", &["list", "watch"]),
                ("gofe.io", "trafficpolicies/status", &["patch"]),
                ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
                ("", "nodes", &["list", "watch"]),
                ("events.k8s.io", "events", &["create", "patch"]),
            ]),
            "{branch:?}"
        );
        // ca.rs: the mesh CA's TokenReviews (cluster-scoped: bound cluster-wide always).
        let reviewer = format!("{PLACEHOLDER}-controller-tokenreview");
        assert_eq!(
            grants(find(&objects, "ClusterRole", &reviewer)),
            set(&[("authentication.k8s.io", "tokenreviews", &["create"])]),
            "{branch:?}"
        );
        let binding = find(&objects, "ClusterRoleBinding", &reviewer);
        assert_eq!(binding["roleRef"]["name"], reviewer.as_str());
        assert_eq!(binding["subjects"][0]["name"], controller.as_str());
        // leader.rs: get_opt, create, replace (update) of the Lease.
        let role = find(&objects, "Role", &lease_role);
        assert_eq!(role["metadata"]["namespace"], PLACEHOLDER);
        assert_eq!(
            grants(role),
            set(&[(
                "coordination.k8s.io",
                "leases",
                &["get", "create", "update"]
            )])
        );
        let lease_binding = find(&objects, "RoleBinding", &lease_role);
        assert_eq!(lease_binding["roleRef"]["kind"], "Role");
        assert_eq!(lease_binding["roleRef"]["name"], lease_role.as_str());
        assert_eq!(lease_binding["subjects"][0]["name"], controller.as_str());

        // The ClusterRole is bound cluster-wide, or (watchNamespace) in that namespace only.
        let binding_kind = match branch {
            Branch::First => "RoleBinding",
            Branch::Last => "ClusterRoleBinding",
        };
        let binding = find(&objects, binding_kind, &controller);
        assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
        assert_eq!(binding["roleRef"]["name"], controller.as_str());
        assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
        assert_eq!(binding["subjects"][0]["name"], controller.as_str());
        let deployment = find(&objects, "Deployment", &controller);
        assert_eq!(
            deployment["spec"]["template"]["spec"]["serviceAccountName"],
            controller.as_str()
        );
    }
}

#[test]
fn adapter_is_registered_and_bound_as_an_aggregated_api_server() {
    let adapter = format!("{PLACEHOLDER}-adapter");
    let objects = self::objects(Branch::First);
    let api = find(&objects, "APIService", "v1beta1.external.metrics.k8s.io");
    assert_eq!(api["spec"]["group"], "external.metrics.k8s.io");
    assert_eq!(api["spec"]["version"], "v1beta1");
    assert_eq!(api["spec"]["service"]["name"], adapter.as_str());
    assert_eq!(api["spec"]["service"]["port"], 443);
    let service = find(&objects, "Service", &adapter);
    assert_eq!(service["spec"]["ports"][0]["port"], 443);

    let delegator = find(
        &objects,
        "ClusterRoleBinding",
        &format!("{adapter}-auth-delegator"),
    );
    assert_eq!(delegator["roleRef"]["name"], "system:auth-delegator");
    assert_eq!(delegator["subjects"][0]["name"], adapter.as_str());

    // The front-proxy CA is read at run time (metrics-adapter/src/requestheader.rs: a kube-rs
    // watcher, list + watch with metadata.name's field selector): exactly that, on that one
    // ConfigMap, in kube-system.
    let reader_name = format!("{adapter}-auth-reader");
    let role = find(&objects, "Role", &reader_name);
    assert_eq!(role["metadata"]["namespace"], "kube-system");
    assert_eq!(grants(role), set(&[("", "configmaps", &["list", "watch"])]));
    assert_eq!(
        role["rules"][0]["resourceNames"],
        json!(["extension-apiserver-authentication"])
    );
    let reader = find(&objects, "RoleBinding", &reader_name);
    assert_eq!(reader["metadata"]["namespace"], "kube-system");
    assert_eq!(reader["roleRef"]["kind"], "Role");
    assert_eq!(reader["roleRef"]["name"], reader_name.as_str());
    assert_eq!(reader["subjects"][0]["name"], adapter.as_str());

    // Secret (generated) and the Deployment's mount agree on the file names the flags name;
    // a user-given CA (the first branch) is a file in the ConfigMap.
    let deployment = find(&objects, "Deployment", &adapter);
    let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string"))
        .collect();
    for flag in [
        "--tls-cert-file=/etc/gofe/tls/tls.crt",
        "--tls-private-key-file=/etc/gofe/tls/tls.key",
        "--requestheader-client-ca-file=/etc/gofe/adapter/requestheader-client-ca.crt",
    ] {
        assert!(args.contains(&flag), "adapter args {args:?} lack {flag}");
    }
    let config = find(&objects, "ConfigMap", &adapter);
    assert!(config["data"].get("requestheader-client-ca.crt").is_some());
    let secret = find(&objects, "Secret", PLACEHOLDER);
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        assert!(
            secret["data"].get(key).is_some(),
            "generated Secret lacks {key}"
        );
    }

    // Without a CA given (the last branch): no CA flag, and the token for the watch.
    let last = self::objects(Branch::Last);
    let deployment = find(&last, "Deployment", &adapter);
    let pod = &deployment["spec"]["template"]["spec"];
    let args = pod["containers"][0]["args"].to_string();
    assert!(!args.contains("client-ca-file"), "{args}");
    assert!(
        args.contains(
            "\"--requestheader-configmap=kube-system/extension-apiserver-authentication\""
        ),
        "{args}"
    );
    assert_eq!(pod["automountServiceAccountToken"], true);
}

// === the dashboard ===

/// Every `gofe_*` name in string literals of the code that exports metrics: the proxy's
/// registry (proxy/src), the controller's (controller/src), the xDS server's (xds/src) and the
/// adapter's (metrics-adapter/src).
fn exported_metric_names() -> BTreeSet<String> {
    let root = chart().join("../..");
    let mut names = BTreeSet::new();
    let mut dirs: Vec<PathBuf> = [
        "proxy/src",
        "controller/src",
        "xds/src",
        "metrics-adapter/src",
    ]
    .iter()
    .map(|d| root.join(d))
    .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("source");
                for literal in text.split('"').skip(1).step_by(2) {
                    if literal.starts_with("gofe_")
                        && literal.len() > 5
                        && literal
                            .bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                    {
                        names.insert(literal.to_owned());
                    }
                }
            }
        }
    }
    names
}

/// The `gofe_*` identifiers of a PromQL expression.
fn metric_names_in(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("gofe_") {
        let start = i + at;
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !preceded {
            out.push(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

fn exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_metrics_gofe_exports() {
    let exported = exported_metric_names();
    // The scan finds each part's registry.
    for known in [
        "gofe_upstream_requests_total",
        "gofe_controller_endpoint_weight",
        "gofe_xds_connected_proxies",
        "gofe_adapter_requests_total",
    ] {
        assert!(
            exported.contains(known),
            "{known} not found in the code: {exported:?}"
        );
    }
    let dashboard: Value = serde_json::from_str(&read("files/dashboards/gofe.json"))
        .expect("files/dashboards/gofe.json is JSON");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metric_names_in(q);
        assert!(!names.is_empty(), "a query without a gofe metric: {q}");
        for name in names {
            // A histogram is exported by its base name; PromQL reads its series.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| exported.contains(*b)))
                .unwrap_or(&name);
            assert!(
                exported.contains(base),
                "the dashboard queries {name}, which gofe does not export (query: {q})"
            );
            used.insert(base.to_owned());
        }
    }
    // What the dashboard is for: each part's metrics are on it.
    for prefix in [
        "gofe_upstream_",
        "gofe_endpoint_",
        "gofe_circuit_breaker_",
        "gofe_outlier_",
        "gofe_controller_",
        "gofe_xds_",
        "gofe_adapter_",
    ] {
        assert!(
            used.iter().any(|n| n.starts_with(prefix)),
            "no {prefix}* panel: {used:?}"
        );
    }
    assert_eq!(
        metric_names_in("rate(gofe_a_total{x=\"gofe_b\"}[1m]) / my_gofe_c"),
        ["gofe_a_total", "gofe_b"]
    );
}

// === real Helm ===

/// Real Helm (PyPI's helm-python-sdk: Helm v4's Go SDK, no helm binary) lints and renders the
/// chart with several value sets, kubernetes-validate checks every object strictly against the
/// oldest and newest Kubernetes the chart supports, and bad values must fail the schema:
/// tests/helm_chart_check.py. Its packages are installed by .ci/run; missing, this fails.
#[test]
fn helm_lints_renders_and_kubernetes_validates_the_chart() {
    let script = chart().join("../../tests/helm_chart_check.py");
    let out = Command::new("python3")
        .arg(&script)
        // The controller files it renders are checked by `gofe check` too.
        .env("GOFE_BIN", env!("CARGO_BIN_EXE_gofe"))
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        script.display(),
        out.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with(" passed, 0 failed"), "{stdout}");
    let passed: u32 = last
        .split(' ')
        .next()
        .unwrap_or_default()
        .parse()
        .unwrap_or(0);
    assert!(passed >= 300, "only {passed} checks ran:\n{stdout}");
}

// === the configuration files the chart ships ===

fn values() -> Value {
    gofe_yaml::from_str(&read("values.yaml")).expect("values.yaml is YAML")
}

/// Deep merge, `over` winning (Helm's mergeOverwrite on maps).
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The controller file as `gofe.controllerConfig` in templates/_helpers.tpl assembles it;
/// keep the two in step.
fn controller_config(values: &Value) -> Value {
    let c = &values["controller"];
    let mut config: Value =
        gofe_yaml::from_str(&read("files/controller.yaml")).expect("files/controller.yaml");
    config["signals"]["prometheus"] = json!({ "url": c["prometheus"]["url"] });
    config["policy"] = c["policy"].clone();
    let le = &c["leaderElection"];
    let lease_name = match le["leaseName"].as_str() {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => format!("{PLACEHOLDER}-controller"),
    };
    config["kubernetes"]["leader_election"] = json!({
        "enabled": le["enabled"],
        "lease_name": lease_name,
        "lease_duration": le["leaseDuration"],
        "renew_deadline": le["renewDeadline"],
        "retry_period": le["retryPeriod"],
    });
    if let Some(ns) = c["watchNamespace"].as_str().filter(|n| !n.is_empty()) {
        config["kubernetes"]["namespace"] = json!(ns);
    }
    if let Some(name) = c["clusterName"].as_str().filter(|n| !n.is_empty()) {
        config["kubernetes"]["cluster_name"] = json!(name);
    }
    if let Some(remotes) = c["remoteClusters"].as_array().filter(|r| !r.is_empty()) {
        config["kubernetes"]["clusters"] = remotes
            .iter()
            .map(|r| json!({"name": r["name"], "secret": {"name": r["secret"], "namespace": PLACEHOLDER}}))
            .collect();
    }
    let tls = &c["xds"]["tls"];
    if tls["secretName"].as_str().is_some_and(|s| !s.is_empty()) {
        let mut t = json!({
            "cert_file": "/var/run/gofe-xds/tls.crt",
            "key_file": "/var/run/gofe-xds/tls.key",
        });
        if tls["mutual"] == json!(true) {
            t["client_ca_file"] = json!("/var/run/gofe-xds/ca.crt");
        }
        config["xds"]["tls"] = t;
    }
    let id = &c["identity"];
    if id["enabled"] == json!(true) {
        let svc = format!("{PLACEHOLDER}-controller");
        config["identity"] = json!({
            "trust_domain": id["trustDomain"],
            "workload_ttl": id["workloadTtl"],
            "root": {
                "cert_file": "/var/run/gofe-mesh-ca/tls.crt",
                "key_file": "/var/run/gofe-mesh-ca/tls.key",
            },
            "token_review": true,
            "token_audiences": ["gofe"],
            "server_names": [
                svc.clone(),
                format!("{svc}.{PLACEHOLDER}"),
                format!("{svc}.{PLACEHOLDER}.svc"),
                format!("{svc}.{PLACEHOLDER}.svc.cluster.local"),
            ],
        });
    }
    merge(&mut config, &c["config"]);
    config
}

#[test]
fn shipped_controller_file_and_the_one_values_make_are_accepted() {
    let file = read("files/controller.yaml");
    let parsed = gofe_controller::config::parse("files/controller.yaml", &file)
        .unwrap_or_else(|e| panic!("{e}"));
    // The ConfigMap names the proxy configuration proxy.yaml, next to controller.yaml.
    assert_eq!(parsed.proxy_config, "proxy.yaml");
    assert!(
        parsed.kubernetes.is_some(),
        "the chart runs Kubernetes mode"
    );

    let mut values = values();
    let assembled = controller_config(&values);
    let parsed = gofe_controller::config::parse("values.yaml", &assembled.to_string())
        .unwrap_or_else(|e| panic!("values.yaml makes a bad controller file: {e}\n{assembled}"));
    assert_eq!(
        parsed.signals.source,
        gofe_controller::config::SourceKind::Prometheus
    );
    assert_eq!(
        parsed.signals.prometheus.url,
        values["controller"]["prometheus"]["url"].as_str().unwrap()
    );
    // The Deployment's ports and probes are the file's addresses.
    assert_eq!(parsed.xds.expect("xds on").address, "0.0.0.0:18000");
    assert_eq!(parsed.admin.address, "0.0.0.0:9902");
    let k = parsed.kubernetes.expect("kubernetes mode");
    assert!(k.namespace.is_none(), "every namespace by default");
    assert!(k.leader_election.enabled);

    // A watched namespace and an override through controller.config reach the file.
    values["controller"]["watchNamespace"] = json!("shop");
    values["controller"]["config"] = json!({ "interval": "2s", "signals": { "window": "1m" } });
    let parsed = gofe_controller::config::parse("values", &controller_config(&values).to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        parsed.kubernetes.unwrap().namespace.as_deref(),
        Some("shop")
    );
    assert_eq!(parsed.interval, std::time::Duration::from_secs(2));
    // Remote clusters from their Secrets.
    values["controller"]["clusterName"] = json!("east");
    values["controller"]["remoteClusters"] =
        json!([{ "name": "west", "secret": "istio-remote-secret-west" }]);
    let parsed = gofe_controller::config::parse("values", &controller_config(&values).to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let k = parsed.kubernetes.clone().unwrap();
    assert_eq!(k.cluster_name, "east");
    assert_eq!(k.clusters[0].name, "west");
    assert_eq!(
        k.clusters[0].secret.as_ref().unwrap().name,
        "istio-remote-secret-west"
    );
    // Mutual TLS from the mesh CA by default: TokenReviews of the proxies' tokens, the root
    // from the chart's Secret, no xds.tls of the user's.
    assert!(parsed.xds.as_ref().unwrap().tls.is_none());
    let identity = parsed
        .identity
        .as_ref()
        .expect("the mesh CA is on by default");
    assert!(identity.token_review && identity.tokens_file.is_none());
    assert_eq!(identity.trust_domain, "cluster.local");
    assert_eq!(identity.root.key_file, "/var/run/gofe-mesh-ca/tls.key");
    assert_eq!(
        identity.workload_ttl,
        std::time::Duration::from_secs(24 * 3600)
    );

    // controller.xds.tls: the Secret's files, and its CA for mutual TLS (the mesh CA off).
    values["controller"]["identity"]["enabled"] = json!(false);
    values["controller"]["xds"] =
        json!({ "tls": { "secretName": "gofe-xds-tls", "mutual": true } });
    let parsed = gofe_controller::config::parse("values", &controller_config(&values).to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    let tls = parsed.xds.unwrap().tls.expect("xds.tls from the values");
    assert_eq!(tls.cert_file, "/var/run/gofe-xds/tls.crt");
    assert_eq!(
        tls.client_ca_file.as_deref(),
        Some("/var/run/gofe-xds/ca.crt")
    );
    assert!(tls.requires_client_certificate());
    assert_eq!(
        parsed.signals.window,
        Some(std::time::Duration::from_secs(60))
    );
    assert_eq!(
        parsed.signals.prometheus.url,
        values["controller"]["prometheus"]["url"].as_str().unwrap(),
        "a partial signals override keeps the URL"
    );
}

#[test]
fn shipped_proxy_config_is_accepted_and_its_listeners_are_the_service_ports() {
    let values = values();
    assert_eq!(
        values["proxy"]["config"],
        json!({}),
        "the default is files/proxy.yaml"
    );
    let text = read("files/proxy.yaml");
    let config =
        gofe_proxy::config::parse("files/proxy.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    let listener_ports: BTreeSet<u64> = config
        .listeners
        .iter()
        .map(|l| {
            let a: std::net::SocketAddr = l.address.parse().expect("ip:port");
            u64::from(a.port())
        })
        .collect();
    let target_ports: BTreeSet<u64> = values["proxy"]["service"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| p["targetPort"].as_u64().expect("a number"))
        .collect();
    assert_eq!(listener_ports, target_ports);
}

#[test]
fn shipped_bootstrap_is_accepted_with_the_controller_service_address() {
    let mut bootstrap: Value =
        gofe_yaml::from_str(&read("files/bootstrap.yaml")).expect("files/bootstrap.yaml");
    // As gofe.proxyBootstrap sets it.
    bootstrap["xds_server"] = json!({ "address": "gofe-controller.gofe-system.svc:18000" });
    let dir = std::env::temp_dir().join(format!("gofe-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // With the mesh CA (the default): TLS to the Service, the certificate asked for with the
    // projected token.
    let mut with_ca = bootstrap.clone();
    with_ca["xds_server"]["tls"] = json!({
        "ca": "/var/run/gofe-mesh-ca/ca.crt",
        "server_name": "gofe-controller.gofe-system.svc",
    });
    with_ca["identity"] = json!({ "token_file": "/var/run/secrets/gofe/token" });
    for (name, text) in [
        ("as-shipped.yaml", read("files/bootstrap.yaml")),
        ("as-rendered.yaml", bootstrap.to_string()),
        ("as-rendered-with-mesh-ca.yaml", with_ca.to_string()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        let b =
            gofe_proxy::xds::bootstrap::Bootstrap::load(&path).unwrap_or_else(|e| panic!("{e}"));
        // The proxy Deployment's admin port (probes, Prometheus) is the bootstrap's.
        if name.contains("mesh-ca") {
            let ca = b.mesh_ca_options().expect("the mesh CA is asked");
            assert_eq!(ca.server_name, "gofe-controller.gofe-system.svc");
            assert_eq!(ca.trust_bundle, Path::new("/var/run/gofe-mesh-ca/ca.crt"));
        }
        let admin = b.static_resources.admin.expect("an admin listener");
        assert_eq!(admin.address, "0.0.0.0:9901");
    }
    std::fs::remove_dir_all(&dir).ok();
}
