//! Hot reload: on SIGHUP, and whenever the tools file or a secret file it
//! references changes, compile a new registry and swap it in atomically.
//!
//! Changes are found by content, polled: that catches editors, `kubectl cp`,
//! and Kubernetes ConfigMap/Secret updates (an atomic `..data` symlink swap,
//! which inotify on the file itself would miss). Calls in flight keep the
//! tool they started with. A file that fails to compile is rejected, logged
//! and counted, and the previous config stays in force.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::config::registry::Registry;
use crate::config::{files, spec};
use crate::error::ConfigError;
use crate::metrics::Metrics;
use crate::upstream::origins::Upstreams;

pub struct Reloader {
    pub path: PathBuf,
    pub registry: Arc<ArcSwap<Registry>>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Metrics,
    pub interval: Duration,
    /// The fingerprint of what the current registry was compiled from
    /// (see [`load`]), so a change made after that read is not missed.
    pub loaded: u64,
}

impl Reloader {
    /// Runs until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        let mut last = self.loaded;
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let (reason, unless) = tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => ("SIGHUP", None),
                _ = tick.tick() => ("file changed", Some(last)),
            };
            if let Some(seen) = self.reload(reason, unless).await {
                last = seen;
            }
        }
    }

    /// Reads the file once and, unless its fingerprint is `unless`, compiles
    /// exactly what was read and swaps it in (or keeps the current registry).
    /// Reading and compiling run on the blocking pool: they touch files and
    /// can take a while for large schemas, and must not stall the calls
    /// served by the runtime's workers. Returns the fingerprint of what was
    /// read (`None` if the blocking task itself failed).
    pub async fn reload(&self, reason: &str, unless: Option<u64>) -> Option<u64> {
        let path = self.path.clone();
        let upstreams = self.upstreams.clone();
        let current = self.registry.load_full();
        let outcome = tokio::task::spawn_blocking(move || {
            let (text, seen) = read(&path);
            if Some(seen) == unless {
                return (seen, None);
            }
            let compiled = text.and_then(|t| {
                Registry::parse(&t, spec::folder_of(&path), &upstreams, Some(&current))
            });
            (seen, Some(compiled))
        })
        .await;
        let (seen, compiled) = match outcome {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(error = %e, "config reload task failed");
                return None;
            }
        };
        match compiled {
            None => {}
            Some(Ok(next)) => {
                let tools = next.len();
                crate::config::redact::set_in_force(next.redactor().clone());
                self.registry.store(Arc::new(next));
                self.metrics
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(reason, tools, config = %self.path.display(), "config reloaded");
            }
            Some(Err(e)) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::error!(
                    reason,
                    config = %self.path.display(),
                    error = %e,
                    "config reload rejected; the previous config stays in force"
                );
            }
        }
        Some(seen)
    }
}

/// Loads the tools file at `path` (blocking: call it from the blocking
/// pool), returning the registry and the fingerprint of exactly the text it
/// was compiled from, for [`Reloader::loaded`].
pub fn load(path: &Path, upstreams: &Upstreams) -> (Result<Registry, ConfigError>, u64) {
    let (text, seen) = read(path);
    (
        text.and_then(|t| Registry::parse(&t, spec::folder_of(path), upstreams, None)),
        seen,
    )
}

/// Reads the tools file once: its text, and a hash of that text, of every
/// `${file:...}` it references and of every schema file it names (read
/// now, before compiling, so that a change made while compiling shows up as
/// a change next time).
fn read(path: &Path) -> (Result<String, ConfigError>, u64) {
    let text = spec::read_tools_file(path);
    let mut hasher = DefaultHasher::new();
    match &text {
        Ok(t) => {
            t.hash(&mut hasher);
            let secrets = secret_files(t)
                .into_iter()
                .map(|f| (f, files::MAX_SECRET_BYTES));
            let schemas = spec::schema_file_paths(t, spec::folder_of(path))
                .into_iter()
                .map(|f| (f, files::MAX_SCHEMA_FILE_BYTES));
            for (file, max) in secrets.chain(schemas) {
                // A missing file, or one the loader refuses (too large, not
                // a regular file), hashes as empty: its appearing or being
                // mended is a change.
                files::read_bytes(&file, max)
                    .unwrap_or_default()
                    .hash(&mut hasher);
            }
        }
        Err(_) => "".hash(&mut hasher),
    }
    (text, hasher.finish())
}

/// A hash of the tools file and of the files it references.
#[cfg(test)]
fn fingerprint(path: &Path) -> u64 {
    read(path).1
}

/// Paths named by `${file:/path}` references.
fn secret_files(text: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("${file:") {
        let after = &rest[start + 7..];
        let Some(end) = after.find('}') else { break };
        out.push(PathBuf::from(&after[..end]));
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_secret_files() {
        let text = "a: \"Bearer ${file:/run/s/key}\"\nb: ${env:X}\nc: ${file:/run/s/other}";
        assert_eq!(
            secret_files(text),
            vec![PathBuf::from("/run/s/key"), PathBuf::from("/run/s/other")]
        );
    }

    #[test]
    fn fingerprint_follows_secret_contents() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("key");
        std::fs::write(&secret, "one").unwrap();
        let config = dir.path().join("tools.yaml");
        std::fs::write(&config, format!("x: ${{file:{}}}", secret.display())).unwrap();
        let before = fingerprint(&config);
        assert_eq!(before, fingerprint(&config));
        std::fs::write(&secret, "two").unwrap();
        assert_ne!(before, fingerprint(&config));
    }

    #[test]
    fn fingerprint_follows_schema_files_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let schema = dir.path().join("common.json");
        std::fs::write(&schema, r#"{"$id": "urn:c", "type": "string"}"#).unwrap();
        let config = dir.path().join("tools.yaml");
        std::fs::write(&config, "schema_files: [common.json]\ntools: []\n").unwrap();
        let before = fingerprint(&config);
        std::fs::write(&schema, r#"{"$id": "urn:c", "type": "integer"}"#).unwrap();
        assert_ne!(before, fingerprint(&config));
    }
}
