//! `tools.yaml` as written by an operator: plain serde data with a doc comment
//! on every field. Nothing here is compiled or checked beyond its shape; the
//! [`crate::config::registry`] turns it into runnable tools and reports semantic
//! errors by tool name and field.
//!
//! Tools are deserialized one at a time (see [`load`]) so that every error names
//! the tool it belongs to and the field path inside it, e.g.
//! `tool "weather": request.method: unknown variant "FETCH"`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::config::{files, yaml};
use crate::error::ConfigError;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    /// Values every tool inherits unless it sets its own.
    #[serde(default)]
    defaults: Defaults,
    /// Policies per upstream origin (`scheme://host:port`): circuit breaker,
    /// concurrency limit, retry budget. Origins not listed get the defaults.
    #[serde(default)]
    upstreams: BTreeMap<String, UpstreamSpec>,
    /// JSON Schema documents tools may `$ref`, by URI (`https://...`,
    /// `urn:...`): shared definitions written once. Nothing is ever fetched,
    /// so a `$ref` to a document not registered here (or in
    /// `schema_files`) is a config error.
    #[serde(default)]
    schemas: BTreeMap<String, serde_json::Value>,
    /// The same, kept in their own JSON or YAML files (a path relative to
    /// this file's folder), each registered under its `$id` or the `uri`
    /// given: schemas shared with other programs, or too long to inline.
    #[serde(default)]
    schema_files: Vec<SchemaFileSpec>,
    /// Kept as raw documents so each tool can be deserialized with its name
    /// in hand.
    tools: Vec<serde_json::Value>,
}

/// A parsed file: defaults applied, every tool well-formed.
#[derive(Debug)]
pub struct ConfigFile {
    pub tools: Vec<ToolSpec>,
    /// The `schemas:` section and the `schema_files` documents, by URI.
    pub schemas: BTreeMap<String, serde_json::Value>,
    /// The draft of a `schemas:` document without `$schema`.
    pub schema_draft: SchemaDraft,
    pub upstreams: BTreeMap<String, UpstreamSpec>,
    pub default_upstream: UpstreamSpec,
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
    /// Largest arguments document accepted, in bytes, checked before parsing.
    #[serde(default = "default_max_argument_bytes")]
    pub max_argument_bytes: usize,
    /// Deepest nesting of arrays/objects accepted in arguments and responses.
    /// Checked by a linear scan before parsing, so hostile input cannot
    /// exhaust the stack.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: usize,
    /// Retry policy for tools that do not set their own.
    #[serde(default)]
    pub retry: RetrySpec,
    /// Policy for upstream origins not listed under `upstreams`.
    #[serde(default)]
    pub upstream: UpstreamSpec,
    /// The JSON Schema draft of a schema (a tool's or a `schemas:`
    /// document) that does not name one in `$schema`.
    #[serde(default)]
    pub schema_draft: SchemaDraft,
    /// Whether `format` is checked, for tools that do not say.
    #[serde(default)]
    pub formats: Formats,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            timeout: default_timeout(),
            max_response_bytes: default_max_response_bytes(),
            max_argument_bytes: default_max_argument_bytes(),
            max_json_depth: default_max_json_depth(),
            retry: RetrySpec::default(),
            upstream: UpstreamSpec::default(),
            schema_draft: SchemaDraft::default(),
            formats: Formats::default(),
        }
    }
}

fn default_max_argument_bytes() -> usize {
    256 * 1024
}

fn default_max_json_depth() -> usize {
    64
}

/// How a failed upstream request is retried. Retries happen only for tools
/// that are idempotent, and always inside the call's deadline.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in total, the first included; 1 disables retries.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Upstream statuses worth retrying. Connect errors and per-attempt
    /// timeouts are always retried.
    #[serde(default = "default_retry_statuses")]
    pub on_status: Vec<u16>,
    /// First backoff; each retry doubles it, up to `backoff_max`. The actual
    /// wait is uniformly random below that (full jitter), or the upstream's
    /// `Retry-After` when it asks for longer.
    #[serde(with = "humantime_serde", default = "default_backoff_initial")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde", default = "default_backoff_max")]
    pub backoff_max: Duration,
    /// Bound on one attempt, so a hung connection leaves time to retry.
    /// Defaults to the whole call deadline.
    #[serde(with = "humantime_serde", default)]
    pub attempt_timeout: Option<Duration>,
}

impl Default for RetrySpec {
    fn default() -> Self {
        Self {
            max_attempts: default_attempts(),
            on_status: default_retry_statuses(),
            backoff_initial: default_backoff_initial(),
            backoff_max: default_backoff_max(),
            attempt_timeout: None,
        }
    }
}

fn default_attempts() -> u32 {
    3
}

fn default_retry_statuses() -> Vec<u16> {
    vec![429, 502, 503, 504]
}

fn default_backoff_initial() -> Duration {
    Duration::from_millis(50)
}

fn default_backoff_max() -> Duration {
    Duration::from_secs(2)
}

/// Policies shared by every tool that calls one upstream origin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    /// Requests in flight to this origin at once; a call waits for a slot
    /// only as long as its deadline allows, then gets OVERLOADED.
    #[serde(default = "default_upstream_concurrency")]
    pub max_concurrency: usize,
    #[serde(default)]
    pub circuit_breaker: BreakerSpec,
    #[serde(default)]
    pub retry_budget: RetryBudgetSpec,
    /// The HTTP version spoken to this origin.
    #[serde(default)]
    pub http: HttpVersion,
}

impl Default for UpstreamSpec {
    fn default() -> Self {
        Self {
            max_concurrency: default_upstream_concurrency(),
            circuit_breaker: BreakerSpec::default(),
            retry_budget: RetryBudgetSpec::default(),
            http: HttpVersion::default(),
        }
    }
}

/// Which HTTP version the sidecar speaks to an origin (`upstreams.<origin>.http`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpVersion {
    /// HTTP/1.1 to `http://` origins; over `https://`, HTTP/2 when the
    /// server picks it through ALPN, else HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only, over TLS too: one connection per request in flight.
    Http1,
    /// HTTP/2 only: with prior knowledge (h2c) on `http://`, ALPN `h2` on
    /// `https://`. Every request in flight to the origin is a stream on one
    /// connection, which costs far less memory per request than an HTTP/1.1
    /// connection each; an origin that does not speak HTTP/2 fails every
    /// call with UPSTREAM_ERROR.
    Http2,
}

fn default_upstream_concurrency() -> usize {
    1024
}

/// Opens on a failure ratio over a rolling window (with a minimum number of
/// requests) or on consecutive failures; while open, calls fail fast with
/// CIRCUIT_OPEN; after `open_for`, `half_open_probes` calls test the upstream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerSpec {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Failure ratio (0-1] over `window` that opens the circuit.
    #[serde(default = "default_failure_ratio")]
    pub failure_ratio: f64,
    #[serde(with = "humantime_serde", default = "default_window")]
    pub window: Duration,
    /// Requests needed in the window before the ratio counts.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// Consecutive failures that open the circuit regardless of the ratio.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    #[serde(with = "humantime_serde", default = "default_open_for")]
    pub open_for: Duration,
    #[serde(default = "default_probes")]
    pub half_open_probes: u32,
}

impl Default for BreakerSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            failure_ratio: default_failure_ratio(),
            window: default_window(),
            min_requests: default_min_requests(),
            consecutive_failures: default_consecutive(),
            open_for: default_open_for(),
            half_open_probes: default_probes(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_failure_ratio() -> f64 {
    0.5
}
fn default_window() -> Duration {
    Duration::from_secs(10)
}
fn default_min_requests() -> u32 {
    20
}
fn default_consecutive() -> u32 {
    5
}
fn default_open_for() -> Duration {
    Duration::from_secs(5)
}
fn default_probes() -> u32 {
    1
}

/// Caps retries to a share of recent traffic so that retries cannot
/// multiply an outage: at most `ratio` × requests over the last 10 s, plus
/// `min_per_second` so a quiet upstream can still be retried.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetSpec {
    #[serde(default = "default_budget_ratio")]
    pub ratio: f64,
    #[serde(default = "default_budget_floor")]
    pub min_per_second: u32,
}

impl Default for RetryBudgetSpec {
    fn default() -> Self {
        Self {
            ratio: default_budget_ratio(),
            min_per_second: default_budget_floor(),
        }
    }
}

fn default_budget_ratio() -> f64 {
    0.2
}
fn default_budget_floor() -> u32 {
    5
}

/// Opt-in response cache for a tool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// How long an OK result is served from the cache.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Each entry lives `ttl` ± up to this fraction, so entries written
    /// together do not expire together.
    #[serde(default = "default_jitter")]
    pub jitter: f64,
    #[serde(default = "default_cache_entries")]
    pub max_entries: u64,
    /// Bound on the cached bodies' total size.
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: u64,
    /// Cache error results (UPSTREAM_ERROR, INVALID_RESPONSE) this long;
    /// off unless set.
    #[serde(with = "humantime_serde", default)]
    pub negative_ttl: Option<Duration>,
}

fn default_jitter() -> f64 {
    0.1
}
fn default_cache_entries() -> u64 {
    10_000
}
fn default_cache_bytes() -> u64 {
    64 * 1024 * 1024
}

/// Addresses a tool may reach although they are not public (loopback,
/// private, link-local, ... : refused by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSpec {
    /// Address ranges, each on every port or on the ports it names:
    /// `10.0.0.0/8`, `127.0.0.1:8080`, `"[::1]:8080"`, `10.0.0.0/8:80,443`,
    /// or `{cidr: 10.0.0.0/8, ports: [443, "8000-8099"]}`.
    #[serde(default)]
    pub allow: Vec<AllowEntry>,
}

/// One `egress.allow` entry, as a string (`"127.0.0.1/32:8080"`) or as
/// `{cidr, ports}`. Compiled by [`crate::upstream::egress::EgressPolicy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    Text(String),
    Rule(AllowRuleSpec),
}

/// The structured form of an `egress.allow` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowRuleSpec {
    /// A CIDR (`10.0.0.0/8`) or one address (`10.1.2.3`, `::1`).
    pub cidr: String,
    /// Ports (`443`) and ranges (`"8000-8099"`) the addresses may be reached
    /// on; left out, every port.
    #[serde(default)]
    pub ports: Option<Vec<PortSpec>>,
}

/// A port (`443`) or a range (`"8000-8099"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(u64),
    Text(String),
}

// A string or a map: serde's untagged enums would answer a typo inside the
// map with "did not match any variant"; this keeps the map's own errors
// ("unknown field `port`, expected `cidr` or `ports`").
impl<'de> Deserialize<'de> for AllowEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = AllowEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an address rule such as \"10.0.0.0/8\" or \"127.0.0.1:8080\", or {cidr, ports}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AllowEntry, E> {
                Ok(AllowEntry::Text(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<AllowEntry, A::Error> {
                AllowRuleSpec::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(AllowEntry::Rule)
            }
        }
        deserializer.deserialize_any(Entry)
    }
}

/// Which redirects a tool follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectSpec {
    /// Hops followed; 0 returns a redirect as the upstream sent it.
    #[serde(default)]
    pub max: u8,
    /// Origins besides the tool's own that a redirect may go to
    /// (`https://cdn.example.com`, `http://10.0.0.5:8080`), or `"*"` for
    /// any. Each hop is still checked by `egress`, and the tool's secret
    /// headers and query parameters never follow it to another origin.
    #[serde(default)]
    pub allow_origins: Vec<String>,
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
    /// JSON Schema for the arguments. Must describe an object. Its draft is
    /// its `$schema`, else `schema_draft`.
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
    /// Whether repeating the request is safe; only such tools are retried.
    /// Defaults to true for GET and HEAD, false otherwise.
    #[serde(default)]
    pub idempotent: Option<bool>,
    /// Overrides `defaults.retry`.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Calls of this tool in flight at once (waiting within the deadline).
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// Cache OK results by arguments (key order does not matter).
    #[serde(default)]
    pub cache: Option<CacheSpec>,
    /// Concurrent identical calls share one upstream request.
    #[serde(default)]
    pub coalesce: bool,
    /// Overrides `defaults.max_argument_bytes`.
    #[serde(default)]
    pub max_argument_bytes: Option<usize>,
    /// Overrides `defaults.max_json_depth`.
    #[serde(default)]
    pub max_json_depth: Option<usize>,
    /// Redirects followed within the tool's origin (each re-checked by the
    /// egress rules); the older form of `redirects: {max: N}`.
    #[serde(default)]
    pub follow_redirects: Option<u8>,
    /// Redirects followed, and the origins besides the tool's own they may
    /// go to. Off unless set.
    #[serde(default)]
    pub redirects: Option<RedirectSpec>,
    /// Private address ranges this tool may reach.
    #[serde(default)]
    pub egress: EgressSpec,
    /// Overrides `defaults.schema_draft` for this tool's schemas.
    #[serde(default)]
    pub schema_draft: Option<SchemaDraft>,
    /// Overrides `defaults.formats` for this tool's schemas.
    #[serde(default)]
    pub formats: Option<Formats>,
}

/// A JSON Schema draft, as `schema_draft` names it: `4`, `6`, `7`,
/// `2019-09` or `2020-12` (the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SchemaDraft {
    Draft4,
    Draft6,
    Draft7,
    Draft201909,
    #[default]
    Draft202012,
}

impl SchemaDraft {
    /// The meta-schema URIs a `$schema` may name, for error messages.
    pub const KNOWN_URIS: [&'static str; 5] = [
        "http://json-schema.org/draft-04/schema#",
        "http://json-schema.org/draft-06/schema#",
        "http://json-schema.org/draft-07/schema#",
        "https://json-schema.org/draft/2019-09/schema",
        "https://json-schema.org/draft/2020-12/schema",
    ];

    pub fn as_draft(self) -> jsonschema::Draft {
        match self {
            SchemaDraft::Draft4 => jsonschema::Draft::Draft4,
            SchemaDraft::Draft6 => jsonschema::Draft::Draft6,
            SchemaDraft::Draft7 => jsonschema::Draft::Draft7,
            SchemaDraft::Draft201909 => jsonschema::Draft::Draft201909,
            SchemaDraft::Draft202012 => jsonschema::Draft::Draft202012,
        }
    }

    /// The name `schema_draft` takes.
    pub fn name(self) -> &'static str {
        match self {
            SchemaDraft::Draft4 => "4",
            SchemaDraft::Draft6 => "6",
            SchemaDraft::Draft7 => "7",
            SchemaDraft::Draft201909 => "2019-09",
            SchemaDraft::Draft202012 => "2020-12",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        let name = name
            .trim_start_matches("draft")
            .trim_start_matches(['-', '0']);
        [
            SchemaDraft::Draft4,
            SchemaDraft::Draft6,
            SchemaDraft::Draft7,
            SchemaDraft::Draft201909,
            SchemaDraft::Draft202012,
        ]
        .into_iter()
        .find(|d| d.name() == name)
    }
}

// Written as a number (`7`) or a string (`"2019-09"`, `draft-07`): a derived
// enum would take only one of them.
impl<'de> Deserialize<'de> for SchemaDraft {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = SchemaDraft;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON Schema draft: 4, 6, 7, 2019-09 or 2020-12")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SchemaDraft, E> {
                SchemaDraft::from_name(v)
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Str(v), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SchemaDraft, E> {
                SchemaDraft::from_name(&v.to_string())
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SchemaDraft, E> {
                SchemaDraft::from_name(&v.to_string())
                    .ok_or_else(|| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
        }
        deserializer.deserialize_any(Name)
    }
}

/// What `format` does in a tool's schemas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Formats {
    /// Every format the validator knows is checked (dates, e-mail and
    /// IDN addresses, hostnames, IPs, URIs, UUIDs, ...), whatever the draft:
    /// a tool that says `format: date` usually relies on getting a date.
    /// Unknown format names are ignored, as the specification asks.
    #[default]
    Assert,
    /// The specification's default: `format` is an annotation and checks
    /// nothing, unless the schema's meta-schema asks for the
    /// format-assertion vocabulary.
    Annotate,
}

/// One `schema_files` entry: a path (`shared/common.json`), registered
/// under the document's `$id`, or `{file, uri}` to register it under `uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaFileSpec {
    /// JSON (`.json`) or YAML (any other name), relative to the tools
    /// file's folder unless absolute.
    pub file: String,
    /// The URI tools `$ref` it by; defaults to the document's `$id`.
    pub uri: Option<String>,
}

/// The map form of a `schema_files` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFileMap {
    file: String,
    #[serde(default)]
    uri: Option<String>,
}

// A path or a map, for the reason given at `AllowEntry`.
impl<'de> Deserialize<'de> for SchemaFileSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entry;
        impl<'de> serde::de::Visitor<'de> for Entry {
            type Value = SchemaFileSpec;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a path such as \"shared/common.json\", or {file, uri}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SchemaFileSpec, E> {
                Ok(SchemaFileSpec {
                    file: v.to_owned(),
                    uri: None,
                })
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<SchemaFileSpec, A::Error> {
                let m =
                    SchemaFileMap::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(SchemaFileSpec {
                    file: m.file,
                    uri: m.uri,
                })
            }
        }
        deserializer.deserialize_any(Entry)
    }
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

/// `rate` permits per `per`, allowing bursts of `burst`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// Who shares a bucket: all calls of the tool (`tool`), each agent
    /// (`agent`), each tenant (`tenant`), or every tool calling the same
    /// upstream origin (`upstream`, fleet scope).
    #[serde(default)]
    pub key: LimitKey,
    /// Where the bucket lives: in this sidecar (`pod`) or in Redis, shared
    /// by every sidecar of the fleet (`fleet`, needs `--redis-url`).
    #[serde(default)]
    pub scope: LimitScope,
    /// Permits per `per`.
    pub rate: u32,
    /// The period `rate` is counted over, e.g. `1s` or `1m`.
    #[serde(with = "humantime_serde", default = "one_second")]
    pub per: Duration,
    /// Permits available back to back after a quiet period; defaults to `rate`.
    #[serde(default)]
    pub burst: Option<u32>,
    /// What a call over the limit gets: RATE_LIMITED at once (`reject`), or a
    /// wait for the next permit as long as its deadline allows (`wait`).
    #[serde(default)]
    pub on_limit: OnLimit,
    /// What a permit is: one call (`requests`), or LLM tokens (`tokens`):
    /// charged from the request's estimate, corrected with the response's
    /// `usage.total_tokens`.
    #[serde(default)]
    pub unit: LimitUnit,
    /// `false` runs the limit in shadow mode: would-be refusals are counted
    /// and logged, nothing is refused. For rolling a new limit out safely.
    #[serde(default = "yes")]
    pub enforce: bool,
    /// For fleet limits while Redis is unreachable: `local_share` (each
    /// sidecar enforces rate ÷ the last known number of live sidecars) or
    /// `deny` (calls get LIMITER_UNAVAILABLE).
    #[serde(default)]
    pub on_redis_error: OnRedisError,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKey {
    /// One bucket for all calls of the tool.
    #[default]
    Tool,
    /// One bucket per agent (`ToolCall.agent_id`).
    Agent,
    /// One bucket per tenant (the call's `tenant` metadata; calls without one
    /// share a bucket).
    Tenant,
    /// One bucket per upstream origin, shared by every tool that calls it
    /// (`scope: fleet` only: the bucket lives in Redis under the origin).
    Upstream,
}

impl LimitKey {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKey::Tool => "tool",
            LimitKey::Agent => "agent",
            LimitKey::Tenant => "tenant",
            LimitKey::Upstream => "upstream",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    #[default]
    Pod,
    Fleet,
}

impl LimitScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitScope::Pod => "pod",
            LimitScope::Fleet => "fleet",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitUnit {
    #[default]
    Requests,
    Tokens,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnRedisError {
    #[default]
    LocalShare,
    Deny,
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

/// Reads and parses `path`, applying `defaults` to every tool; schema
/// files are found relative to its folder.
pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    parse_in(&read_tools_file(path)?, folder_of(path))
}

/// The tools file's text (a regular file of at most
/// [`files::MAX_TOOLS_FILE_BYTES`]).
pub fn read_tools_file(path: &Path) -> Result<String, ConfigError> {
    files::read_text(path, files::MAX_TOOLS_FILE_BYTES).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The folder a tools file's relative paths start from.
pub fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Parses the text of a tools file whose schema files are relative to the
/// current directory.
pub fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
    parse_in(text, Path::new("."))
}

/// Parses the text of a tools file that lives in `folder`.
pub fn parse_in(text: &str, folder: &Path) -> Result<ConfigFile, ConfigError> {
    let document = yaml::parse(text).map_err(ConfigError::syntax)?;
    let raw: RawFile = serde_path_to_error::deserialize(document).map_err(|e| {
        let field = e.path().to_string();
        if field == "." {
            ConfigError::syntax(e.inner().to_string())
        } else {
            ConfigError::syntax(format!("{field}: {}", e.inner()))
        }
    })?;
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
        let d = &raw.defaults;
        spec.timeout.get_or_insert(d.timeout);
        spec.max_response_bytes.get_or_insert(d.max_response_bytes);
        spec.max_argument_bytes.get_or_insert(d.max_argument_bytes);
        spec.max_json_depth.get_or_insert(d.max_json_depth);
        spec.retry.get_or_insert_with(|| d.retry.clone());
        spec.schema_draft.get_or_insert(d.schema_draft);
        spec.formats.get_or_insert(d.formats);
        tools.push(spec);
    }
    let mut schemas = raw.schemas;
    for (index, entry) in raw.schema_files.iter().enumerate() {
        let err = |message: String| {
            ConfigError::syntax(format!("schema_files[{index}] ({}): {message}", entry.file))
        };
        let document = read_schema_file(&folder.join(&entry.file)).map_err(err)?;
        let uri = match &entry.uri {
            Some(uri) => uri.clone(),
            None => document
                .get("$id")
                .and_then(|id| id.as_str())
                .map(str::to_owned)
                .ok_or_else(|| {
                    err("the document has no \"$id\"; give the entry a `uri`".to_owned())
                })?,
        };
        if schemas.contains_key(&uri) {
            return Err(err(format!(
                "{uri:?} is registered twice (under `schemas:` or by an earlier entry)"
            )));
        }
        schemas.insert(uri, document);
    }
    Ok(ConfigFile {
        tools,
        schemas,
        schema_draft: raw.defaults.schema_draft,
        upstreams: raw.upstreams,
        default_upstream: raw.defaults.upstream,
    })
}

/// Reads one schema file: JSON if its name ends in `.json`, else YAML
/// (numbers exact either way).
fn read_schema_file(path: &Path) -> Result<serde_json::Value, String> {
    let text = files::read_text(path, files::MAX_SCHEMA_FILE_BYTES)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let document = if json {
        serde_json::from_str(&text).map_err(|e| format!("invalid JSON: {e}"))?
    } else {
        yaml::parse(&text).map_err(|e| format!("invalid YAML: {e}"))?
    };
    if !(document.is_object() || document.is_boolean()) {
        return Err("not a JSON Schema (an object or a boolean)".to_owned());
    }
    Ok(document)
}

/// The schema files a tools file names, for hot reload to watch. Best
/// effort: a file that does not parse names none (loading it reports why).
pub fn schema_file_paths(text: &str, folder: &Path) -> Vec<PathBuf> {
    if !text.contains("schema_files") {
        return Vec::new();
    }
    let Ok(document) = yaml::parse(text) else {
        return Vec::new();
    };
    let Some(entries) = document.get("schema_files").and_then(|v| v.as_array()) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| e.as_str().or_else(|| e.get("file")?.as_str()))
        .map(|file| folder.join(file))
        .collect()
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
    fn integers_beyond_64_bits_and_repeated_keys_in_tools() {
        let cfg = parse(
            r#"
tools:
  - name: t
    input_schema: {type: object, properties: {n: {minimum: -18446744073709551615, maximum: 340282366920938463463374607431768211455}}}
    request: {url: "http://x/"}
"#,
        )
        .unwrap();
        let text = cfg.tools[0].input_schema.to_string();
        assert!(text.contains("-18446744073709551615"), "{text}");
        assert!(
            text.contains("340282366920938463463374607431768211455"),
            "{text}"
        );
        let err = parse(
            "tools:\n  - name: t\n    input_schema: {type: object}\n    request: {url: 'http://x/'}\n    timeout: 1s\n    timeout: 2s\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("duplicate"), "{err}");
    }

    #[test]
    fn schema_draft_and_formats_default_per_file_and_tool() {
        let cfg = parse(
            r#"
defaults: {schema_draft: 7, formats: annotate}
tools:
  - name: a
    input_schema: {type: object}
    request: {url: "http://x/"}
  - name: b
    input_schema: {type: object}
    request: {url: "http://x/"}
    schema_draft: "2019-09"
    formats: assert
  - name: c
    input_schema: {type: object}
    request: {url: "http://x/"}
    schema_draft: draft-04
"#,
        )
        .unwrap();
        assert_eq!(cfg.tools[0].schema_draft, Some(SchemaDraft::Draft7));
        assert_eq!(cfg.tools[0].formats, Some(Formats::Annotate));
        assert_eq!(cfg.tools[1].schema_draft, Some(SchemaDraft::Draft201909));
        assert_eq!(cfg.tools[1].formats, Some(Formats::Assert));
        assert_eq!(cfg.tools[2].schema_draft, Some(SchemaDraft::Draft4));
        assert_eq!(cfg.schema_draft, SchemaDraft::Draft7);
        let plain = parse("tools: []").unwrap();
        assert_eq!(plain.schema_draft, SchemaDraft::Draft202012);
    }

    #[test]
    fn numbers_beyond_128_bits_and_f64_digits_stay_exact() {
        let cfg = parse(
            r#"
defaults: {upstream: {circuit_breaker: {failure_ratio: 0.50}}}
tools:
  - name: t
    input_schema:
      type: object
      properties:
        n: {minimum: -340282366920938463463374607431768211457, multipleOf: 0.000000000000000000000000000001}
        c: {const: 123456789012345678901234567890123456789012345}
        e: {enum: [2.718281828459045235360287471352662497757]}
    request:
      url: "http://x/"
      method: POST
      body: {fixed: 99999999999999999999999999999999999999999, n: "{n}"}
"#,
        )
        .unwrap();
        let text = cfg.tools[0].input_schema.to_string();
        for digits in [
            "-340282366920938463463374607431768211457",
            "123456789012345678901234567890123456789012345",
            "2.718281828459045235360287471352662497757",
            "1e-30",
        ] {
            assert!(text.contains(digits), "{digits} in {text}");
        }
        // The validator compares them exactly, on both of its JSON paths.
        let schema = crate::config::schema::Schema::compile(&cfg.tools[0].input_schema).unwrap();
        for (args, valid) in [
            (r#"{"n": -340282366920938463463374607431768211457}"#, true),
            (r#"{"n": -340282366920938463463374607431768211458}"#, false),
            (
                r#"{"c": 123456789012345678901234567890123456789012345}"#,
                true,
            ),
            (
                r#"{"c": 123456789012345678901234567890123456789012346}"#,
                false,
            ),
            (r#"{"e": 2.718281828459045235360287471352662497757}"#, true),
            (r#"{"e": 2.718281828459045}"#, false),
        ] {
            let value: serde_json::Value = serde_json::from_str(args).unwrap();
            assert_eq!(schema.violations(&value).is_empty(), valid, "{args}");
            let fast: sonic_rs::Value = sonic_rs::from_str(args).unwrap();
            assert_eq!(schema.is_valid_fast(&fast), valid, "fast: {args}");
        }
        let body = cfg.tools[0].request.body.as_ref().unwrap().to_string();
        assert!(
            body.contains("99999999999999999999999999999999999999999"),
            "{body}"
        );
        assert_eq!(cfg.default_upstream.circuit_breaker.failure_ratio, 0.5);
    }

    #[test]
    fn schema_files_register_by_id_or_uri_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("shared")).unwrap();
        std::fs::write(
            dir.path().join("shared/common.json"),
            r#"{"$id": "https://example.com/common.json", "$defs": {"big": {"maximum": 1e400}}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("shared/more.yaml"),
            "$defs:\n  huge: {const: 340282366920938463463374607431768211457}\n",
        )
        .unwrap();
        let tools = "tools: []\n";
        let cfg = parse_in(
            &format!(
                "schemas: {{\"urn:inline\": {{type: string}}}}\nschema_files:\n  - shared/common.json\n  - {{file: shared/more.yaml, uri: \"urn:more\"}}\n{tools}"
            ),
            dir.path(),
        )
        .unwrap();
        let uris: Vec<&str> = cfg.schemas.keys().map(String::as_str).collect();
        assert_eq!(
            uris,
            ["https://example.com/common.json", "urn:inline", "urn:more"]
        );
        assert!(cfg.schemas["urn:more"]
            .to_string()
            .contains("340282366920938463463374607431768211457"));
        assert!(cfg.schemas["https://example.com/common.json"]
            .to_string()
            .contains("1e+400"));

        std::fs::write(dir.path().join("bad.json"), "{not json").unwrap();
        std::fs::write(dir.path().join("noid.yaml"), "type: object\n").unwrap();
        std::fs::write(dir.path().join("list.yaml"), "[1, 2]\n").unwrap();
        for (entries, says) in [
            ("[missing.json]", "schema_files[0] (missing.json): cannot read"),
            ("[bad.json]", "schema_files[0] (bad.json): invalid JSON"),
            ("[noid.yaml]", "schema_files[0] (noid.yaml): the document has no \"$id\""),
            ("[list.yaml]", "schema_files[0] (list.yaml): not a JSON Schema"),
            ("[shared/common.json, shared/common.json]", "schema_files[1] (shared/common.json): \"https://example.com/common.json\" is registered twice"),
            ("[{file: noid.yaml, uri: \"urn:inline\"}]", "schema_files[0] (noid.yaml): \"urn:inline\" is registered twice"),
            ("[{file: noid.yaml, url: x}]", "schema_files[0].url: unknown field `url`"),
        ] {
            let text = format!("schemas: {{\"urn:inline\": {{}}}}\nschema_files: {entries}\n{tools}");
            let err = parse_in(&text, dir.path()).unwrap_err().to_string();
            assert!(err.contains(says), "{entries}: {err}");
        }
        let text = "schema_files: [shared/common.json, {file: x/y.yaml}]\ntools: []\n";
        assert_eq!(
            schema_file_paths(text, dir.path()),
            [
                dir.path().join("shared/common.json"),
                dir.path().join("x/y.yaml")
            ]
        );
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
