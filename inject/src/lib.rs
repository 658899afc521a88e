//! gofe-inject: adds the gofe proxy to Kubernetes pod templates, as `linkerd inject` and
//! Istio's injector do.
//!
//! One pure transformation, [`inject_template`], takes a pod template (`metadata` + `spec`,
//! as JSON) and adds to it:
//!
//! ```text
//!   initContainers: [gofe-init, gofe-proxy (restartPolicy: Always), ...the pod's own]
//!   containers:     [...the pod's own]                  (legacy mode: gofe-proxy last here)
//!   volumes:        [...the pod's own, gofe-run (emptyDir)]
//!   annotations:    gofe.io/injected: "true"
//! ```
//!
//! - `gofe-init` writes the proxy's xDS bootstrap into the `gofe-run` emptyDir (a pod cannot
//!   mount a ConfigMap of the controller's namespace, so the bootstrap is made where the pod
//!   runs; [`bootstrap_yaml`] is its text) and, with capture on, installs the iptables rules of
//!   [`capture::rules`] (`NET_ADMIN`, `NET_RAW`).
//! - `gofe-proxy` is `gofe proxy --bootstrap` steered by the controller over xDS, a *native
//!   sidecar* (an init container with `restartPolicy: Always`: it starts before the app and
//!   stops after it), or an ordinary container with [`InjectConfig::native_sidecar`] off.
//!
//! Three callers share it: [`manifest::inject_manifests`] (`gofe inject`: YAML or JSON
//! manifests, every workload kind with a pod template), [`admission::review`] (the
//! controller's mutating admission webhook: an AdmissionReview in, a JSONPatch out) and the
//! tests. Injection is idempotent (an injected template is left as it is), can be refused per
//! pod (`gofe.io/inject: disabled`), and is tuned per pod by the annotations in [`annotations`].
//! Every error names the field it is about and nothing here panics on input.
//!
//! What it does not do: it does no I/O except in [`cli`] (reading manifests, and `gofe inject
//! init` writing the bootstrap and running `iptables` inside the pod), it never talks to the
//! API server (the webhook's HTTPS listener is the controller's, `gofe_controller::webhook`),
//! and capture stays off by default (it needs `NET_ADMIN` and `NET_RAW` in the init
//! container). With capture on, the bootstrap holds the proxy's two capture listeners on the
//! ports the rules redirect to ([`bootstrap_yaml`]): outbound connections go to the listener of
//! their original destination or pass through, inbound ones reach the app through the proxy.
//! `tests/capture_netns.rs` runs the whole of it in network namespaces.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub mod admission;
pub mod capture;
pub mod cli;
pub mod manifest;

/// The annotations and labels gofe reads and writes on pods.
pub mod annotations {
    /// `enabled` / `disabled` (label or annotation): opt in or out. The webhook's namespace
    /// and object selectors read the label; the injector honours `disabled` either way.
    pub const INJECT: &str = "gofe.io/inject";
    /// Written on injection (`"true"`): the template is left alone from then on.
    pub const INJECTED: &str = "gofe.io/injected";
    /// The proxy's CPU request, a Kubernetes quantity (default [`super::InjectConfig::proxy_cpu`]).
    pub const PROXY_CPU: &str = "gofe.io/proxy-cpu";
    /// The proxy's memory request (default [`super::InjectConfig::proxy_memory`]).
    pub const PROXY_MEMORY: &str = "gofe.io/proxy-memory";
    /// The proxy's `RUST_LOG` (default [`super::InjectConfig::log_level`]).
    pub const LOG_LEVEL: &str = "gofe.io/log-level";
    /// Inbound ports (comma-separated, `a-b` ranges) not redirected to the proxy.
    pub const SKIP_INBOUND_PORTS: &str = "gofe.io/skip-inbound-ports";
    /// Outbound ports not redirected to the proxy.
    pub const SKIP_OUTBOUND_PORTS: &str = "gofe.io/skip-outbound-ports";
    /// Kubernetes' own: the container `kubectl logs`/`exec` pick by default (set to the app's
    /// first container when absent, so the proxy never becomes the default).
    pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
}

/// The proxy container's name; a template with a container of this name is already injected.
pub const PROXY_CONTAINER: &str = "gofe-proxy";
/// The init container's name.
pub const INIT_CONTAINER: &str = "gofe-init";
/// The emptyDir shared by the two (the bootstrap; iptables' lock file).
pub const RUN_VOLUME: &str = "gofe-run";
/// Where it is mounted.
pub const RUN_DIR: &str = "/var/run/gofe";
/// The bootstrap file `gofe-init` writes and the proxy reads.
pub const BOOTSTRAP_PATH: &str = "/var/run/gofe/bootstrap.yaml";
/// The admin port's name on the proxy container.
pub const ADMIN_PORT_NAME: &str = "gofe-admin";

/// How to inject: the sidecar's image, where the controller is, its resources and identity.
/// The defaults are the chart's (`gofe` release in `gofe-system`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct InjectConfig {
    /// The gofe image (the same image runs the proxy and `gofe inject init`). Default
    /// `gofe:VERSION` (this crate's version; there is no published image).
    pub image: String,
    /// `imagePullPolicy` of both containers. Default: none (Kubernetes decides).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// `host:port` of the controller's xDS server. Default
    /// `gofe-controller.gofe-system.svc:18000`.
    pub xds_address: String,
    /// The proxy's admin port (`/ready`, `/metrics`). Default 9901.
    pub admin_port: u16,
    /// The proxy's `RUST_LOG`. Default `info`; per pod `gofe.io/log-level`.
    pub log_level: String,
    /// `text` or `json`. Default `json`.
    pub log_format: String,
    /// CPU request. Default `200m`; per pod `gofe.io/proxy-cpu`.
    pub proxy_cpu: String,
    /// Memory request. Default `128Mi`; per pod `gofe.io/proxy-memory`.
    pub proxy_memory: String,
    /// Memory limit. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_memory_limit: Option<String>,
    /// The UID (and GID) the proxy runs as: capture lets its own traffic through by this UID,
    /// so it must differ from the app's. Default 2102.
    pub proxy_uid: i64,
    /// A native sidecar (`initContainers` with `restartPolicy: Always`, Kubernetes ≥ 1.29;
    /// starts before and stops after the app). Off: an ordinary container in `containers`.
    /// Default on.
    pub native_sidecar: bool,
    /// Traffic capture (iptables) in `gofe-init`, and the capture listeners in the proxy's
    /// bootstrap. Default off (the init container then needs `NET_ADMIN` and `NET_RAW`).
    pub capture: CaptureSettings,
}

/// Traffic-capture settings ([`capture::CaptureConfig`] without the per-pod parts).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSettings {
    /// Install the rules. Default off.
    pub enabled: bool,
    /// The proxy's inbound port: TCP arriving at the pod goes here. Default 15006.
    pub inbound_port: u16,
    /// The proxy's outbound port: TCP the app opens goes here. Default 15001.
    pub outbound_port: u16,
}

impl Default for CaptureSettings {
    fn default() -> Self {
        CaptureSettings {
            enabled: false,
            inbound_port: 15006,
            outbound_port: 15001,
        }
    }
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            image: format!("gofe:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: None,
            xds_address: "gofe-controller.gofe-system.svc:18000".into(),
            admin_port: 9901,
            log_level: "info".into(),
            log_format: "json".into(),
            proxy_cpu: "200m".into(),
            proxy_memory: "128Mi".into(),
            proxy_memory_limit: None,
            proxy_uid: 2102,
            native_sidecar: true,
            capture: CaptureSettings::default(),
        }
    }
}

impl gofe_yaml::Validate for InjectConfig {
    fn validate(&self, v: &mut gofe_yaml::Validator) {
        if self.image.trim().is_empty() {
            v.error("image", "must name an image");
        }
        if let Some(p) = &self.image_pull_policy {
            if !["Always", "IfNotPresent", "Never"].contains(&p.as_str()) {
                v.error(
                    "image_pull_policy",
                    format!("must be Always, IfNotPresent or Never, got {p:?}"),
                );
            }
        }
        if self
            .xds_address
            .rsplit_once(':')
            .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            v.error(
                "xds_address",
                format!("expected host:port, got {:?}", self.xds_address),
            );
        }
        if self.admin_port == 0 {
            v.error("admin_port", "must be a port (1-65535)");
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            v.error(
                "log_format",
                format!("must be text or json, got {:?}", self.log_format),
            );
        }
        if let Err(e) = check_log_level(&self.log_level) {
            v.error("log_level", e);
        }
        for (field, q) in [
            ("proxy_cpu", Some(&self.proxy_cpu)),
            ("proxy_memory", Some(&self.proxy_memory)),
            ("proxy_memory_limit", self.proxy_memory_limit.as_ref()),
        ] {
            if let Some(Err(e)) = q.map(|q| check_quantity(q)) {
                v.error(field, e);
            }
        }
        if self.proxy_uid <= 0 {
            v.error(
                "proxy_uid",
                format!("must be a non-root UID (> 0), got {}", self.proxy_uid),
            );
        }
        let c = &self.capture;
        if c.inbound_port == 0 || c.outbound_port == 0 || c.inbound_port == c.outbound_port {
            v.error(
                "capture",
                format!(
                    "inbound_port and outbound_port must be two different ports, got {} and {}",
                    c.inbound_port, c.outbound_port
                ),
            );
        }
    }
}

/// Why a template cannot be injected: the field (from the template's root, e.g.
/// `spec.containers[1].ports`) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InjectError {
    /// The field path, relative to the template (callers prefix where the template is).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl InjectError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InjectError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error with `prefix.` before its field.
    pub fn within(self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        InjectError {
            field: format!("{prefix}.{}", self.field),
            message: self.message,
        }
    }
}

/// What [`inject_template`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The proxy was added.
    Injected,
    /// Already injected (annotation or container): unchanged.
    AlreadyInjected,
    /// `gofe.io/inject: disabled` on the template: unchanged.
    Disabled,
}

/// A Kubernetes quantity as the API server accepts it (digits, an optional fraction, an
/// optional suffix: `200m`, `128Mi`, `1.5`, `1e3`).
fn check_quantity(q: &str) -> Result<(), String> {
    let number_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let exponent = |s: &str| {
        let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
    };
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(exponent);
    if number_ok && suffix_ok {
        Ok(())
    } else {
        Err(format!(
            "expected a Kubernetes quantity such as 200m or 128Mi, got {q:?}"
        ))
    }
}

/// A `RUST_LOG` filter: non-empty, no whitespace or quotes (it goes into an env var as is).
fn check_log_level(level: &str) -> Result<(), String> {
    if level.is_empty() || level.chars().any(|c| c.is_whitespace() || c == '"') {
        Err(format!(
            "expected a RUST_LOG filter such as info or info,gofe_proxy=debug, got {level:?}"
        ))
    } else {
        Ok(())
    }
}

/// Ports as annotations write them: `8080`, `8080,9090`, `8000-8010` (spaces allowed).
pub fn parse_ports(text: &str) -> Result<Vec<capture::PortRange>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let port = |s: &str| -> Result<u16, String> {
            match s.trim().parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(format!("{s:?} is not a port (1-65535)")),
            }
        };
        let range = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (port(a)?, port(b)?);
                if a > b {
                    return Err(format!("range {part:?} is backwards"));
                }
                capture::PortRange(a, b)
            }
            None => {
                let p = port(part)?;
                capture::PortRange(p, p)
            }
        };
        out.push(range);
    }
    Ok(out)
}

// === the template ===

/// A string map at `field` of `object` (`labels`, `annotations`), checked to hold strings.
fn string_map(
    object: &Map<String, Value>,
    field: &str,
) -> Result<BTreeMap<String, String>, InjectError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(InjectError::new(
                    format!("{field}.{k}"),
                    format!("expected a string, got {}", kind_of(other)),
                )),
            })
            .collect(),
        Some(other) => Err(InjectError::new(
            field,
            format!("expected a map, got {}", kind_of(other)),
        )),
    }
}

/// A JSON value's kind, for messages.
pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

/// The list at `spec[field]`, created empty when absent.
fn list_mut<'a>(
    spec: &'a mut Map<String, Value>,
    field: &str,
) -> Result<&'a mut Vec<Value>, InjectError> {
    let entry = spec
        .entry(field)
        .or_insert_with(|| Value::Array(Vec::new()));
    if entry.is_null() {
        *entry = Value::Array(Vec::new());
    }
    match entry {
        Value::Array(items) => Ok(items),
        other => Err(InjectError::new(
            format!("spec.{field}"),
            format!("expected a list, got {}", kind_of(other)),
        )),
    }
}

/// Names (and ports) of the containers of `spec[field]`, each checked to be a map with a name.
fn containers_of(
    spec: &Map<String, Value>,
    field: &str,
) -> Result<Vec<(String, Vec<i64>)>, InjectError> {
    let items = match spec.get(field) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(InjectError::new(
                format!("spec.{field}"),
                format!("expected a list, got {}", kind_of(other)),
            ))
        }
    };
    items
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let at = format!("spec.{field}[{i}]");
            let c = c.as_object().ok_or_else(|| {
                InjectError::new(
                    &at,
                    format!("expected a container (a map), got {}", kind_of(c)),
                )
            })?;
            let name = c.get("name").and_then(Value::as_str).ok_or_else(|| {
                InjectError::new(format!("{at}.name"), "a container needs a name")
            })?;
            let ports = match c.get("ports") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(ports)) => ports
                    .iter()
                    .enumerate()
                    .map(|(j, p)| {
                        p.get("containerPort")
                            .and_then(Value::as_i64)
                            .ok_or_else(|| {
                                InjectError::new(
                                    format!("{at}.ports[{j}].containerPort"),
                                    "expected a port number",
                                )
                            })
                    })
                    .collect::<Result<_, _>>()?,
                Some(other) => {
                    return Err(InjectError::new(
                        format!("{at}.ports"),
                        format!("expected a list, got {}", kind_of(other)),
                    ))
                }
            };
            Ok((name.to_owned(), ports))
        })
        .collect()
}

/// The per-pod settings: the configuration with the template's annotations over it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PodSettings {
    cpu: String,
    memory: String,
    log_level: String,
    skip_inbound: Vec<capture::PortRange>,
    skip_outbound: Vec<capture::PortRange>,
}

fn pod_settings(
    config: &InjectConfig,
    annotations: &BTreeMap<String, String>,
) -> Result<PodSettings, InjectError> {
    let at = |key: &str| format!("metadata.annotations.{key}");
    let get = |key: &str| annotations.get(key).map(|s| s.trim().to_owned());
    let cpu = get(annotations::PROXY_CPU).unwrap_or_else(|| config.proxy_cpu.clone());
    check_quantity(&cpu).map_err(|e| InjectError::new(at(annotations::PROXY_CPU), e))?;
    let memory = get(annotations::PROXY_MEMORY).unwrap_or_else(|| config.proxy_memory.clone());
    check_quantity(&memory).map_err(|e| InjectError::new(at(annotations::PROXY_MEMORY), e))?;
    let log_level = get(annotations::LOG_LEVEL).unwrap_or_else(|| config.log_level.clone());
    check_log_level(&log_level).map_err(|e| InjectError::new(at(annotations::LOG_LEVEL), e))?;
    let ports = |key: &str| -> Result<Vec<capture::PortRange>, InjectError> {
        get(key)
            .map(|text| parse_ports(&text))
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(|e| InjectError::new(at(key), e))
    };
    Ok(PodSettings {
        cpu,
        memory,
        log_level,
        skip_inbound: ports(annotations::SKIP_INBOUND_PORTS)?,
        skip_outbound: ports(annotations::SKIP_OUTBOUND_PORTS)?,
    })
}

/// Adds the proxy to a pod template (`{metadata, spec}`: a Pod itself, or a workload's
/// `spec.template`). Unknown fields are kept as they are. On an error the template is
/// unchanged.
pub fn inject_template(
    template: &mut Value,
    config: &InjectConfig,
) -> Result<Outcome, InjectError> {
    let root = template.as_object().ok_or_else(|| {
        InjectError::new(
            "(template)",
            format!("expected a map, got {}", kind_of(template)),
        )
    })?;
    let metadata = match root.get("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(InjectError::new(
                "metadata",
                format!("expected a map, got {}", kind_of(other)),
            ))
        }
    };
    let annotations = string_map(&metadata, "annotations").map_err(|e| e.within("metadata"))?;
    let labels = string_map(&metadata, "labels").map_err(|e| e.within("metadata"))?;
    if [
        annotations.get(annotations::INJECT),
        labels.get(annotations::INJECT),
    ]
    .into_iter()
    .flatten()
    .any(|v| v.trim().eq_ignore_ascii_case("disabled"))
    {
        return Ok(Outcome::Disabled);
    }
    let spec = match root.get("spec") {
        Some(Value::Object(s)) => s,
        None | Some(Value::Null) => {
            return Err(InjectError::new(
                "spec",
                "missing: a pod template needs a spec",
            ))
        }
        Some(other) => {
            return Err(InjectError::new(
                "spec",
                format!("expected a map, got {}", kind_of(other)),
            ))
        }
    };
    let app = containers_of(spec, "containers")?;
    let init = containers_of(spec, "initContainers")?;
    if annotations.get(annotations::INJECTED).map(String::as_str) == Some("true")
        || app
            .iter()
            .chain(&init)
            .any(|(name, _)| name == PROXY_CONTAINER)
    {
        return Ok(Outcome::AlreadyInjected);
    }
    let Some((first_app, _)) = app.first() else {
        return Err(InjectError::new(
            "spec.containers",
            "a pod template needs at least one container",
        ));
    };
    if let Some((name, _)) = app
        .iter()
        .chain(&init)
        .find(|(name, _)| name == INIT_CONTAINER)
    {
        return Err(InjectError::new(
            "spec",
            format!("a container is already named {name:?}, the name of gofe's init container"),
        ));
    }
    let own_ports = [i64::from(config.admin_port)].into_iter().chain(
        config
            .capture
            .enabled
            .then_some([
                i64::from(config.capture.inbound_port),
                i64::from(config.capture.outbound_port),
            ])
            .into_iter()
            .flatten(),
    );
    for port in own_ports {
        if let Some((i, (name, _))) = app
            .iter()
            .enumerate()
            .find(|(_, (_, ports))| ports.contains(&port))
        {
            return Err(InjectError::new(
                format!("spec.containers[{i}].ports"),
                format!("container {name:?} uses port {port}, which the gofe proxy listens on"),
            ));
        }
    }
    if let Some(Value::Array(volumes)) = spec.get("volumes") {
        if volumes
            .iter()
            .any(|v| v.get("name").and_then(Value::as_str) == Some(RUN_VOLUME))
        {
            return Err(InjectError::new(
                "spec.volumes",
                format!("a volume is already named {RUN_VOLUME:?}, the name of gofe's volume"),
            ));
        }
    } else if let Some(other) = spec.get("volumes").filter(|v| !v.is_null()) {
        return Err(InjectError::new(
            "spec.volumes",
            format!("expected a list, got {}", kind_of(other)),
        ));
    }
    let settings = pod_settings(config, &annotations)?;
    let first_app = first_app.clone();

    // Checked: now change it (nothing below fails).
    let root = template.as_object_mut().expect("checked above");
    let metadata = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if metadata.is_null() {
        *metadata = Value::Object(Map::new());
    }
    let metadata = metadata.as_object_mut().expect("checked above");
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if annotations.is_null() {
        *annotations = Value::Object(Map::new());
    }
    let annotations = annotations.as_object_mut().expect("checked above");
    annotations.insert(annotations::INJECTED.into(), Value::String("true".into()));
    annotations
        .entry(annotations::DEFAULT_CONTAINER)
        .or_insert(Value::String(first_app));
    let spec = root
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .expect("checked above");
    let init_container = to_value(&init_container(config, &settings));
    let proxy = to_value(&proxy_container(config, &settings));
    let inits = list_mut(spec, "initContainers").expect("checked above");
    if config.native_sidecar {
        inits.splice(0..0, [init_container, proxy]);
    } else {
        inits.insert(0, init_container);
        list_mut(spec, "containers")
            .expect("checked above")
            .push(proxy);
    }
    list_mut(spec, "volumes")
        .expect("checked above")
        .push(to_value(&core::Volume {
            name: RUN_VOLUME.into(),
            empty_dir: Some(core::EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("1Mi".into())),
            }),
            ..Default::default()
        }));
    Ok(Outcome::Injected)
}

fn to_value<T: Serialize>(value: &T) -> Value {
    // k8s-openapi's types serialize to JSON without fail (strings, numbers, maps).
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn env_from_field(name: &str, path: &str) -> core::EnvVar {
    core::EnvVar {
        name: name.into(),
        value_from: Some(core::EnvVarSource {
            field_ref: Some(core::ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn run_mount(read_only: bool) -> core::VolumeMount {
    core::VolumeMount {
        name: RUN_VOLUME.into(),
        mount_path: RUN_DIR.into(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

/// Non-root, read-only root file system, no privilege escalation, every capability dropped.
fn restricted(uid: i64) -> core::SecurityContext {
    core::SecurityContext {
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        run_as_non_root: Some(true),
        read_only_root_filesystem: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(core::Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(core::SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

fn resources(cpu: &str, memory: &str, memory_limit: Option<&str>) -> core::ResourceRequirements {
    core::ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".into(), Quantity(cpu.into())),
            ("memory".into(), Quantity(memory.into())),
        ])),
        limits: memory_limit.map(|m| BTreeMap::from([("memory".into(), Quantity(m.into()))])),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> core::Probe {
    core::Probe {
        http_get: Some(core::HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

/// The proxy container.
fn proxy_container(config: &InjectConfig, settings: &PodSettings) -> core::Container {
    core::Container {
        name: PROXY_CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(vec![
            format!("--log-format={}", config.log_format),
            "proxy".into(),
            format!("--bootstrap={BOOTSTRAP_PATH}"),
            // One xDS node per pod, named as Kubernetes names it.
            "--service-node=$(POD_NAME).$(POD_NAMESPACE)".into(),
        ]),
        env: Some(vec![
            env_from_field("POD_NAME", "metadata.name"),
            env_from_field("POD_NAMESPACE", "metadata.namespace"),
            core::EnvVar {
                name: "RUST_LOG".into(),
                value: Some(settings.log_level.clone()),
                ..Default::default()
            },
        ]),
        ports: Some(vec![core::ContainerPort {
            name: Some(ADMIN_PORT_NAME.into()),
            container_port: i32::from(config.admin_port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // Native sidecar: started before the app, stopped after it.
        restart_policy: config.native_sidecar.then(|| "Always".into()),
        // The app's containers start once the admin port answers (a native sidecar's start).
        startup_probe: Some(http_probe("/metrics", 1, 30)),
        // /ready: 200 once the first xDS snapshot is applied (or initial_fetch_timeout passed).
        readiness_probe: Some(http_probe("/ready", 5, 3)),
        // /ready also turns 503 while draining and while the controller is unreachable at
        // start: liveness on it would restart a proxy that is fine. The admin port answering
        // is what "alive" means here, as in the chart's proxy Deployment.
        liveness_probe: Some(http_probe("/metrics", 10, 6)),
        resources: Some(resources(
            &settings.cpu,
            &settings.memory,
            config.proxy_memory_limit.as_deref(),
        )),
        security_context: Some(restricted(config.proxy_uid)),
        volume_mounts: Some(vec![run_mount(true)]),
        ..Default::default()
    }
}

/// `gofe inject init`'s arguments for these settings (the container's `args`).
fn init_args(config: &InjectConfig, settings: &PodSettings) -> Vec<String> {
    let mut args = vec![
        format!("--log-format={}", config.log_format),
        "inject".into(),
        "init".into(),
        format!("--bootstrap-out={BOOTSTRAP_PATH}"),
        format!("--xds-address={}", config.xds_address),
        format!("--admin-port={}", config.admin_port),
    ];
    if config.capture.enabled {
        let join = |ranges: &[capture::PortRange]| {
            ranges
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        args.extend([
            "--capture".into(),
            format!("--inbound-port={}", config.capture.inbound_port),
            format!("--outbound-port={}", config.capture.outbound_port),
            format!("--proxy-uid={}", config.proxy_uid),
        ]);
        if !settings.skip_inbound.is_empty() {
            args.push(format!(
                "--skip-inbound-ports={}",
                join(&settings.skip_inbound)
            ));
        }
        if !settings.skip_outbound.is_empty() {
            args.push(format!(
                "--skip-outbound-ports={}",
                join(&settings.skip_outbound)
            ));
        }
    }
    args
}

/// `gofe-init`: writes the bootstrap; with capture, installs the redirect rules (root with
/// NET_ADMIN and NET_RAW only, as istio-init and linkerd-init run).
fn init_container(config: &InjectConfig, settings: &PodSettings) -> core::Container {
    let security = if config.capture.enabled {
        let mut s = restricted(0);
        s.run_as_non_root = Some(false);
        s.capabilities = Some(core::Capabilities {
            add: Some(vec!["NET_ADMIN".into(), "NET_RAW".into()]),
            drop: Some(vec!["ALL".into()]),
        });
        s
    } else {
        restricted(config.proxy_uid)
    };
    core::Container {
        name: INIT_CONTAINER.into(),
        image: Some(config.image.clone()),
        image_pull_policy: config.image_pull_policy.clone(),
        args: Some(init_args(config, settings)),
        // iptables' lock file, where the root file system is read-only.
        env: Some(vec![core::EnvVar {
            name: "XTABLES_LOCKFILE".into(),
            value: Some(format!("{RUN_DIR}/xtables.lock")),
            ..Default::default()
        }]),
        resources: Some(resources("10m", "16Mi", Some("64Mi"))),
        security_context: Some(security),
        volume_mounts: Some(vec![run_mount(false)]),
        ..Default::default()
    }
}

/// The bootstrap `gofe-init` writes: the proxy's node (replaced by `--service-node`), the
/// controller's xDS address and the admin listener, in `gofe proxy --bootstrap`'s format
/// (`proxy/src/xds/bootstrap.rs`; the chart's `files/bootstrap.yaml` shape).
///
/// With `capture` (the ports the redirect rules send traffic to), its static resources also
/// hold the two capture listeners, Istio's `virtualOutbound` and `virtualInbound`:
///
/// - [`OUTBOUND_LISTENER`] on `0.0.0.0:outbound_port`, `use_original_dst`: each connection the
///   app opens is handed to the `bind_to_port: false` listener of its original destination
///   (the HTTP listeners a control plane publishes for its services), else passed through to
///   that destination as TCP ([`PASSTHROUGH_CLUSTER`]).
/// - [`INBOUND_LISTENER`] on `0.0.0.0:inbound_port`, `use_original_dst` as well: a
///   `bind_to_port: false` listener at `<pod ip>:<port>` serves the app's port (with routes,
///   e.g. to a cluster at `127.0.0.1:<port>`); any other inbound connection passes through to
///   its original destination, the app ([`INBOUND_PASSTHROUGH_CLUSTER`]).
pub fn bootstrap_yaml(
    xds_address: &str,
    admin_port: u16,
    capture: Option<&capture::CaptureConfig>,
) -> String {
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let mut text = format!(
        "# Written by gofe inject init.\nnode: {{ id: \"gofe-sidecar\", cluster: \"gofe-sidecar\" }}\nxds_server: {{ address: {} }}\nstatic_resources:\n  admin: {{ address: \"0.0.0.0:{admin_port}\" }}\n",
        quote(xds_address)
    );
    if let Some(c) = capture {
        let listener = |name: &str, port: u16, cluster: &str| {
            format!(
                "    - name: {name}\n      address: \"0.0.0.0:{port}\"\n      protocol: tcp\n      use_original_dst: true\n      tcp_proxy: {{ cluster: {cluster} }}\n"
            )
        };
        text.push_str(
            "  # The capture listeners the redirect rules send traffic to.\n  listeners:\n",
        );
        text.push_str(&listener(
            OUTBOUND_LISTENER,
            c.outbound_port,
            PASSTHROUGH_CLUSTER,
        ));
        text.push_str(&listener(
            INBOUND_LISTENER,
            c.inbound_port,
            INBOUND_PASSTHROUGH_CLUSTER,
        ));
        text.push_str(&format!(
            "  clusters:\n    - {{ name: {PASSTHROUGH_CLUSTER}, type: original_dst }}\n    - {{ name: {INBOUND_PASSTHROUGH_CLUSTER}, type: original_dst }}\n"
        ));
    }
    text
}

/// The outbound capture listener's name in the bootstrap (its `tcp_proxy` series' label).
pub const OUTBOUND_LISTENER: &str = "gofe-outbound";
/// The inbound capture listener's name in the bootstrap.
pub const INBOUND_LISTENER: &str = "gofe-inbound";
/// The `original_dst` cluster outbound connections no listener takes pass through (Istio's
/// name).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// The `original_dst` cluster inbound connections pass through to the app by (Istio's name).
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";

#[cfg(test)]
mod tests;
