//! `tools.yaml` as written by an operator: plain serde data with a doc comment
//! on every field. Nothing here is compiled or checked beyond its shape; the
//! [`crate::registry`] turns it into runnable tools and reports semantic
//! errors by tool name and field.
//!
//! Tools are deserialized one at a time (see [`load`]) so that every error names
//! the tool it belongs to and the field path inside it, e.g.
//! `tool "weather": request.method: unknown variant "FETCH"`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// Values every tool inherits unless it sets its own.
    #[serde(default)]
    defaults: Defaults,
    /// Kept as raw YAML so each tool can be deserialized with its name in hand.
    tools: Vec<serde_yaml_ng::Value>,
}

/// A parsed file: defaults applied, every tool well-formed.
#[derive(Debug)]
pub struct ConfigFile {
    pub tools: Vec<ToolSpec>,
}

/// Settings shared by all tools.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Upper bound for one call of a tool, queueing and upstream included.
    /// A call's own `timeout_ms` can only shorten it.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    /// Largest upstream response body accepted, in bytes. The body is read in
    /// chunks and the request aborted past this, so a huge response cannot
    /// exhaust the sidecar's memory.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            timeout: default_timeout(),
            max_response_bytes: default_max_response_bytes(),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_max_response_bytes() -> usize {
    8 * 1024 * 1024
}

/// One tool: what the LLM sees (name, description, schemas) and how the
/// sidecar executes it (request template, timeout, limits).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    /// Unique name an agent calls the tool by; `[A-Za-z0-9_.-]`, as LLM
    /// function-calling APIs require.
    pub name: String,
    /// What the tool does, written for an LLM choosing among tools.
    #[serde(default)]
    pub description: String,
    /// JSON Schema (draft 2020-12) for the arguments. Must describe an object.
    pub input_schema: serde_json::Value,
    /// JSON Schema the upstream's response must satisfy; responses that do not
    /// are reported as INVALID_RESPONSE instead of reaching the agent.
    #[serde(default)]
    pub output_schema: Option<serde_json::Value>,
    /// How to turn the arguments into an HTTP request.
    pub request: RequestSpec,
    /// Overrides `defaults.timeout` for this tool.
    #[serde(with = "humantime_serde", default)]
    pub timeout: Option<Duration>,
    /// Overrides `defaults.max_response_bytes` for this tool.
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
    /// Rate limits checked before the upstream is called, in order.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSpec>,
}

/// The HTTP request template. `{name}` placeholders refer to top-level
/// properties of the arguments.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// HTTP method.
    #[serde(default)]
    pub method: Method,
    /// Absolute http(s) URL. Placeholders may appear only in the path, where
    /// each value is percent-encoded as one path segment; scheme, host and
    /// port are fixed by the operator.
    pub url: String,
    /// Query parameters; values may contain placeholders. A parameter whose
    /// placeholder names an argument the call did not pass is left out.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Request headers; values may contain placeholders.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body template. A string that is exactly `{name}` becomes that
    /// argument with its JSON type; `{*}` becomes the whole arguments object;
    /// other strings are interpolated. Defaults to `{*}` for POST, PUT and
    /// PATCH and to no body otherwise.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
}

impl Method {
    pub fn as_http(self) -> http::Method {
        match self {
            Method::Get => http::Method::GET,
            Method::Post => http::Method::POST,
            Method::Put => http::Method::PUT,
            Method::Patch => http::Method::PATCH,
            Method::Delete => http::Method::DELETE,
            Method::Head => http::Method::HEAD,
        }
    }

    /// Methods whose requests carry the arguments as a JSON body by default.
    pub fn sends_body_by_default(self) -> bool {
        matches!(self, Method::Post | Method::Put | Method::Patch)
    }
}

/// `rate` calls per `per`, allowing bursts of `burst`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Who shares the budget: every agent together (`tool`) or each agent on
    /// its own (`agent_tool`).
    pub scope: LimitScope,
    /// Permits per `per`.
    pub rate: u32,
    /// The period `rate` is counted over, e.g. `1s` or `1m`.
    #[serde(with = "humantime_serde", default = "one_second")]
    pub per: Duration,
    /// Calls allowed back to back after a quiet period; defaults to `rate`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// What a call over the limit gets: RATE_LIMITED at once (`reject`), or a
    /// wait for the next permit as long as its deadline allows (`wait`).
    #[serde(default)]
    pub on_limit: OnLimit,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    Tool,
    AgentTool,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Tool => "tool",
            LimitScope::AgentTool => "agent_tool",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    #[default]
    Reject,
    Wait,
}

impl OnLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            OnLimit::Reject => "reject",
            OnLimit::Wait => "wait",
        }
    }
}

/// Reads and parses `path`, applying `defaults` to every tool.
pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text)
}

/// Parses the text of a tools file.
pub fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
    let raw: RawFile =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigError::syntax(e.to_string()))?;
    let mut tools = Vec::with_capacity(raw.tools.len());
    for (index, value) in raw.tools.into_iter().enumerate() {
        let name = value
            .get("name")
            .and_then(|n| n.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("#{index}"));
        let mut spec: ToolSpec = serde_path_to_error::deserialize(value).map_err(|e| {
            let field = e.path().to_string();
            ConfigError::tool(&name, if field == "." { "" } else { &field }, e.inner())
        })?;
        spec.timeout.get_or_insert(raw.defaults.timeout);
        spec.max_response_bytes
            .get_or_insert(raw.defaults.max_response_bytes);
        tools.push(spec);
    }
    Ok(ConfigFile { tools })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_names_tool_and_field() {
        let err = parse(
            r#"
tools:
  - name: weather
    input_schema: {type: object}
    request: {url: "http://x/", metod: GET}
"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tool \"weather\""), "{err}");
        assert!(err.contains("request"), "{err}");
        assert!(err.contains("metod"), "{err}");
    }

    #[test]
    fn bad_duration_names_field() {
        let err = parse(
            r#"
tools:
  - name: t
    input_schema: {type: object}
    request: {url: "http://x/"}
    timeout: soon
"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("tool \"t\": timeout"), "{err}");
    }

    #[test]
    fn defaults_apply() {
        let cfg = parse(
            r#"
defaults: {timeout: 250ms, max_response_bytes: 1024}
tools:
  - name: t
    input_schema: {type: object}
    request: {url: "http://x/"}
"#,
        )
        .unwrap();
        assert_eq!(cfg.tools[0].timeout, Some(Duration::from_millis(250)));
        assert_eq!(cfg.tools[0].max_response_bytes, Some(1024));
    }
}
