//! The first stage: the arguments are bounded, parsed and validated before
//! anything else is spent on the call.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::config::registry::Tool;
use crate::error::CallError;
use crate::json;
use crate::pb::ToolCall;

/// Checks `call`'s `select` pointers, argument size and depth, parses the
/// arguments and validates them against the tool's input schema. Returns
/// the arguments, always a JSON object.
pub(super) fn check(tool: &Tool, call: &ToolCall) -> Result<Value, CallError> {
    json::check_pointers(&call.select).map_err(CallError::InvalidSelect)?;
    if call.arguments.len() > tool.max_argument_bytes {
        return Err(CallError::ArgumentsTooLarge {
            size: call.arguments.len(),
            limit: tool.max_argument_bytes,
        });
    }
    if json::exceeds_depth(&call.arguments, tool.max_json_depth) {
        return Err(CallError::ArgumentsTooDeep(tool.max_json_depth));
    }
    let args = parse_arguments(&call.arguments)?;
    if tool.request.forwards_arguments() {
        // The caller's bytes go to the upstream as they are (see
        // `RequestTemplate::render_call`): an
        // object key given twice would be validated as its last value and
        // may be read by the upstream as its first.
        refuse_duplicate_keys(&call.arguments)?;
    }
    let violations = tool.input_schema.violations(&args);
    if !violations.is_empty() {
        return Err(CallError::InvalidArguments(violations));
    }
    Ok(args)
}

/// Fails when any object in `bytes` (already parsed once) has a key twice.
fn refuse_duplicate_keys(bytes: &[u8]) -> Result<(), CallError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    UniqueKeys
        .deserialize(&mut de)
        .map_err(|e| CallError::MalformedArguments(e.to_string()))
}

/// Walks a JSON document keeping nothing but each object's keys, and fails
/// on the first key an object repeats. (serde_json keeps the last value of
/// a repeated key without a word, and has no option to refuse them.)
struct UniqueKeys;

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!(
                    "the key {key:?} appears twice in one object"
                )));
            }
            map.next_value_seed(UniqueKeys)?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(UniqueKeys)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

/// A rough token count for an LLM request: about four bytes of prompt per
/// token, plus the completion budget it asks for (or 256).
pub(super) fn estimate_tokens(raw: &[u8], args: &Map<String, Value>) -> f64 {
    let completion = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| args.get(*k).and_then(Value::as_f64))
        .unwrap_or(256.0);
    (raw.len() as f64 / 4.0).ceil() + completion
}

/// Parses the arguments: a JSON object (empty bytes mean `{}`). Depth was
/// checked before; serde_json's own recursion limit is a second guard.
fn parse_arguments(bytes: &[u8]) -> Result<Value, CallError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(Map::default()));
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| CallError::MalformedArguments(e.to_string()))?;
    match value {
        Value::Object(_) => Ok(value),
        other => Err(CallError::ArgumentsNotObject(json_type(&other))),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_must_be_an_object() {
        assert!(parse_arguments(b"").unwrap().is_object());
        assert!(matches!(
            parse_arguments(b"[1]"),
            Err(CallError::ArgumentsNotObject("an array"))
        ));
        assert!(matches!(
            parse_arguments(b"{nope"),
            Err(CallError::MalformedArguments(_))
        ));
    }

    #[test]
    fn a_key_given_twice_is_refused_at_any_depth() {
        for doc in [
            &br#"{"amount": 1000000, "amount": 1}"#[..],
            br#"{"a": [{"b": 1, "c": {"d": 1, "d": 2}}]}"#,
        ] {
            let e = refuse_duplicate_keys(doc).unwrap_err();
            assert!(e.to_string().contains("appears twice"), "{e}");
        }
        let fine = br#"{"a": {"x": 1}, "b": {"x": 2}, "n": 1e400, "s": "\"x\""}"#;
        refuse_duplicate_keys(fine).unwrap();
        // Escaped and plain spellings of one key are the same key.
        assert!(refuse_duplicate_keys(br#"{"k": 1, "\u006b": 2}"#).is_err());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_arguments(deep.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("recursion limit"), "{e}");
    }
}
