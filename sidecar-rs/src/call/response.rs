//! The upstream's answer: its status decides first, then the body must be
//! bounded JSON that passes the tool's output schema. The bytes that pass go
//! to the caller untouched.

use std::sync::LazyLock;

use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;

use super::{micros, Executor};
use crate::config::registry::Tool;
use crate::error::CallError;
use crate::json;
use crate::json::document;
use crate::json::stream::{Plan, Verdict};
use crate::upstream::cache::FetchStats;
use crate::upstream::client::UpstreamResponse;

impl Executor {
    /// [`check`], with the time it took counted as validation.
    pub(super) fn check_response(
        &self,
        tool: &Tool,
        response: UpstreamResponse,
        stats: &mut FetchStats,
    ) -> Result<(u16, Bytes), CallError> {
        let started = Instant::now();
        let checked = check(tool, response.status, response.body);
        stats.validation_us += micros(started.elapsed());
        checked
    }
}

/// Maps the upstream's answer to an outcome: 2xx JSON passing the output
/// schema is OK, anything else an error.
fn check(tool: &Tool, status: u16, body: Bytes) -> Result<(u16, Bytes), CallError> {
    let ok_status = (200..300).contains(&status);
    // Past serde_json's recursion limit only the exact path may answer.
    let fast_paths = tool.max_json_depth <= document::SERDE_DEPTH_LIMIT;
    // The hot path: one pass over the bytes, validating as it reads
    // (`json::stream`). Only a certain "valid" ends here; everything else
    // is decided, and every error worded, by the tree paths below.
    let mut verdict = Verdict::Unsure;
    if ok_status && fast_paths {
        verdict = match &tool.output_schema {
            Some(schema) => schema.check_streaming(&body, tool.max_json_depth),
            None => ANY_JSON.check(&body, tool.max_json_depth),
        };
        if verdict == Verdict::Valid {
            return Ok((status, body));
        }
    }
    let is_blank = body.iter().all(u8::is_ascii_whitespace);
    let too_deep = json::exceeds_depth(&body, tool.max_json_depth);
    if !ok_status {
        let json_body = (!is_blank
            && !too_deep
            && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok())
        .then_some(body);
        return Err(CallError::UpstreamStatus {
            status,
            body: json_body,
            retry_after: None,
        });
    }
    if too_deep {
        return Err(CallError::ResponseNotJson {
            reason: format!("nests deeper than {} levels", tool.max_json_depth),
            status,
        });
    }
    if !is_blank && verdict == Verdict::Unsure && fast_paths {
        // The tree hot path: one sonic-rs parse, validated in place. A
        // document it cannot judge, or finds invalid, takes the exact path
        // below, which words the error exactly as it always has.
        if let Some(parsed) = document::parse(&body) {
            let valid = tool
                .output_schema
                .as_ref()
                .is_none_or(|schema| schema.is_valid_fast(&parsed));
            if valid {
                return Ok((status, body));
            }
        }
    }
    let (value, body) = if is_blank {
        (Value::Null, Bytes::from_static(b"null"))
    } else {
        let value = serde_json::from_slice(&body).map_err(|e| CallError::ResponseNotJson {
            reason: e.to_string(),
            status,
        })?;
        (value, body)
    };
    if let Some(schema) = &tool.output_schema {
        let violations = schema.violations(&value);
        if !violations.is_empty() {
            return Err(CallError::InvalidResponse { violations, status });
        }
    }
    Ok((status, body))
}

/// The plan of a tool without an output schema: any JSON.
static ANY_JSON: LazyLock<Plan> = LazyLock::new(Plan::any);
