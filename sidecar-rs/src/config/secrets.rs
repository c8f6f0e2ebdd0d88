//! Credentials referenced from tools.yaml: `${env:NAME}` and `${file:/path}`.
//!
//! Values are resolved when the config loads (and again on every reload, so a
//! rotated Kubernetes Secret takes effect). A [`Secret`] never prints its
//! value, and the [`crate::config::redact::Redactor`] scrubs every known value from what leaves the
//! sidecar (results, error messages), so an upstream that echoes a key back
//! cannot leak it to the brain.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::files::{self, MAX_SECRET_BYTES};

/// A credential value. Debug and Display print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// A secret from a value already in hand (tests, benchmarks); the config
    /// reads its secrets through [`SecretRef::resolve`].
    pub fn new(value: &str) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a secret comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl SecretRef {
    /// Parses the inside of `${...}`: `env:NAME` or `file:/path`.
    pub fn parse(inner: &str) -> Result<Self, String> {
        if let Some(name) = inner.strip_prefix("env:") {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "${{env:{name}}}: not a valid environment variable name"
                ));
            }
            return Ok(SecretRef::Env(name.to_owned()));
        }
        if let Some(path) = inner.strip_prefix("file:") {
            if !path.starts_with('/') {
                return Err(format!("${{file:{path}}}: the path must be absolute"));
            }
            return Ok(SecretRef::File(PathBuf::from(path)));
        }
        Err(format!(
            "${{{inner}}}: use ${{env:NAME}} or ${{file:/absolute/path}}"
        ))
    }

    /// Reads the value. Errors name the variable or file, never a value.
    pub fn resolve(&self) -> Result<Secret, String> {
        let value = match self {
            SecretRef::Env(name) => std::env::var(name)
                .map_err(|_| format!("environment variable {name} is not set"))?,
            SecretRef::File(path) => read_capped(path)?
                // Files written with `echo` end in a newline that is not part of the key.
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        };
        if value.is_empty() {
            return Err(format!("{} resolves to an empty value", self.describe()));
        }
        if value.len() as u64 > MAX_SECRET_BYTES {
            return Err(format!(
                "{} is larger than {MAX_SECRET_BYTES} bytes",
                self.describe()
            ));
        }
        Ok(Secret(value.into()))
    }

    pub fn describe(&self) -> String {
        match self {
            SecretRef::Env(name) => format!("${{env:{name}}}"),
            SecretRef::File(path) => format!("${{file:{}}}", path.display()),
        }
    }
}

fn read_capped(path: &std::path::Path) -> Result<String, String> {
    files::read_text(path, MAX_SECRET_BYTES)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert_eq!(
            SecretRef::parse("env:API_KEY"),
            Ok(SecretRef::Env("API_KEY".into()))
        );
        assert_eq!(
            SecretRef::parse("file:/run/secrets/key"),
            Ok(SecretRef::File("/run/secrets/key".into()))
        );
        assert!(SecretRef::parse("file:relative").is_err());
        assert!(SecretRef::parse("vault:x").is_err());
        assert!(SecretRef::parse("env:A-B").is_err());
    }

    #[test]
    fn missing_env_names_the_variable_only() {
        let e = SecretRef::Env("TANDEM_SURELY_UNSET_VAR".into())
            .resolve()
            .unwrap_err();
        assert!(e.contains("TANDEM_SURELY_UNSET_VAR"));
    }

    #[test]
    fn file_secret_is_trimmed_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "s3cr3t-value\n").unwrap();
        let secret = SecretRef::File(path).resolve().unwrap();
        assert_eq!(secret.expose(), "s3cr3t-value");
        assert_eq!(format!("{secret:?}"), "[redacted]");
    }

    #[test]
    fn an_endless_or_oversized_secret_file_is_refused_not_read() {
        let e = SecretRef::File("/dev/zero".into()).resolve().unwrap_err();
        assert!(e.contains("/dev/zero: larger than 16384 bytes"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("app.log");
        std::fs::write(&log, "x".repeat(MAX_SECRET_BYTES as usize + 1)).unwrap();
        let e = SecretRef::File(log).resolve().unwrap_err();
        assert!(e.contains("larger than 16384 bytes"), "{e}");
    }
}
