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
use crate::metrics::Metrics;
use crate::upstream::origins::Upstreams;

pub struct Reloader {
    pub path: PathBuf,
    pub registry: Arc<ArcSwap<Registry>>,
    pub upstreams: Arc<Upstreams>,
    pub metrics: Metrics,
    pub interval: Duration,
}

impl Reloader {
    /// Runs until `stop` fires.
    pub async fn run(self, stop: CancellationToken) {
        let mut last = fingerprint(&self.path);
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
            let reason = tokio::select! {
                _ = stop.cancelled() => return,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => None } } => "SIGHUP",
                _ = tick.tick() => {
                    let now = fingerprint(&self.path);
                    if now == last {
                        continue;
                    }
                    "file changed"
                }
            };
            self.reload(reason);
            last = fingerprint(&self.path);
        }
    }

    /// Compiles the file and swaps it in, or keeps the current registry.
    pub fn reload(&self, reason: &str) {
        let current = self.registry.load_full();
        match Registry::load(&self.path, &self.upstreams, Some(&current)) {
            Ok(next) => {
                let tools = next.len();
                crate::config::redact::set_in_force(next.redactor().clone());
                self.registry.store(Arc::new(next));
                self.metrics
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                tracing::info!(reason, tools, config = %self.path.display(), "config reloaded");
            }
            Err(e) => {
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
    }
}

/// A hash of the tools file and of every `${file:...}` it references.
fn fingerprint(path: &Path) -> u64 {
    let mut hasher = DefaultHasher::new();
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.hash(&mut hasher);
    for secret in secret_files(&text) {
        std::fs::read(&secret).unwrap_or_default().hash(&mut hasher);
    }
    hasher.finish()
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
}
