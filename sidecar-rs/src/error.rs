//! The two error families of the sidecar.
//!
//! * [`ConfigError`]: a tools file that cannot be loaded. Always names the tool
//!   and the field so an operator can fix it without reading code.
//! * [`CallError`]: why one tool call did not succeed. Each variant maps to
//!   exactly one [`Status`]; [`CallError::into_result`] is the one place that
//!   turns an error into what the brain sees.

use std::time::Duration;

use bytes::Bytes;

use crate::pb::{Status, ToolResult, Violation};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("tool \"{tool}\": {field}{sep}{message}", sep = if field.is_empty() { "" } else { ": " })]
    Tool {
        tool: String,
        field: String,
        message: String,
    },
    /// A policy under `upstreams:` (or `defaults.upstream`), named by its
    /// path, e.g. `upstreams."https://api.example.com".max_concurrency`.
    #[error("{path}: {message}")]
    Upstream { path: String, message: String },
    /// A document under `schemas:`, named by its URI (empty when the
    /// registry as a whole failed, e.g. a document refers to one not
    /// registered).
    #[error("schemas{}: {message}", if uri.is_empty() { String::new() } else { format!(".{uri:?}") })]
    Schemas { uri: String, message: String },
}

impl ConfigError {
    pub fn syntax(message: impl Into<String>) -> Self {
        ConfigError::Syntax(message.into())
    }

    pub fn tool(tool: &str, field: &str, message: impl std::fmt::Display) -> Self {
        ConfigError::Tool {
            tool: tool.to_owned(),
            field: field.to_owned(),
            message: message.to_string(),
        }
    }
}

/// Why a call failed. The messages are written for the agent (and its LLM):
/// specific, actionable, and free of credentials. `Clone` because calls that
/// share one upstream request (single-flight, cache) share its outcome.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("call_id must be non-empty")]
    EmptyCallId,
    #[error("call_id {0:?} is already in flight on this stream")]
    DuplicateCallId(String),
    #[error("unknown tool {0:?}")]
    UnknownTool(String),
    #[error("arguments are not valid JSON: {0}")]
    MalformedArguments(String),
    #[error("arguments must be a JSON object, got {0}")]
    ArgumentsNotObject(&'static str),
    #[error("arguments are {size} bytes; this tool accepts at most {limit}")]
    ArgumentsTooLarge { size: usize, limit: usize },
    #[error("arguments nest deeper than {0} levels of arrays/objects")]
    ArgumentsTooDeep(usize),
    #[error("{0}")]
    InvalidSelect(String),
    #[error("arguments do not match the input schema: {}", summarize(.0))]
    InvalidArguments(Vec<Violation>),
    /// An argument passed the schema but cannot be placed in the request
    /// (e.g. a path segment of `..`).
    #[error("argument {name:?} {reason}")]
    UnusableArgument { name: String, reason: String },
    /// The request would leave the tool's allowed address space: a
    /// forbidden resolved address, a redirect to one, or a path value that
    /// tries to climb out of its segment.
    #[error("egress denied: {0}")]
    EgressDenied(String),
    #[error("circuit open for {upstream}: it failed recently; retry in {}ms", .retry_after.as_millis())]
    CircuitOpen {
        upstream: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    LimiterUnavailable(String),
    #[error("rate limited by the {scope} limit on {key}; retry in {}ms", .retry_after.as_millis())]
    RateLimited {
        /// `tool` or `agent_tool`.
        scope: &'static str,
        /// The bucket: the tool, or `tool:agent` for per-agent limits.
        key: String,
        retry_after: Duration,
    },
    #[error("deadline of {}ms exceeded {stage}", .budget.as_millis())]
    Timeout {
        budget: Duration,
        stage: &'static str,
    },
    #[error("cancelled: {0}")]
    Cancelled(&'static str),
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    #[error("sidecar is draining; retry on another sidecar")]
    Draining,
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("upstream answered HTTP {status}")]
    UpstreamStatus {
        status: u16,
        body: Option<Bytes>,
        /// What the upstream asked for in `Retry-After` / `x-ratelimit-reset`.
        retry_after: Option<Duration>,
    },
    #[error("upstream response is too large: more than {limit} bytes")]
    ResponseTooLarge { limit: usize, status: u16 },
    #[error("upstream response is not valid JSON: {reason}")]
    ResponseNotJson { reason: String, status: u16 },
    #[error("upstream response does not match the output schema: {}", summarize(.violations))]
    InvalidResponse {
        violations: Vec<Violation>,
        status: u16,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

fn summarize(violations: &[Violation]) -> String {
    let mut out = String::new();
    for (i, v) in violations.iter().take(5).enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let path = if v.instance_path.is_empty() {
            "(root)"
        } else {
            &v.instance_path
        };
        out.push_str(path);
        out.push_str(": ");
        out.push_str(&v.message);
    }
    if violations.len() > 5 {
        out.push_str(&format!(" (and {} more)", violations.len() - 5));
    }
    out
}

impl CallError {
    pub fn status(&self) -> Status {
        match self {
            CallError::EmptyCallId | CallError::DuplicateCallId(_) => Status::InvalidRequest,
            CallError::UnknownTool(_) => Status::UnknownTool,
            CallError::MalformedArguments(_)
            | CallError::ArgumentsNotObject(_)
            | CallError::ArgumentsTooLarge { .. }
            | CallError::ArgumentsTooDeep(_)
            | CallError::InvalidSelect(_)
            | CallError::InvalidArguments(_)
            | CallError::UnusableArgument { .. } => Status::InvalidArguments,
            CallError::RateLimited { .. } => Status::RateLimited,
            CallError::LimiterUnavailable(_) => Status::LimiterUnavailable,
            CallError::Timeout { .. } => Status::Timeout,
            CallError::Cancelled(_) => Status::Cancelled,
            CallError::Overloaded(_) => Status::Overloaded,
            CallError::EgressDenied(_) => Status::EgressDenied,
            CallError::CircuitOpen { .. } => Status::CircuitOpen,
            CallError::Draining => Status::Draining,
            CallError::UpstreamUnreachable(_) | CallError::UpstreamStatus { .. } => {
                Status::UpstreamError
            }
            CallError::ResponseTooLarge { .. }
            | CallError::ResponseNotJson { .. }
            | CallError::InvalidResponse { .. } => Status::InvalidResponse,
            CallError::Internal(_) => Status::Internal,
        }
    }

    /// Fills `result` (which already carries call_id and timing) with this
    /// error. The only place where errors become results.
    pub fn into_result(self, mut result: ToolResult) -> ToolResult {
        result.status = self.status() as i32;
        result.error = self.to_string();
        match self {
            CallError::InvalidArguments(violations) => result.violations = violations,
            CallError::RateLimited {
                scope,
                key,
                retry_after,
            } => {
                result.retry_after_ms = ceil_millis(retry_after);
                result.limited_by = format!("{scope}:{key}");
            }
            CallError::CircuitOpen { retry_after, .. } => {
                result.retry_after_ms = ceil_millis(retry_after);
            }
            CallError::UpstreamStatus {
                status,
                body,
                retry_after,
            } => {
                result.upstream_status = u32::from(status);
                result.result = body.unwrap_or_default();
                result.retry_after_ms = retry_after.map_or(0, ceil_millis);
            }
            CallError::ResponseTooLarge { status, .. }
            | CallError::ResponseNotJson { status, .. } => {
                result.upstream_status = u32::from(status);
            }
            CallError::InvalidResponse { violations, status } => {
                result.upstream_status = u32::from(status);
                result.violations = violations;
            }
            _ => {}
        }
        result
    }
}

/// Milliseconds rounded up, so a caller that waits `retry_after_ms` never
/// comes back a fraction too early.
pub fn ceil_millis(d: Duration) -> u64 {
    let ms = d.as_micros().div_ceil(1000);
    u64::try_from(ms).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_error_names_tool_and_field() {
        let e = ConfigError::tool("weather", "request.url", "must be absolute");
        assert_eq!(
            e.to_string(),
            "tool \"weather\": request.url: must be absolute"
        );
    }

    #[test]
    fn rate_limited_result_carries_wait_and_limit() {
        let r = CallError::RateLimited {
            scope: "pod",
            key: "search:a7".into(),
            retry_after: Duration::from_micros(1500),
        }
        .into_result(ToolResult::default());
        assert_eq!(r.status, Status::RateLimited as i32);
        assert_eq!(r.retry_after_ms, 2);
        assert_eq!(r.limited_by, "pod:search:a7");
    }

    #[test]
    fn invalid_arguments_summarizes_violations() {
        let v = |p: &str| Violation {
            instance_path: p.into(),
            schema_path: String::new(),
            message: "bad".into(),
        };
        let e =
            CallError::InvalidArguments(vec![v(""), v("/a"), v("/b"), v("/c"), v("/d"), v("/e")]);
        assert_eq!(
            e.to_string(),
            "arguments do not match the input schema: (root): bad; /a: bad; /b: bad; /c: bad; /d: bad (and 1 more)"
        );
    }
}
