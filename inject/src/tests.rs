use serde_json::{json, Value};

use super::*;

fn template(annotations: Value) -> Value {
    json!({
        "metadata": { "labels": { "app": "web" }, "annotations": annotations },
        "spec": {
            "containers": [{ "name": "web", "image": "nginx", "ports": [{ "containerPort": 8080 }], "futureField": { "x": 1 } }],
            "initContainers": [{ "name": "migrate", "image": "migrate" }],
            "volumes": [{ "name": "data", "emptyDir": {} }],
            "someFutureSpecField": true
        }
    })
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

fn injected(annotations: Value, config: &InjectConfig) -> Value {
    let mut t = template(annotations);
    assert_eq!(inject_template(&mut t, config).unwrap(), Outcome::Injected);
    t
}

#[test]
fn a_native_sidecar_starts_after_the_init_and_before_the_pod_s_own_init_containers() {
    let t = injected(json!({}), &InjectConfig::default());
    let names: Vec<&str> = t["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gofe-init", "gofe-proxy", "migrate"]);
    let proxy = &t["spec"]["initContainers"][1];
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(
        t["spec"]["containers"].as_array().unwrap().len(),
        1,
        "the app's containers stay as they are"
    );
    assert_eq!(t["metadata"]["annotations"]["gofe.io/injected"], "true");
    assert_eq!(
        t["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"],
        "web"
    );
    assert_eq!(
        named(&t["spec"]["volumes"], "gofe-run")["emptyDir"],
        json!({ "medium": "Memory", "sizeLimit": "1Mi" })
    );
}

#[test]
fn the_legacy_form_puts_the_proxy_last_in_containers_without_a_restart_policy() {
    let config = InjectConfig {
        native_sidecar: false,
        ..Default::default()
    };
    let t = injected(json!({}), &config);
    let containers = t["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[1]["name"], "gofe-proxy");
    assert!(containers[1].get("restartPolicy").is_none());
    assert_eq!(t["spec"]["initContainers"][0]["name"], "gofe-init");
    assert_eq!(t["spec"]["initContainers"].as_array().unwrap().len(), 2);
}

#[test]
fn the_proxy_is_bootstrapped_to_the_controller_with_the_pod_s_identity() {
    let config = InjectConfig {
        image: "registry.example/gofe:1.2".into(),
        xds_address: "ctl.mesh.svc:18000".into(),
        ..Default::default()
    };
    let t = injected(json!({}), &config);
    let proxy = named(&t["spec"]["initContainers"], "gofe-proxy");
    assert_eq!(proxy["image"], "registry.example/gofe:1.2");
    assert_eq!(
        proxy["args"],
        json!([
            "--log-format=json",
            "proxy",
            "--bootstrap=/var/run/gofe/bootstrap.yaml",
            "--service-node=$(POD_NAME).$(POD_NAMESPACE)"
        ])
    );
    assert_eq!(
        named(&proxy["env"], "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        named(&proxy["env"], "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(named(&proxy["env"], "RUST_LOG")["value"], "info");
    assert_eq!(
        proxy["volumeMounts"],
        json!([{ "name": "gofe-run", "mountPath": "/var/run/gofe", "readOnly": true }])
    );
    let init = named(&t["spec"]["initContainers"], "gofe-init");
    assert_eq!(
        init["args"],
        json!([
            "--log-format=json",
            "inject",
            "init",
            "--bootstrap-out=/var/run/gofe/bootstrap.yaml",
            "--xds-address=ctl.mesh.svc:18000",
            "--admin-port=9901"
        ])
    );
}

#[test]
fn resources_probes_and_security_are_the_documented_defaults() {
    let t = injected(json!({}), &InjectConfig::default());
    let proxy = named(&t["spec"]["initContainers"], "gofe-proxy");
    assert_eq!(
        proxy["resources"],
        json!({ "requests": { "cpu": "200m", "memory": "128Mi" } })
    );
    assert_eq!(
        proxy["readinessProbe"]["httpGet"],
        json!({ "path": "/ready", "port": "gofe-admin" })
    );
    assert_eq!(proxy["livenessProbe"]["httpGet"]["port"], "gofe-admin");
    assert_eq!(
        proxy["ports"],
        json!([{ "name": "gofe-admin", "containerPort": 9901, "protocol": "TCP" }])
    );
    for c in [proxy, named(&t["spec"]["initContainers"], "gofe-init")] {
        let s = &c["securityContext"];
        assert_eq!(s["runAsNonRoot"], true, "{c}");
        assert_eq!(s["runAsUser"], 2102);
        assert_eq!(s["readOnlyRootFilesystem"], true);
        assert_eq!(s["allowPrivilegeEscalation"], false);
        assert_eq!(s["capabilities"], json!({ "drop": ["ALL"] }));
    }
}

#[test]
fn annotations_override_resources_log_level_and_skipped_ports() {
    let config = InjectConfig {
        capture: CaptureSettings {
            enabled: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let t = injected(
        json!({
            "gofe.io/proxy-cpu": "500m", "gofe.io/proxy-memory": "1Gi", "gofe.io/log-level": "debug",
            "gofe.io/skip-inbound-ports": "8081, 9000-9010", "gofe.io/skip-outbound-ports": "5432"
        }),
        &config,
    );
    let proxy = named(&t["spec"]["initContainers"], "gofe-proxy");
    assert_eq!(
        proxy["resources"]["requests"],
        json!({ "cpu": "500m", "memory": "1Gi" })
    );
    assert_eq!(named(&proxy["env"], "RUST_LOG")["value"], "debug");
    let init = named(&t["spec"]["initContainers"], "gofe-init");
    let args: Vec<&str> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        &args[6..],
        [
            "--capture",
            "--inbound-port=15006",
            "--outbound-port=15001",
            "--proxy-uid=2102",
            "--skip-inbound-ports=8081,9000-9010",
            "--skip-outbound-ports=5432"
        ]
    );
    let s = &init["securityContext"];
    assert_eq!(s["runAsUser"], 0);
    assert_eq!(s["runAsNonRoot"], false);
    assert_eq!(
        s["capabilities"],
        json!({ "add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"] })
    );
    assert_eq!(s["allowPrivilegeEscalation"], false);
}

#[test]
fn opting_out_by_annotation_or_label_leaves_the_template_alone() {
    let mut t = template(json!({ "gofe.io/inject": "disabled" }));
    let before = t.clone();
    assert_eq!(
        inject_template(&mut t, &InjectConfig::default()).unwrap(),
        Outcome::Disabled
    );
    assert_eq!(t, before);
    let mut t = template(json!({}));
    t["metadata"]["labels"]["gofe.io/inject"] = json!("disabled");
    let before = t.clone();
    assert_eq!(
        inject_template(&mut t, &InjectConfig::default()).unwrap(),
        Outcome::Disabled
    );
    assert_eq!(t, before);
}

#[test]
fn a_container_named_gofe_proxy_counts_as_injected() {
    let mut t = template(json!({}));
    t["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({ "name": "gofe-proxy", "image": "x" }));
    let before = t.clone();
    assert_eq!(
        inject_template(&mut t, &InjectConfig::default()).unwrap(),
        Outcome::AlreadyInjected
    );
    assert_eq!(t, before);
}

#[test]
fn unknown_fields_are_kept() {
    let t = injected(json!({}), &InjectConfig::default());
    assert_eq!(t["spec"]["someFutureSpecField"], true);
    assert_eq!(t["spec"]["containers"][0]["futureField"], json!({ "x": 1 }));
    assert_eq!(
        named(&t["spec"]["volumes"], "data"),
        &json!({ "name": "data", "emptyDir": {} })
    );
}

#[test]
fn errors_name_the_field_and_leave_the_template_unchanged() {
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({ "gofe.io/proxy-memory": "a lot" }),
            "metadata.annotations.gofe.io/proxy-memory: expected a Kubernetes quantity",
        ),
        (
            json!({ "gofe.io/skip-inbound-ports": "80,http" }),
            "metadata.annotations.gofe.io/skip-inbound-ports: \"http\" is not a port",
        ),
        (
            json!({ "gofe.io/log-level": "info debug" }),
            "metadata.annotations.gofe.io/log-level: expected a RUST_LOG filter",
        ),
        (
            json!({ "a": 1 }),
            "metadata.annotations.a: expected a string, got a number",
        ),
    ];
    for (annotations, want) in cases {
        let mut t = template(annotations);
        let before = t.clone();
        let e = inject_template(&mut t, &InjectConfig::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(want), "{e}");
        assert_eq!(t, before);
    }
    let mut t = template(json!({}));
    t["spec"]["containers"][0]["ports"][0]["containerPort"] = json!(9901);
    let e = inject_template(&mut t, &InjectConfig::default())
        .unwrap_err()
        .to_string();
    assert_eq!(e, "spec.containers[0].ports: container \"web\" uses port 9901, which the gofe proxy listens on");
    let mut t = template(json!({}));
    t["spec"]["containers"] = json!([]);
    let e = inject_template(&mut t, &InjectConfig::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "spec.containers: a pod template needs at least one container"
    );
    let mut t = template(json!({}));
    t["spec"]["initContainers"][0] = json!("migrate");
    let e = inject_template(&mut t, &InjectConfig::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "spec.initContainers[0]: expected a container (a map), got a string"
    );
    let mut t = json!({ "metadata": {} });
    assert_eq!(
        inject_template(&mut t, &InjectConfig::default())
            .unwrap_err()
            .to_string(),
        "spec: missing: a pod template needs a spec"
    );
}

#[test]
fn quantities_are_checked_as_the_api_server_would() {
    for ok in ["200m", "128Mi", "1", "1.5", "0.5Gi", "1e3", "2E-2", "64k"] {
        assert!(check_quantity(ok).is_ok(), "{ok}");
    }
    for bad in ["", "m", "1.2.3", "12 Mi", "1MB", "-1", "1e", "lots"] {
        assert!(check_quantity(bad).is_err(), "{bad}");
    }
}

#[test]
fn port_lists_take_ports_and_ranges() {
    assert_eq!(
        parse_ports(" 80, 8000-8010 ,").unwrap(),
        vec![capture::PortRange(80, 80), capture::PortRange(8000, 8010)]
    );
    assert!(parse_ports("0").is_err());
    assert!(parse_ports("90-80").unwrap_err().contains("backwards"));
    assert!(parse_ports("70000").is_err());
}

#[test]
fn the_configuration_is_validated_with_every_field_named() {
    let config = InjectConfig {
        image: " ".into(),
        xds_address: "nowhere".into(),
        proxy_cpu: "much".into(),
        proxy_uid: 0,
        log_format: "xml".into(),
        ..Default::default()
    };
    let mut v = gofe_yaml::Validator::default();
    gofe_yaml::Validate::validate(&config, &mut v);
    let fields: Vec<String> = v.finish().into_iter().map(|p| p.field).collect();
    assert_eq!(
        fields,
        [
            "image",
            "xds_address",
            "log_format",
            "proxy_cpu",
            "proxy_uid"
        ]
    );
    let mut v = gofe_yaml::Validator::default();
    gofe_yaml::Validate::validate(&InjectConfig::default(), &mut v);
    assert!(v.is_empty());
}

#[test]
fn the_bootstrap_names_the_controller_and_the_admin_port() {
    let text = bootstrap_yaml("ctl.mesh.svc:18000", 9911, None);
    let value: Value = serde_saphyr::from_str(&text).unwrap();
    assert_eq!(value["xds_server"]["address"], "ctl.mesh.svc:18000");
    assert_eq!(
        value["static_resources"]["admin"]["address"],
        "0.0.0.0:9911"
    );
}

#[test]
fn with_capture_the_bootstrap_listens_where_the_rules_redirect() {
    let capture = crate::capture::CaptureConfig {
        inbound_port: 15106,
        outbound_port: 15101,
        proxy_uid: 2102,
        skip_inbound: Vec::new(),
        skip_outbound: Vec::new(),
        admin_port: 9911,
    };
    let text = bootstrap_yaml("ctl.mesh.svc:18000", 9911, Some(&capture));
    let value: Value = serde_saphyr::from_str(&text).unwrap();
    let listeners = value["static_resources"]["listeners"].as_array().unwrap();
    let find = |name: &str| {
        listeners
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    let out = find(crate::OUTBOUND_LISTENER);
    assert_eq!(out["address"], "0.0.0.0:15101");
    assert_eq!(out["use_original_dst"], true);
    assert_eq!(out["tcp_proxy"]["cluster"], crate::PASSTHROUGH_CLUSTER);
    let inbound = find(crate::INBOUND_LISTENER);
    assert_eq!(inbound["address"], "0.0.0.0:15106");
    assert_eq!(inbound["use_original_dst"], true);
    // The rules redirect to exactly these two ports.
    let redirects: Vec<String> = crate::capture::rules(&capture)
        .into_iter()
        .filter_map(|r| {
            let at = r.iter().position(|w| w == "--to-ports")?;
            r.get(at + 1).cloned()
        })
        .collect();
    assert_eq!(redirects, ["15106", "15101"]);
    let clusters = value["static_resources"]["clusters"].as_array().unwrap();
    assert!(
        clusters.iter().all(|c| c["type"] == "original_dst"),
        "{text}"
    );
}
