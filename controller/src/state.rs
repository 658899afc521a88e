//! The controller's decision state on disk, so a restart resumes instead of forgetting.
//!
//! Without it, a restarted controller starts from nothing: an endpoint it had ejected gets no
//! traffic at the proxies, so its (empty) signals look healthy and it is readmitted at full
//! weight before anything proves it recovered. With `state_file` set, the controller writes,
//! after every publication, the per-cluster decision state, the last publication and the
//! clock they were decided on (written to a temporary file and renamed, so a crash never
//! leaves half a file). On start it reads that file back: the proxies are given exactly what
//! they had, and the breakers, ramps and latency multipliers continue where they were.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gofe_core::policy::ClusterState;
use gofe_model::ProxyConfig;
use serde::{Deserialize, Serialize};

use crate::publication::Published;

/// The file's format version; a file of another version is refused, not misread.
const FORMAT: u32 = 1;

/// What a controller keeps across restarts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Saved {
    /// The file format.
    pub format: u32,
    /// When it was written, ms since the Unix epoch.
    pub saved_unix_ms: u64,
    /// The controller's decision clock (ms) when it was written.
    pub now_ms: u64,
    /// The version last published.
    pub version: u64,
    /// The configuration last published.
    pub config: ProxyConfig,
    /// What that publication carried per endpoint.
    pub published: Vec<Published>,
    /// Per-cluster decision state.
    pub clusters: BTreeMap<String, ClusterState>,
}

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("state file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state file this controller can read.
    #[error("state file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl Saved {
    /// A state to save.
    pub fn new(
        now_ms: u64,
        version: u64,
        config: ProxyConfig,
        published: Vec<Published>,
        clusters: BTreeMap<String, ClusterState>,
    ) -> Self {
        Saved {
            format: FORMAT,
            saved_unix_ms: unix_ms(),
            now_ms,
            version,
            config,
            published,
            clusters,
        }
    }

    /// Where the decision clock stands now, continuing the saved one: the saved clock plus the
    /// wall-clock time since it was saved (never backwards).
    pub fn clock_now_ms(&self) -> u64 {
        self.now_ms
            .saturating_add(unix_ms().saturating_sub(self.saved_unix_ms))
    }
}

/// Writes `saved` to `path` atomically (a temporary file beside it, then a rename).
pub fn save(path: &Path, saved: &Saved) -> Result<(), StateError> {
    let io = |source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let text = serde_json::to_vec(saved).map_err(|e| StateError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads the state at `path`; `None` when there is no file yet.
pub fn load(path: &Path) -> Result<Option<Saved>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                path: path.to_owned(),
                source,
            })
        }
    };
    let saved: Saved = serde_json::from_slice(&bytes).map_err(|e| StateError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if saved.format != FORMAT {
        return Err(StateError::Invalid {
            path: path.to_owned(),
            message: format!("format {} (this controller reads {FORMAT})", saved.format),
        });
    }
    Ok(Some(saved))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_it_cannot_read() {
        let dir = std::env::temp_dir().join(format!("gofe-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert!(load(&path).unwrap().is_none(), "no file yet");
        let mut clusters = BTreeMap::new();
        clusters.insert("web".to_owned(), ClusterState::default());
        let saved = Saved::new(
            42_000,
            7,
            ProxyConfig::default(),
            vec![Published {
                cluster: "web".into(),
                endpoint: "10.0.0.1:80".into(),
                weight: 0,
                healthy: false,
            }],
            clusters,
        );
        save(&path, &saved).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.version, 7);
        assert_eq!(back.published, saved.published);
        assert_eq!(back.clusters, saved.clusters);
        assert!(back.clock_now_ms() >= 42_000);

        std::fs::write(&path, b"{\"format\": 99}").unwrap();
        assert!(matches!(load(&path), Err(StateError::Invalid { .. })));
        std::fs::write(&path, b"not json").unwrap();
        assert!(matches!(load(&path), Err(StateError::Invalid { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
