//! The hot path's parse: a response body as one sonic-rs tree, when it can
//! stand in for the `serde_json::Value` the exact path would build.
//!
//! [`parse`] answers `None` whenever the fast tree might disagree with
//! serde_json, and the caller then takes the exact path (which also words
//! every error): text sonic-rs refuses, nesting past serde_json's recursion
//! limit, and objects that repeat a key (serde_json keeps the last value,
//! sonic-rs keeps both, and a validator could tell).

use serde_json::{Map, Value};
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

use super::sonic::to_serde;

/// serde_json refuses documents nested deeper than this (its recursion
/// limit); beyond it, only the exact path may answer.
pub const SERDE_DEPTH_LIMIT: usize = 127;

/// `body` parsed by sonic-rs, or `None` when only the exact path can judge
/// it. `body` is known to nest no deeper than [`SERDE_DEPTH_LIMIT`].
pub fn parse(body: &[u8]) -> Option<sonic_rs::Value> {
    let value: sonic_rs::Value = sonic_rs::from_slice(body).ok()?;
    (!repeats_a_key(&value)).then_some(value)
}

/// Whether any object in `value` has a key twice. Objects are small, so
/// keys are compared pairwise, first by a fingerprint (length and the
/// first and last bytes) that settles nearly every pair without reading
/// the keys; a large object falls back to sorting its keys.
fn repeats_a_key(value: &sonic_rs::Value) -> bool {
    // An explicit stack: no recursion however the document nests.
    let mut stack: Vec<&sonic_rs::Value> = vec![value];
    let mut prints: Vec<(u64, &str)> = Vec::new();
    while let Some(value) = stack.pop() {
        if let Some(array) = value.as_array() {
            stack.extend(array.iter().filter(|v| v.is_object() || v.is_array()));
        } else if let Some(object) = value.as_object() {
            prints.clear();
            for (key, member) in object.iter() {
                prints.push((fingerprint(key), key));
                if member.is_object() || member.is_array() {
                    stack.push(member);
                }
            }
            if has_duplicates(&mut prints) {
                return true;
            }
        }
    }
    false
}

fn fingerprint(key: &str) -> u64 {
    let bytes = key.as_bytes();
    let first = bytes.first().copied().unwrap_or(0) as u64;
    let last = bytes.last().copied().unwrap_or(0) as u64;
    ((bytes.len() as u64) << 16) | (first << 8) | last
}

fn has_duplicates(prints: &mut [(u64, &str)]) -> bool {
    const PAIRWISE_UP_TO: usize = 16;
    if prints.len() <= PAIRWISE_UP_TO {
        for (i, (print, key)) in prints.iter().enumerate() {
            for (other_print, other) in &prints[i + 1..] {
                if print == other_print && key == other {
                    return true;
                }
            }
        }
        return false;
    }
    prints.sort_unstable();
    prints.windows(2).any(|pair| pair[0] == pair[1])
}

/// `{pointer: value}` for each pointer, as [`super::select`] answers it on
/// the serde_json tree of the same text.
pub fn select(document: &sonic_rs::Value, pointers: &[String]) -> Value {
    let mut out = Map::with_capacity(pointers.len());
    for p in pointers {
        let picked = pointer(document, p).map_or(Value::Null, to_serde);
        out.insert(p.clone(), picked);
    }
    Value::Object(out)
}

/// RFC 6901 lookup with serde_json's reading of it (`Value::pointer`):
/// `~1` is `/`, `~0` is `~`, and an array index has no sign and no leading
/// zero.
fn pointer<'a>(document: &'a sonic_rs::Value, pointer: &str) -> Option<&'a sonic_rs::Value> {
    if pointer.is_empty() {
        return Some(document);
    }
    let rest = pointer.strip_prefix('/')?;
    let mut target = document;
    for token in rest.split('/') {
        let token = token.replace("~1", "/").replace("~0", "~");
        target = if let Some(object) = target.as_object() {
            object.get(&token)?
        } else if let Some(array) = target.as_array() {
            array.get(parse_index(&token)?)?
        } else {
            return None;
        };
    }
    Some(target)
}

fn parse_index(s: &str) -> Option<usize> {
    if s.starts_with('+') || (s.starts_with('0') && s.len() != 1) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_send_a_document_to_the_exact_path() {
        assert!(parse(br#"{"a": 1, "b": {"c": 1, "c": 2}}"#).is_none());
        assert!(parse(br#"[{"k": 1, "\u006b": 2}]"#).is_none());
        let wide: String = (0..40).map(|i| format!("\"k{i}\": {i},")).collect();
        assert!(parse(format!("{{{wide} \"k7\": 0}}").as_bytes()).is_none());
        assert!(parse(format!("{{{wide} \"z\": 0}}").as_bytes()).is_some());
        assert!(parse(br#"{"a": {"x": 1}, "b": {"x": 1}}"#).is_some());
    }

    #[test]
    fn text_serde_json_refuses_is_refused() {
        for bad in [
            &b"{\"a\": 1} x"[..],
            b"{\"a\": 01}",
            b"[1,]",
            b"\"\xff\"",
            b"\"\\ud800\"",
            b"\"a\x01b\"",
            b"NaN",
            b"",
        ] {
            assert!(
                serde_json::from_slice::<Value>(bad).is_err(),
                "serde_json accepts {:?}",
                String::from_utf8_lossy(bad)
            );
            assert!(
                parse(bad).is_none(),
                "sonic-rs accepts {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn select_reads_pointers_as_serde_json_does() {
        let text = br#"{"a": {"b/c": [10, {"~": 2.50}]}, "0": "zero", "e": "\u00e9\n"}"#;
        let exact: Value = serde_json::from_slice(text).unwrap();
        let fast = parse(text).unwrap();
        let pointers: Vec<String> = [
            "",
            "/a",
            "/a/b~1c",
            "/a/b~1c/1/~0",
            "/a/b~1c/01",
            "/a/b~1c/+1",
            "/0",
            "/e",
            "/x/y",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            serde_json::to_vec(&select(&fast, &pointers)).unwrap(),
            serde_json::to_vec(&super::super::select(&exact, &pointers)).unwrap()
        );
    }
}
