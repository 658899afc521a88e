//! The run's processes: the `gofe` binary started as each part of the mesh, its output in a
//! log file per process, and a clean stop (SIGTERM, then SIGKILL after a grace period).
//!
//! Every child is killed when its handle is dropped, so no error path leaves one behind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::UpError;

/// One child process.
pub struct Child {
    /// What it is (`proxy`, `controller`, `backend web-3`, ...).
    pub name: String,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Child {
    /// Starts `exe args…` with its stdout and stderr in `dir/LOG.log`.
    pub fn spawn(
        exe: &Path,
        name: &str,
        log_name: &str,
        args: &[String],
        dir: &Path,
    ) -> Result<Child, UpError> {
        let log = dir.join(format!("{log_name}.log"));
        let file = std::fs::File::create(&log).map_err(|source| UpError::Io {
            what: format!("creating {}", log.display()),
            source,
        })?;
        let err = file.try_clone().map_err(|source| UpError::Io {
            what: format!("opening {}", log.display()),
            source,
        })?;
        let child = tokio::process::Command::new(exe)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // A child's error is one line in its log, not a backtrace.
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            // The gofe binary exits when this process is gone (see its `main`).
            .env("GOFE_EXIT_WITH_PARENT", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| UpError::Io {
                what: format!("starting {name} ({})", exe.display()),
                source,
            })?;
        Ok(Child {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The process id (none once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends `signal` (a no-op once the process is gone).
    pub fn signal(&self, signal: Signal) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), signal);
        }
    }

    /// Whether it has exited (and with what).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log, for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(6)..].join("\n");
        format!(
            "{} (last lines of {}):\n{tail}",
            self.name,
            self.log.display()
        )
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`; waits for it.
    pub async fn stop(mut self, grace: Duration) {
        self.signal(Signal::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// SIGKILL at once (a backend that "dies"), and wait for it.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A plain HTTP client for the children's admin endpoints.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A new client.
pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// `GET http://ADDR PATH`: status and body, within 2 s.
pub async fn get(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
) -> Result<(u16, Bytes), String> {
    let uri: http::Uri = format!("http://{addr}{path}")
        .parse()
        .map_err(|e| format!("{addr}{path}: {e}"))?;
    let fetch = async {
        let resp = client.get(uri).await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .map_err(|_| format!("{addr}{path}: no answer within 2 s"))?
}

/// `POST http://ADDR PATH` with an empty body: the status, within 2 s.
pub async fn post(client: &HttpClient, addr: SocketAddr, path: &str) -> Result<u16, String> {
    let req = http::Request::post(format!("http://{addr}{path}"))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(2), client.request(req))
        .await
        .map_err(|_| format!("{addr}{path}: no answer within 2 s"))?
        .map_err(|e| e.to_string())?;
    Ok(resp.status().as_u16())
}

/// Waits until `GET addr path` answers 200, the child exits, or `limit` passes.
pub async fn wait_ready(
    client: &HttpClient,
    child: &mut Child,
    addr: SocketAddr,
    path: &str,
    limit: Duration,
) -> Result<(), UpError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok((200, _)) = get(client, addr, path).await {
            return Ok(());
        }
        if let Some(status) = child.exited() {
            return Err(UpError::ChildFailed(format!(
                "{} exited ({status}) before it was ready: {}",
                child.name,
                child.log_tail()
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(UpError::ChildFailed(format!(
                "{} did not answer http://{addr}{path} within {}: {}",
                child.name,
                gofe_yaml::duration::format(limit),
                child.log_tail()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Refuses to start when a port the run needs is taken, naming it and its flag.
pub fn check_free(ports: &[(SocketAddr, &str)]) -> Result<(), UpError> {
    let mut taken = Vec::new();
    for (addr, what) in ports {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            taken.push(format!("{addr} ({what}): {e}"));
        }
    }
    if taken.is_empty() {
        Ok(())
    } else {
        Err(UpError::PortsTaken(taken.join("; ")))
    }
}
