//! `gofe inject` (manifests in, injected manifests out) and `gofe inject init` (what the
//! `gofe-init` container runs inside an injected pod). The only I/O of this crate.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;

use crate::capture::{self, CaptureConfig};
use crate::manifest::{self, Injected};
use crate::{bootstrap_yaml, parse_ports, InjectConfig, Outcome};

/// `gofe inject [FILE...]`: adds the gofe proxy to every pod template of the manifests and
/// prints them (`kubectl get deploy web -o yaml | gofe inject | kubectl apply -f -`).
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct InjectArgs {
    /// What runs inside an injected pod.
    #[command(subcommand)]
    pub command: Option<InjectCommand>,
    /// Manifest files (YAML, multi-document, JSON or `kind: List`). None, or `-`: stdin.
    pub files: Vec<PathBuf>,
    /// The gofe image of the proxy and init containers.
    #[arg(long)]
    pub image: Option<String>,
    /// imagePullPolicy of both containers.
    #[arg(long, value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: Option<String>,
    /// The controller's xDS address. Default: the chart's (gofe-controller.gofe-system.svc:18000).
    #[arg(long)]
    pub xds_address: Option<String>,
    /// The proxy's admin port. Default 9901.
    #[arg(long)]
    pub admin_port: Option<u16>,
    /// The proxy's RUST_LOG. Default info (per pod: gofe.io/log-level).
    #[arg(long)]
    pub proxy_log_level: Option<String>,
    /// The proxy's CPU request. Default 200m (per pod: gofe.io/proxy-cpu).
    #[arg(long)]
    pub proxy_cpu: Option<String>,
    /// The proxy's memory request. Default 128Mi (per pod: gofe.io/proxy-memory).
    #[arg(long)]
    pub proxy_memory: Option<String>,
    /// The proxy's memory limit. Default: none.
    #[arg(long)]
    pub proxy_memory_limit: Option<String>,
    /// The proxy's UID. Default 2102.
    #[arg(long)]
    pub proxy_uid: Option<i64>,
    /// Put the proxy in `containers` instead of a native sidecar (`initContainers` with
    /// `restartPolicy: Always`, Kubernetes 1.29 and later).
    #[arg(long)]
    pub legacy_sidecar: bool,
    /// Also install traffic-capture rules in the init container (needs NET_ADMIN and
    /// NET_RAW), and give the proxy's bootstrap its capture listeners on their ports.
    #[arg(long)]
    pub capture: bool,
}

/// `gofe inject`'s subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum InjectCommand {
    /// Run inside an injected pod (the gofe-init container): write the proxy's bootstrap and,
    /// with --capture, install the iptables redirect rules.
    Init(InitArgs),
}

/// `gofe inject init`.
#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Where to write the proxy's xDS bootstrap.
    #[arg(long)]
    pub bootstrap_out: PathBuf,
    /// The controller's xDS address (host:port).
    #[arg(long)]
    pub xds_address: String,
    /// The proxy's admin port.
    #[arg(long, default_value_t = 9901)]
    pub admin_port: u16,
    /// Install the redirect rules, and put the capture listeners in the bootstrap.
    #[arg(long)]
    pub capture: bool,
    /// The proxy's inbound port.
    #[arg(long, default_value_t = 15006)]
    pub inbound_port: u16,
    /// The proxy's outbound port.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,
    /// The proxy's UID (its own traffic is not redirected).
    #[arg(long, default_value_t = 2102)]
    pub proxy_uid: i64,
    /// Inbound ports not redirected (comma-separated, a-b ranges).
    #[arg(long, default_value = "")]
    pub skip_inbound_ports: String,
    /// Outbound ports not redirected.
    #[arg(long, default_value = "")]
    pub skip_outbound_ports: String,
    /// Print the iptables calls instead of running them (and write no file).
    #[arg(long)]
    pub dry_run: bool,
    /// The iptables program.
    #[arg(long, default_value = "iptables")]
    pub iptables: String,
}

impl InjectArgs {
    /// The injection settings these flags give (defaults: [`InjectConfig::default`]).
    pub fn config(&self) -> anyhow::Result<InjectConfig> {
        let d = InjectConfig::default();
        let config = InjectConfig {
            image: self.image.clone().unwrap_or(d.image),
            image_pull_policy: self.image_pull_policy.clone(),
            xds_address: self.xds_address.clone().unwrap_or(d.xds_address),
            admin_port: self.admin_port.unwrap_or(d.admin_port),
            log_level: self.proxy_log_level.clone().unwrap_or(d.log_level),
            log_format: d.log_format,
            proxy_cpu: self.proxy_cpu.clone().unwrap_or(d.proxy_cpu),
            proxy_memory: self.proxy_memory.clone().unwrap_or(d.proxy_memory),
            proxy_memory_limit: self.proxy_memory_limit.clone(),
            proxy_uid: self.proxy_uid.unwrap_or(d.proxy_uid),
            native_sidecar: !self.legacy_sidecar,
            capture: crate::CaptureSettings {
                enabled: self.capture,
                ..d.capture
            },
        };
        let mut v = gofe_yaml::Validator::default();
        gofe_yaml::Validate::validate(&config, &mut v);
        let problems = v.finish();
        if let Some(p) = problems.first() {
            anyhow::bail!("--{}: {}", p.field.replace('_', "-"), p.message);
        }
        Ok(config)
    }
}

/// Runs `gofe inject` or `gofe inject init`.
pub fn main(args: InjectArgs) -> anyhow::Result<()> {
    if let Some(InjectCommand::Init(init)) = args.command {
        return run_init(&init);
    }
    let config = args.config()?;
    let mut text = String::new();
    let files: Vec<PathBuf> = if args.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.files.clone()
    };
    let mut out = String::new();
    for file in &files {
        text.clear();
        let name = if file.as_os_str() == "-" {
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading stdin")?;
            "stdin".to_owned()
        } else {
            text = std::fs::read_to_string(file)
                .with_context(|| format!("{}: cannot read", file.display()))?;
            file.display().to_string()
        };
        let (rendered, report) = manifest::inject_manifests(&text, &config)
            .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        if !out.is_empty() && !rendered.is_empty() {
            out.push_str(if rendered.starts_with('{') {
                ""
            } else {
                "---\n"
            });
        }
        out.push_str(&rendered);
        for Injected {
            object, outcome, ..
        } in report
        {
            let what = match outcome {
                Outcome::Injected => "injected",
                Outcome::AlreadyInjected => "already injected, unchanged",
                Outcome::Disabled => "gofe.io/inject: disabled, unchanged",
            };
            eprintln!("{name}: {object}: {what}");
        }
    }
    print!("{out}");
    Ok(())
}

/// The capture configuration `gofe inject init`'s flags give.
pub fn capture_config(init: &InitArgs) -> anyhow::Result<CaptureConfig> {
    Ok(CaptureConfig {
        inbound_port: init.inbound_port,
        outbound_port: init.outbound_port,
        proxy_uid: init.proxy_uid,
        skip_inbound: parse_ports(&init.skip_inbound_ports)
            .map_err(|e| anyhow::anyhow!("--skip-inbound-ports: {e}"))?,
        skip_outbound: parse_ports(&init.skip_outbound_ports)
            .map_err(|e| anyhow::anyhow!("--skip-outbound-ports: {e}"))?,
        admin_port: init.admin_port,
    })
}

fn run_init(init: &InitArgs) -> anyhow::Result<()> {
    let capture = init.capture.then(|| capture_config(init)).transpose()?;
    let bootstrap = bootstrap_yaml(&init.xds_address, init.admin_port, capture.as_ref());
    let rules = capture.as_ref().map(capture::rules).unwrap_or_default();
    if init.dry_run {
        println!("# {}", init.bootstrap_out.display());
        print!("{bootstrap}");
        for rule in &rules {
            println!("{} {}", init.iptables, rule.join(" "));
        }
        return Ok(());
    }
    std::fs::write(&init.bootstrap_out, &bootstrap)
        .with_context(|| format!("writing the bootstrap to {}", init.bootstrap_out.display()))?;
    tracing::info!(path = %init.bootstrap_out.display(), xds = %init.xds_address, "bootstrap written");
    for rule in &rules {
        let status = std::process::Command::new(&init.iptables)
            .args(rule)
            .status()
            .with_context(|| {
                format!("running {} (is it installed in the image?)", init.iptables)
            })?;
        if !status.success() {
            anyhow::bail!("{} {} failed: {status}", init.iptables, rule.join(" "));
        }
    }
    if init.capture {
        tracing::info!(
            rules = rules.len(),
            inbound = init.inbound_port,
            outbound = init.outbound_port,
            "traffic capture installed"
        );
    }
    Ok(())
}
