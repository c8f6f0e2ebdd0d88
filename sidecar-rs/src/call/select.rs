//! The last stage: keep only the JSON Pointers the caller asked for.

use bytes::Bytes;
use serde_json::Value;

use crate::error::CallError;
use crate::json;
use crate::json::document;

/// `body` reduced to the values at `pointers` (untouched when there are
/// none). The body was validated as JSON by the response stage (and nests
/// no deeper than the tool allows, so sonic-rs may parse it).
pub(super) fn apply(body: Bytes, pointers: &[String]) -> Result<Bytes, CallError> {
    if pointers.is_empty() {
        return Ok(body);
    }
    let picked = match document::parse(&body) {
        Some(fast) => document::select(&fast, pointers),
        None => {
            let exact: Value = serde_json::from_slice(&body).map_err(|e| {
                CallError::Internal(format!("validated body no longer parses: {e}"))
            })?;
            json::select(&exact, pointers)
        }
    };
    let picked = serde_json::to_vec(&picked)
        .map_err(|e| CallError::Internal(format!("cannot encode selection: {e}")))?;
    Ok(Bytes::from(picked))
}
