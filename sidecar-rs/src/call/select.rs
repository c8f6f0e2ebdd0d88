//! The last stage: keep only the JSON Pointers the caller asked for.

use bytes::Bytes;
use serde_json::Value;

use crate::error::CallError;
use crate::json;

/// `body` reduced to the values at `pointers` (untouched when there are
/// none). The body was validated as JSON by the response stage.
pub(super) fn apply(body: Bytes, pointers: &[String]) -> Result<Bytes, CallError> {
    if pointers.is_empty() {
        return Ok(body);
    }
    let document: Value = serde_json::from_slice(&body)
        .map_err(|e| CallError::Internal(format!("validated body no longer parses: {e}")))?;
    let picked = serde_json::to_vec(&json::select(&document, pointers))
        .map_err(|e| CallError::Internal(format!("cannot encode selection: {e}")))?;
    Ok(Bytes::from(picked))
}
