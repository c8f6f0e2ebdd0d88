//! JSON shape checks and response shaping that run before or after parsing:
//! nesting depth (a linear scan, so hostile documents never reach a
//! recursive parser deeper than allowed), canonical keys for caching, and
//! `select` (JSON Pointers picking the parts of a result an agent wants).
//!
//! Responses take a faster road when they can: [`document`] parses them
//! with sonic-rs and [`sonic`] lets the validator read that tree; whatever
//! that road cannot judge exactly goes the serde_json way below.

pub mod document;
pub mod sonic;
pub mod stream;

use serde_json::{Map, Value};

/// Whether `json` nests arrays/objects deeper than `limit`. Brackets inside
/// strings (escapes included) do not count. String bodies, most of a typical
/// document, are skipped with `memchr` rather than byte by byte.
pub fn exceeds_depth(json: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                i += 1;
                loop {
                    let Some(offset) = memchr::memchr2(b'"', b'\\', &json[i..]) else {
                        return false; // unterminated: the parser reports it
                    };
                    i += offset;
                    if json[i] == b'"' {
                        break;
                    }
                    i += 2; // an escape and the byte it escapes
                    if i >= json.len() {
                        return false;
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// `value` with object keys sorted at every level: equal documents in any
/// key order give the same text, which is what a cache key needs.
pub fn canonical(value: &Value) -> String {
    fn sort(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut out = Map::with_capacity(map.len());
                for k in keys {
                    out.insert(k.clone(), sort(&map[k]));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(value).to_string()
}

/// Checks `select` pointers before any work is done.
pub fn check_pointers(pointers: &[String]) -> Result<(), String> {
    for p in pointers {
        if !p.is_empty() && !p.starts_with('/') {
            return Err(format!(
                "select entry {p:?} is not a JSON Pointer (use \"\" or start with '/')"
            ));
        }
    }
    Ok(())
}

/// `{pointer: value}` for each pointer; a pointer that matches nothing maps
/// to `null`.
pub fn select(document: &Value, pointers: &[String]) -> Value {
    let mut out = Map::with_capacity(pointers.len());
    for p in pointers {
        out.insert(
            p.clone(),
            document.pointer(p).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_ignores_brackets_in_strings() {
        assert!(!exceeds_depth(br#"{"a":[[1]]}"#, 3));
        assert!(exceeds_depth(br#"{"a":[[1]]}"#, 2));
        assert!(!exceeds_depth(br#"{"a":"[[[[[[\"[[["}"#, 1));
        assert!(!exceeds_depth(br#"{"a":"\\","b":[1]}"#, 2));
        assert!(exceeds_depth(br#"{"a":"\\","b":[[1]]}"#, 2));
        assert!(!exceeds_depth(br#"{"a":"unterminated \"#, 1));
        let deep = "[".repeat(100_000);
        assert!(exceeds_depth(deep.as_bytes(), 64));
    }

    #[test]
    fn canonical_ignores_key_order() {
        let a = json!({"b": 1, "a": {"y": [1, {"d": 0, "c": 1}], "x": 2}});
        let b = json!({"a": {"x": 2, "y": [1, {"c": 1, "d": 0}]}, "b": 1});
        assert_eq!(canonical(&a), canonical(&b));
        assert_ne!(canonical(&a), canonical(&json!({"b": 2})));
    }

    #[test]
    fn select_picks_pointed_parts() {
        let doc = json!({"current": {"temp": 3, "wind": 9}, "forecast": [{"high": 5}]});
        let picked = select(
            &doc,
            &[
                "/current/temp".into(),
                "/forecast/0/high".into(),
                "/missing".into(),
            ],
        );
        assert_eq!(
            picked,
            json!({"/current/temp": 3, "/forecast/0/high": 5, "/missing": null})
        );
        assert!(check_pointers(&["current".into()]).is_err());
        assert!(check_pointers(&["".into(), "/a".into()]).is_ok());
    }
}
