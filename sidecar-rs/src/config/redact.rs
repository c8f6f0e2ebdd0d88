//! Scrubbing secret values from everything that leaves the sidecar.
//!
//! An upstream that echoes a credential rarely echoes it byte for byte: a
//! JSON encoder may escape `/` as `\/` or any character as `\uXXXX`, a URL
//! in an error page carries it percent-encoded (upper- or lower-case hex),
//! and a Basic credential travels as base64. The [`Redactor`] matches every
//! secret in all of these forms, mixed per character as encoders mix them,
//! in one pass, and masks each match.
//!
//! Why a regex and not `aho-corasick` alone: aho-corasick matches a set of
//! fixed strings, but an echo may escape any subset of a secret's
//! characters, so the fixed forms cannot be enumerated. The regex crate
//! compiles one automaton for every secret and every per-character encoding
//! (using aho-corasick itself as its literal prefilter).

use std::borrow::Cow;
use std::fmt;
use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;

use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::Engine;
use bytes::Bytes;
use regex::bytes::{Regex, RegexBuilder};

use crate::config::secrets::Secret;
use crate::pb::ToolResult;

/// What a secret is replaced with.
pub const MASK: &str = "[redacted]";

/// Base64 runs shorter than this are not matched on their own: too short a
/// run could match unrelated base64 by chance.
const MIN_BASE64_RUN: usize = 8;

/// Scrubs known secret values, in every encoding of [`pattern`], from
/// outgoing text and bytes.
#[derive(Default)]
pub struct Redactor {
    /// `None` when there is nothing to scrub.
    matcher: Option<Regex>,
    secrets: usize,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets)
    }
}

impl Redactor {
    /// A redactor for `secrets`. Fails only when the automaton for them
    /// would pass the regex crate's size limit (many very long secrets): the
    /// config is then refused, never served without redaction.
    pub fn new(secrets: &[Secret]) -> Result<Self, String> {
        let mut values: Vec<&str> = secrets
            .iter()
            .map(Secret::expose)
            .filter(|v| !v.is_empty())
            .collect();
        // Longest first: alternation is leftmost-first, so a secret that
        // contains another is masked whole.
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        if values.is_empty() {
            return Ok(Self::default());
        }
        let alternatives: Vec<String> = values.iter().map(|v| pattern(v)).collect();
        let matcher = RegexBuilder::new(&alternatives.join("|"))
            .unicode(false)
            .size_limit(64 << 20)
            .build()
            .map_err(|e| format!("the secrets are too large to redact ({e})"))?;
        Ok(Self {
            matcher: Some(matcher),
            secrets: values.len(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// `bytes` with every secret replaced; no copy when none occurs.
    pub fn scrub_bytes(&self, bytes: Bytes) -> Bytes {
        match self.scrub_slice(&bytes) {
            Cow::Borrowed(_) => bytes,
            Cow::Owned(scrubbed) => Bytes::from(scrubbed),
        }
    }

    /// `text` with every secret replaced.
    pub fn scrub_str(&self, text: String) -> String {
        match self.scrub_text(&text) {
            Cow::Borrowed(_) => text,
            Cow::Owned(scrubbed) => scrubbed,
        }
    }

    /// `text` with every secret replaced; borrowed when none occurs.
    pub fn scrub_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.scrub_slice(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            // A match covers whole characters (escapes and base64 are ASCII, a
            // raw character is its whole UTF-8 sequence), so the result stays
            // UTF-8; lossy only as a guard.
            Cow::Owned(scrubbed) => Cow::Owned(String::from_utf8_lossy(&scrubbed).into_owned()),
        }
    }

    /// `bytes` with every secret replaced; borrowed when none occurs.
    pub fn scrub_slice<'a>(&self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let Some(matcher) = &self.matcher else {
            return Cow::Borrowed(bytes);
        };
        matcher.replace_all(bytes, MASK.as_bytes())
    }

    /// Scrubs every string of a result that leaves the sidecar: the body,
    /// the error, and each violation's message and paths (a schema message
    /// quotes the offending value, which may be a credential).
    pub fn scrub_result(&self, result: &mut ToolResult) {
        if self.is_empty() {
            return;
        }
        result.result = self.scrub_bytes(std::mem::take(&mut result.result));
        result.error = self.scrub_str(std::mem::take(&mut result.error));
        result.limited_by = self.scrub_str(std::mem::take(&mut result.limited_by));
        for v in &mut result.violations {
            v.message = self.scrub_str(std::mem::take(&mut v.message));
            v.instance_path = self.scrub_str(std::mem::take(&mut v.instance_path));
            v.schema_path = self.scrub_str(std::mem::take(&mut v.schema_path));
        }
    }
}

/// The secrets of the config in force, for what leaves the sidecar outside
/// any one call's result: log lines (of every crate, at every level) and
/// exported spans. Process-wide because the log subscriber is; replaced
/// whenever a config is loaded (see [`set_in_force`]).
static IN_FORCE: LazyLock<ArcSwap<Redactor>> =
    LazyLock::new(|| ArcSwap::from_pointee(Redactor::default()));

/// The redactor for logs and spans: every secret of the config in force
/// (and of the one before it, for calls still running under it).
pub fn in_force() -> Arc<Redactor> {
    IN_FORCE.load_full()
}

/// Makes `redactor` the one [`in_force`] returns.
pub fn set_in_force(redactor: Arc<Redactor>) {
    IN_FORCE.store(redactor);
}

/// The regex for `secret` in the forms an echo takes:
/// * each character as written, or JSON-escaped (`\uXXXX` in either case,
///   a surrogate pair beyond the BMP, `\/`, `\"`, `\n`, ...), or
///   percent-encoded byte by byte (either case; `+` for a space), or
///   escaped as in a JSON Pointer (`~1` for `/`, `~0` for `~`: a schema
///   violation's path names an offending key that way), in any mixture;
/// * base64 (standard and URL-safe) of the secret, on its own and at each
///   byte alignment inside a longer value such as the `user:password` of a
///   Basic credential.
pub fn pattern(secret: &str) -> String {
    let mut escaped = String::new();
    for c in secret.chars() {
        escaped.push_str("(?:");
        escaped.push_str(&regex::escape(c.encode_utf8(&mut [0; 4])));
        escaped.push('|');
        for b in c.encode_utf8(&mut [0; 4]).bytes() {
            escaped.push('%');
            escaped.push_str(&hex_class(u32::from(b), 2));
        }
        escaped.push('|');
        for unit in c.encode_utf16(&mut [0; 2]) {
            escaped.push_str(r"\\u");
            escaped.push_str(&hex_class(u32::from(*unit), 4));
        }
        let short = match c {
            '/' => Some(r"\\/"),
            '"' => Some(r#"\\""#),
            '\\' => Some(r"\\\\"),
            '\n' => Some(r"\\n"),
            '\r' => Some(r"\\r"),
            '\t' => Some(r"\\t"),
            '\u{8}' => Some(r"\\b"),
            '\u{c}' => Some(r"\\f"),
            ' ' => Some(r"\+"),
            '~' => Some("~0"),
            _ => None,
        };
        if let Some(short) = short {
            escaped.push('|');
            escaped.push_str(short);
        }
        if c == '/' {
            escaped.push_str("|~1");
        }
        escaped.push(')');
    }
    let mut alternatives = vec![escaped];
    alternatives.extend(
        base64_forms(secret.as_bytes())
            .iter()
            .map(|f| regex::escape(f)),
    );
    alternatives.join("|")
}

/// A regex matching `value` as `digits` hex digits in either case.
fn hex_class(value: u32, digits: usize) -> String {
    let mut out = String::new();
    for d in format!("{value:0digits$x}").chars() {
        if d.is_ascii_alphabetic() {
            let _ = write!(out, "[{d}{}]", d.to_ascii_uppercase());
        } else {
            out.push(d);
        }
    }
    out
}

/// Base64 of `secret` at each of the three byte alignments, keeping only
/// the characters that depend on the secret's bytes alone.
fn base64_forms(secret: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for engine in [&STANDARD, &URL_SAFE] {
        for offset in 0..3usize {
            let mut input = vec![0u8; offset];
            input.extend_from_slice(secret);
            let encoded = engine.encode(&input);
            let encoded = encoded.trim_end_matches('=');
            // Characters mixing filler bits come first: 0, 2 or 3 of them.
            let skip = [0, 2, 3][offset];
            // The last character mixes in whatever follows unless the input
            // ends on a 3-byte boundary.
            let tail = usize::from(input.len() % 3 != 0);
            if encoded.len() >= skip + tail + MIN_BASE64_RUN {
                out.push(encoded[skip..encoded.len() - tail].to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(value: &str) -> Redactor {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, value).unwrap();
        let secret = crate::config::secrets::SecretRef::File(path)
            .resolve()
            .unwrap();
        Redactor::new(&[secret]).unwrap()
    }

    #[test]
    fn scrubs_every_occurrence_and_copies_nothing_when_clean() {
        let r = redactor("sk-123456");
        let out = r.scrub_bytes(Bytes::from_static(
            b"{\"e\":\"bad key sk-123456, sk-123456\"}",
        ));
        assert_eq!(&out[..], b"{\"e\":\"bad key [redacted], [redacted]\"}");
        let clean = Bytes::from_static(b"{}");
        assert_eq!(r.scrub_bytes(clean.clone()).as_ptr(), clean.as_ptr());
    }

    #[test]
    fn scrubs_the_encodings_an_echo_takes() {
        let secret = "hsk/abc+def=ghi&<x>é";
        let r = redactor(secret);
        let echoes = [
            r#"{"k":"hsk\/abc+def=ghi&<x>é"}"#.to_owned(),
            r#"{"k":"hsk\/abc+def=ghi\u0026\u003cx\u003e\u00e9"}"#.to_owned(),
            r#"{"k":"hsk/abc+def=ghi&<x>\u00e9"}"#.to_owned(),
            "https://x/?key=hsk%2Fabc%2Bdef%3Dghi%26%3Cx%3E%C3%A9".to_owned(),
            "https://x/?key=hsk%2fabc%2bdef%3dghi%26%3cx%3e%c3%a9".to_owned(),
            format!("Basic {}", STANDARD.encode(format!("user:{secret}"))),
            format!("Basic {}", STANDARD.encode(format!("usr:{secret}"))),
            format!("Basic {}", STANDARD.encode(format!("us:{secret}:x"))),
            URL_SAFE.encode(secret).trim_end_matches('=').to_owned(),
            r#"{"k":"\u0068sk\/abc+def=ghi&<x>\u00E9"}"#.to_owned(),
        ];
        for echo in echoes {
            let out = r.scrub_str(echo.clone());
            assert!(out.contains(MASK), "not scrubbed: {echo} -> {out}");
        }
    }

    #[test]
    fn scrubs_violations_too() {
        let r = redactor("fsk-0123456789");
        let mut result = ToolResult {
            error: "arguments invalid: \"Bearer fsk-0123456789\"".into(),
            violations: vec![crate::pb::Violation {
                instance_path: "/fsk-0123456789".into(),
                schema_path: "/enum".into(),
                message: "\"Bearer fsk-0123456789\" is not one of [\"a\"]".into(),
            }],
            ..Default::default()
        };
        r.scrub_result(&mut result);
        let text = format!("{result:?}");
        assert!(!text.contains("fsk-0123456789"), "{text}");
    }
}

/// Properties: for random secrets in random encodings inside random bodies,
/// no encoding of the secret survives scrubbing; bodies without a secret come
/// back untouched.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn secret_char() -> impl Strategy<Value = char> {
        prop_oneof![
            3 => (0x20u8..0x7f).prop_map(char::from),
            2 => prop::sample::select(vec!['/', '+', '=', '%', '\\', '"', ' ', '~', '&', ':', 'é', '✓', '𝄞']),
            1 => any::<char>(),
        ]
    }

    /// Secrets of 10 to 32 characters: credentials are long, and base64 runs
    /// shorter than [`MIN_BASE64_RUN`] are not matched on purpose.
    fn secret() -> impl Strategy<Value = String> {
        prop::collection::vec(secret_char(), 10..32).prop_map(|v| v.into_iter().collect())
    }

    fn body() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::collection::vec(any::<char>(), 0..200).prop_map(|v| v.into_iter().collect()),
            "[ -~]{0,200}",
            r#"\{"[a-z]{1,8}": "[ -~]{0,40}"\}"#,
        ]
    }

    fn json_u(c: char, upper: bool) -> String {
        let mut out = String::new();
        for unit in c.encode_utf16(&mut [0; 2]) {
            let hex = format!("{unit:04x}");
            out.push_str("\\u");
            out.push_str(&if upper { hex.to_uppercase() } else { hex });
        }
        out
    }

    fn percent(c: char, upper: bool) -> String {
        let mut out = String::new();
        for b in c.encode_utf8(&mut [0; 4]).bytes() {
            out.push_str(&if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            });
        }
        out
    }

    /// `secret` with each character written as `choices` says: raw, a
    /// `\u` escape (either case), a short JSON escape, percent-encoded
    /// (either case), or a form-/pointer-style escape.
    fn mixed(secret: &str, choices: &[u8]) -> String {
        let mut out = String::new();
        for (i, c) in secret.chars().enumerate() {
            let short = match c {
                '/' => Some("\\/"),
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '\n' => Some("\\n"),
                '\t' => Some("\\t"),
                _ => None,
            };
            let special = match c {
                ' ' => Some("+"),
                '/' => Some("~1"),
                '~' => Some("~0"),
                _ => None,
            };
            match choices[i % choices.len()] % 7 {
                1 => out.push_str(&json_u(c, false)),
                2 => out.push_str(&json_u(c, true)),
                3 if short.is_some() => out.push_str(short.unwrap_or_default()),
                4 => out.push_str(&percent(c, true)),
                5 => out.push_str(&percent(c, false)),
                6 if special.is_some() => out.push_str(special.unwrap_or_default()),
                _ => out.push(c),
            }
        }
        out
    }

    /// The characters of `encoded` (base64 of `input`) that depend only on
    /// `input[start..end]`: derived from bit positions, independently of
    /// the redactor's own rule.
    fn base64_core(encoded: &str, start: usize, end: usize) -> String {
        encoded
            .chars()
            .enumerate()
            .filter(|(k, _)| 6 * k >= 8 * start && 6 * k + 6 <= 8 * end)
            .map(|(_, c)| c)
            .collect()
    }

    fn redactor_for(secret: &str) -> Redactor {
        Redactor::new(&[Secret::new(secret)]).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn mixed_escapes_never_survive(
            secret in secret(),
            choices in prop::collection::vec(any::<u8>(), 1..40),
            before in body(),
            after in body(),
        ) {
            let r = redactor_for(&secret);
            let encoded = mixed(&secret, &choices);
            let out = r.scrub_str(format!("{before}{encoded}{after}"));
            prop_assert!(!out.contains(&encoded), "{encoded:?} survived in {out:?}");
            prop_assert!(!out.contains(&secret), "{secret:?} survived in {out:?}");
            prop_assert!(out.contains(MASK));
            let bytes = r.scrub_bytes(Bytes::from(format!("{before}{encoded}{after}")));
            prop_assert!(!bytes.windows(encoded.len()).any(|w| w == encoded.as_bytes()));
        }

        #[test]
        fn base64_of_a_basic_credential_never_survives(
            secret in secret(),
            user in "[a-zA-Z0-9._-]{0,12}",
            suffix in "(:[a-z]{0,6})?",
            url_safe in any::<bool>(),
            before in body(),
            after in body(),
        ) {
            let r = redactor_for(&secret);
            let input = format!("{user}:{secret}{suffix}");
            let engine = if url_safe { &URL_SAFE } else { &STANDARD };
            let encoded = engine.encode(input.as_bytes());
            let start = user.len() + 1;
            let core = base64_core(&encoded, start, start + secret.len());
            prop_assume!(core.len() >= MIN_BASE64_RUN);
            let out = r.scrub_str(format!("{before}Basic {encoded}{after}"));
            prop_assert!(!out.contains(&core), "{core:?} survived in {out:?}");
        }

        #[test]
        fn bodies_without_the_secret_come_back_unchanged(
            secret in secret(),
            text in body(),
        ) {
            let r = redactor_for(&secret);
            prop_assume!(!text.contains(&secret));
            let bytes = Bytes::from(text.clone());
            let out = r.scrub_bytes(bytes.clone());
            prop_assert_eq!(out.as_ptr(), bytes.as_ptr(), "copied or changed: {:?}", text);
            prop_assert_eq!(r.scrub_str(text.clone()), text);
        }
    }
}
