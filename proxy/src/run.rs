//! The proxy process lifecycle: first load, reloads on `SIGHUP` or file change, drain on
//! `SIGTERM`/`SIGINT`.

use std::path::PathBuf;
use std::time::Duration;

use crate::{config, Proxy};

/// Where the configuration comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// A YAML file; reloads re-read it.
    File(PathBuf),
    /// Text compiled into the binary (for `gofe up`); reloads are a no-op.
    Embedded {
        /// Shown in errors and `/config_dump`.
        name: String,
        /// The YAML.
        text: String,
    },
}

/// How to run the proxy process.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The configuration.
    pub source: ConfigSource,
    /// Poll the file for changes at this interval and reload when it changes. Default: off
    /// (reload on `SIGHUP` only).
    pub watch: Option<Duration>,
    /// How long `SIGTERM` waits for in-flight requests (and a removed listener's connections).
    pub drain: Duration,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The first configuration could not be loaded.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The first configuration could not be put into service.
    #[error(transparent)]
    Apply(#[from] crate::ApplyError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

fn load(source: &ConfigSource) -> Result<(crate::ProxyConfig, String), config::ConfigError> {
    match source {
        ConfigSource::File(path) => Ok((config::load(path)?, path.display().to_string())),
        ConfigSource::Embedded { name, text } => Ok((config::parse(name, text)?, name.clone())),
    }
}

/// Loads and applies the configuration again. Failures are logged and counted; the running
/// configuration stays.
pub async fn reload(proxy: &Proxy, options: &RunOptions) -> bool {
    let outcome = match load(&options.source) {
        Err(e) => Err(e.to_string()),
        Ok((config, name)) => proxy
            .apply(config, &name, options.drain)
            .await
            .map_err(|e| e.to_string()),
    };
    match outcome {
        Ok(version) => {
            tracing::info!(version, "configuration reloaded");
            proxy.count_reload(true);
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration rejected; keeping the running one");
            proxy.count_reload(false);
            false
        }
    }
}

/// Runs the proxy until `SIGTERM` or `SIGINT`, then drains and returns.
pub async fn run(options: RunOptions) -> Result<(), RunError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;

    let proxy = Proxy::new();
    let (config, name) = load(&options.source)?;
    let version = proxy.apply(config, &name, options.drain).await?;
    proxy.count_reload(true);
    let listeners = proxy.listener_addrs().await;
    let admin = proxy.admin_addr().await;
    tracing::info!(version, source = %name, ?listeners, ?admin, "gofe proxy serving");

    let mut fingerprint = file_fingerprint(&options.source);
    let mut poll = tokio::time::interval(options.watch.unwrap_or(Duration::from_secs(3600)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading configuration");
                reload(&proxy, &options).await;
                fingerprint = file_fingerprint(&options.source);
            }
            _ = poll.tick(), if options.watch.is_some() => {
                let now = file_fingerprint(&options.source);
                if now != fingerprint {
                    fingerprint = now;
                    tracing::info!("configuration file changed: reloading");
                    reload(&proxy, &options).await;
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!(drain = ?options.drain, "shutting down: draining in-flight requests");
    proxy.shutdown(options.drain).await;
    tracing::info!("stopped");
    Ok(())
}

/// What changes when a file is edited or a Kubernetes ConfigMap symlink is swapped.
fn file_fingerprint(source: &ConfigSource) -> Option<(std::time::SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let ConfigSource::File(path) = source else {
        return None;
    };
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}
