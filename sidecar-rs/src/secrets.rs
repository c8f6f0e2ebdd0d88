//! Credentials referenced from tools.yaml: `${env:NAME}` and `${file:/path}`.
//!
//! Values are resolved when the config loads (and again on every reload, so a
//! rotated Kubernetes Secret takes effect). A [`Secret`] never prints its
//! value, and the [`Redactor`] scrubs every known value from what leaves the
//! sidecar (results, error messages), so an upstream that echoes a key back
//! cannot leak it to the brain.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use memchr::memmem;

/// A credential value. Debug and Display print `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
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
            SecretRef::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?
                // Files written with `echo` end in a newline that is not part of the key.
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        };
        if value.is_empty() {
            return Err(format!("{} resolves to an empty value", self.describe()));
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

/// Scrubs known secret values from outgoing text and bytes.
#[derive(Default)]
pub struct Redactor {
    finders: Vec<memmem::Finder<'static>>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.finders.len())
    }
}

const MASK: &[u8] = b"[redacted]";

impl Redactor {
    pub fn new(secrets: &[Secret]) -> Self {
        let mut values: Vec<&str> = secrets.iter().map(Secret::expose).collect();
        // Longest first, so a secret containing another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self {
            finders: values
                .into_iter()
                .map(|v| memmem::Finder::new(v.as_bytes()).into_owned())
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.finders.is_empty()
    }

    /// `bytes` with every secret replaced; no copy when none occurs.
    pub fn scrub_bytes(&self, bytes: Bytes) -> Bytes {
        if self.finders.iter().all(|f| f.find(&bytes).is_none()) {
            return bytes;
        }
        let mut out = bytes.to_vec();
        for finder in &self.finders {
            let needle = finder.needle().to_vec();
            let mut scrubbed = Vec::with_capacity(out.len());
            let mut rest = &out[..];
            while let Some(i) = memmem::find(rest, &needle) {
                scrubbed.extend_from_slice(&rest[..i]);
                scrubbed.extend_from_slice(MASK);
                rest = &rest[i + needle.len()..];
            }
            scrubbed.extend_from_slice(rest);
            out = scrubbed;
        }
        Bytes::from(out)
    }

    pub fn scrub_str(&self, text: String) -> String {
        if self.is_empty() {
            return text;
        }
        let bytes = self.scrub_bytes(Bytes::from(text));
        String::from_utf8_lossy(&bytes).into_owned()
    }
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
    fn redactor_scrubs_every_occurrence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-123456").unwrap();
        let r = Redactor::new(&[SecretRef::File(path).resolve().unwrap()]);
        let out = r.scrub_bytes(Bytes::from_static(
            b"{\"e\":\"bad key sk-123456, sk-123456\"}",
        ));
        assert_eq!(&out[..], b"{\"e\":\"bad key [redacted], [redacted]\"}");
        let clean = Bytes::from_static(b"{}");
        assert_eq!(r.scrub_bytes(clean.clone()).as_ptr(), clean.as_ptr());
    }
}
