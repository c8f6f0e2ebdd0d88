//! The first stage: the arguments are bounded, parsed and validated before
//! anything else is spent on the call.

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
    let violations = tool.input_schema.violations(&args);
    if !violations.is_empty() {
        return Err(CallError::InvalidArguments(violations));
    }
    Ok(args)
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
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        let e = parse_arguments(deep.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("recursion limit"), "{e}");
    }
}
