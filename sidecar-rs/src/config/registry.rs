//! The tool registry: every tool of a config file compiled into what a call
//! needs (validators, request template, rate limiters). Built once per config
//! load and shared read-only by all calls; a reload builds a new one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::redact::Redactor;
use crate::config::schema::{self, Schema, SchemaDocuments, SchemaOptions};
use crate::config::secrets::Secret;
use crate::config::spec::{self, ConfigFile, Method, RateLimitSpec, ToolSpec, UpstreamSpec};
use crate::config::template::RequestTemplate;
use crate::error::ConfigError;
use crate::metrics::ToolSeries;
use crate::pb;
use crate::policy::breaker;
use crate::policy::ratelimit::RateLimits;
use crate::policy::retry::{self, RetryPolicy};
use crate::upstream::cache::ToolCache;
use crate::upstream::client::Upstream;
use crate::upstream::egress::{self, EgressPolicy, RedirectRules};
use crate::upstream::origins::{UpstreamState, Upstreams};

/// A tool ready to run.
#[derive(Debug)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub input_schema: Schema,
    pub output_schema: Option<Schema>,
    pub request: RequestTemplate,
    pub timeout: Duration,
    pub max_response_bytes: usize,
    pub max_argument_bytes: usize,
    pub max_json_depth: usize,
    /// Shared with the previous config when the limits did not change, so a
    /// reload does not hand every agent a fresh burst.
    pub rate_limits: Arc<RateLimits>,
    rate_limit_specs: Vec<RateLimitSpec>,
    pub retry: RetryPolicy,
    /// Calls of this tool in flight, when limited.
    pub slots: Option<Arc<Semaphore>>,
    pub cache: Option<ToolCache>,
    pub coalesce: bool,
    /// The HTTP client for this tool's egress policy.
    pub client: Upstream,
    /// Breaker, retry budget and slots of the tool's upstream origin.
    pub upstream: Arc<UpstreamState>,
    /// Scrubs this tool's secrets from anything returned to the brain.
    pub redactor: Redactor,
    /// This tool's series of the per-call metrics.
    pub series: ToolSeries,
}

/// All tools of one config, by name.
#[derive(Debug, Default)]
pub struct Registry {
    /// foldhash rather than SipHash: looked up on every call, by names the
    /// operator chose (an unknown name costs one lookup that misses).
    tools: HashMap<String, Arc<Tool>, foldhash::fast::RandomState>,
    /// Every secret this config embeds.
    secrets: Vec<Secret>,
    /// Scrubs this config's secrets, and the previous config's (calls in
    /// flight still use those), from logs and spans: see
    /// [`crate::config::redact::in_force`].
    redactor: Arc<Redactor>,
}

impl Registry {
    /// Loads and compiles the tools file at `path`. State worth keeping
    /// (rate-limit buckets) is carried over from `previous`.
    pub fn load(
        path: &Path,
        upstreams: &Upstreams,
        previous: Option<&Registry>,
    ) -> Result<Self, ConfigError> {
        Self::build(spec::load(path)?, upstreams, previous)
    }

    /// Compiles the text of a tools file (read by the caller, so that what
    /// is compiled is exactly what it fingerprinted) that lives in `folder`
    /// (where its `schema_files` are found).
    pub fn parse(
        text: &str,
        folder: &Path,
        upstreams: &Upstreams,
        previous: Option<&Registry>,
    ) -> Result<Self, ConfigError> {
        Self::build(spec::parse_in(text, folder)?, upstreams, previous)
    }

    /// Compiles a parsed file; the first error names its tool and field.
    pub fn build(
        file: ConfigFile,
        upstreams: &Upstreams,
        previous: Option<&Registry>,
    ) -> Result<Self, ConfigError> {
        check_upstreams(&file)?;
        // Compiled once per load, shared by every tool's schemas; dropped
        // once they are compiled (validators keep what they reference).
        let documents = if file.schemas.is_empty() {
            None
        } else {
            Some(
                SchemaDocuments::new(&file.schemas, file.schema_draft)
                    .map_err(|(uri, message)| ConfigError::Schemas { uri, message })?,
            )
        };
        let mut tools = HashMap::with_capacity_and_hasher(file.tools.len(), Default::default());
        let mut secrets = Vec::new();
        for spec in file.tools {
            let origin = origin_key(&spec);
            let upstream_spec = file
                .upstreams
                .get(&origin)
                .unwrap_or(&file.default_upstream);
            let previous = previous.and_then(|r| r.get(&spec.name)).map(Arc::as_ref);
            let tool = Tool::compile(spec, upstreams, upstream_spec, previous, documents.as_ref())?;
            if tools.contains_key(&tool.name) {
                return Err(ConfigError::tool(
                    &tool.name,
                    "name",
                    "defined more than once",
                ));
            }
            secrets.extend(tool.request.secrets());
            tools.insert(tool.name.clone(), Arc::new(tool));
        }
        secrets.dedup();
        let mut scrubbed = secrets.clone();
        if let Some(previous) = previous {
            scrubbed.extend(previous.secrets.iter().cloned());
        }
        let redactor = Arc::new(Redactor::new(&scrubbed).map_err(ConfigError::syntax)?);
        Ok(Self {
            tools,
            secrets,
            redactor,
        })
    }

    /// Every secret of this config and of the previous one, for logs and
    /// spans.
    pub fn redactor(&self) -> &Arc<Redactor> {
        &self.redactor
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Tool>> {
        self.tools.get(name)
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Every tool, sorted by name, as ListTools reports them.
    pub fn describe(&self) -> Vec<pb::ToolInfo> {
        let mut tools: Vec<pb::ToolInfo> = self.tools.values().map(|t| t.describe()).collect();
        tools.sort_by(|a, b| a.name.cmp(&b.name));
        tools
    }

    /// See [`RateLimits::prune`].
    pub fn prune_rate_limits(&self) {
        self.tools.values().for_each(|t| t.rate_limits.prune());
    }
}

/// Checks every upstream policy, and that every `upstreams:` key is an
/// origin some tool calls. An unmatched key is an error, not a warning: its
/// policy (a concurrency limit, a breaker) would silently not apply, which
/// an operator finds out during the outage it was meant to contain. The
/// message shows the origins the tools use, and the likely intended one.
fn check_upstreams(file: &ConfigFile) -> Result<(), ConfigError> {
    check_upstream("defaults.upstream".to_owned(), &file.default_upstream)?;
    let used: std::collections::BTreeSet<String> = file.tools.iter().map(origin_key).collect();
    for (key, spec) in &file.upstreams {
        let path = format!("upstreams.{key:?}");
        check_upstream(path.clone(), spec)?;
        if used.contains(key) {
            continue;
        }
        let normalized = url::Url::parse(key)
            .ok()
            .map(|u| u.origin().ascii_serialization())
            .filter(|o| used.contains(o));
        let message = match normalized {
            Some(origin) => format!(
                "no tool calls this origin; did you mean {origin:?}? Keys are origins written \
                 as scheme://host[:port], lower case, without a path and without the \
                 scheme's default port"
            ),
            None if used.is_empty() => "no tool calls this origin".to_owned(),
            None => format!(
                "no tool calls this origin; the tools call {}",
                used.iter()
                    .map(|o| format!("{o:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        return Err(ConfigError::Upstream { path, message });
    }
    Ok(())
}

/// Checks one upstream policy; errors name `path` and the field.
fn check_upstream(path: String, spec: &UpstreamSpec) -> Result<(), ConfigError> {
    let fail = |field: &str, message: String| ConfigError::Upstream {
        path: format!("{path}.{field}"),
        message,
    };
    if spec.max_concurrency == 0 {
        return Err(fail(
            "max_concurrency",
            "must be at least 1 (0 would make every call wait out its deadline)".into(),
        ));
    }
    if spec.max_concurrency > Semaphore::MAX_PERMITS {
        return Err(fail(
            "max_concurrency",
            format!("must be at most {}", Semaphore::MAX_PERMITS),
        ));
    }
    breaker::check(&spec.circuit_breaker).map_err(|(f, m)| fail(f, m))?;
    retry::check_budget(&spec.retry_budget).map_err(|(f, m)| fail(f, m))?;
    Ok(())
}

/// The `upstreams:` key a tool's URL falls under: `scheme://host:port`.
fn origin_key(spec: &ToolSpec) -> String {
    url::Url::parse(&spec.request.url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

impl Tool {
    fn compile(
        spec: ToolSpec,
        upstreams: &Upstreams,
        upstream_spec: &UpstreamSpec,
        previous: Option<&Tool>,
        documents: Option<&SchemaDocuments>,
    ) -> Result<Self, ConfigError> {
        let name = spec.name.clone();
        let err = |field: &str, msg: String| ConfigError::tool(&name, field, msg);
        let not_an_object = || {
            err(
                "input_schema",
                "must be an object schema (\"type\": \"object\"): arguments are a JSON object"
                    .into(),
            )
        };

        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(err(
                "name",
                "must be 1-64 characters of [A-Za-z0-9_.-] (LLM function-name rules)".into(),
            ));
        }
        let schema_options = SchemaOptions {
            default_draft: spec.schema_draft.unwrap_or_default(),
            formats: spec.formats.unwrap_or_default(),
            documents,
        };
        // A root `$ref` (`input_schema: {$ref: ".../args.json"}`) is checked
        // for what it points to.
        let root_ref =
            spec.input_schema.get("$ref").is_some() && spec.input_schema.get("type").is_none();
        if !root_ref && spec.input_schema.get("type").and_then(|t| t.as_str()) != Some("object") {
            return Err(not_an_object());
        }
        let mut input_schema = Schema::compile_with(&spec.input_schema, &schema_options)
            .map_err(|m| err("input_schema", m))?;
        if let Err(reason) = input_schema.inline_refs(&spec.input_schema, &schema_options) {
            // The schema is valid and validates; only the convenience copy
            // for LLMs that cannot follow `$ref` is missing.
            tracing::warn!(tool = %name, %reason, "input_schema served without an inlined copy");
        }
        let inlined: Option<serde_json::Value> = input_schema
            .inlined_text()
            .and_then(|t| serde_json::from_str(t).ok());
        // What the argument checks below read: the schema with its root
        // `$ref` followed, when it has one.
        let declared = match (root_ref, &inlined) {
            (false, _) => &spec.input_schema,
            (true, Some(inlined)) => inlined,
            (true, None) => {
                return Err(err(
                    "input_schema",
                    "a root $ref must lead to an object schema the sidecar can inline".into(),
                ))
            }
        };
        if root_ref && declared.get("type").and_then(|t| t.as_str()) != Some("object") {
            return Err(not_an_object());
        }
        let output_schema = spec
            .output_schema
            .as_ref()
            .map(|s| Schema::compile_with(s, &schema_options))
            .transpose()
            .map_err(|m| err("output_schema", m))?;
        let request = RequestTemplate::compile(&spec.request).map_err(|(f, m)| err(&f, m))?;

        // Every placeholder must be a declared argument, and path segments
        // must be required ones: a typo here would otherwise surface as a
        // confusing error on every call.
        let (props, required) = schema::declared_properties(declared);
        let (path_args, all_args) = request.placeholders();
        for (field, arg) in all_args {
            if arg != "*" && !props.contains(&arg) {
                return Err(err(
                    field,
                    format!("placeholder {{{arg}}} is not a property of input_schema"),
                ));
            }
        }
        for arg in path_args {
            if !required.contains(&arg) {
                return Err(err(
                    "request.url",
                    format!("path placeholder {{{arg}}} must be listed in input_schema.required"),
                ));
            }
        }

        let timeout = spec.timeout.unwrap_or(Duration::from_secs(30));
        if timeout.is_zero() {
            return Err(err("timeout", "must be greater than zero".into()));
        }
        let max_response_bytes = spec.max_response_bytes.unwrap_or(8 << 20);
        if max_response_bytes == 0 {
            return Err(err(
                "max_response_bytes",
                "must be greater than zero".into(),
            ));
        }
        let rate_limits = match previous {
            Some(old) if old.rate_limit_specs == spec.rate_limits => old.rate_limits.clone(),
            _ => Arc::new(
                RateLimits::new(&spec.rate_limits, upstreams.fleet())
                    .map_err(|(f, m)| err(&f, m))?,
            ),
        };

        let idempotent = spec
            .idempotent
            .unwrap_or(matches!(spec.request.method, Method::Get | Method::Head));
        let retry_spec = spec.retry.clone().unwrap_or_default();
        let retry = RetryPolicy::new(&retry_spec, idempotent).map_err(|(f, m)| err(&f, m))?;
        let slots = match spec.max_concurrency {
            Some(0) => return Err(err("max_concurrency", "must be at least 1".into())),
            Some(n) if n > Semaphore::MAX_PERMITS => {
                return Err(err(
                    "max_concurrency",
                    format!("must be at most {}", Semaphore::MAX_PERMITS),
                ))
            }
            Some(n) => Some(Arc::new(Semaphore::new(n))),
            None => None,
        };
        let cache = spec
            .cache
            .as_ref()
            .map(ToolCache::new)
            .transpose()
            .map_err(|(f, m)| err(&f, m))?;

        let policy = EgressPolicy::parse(&spec.egress.allow).map_err(|(f, m)| err(&f, m))?;
        // IP-literal hosts skip DNS, so the resolver's check cannot see them:
        // check them here, once.
        let port = request.origin().port_or_known_default().unwrap_or(80);
        if let Some(ip) =
            egress::literal_ip(request.origin()).filter(|ip| !policy.permits(*ip, port))
        {
            return Err(err(
                "request.url",
                format!(
                    "{ip} port {port} is not a public address (loopback, private, link-local, \
                     reserved, ...); list it under egress.allow to let this tool reach it"
                ),
            ));
        }
        let redirects = match (spec.follow_redirects, &spec.redirects) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "follow_redirects",
                    "set either follow_redirects or redirects (its newer form), not both".into(),
                ))
            }
            (Some(max), None) => RedirectRules::same_origin(max),
            (None, Some(r)) => RedirectRules::parse(r).map_err(|(f, m)| err(&f, m))?,
            (None, None) => RedirectRules::default(),
        };
        let client = upstreams
            .client(
                request.origin(),
                upstream_spec.http,
                &policy,
                &redirects,
                request.credentials(),
            )
            .map_err(|e| err("request", format!("cannot build the HTTP client: {e}")))?;
        let origin = request.origin().origin().ascii_serialization();
        let upstream = upstreams.state(&origin, upstream_spec);
        let redactor = Redactor::new(&request.secrets()).map_err(|e| err("request", e))?;
        let max_argument_bytes = spec.max_argument_bytes.unwrap_or(256 * 1024);
        let max_json_depth = spec.max_json_depth.unwrap_or(64);
        if max_json_depth == 0 || max_argument_bytes == 0 {
            return Err(err(
                "max_json_depth",
                "limits must be greater than zero".into(),
            ));
        }

        Ok(Self {
            name: spec.name,
            description: spec.description,
            input_schema,
            output_schema,
            request,
            timeout,
            max_response_bytes,
            max_argument_bytes,
            max_json_depth,
            rate_limits,
            rate_limit_specs: spec.rate_limits,
            retry,
            slots,
            cache,
            coalesce: spec.coalesce,
            client,
            upstream,
            redactor,
            series: ToolSeries::default(),
        })
    }

    /// What ListTools reports. Descriptions and schemas cannot embed a
    /// secret reference, but the text is scrubbed all the same: everything
    /// that leaves the sidecar goes through the redactor.
    fn describe(&self) -> pb::ToolInfo {
        let scrub = |text: &str| self.redactor.scrub_text(text).into_owned();
        pb::ToolInfo {
            name: self.name.clone(),
            description: scrub(&self.description),
            input_schema: scrub(self.input_schema.text()),
            input_schema_inlined: self
                .input_schema
                .inlined_text()
                .map(scrub)
                .unwrap_or_default(),
            output_schema: self
                .output_schema
                .as_ref()
                .map(|s| scrub(s.text()))
                .unwrap_or_default(),
            timeout_ms: u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX),
            rate_limits: self.rate_limits.describe(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Registry, String> {
        let cfg = spec::parse(yaml).map_err(|e| e.to_string())?;
        let upstreams = Upstreams::new(Default::default(), crate::metrics::Metrics::new());
        Registry::build(cfg, &upstreams, None).map_err(|e| e.to_string())
    }

    const GOOD: &str = r#"
tools:
  - name: weather
    description: Current weather for a city.
    input_schema:
      type: object
      properties: {city: {type: string}, units: {enum: [c, f]}}
      required: [city]
    request:
      url: http://127.0.0.1:9/weather/{city}
      query: {units: "{units}"}
    rate_limits: [{key: agent, rate: 5}]
    egress: {allow: [127.0.0.0/8]}
"#;

    #[test]
    fn good_config_compiles_and_describes() {
        let r = load(GOOD).unwrap();
        let info = r.describe();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].name, "weather");
        assert!(info[0].input_schema.contains("\"city\""));
        assert_eq!(info[0].rate_limits[0].key, "agent");
        assert_eq!(info[0].rate_limits[0].scope, "pod");
        assert_eq!(info[0].rate_limits[0].burst, 5);
    }

    #[test]
    fn egress_rules_with_ports_and_redirect_rules_compile() {
        let yaml = GOOD
            .replace(
                "[127.0.0.0/8]",
                "['127.0.0.1:9', '[::1]:9', {cidr: 10.0.0.0/8, ports: [443, '8000-8099']}]",
            )
            .replace(
                "rate_limits:",
                "redirects: {max: 3, allow_origins: ['http://127.0.0.1:8080', '*']}\n    rate_limits:",
            );
        load(&yaml).unwrap();
        // The older field keeps working.
        load(&GOOD.replace("rate_limits:", "follow_redirects: 2\n    rate_limits:")).unwrap();
    }

    #[test]
    fn semantic_errors_name_tool_and_field() {
        let cases = [
            (
                GOOD.replace("required: [city]", "required: []"),
                "request.url",
            ),
            (GOOD.replace("{units}\"", "{unit}\""), "request.query"),
            (GOOD.replace("enum: [c, f]", "type: bogus"), "input_schema"),
            (
                GOOD.replace("type: object\n", "type: array\n"),
                "input_schema",
            ),
            (GOOD.replace("name: weather", "name: 'bad name'"), "name"),
            (GOOD.replace("rate: 5", "rate: 0"), "rate_limits[0].rate"),
            (format!("{GOOD}{}", &GOOD[7..]), "defined more than once"),
            (
                GOOD.replace("    egress: {allow: [127.0.0.0/8]}\n", ""),
                "egress.allow",
            ),
            (GOOD.replace("127.0.0.0/8", "localhost"), "egress.allow"),
            (
                GOOD.replace("rate_limits:", "retry: {max_attempts: 0}\n    rate_limits:"),
                "retry.max_attempts",
            ),
            (
                GOOD.replace("rate_limits:", "cache: {ttl: 0s}\n    rate_limits:"),
                "cache.ttl",
            ),
            (
                GOOD.replace("{units}\"", "${env:TANDEM_TEST_UNSET}\""),
                "TANDEM_TEST_UNSET",
            ),
            // Egress rules with ports, and where redirects may go.
            (
                GOOD.replace("[127.0.0.0/8]", "[127.0.0.0/8, '127.0.0.1:99999']"),
                "egress.allow[1]",
            ),
            (
                GOOD.replace("[127.0.0.0/8]", "[{cidr: 127.0.0.0/8, ports: []}]"),
                "egress.allow[0]",
            ),
            (
                GOOD.replace("[127.0.0.0/8]", "[{cidr: 127.0.0.0/8, port: 9}]"),
                "unknown field `port`",
            ),
            // The URL is on port 9; a rule for another port does not open it.
            (
                GOOD.replace("[127.0.0.0/8]", "['127.0.0.1:8080']"),
                "request.url",
            ),
            (
                GOOD.replace(
                    "rate_limits:",
                    "follow_redirects: 2\n    redirects: {max: 2}\n    rate_limits:",
                ),
                "follow_redirects",
            ),
            (
                GOOD.replace(
                    "rate_limits:",
                    "redirects: {max: 2, allow_origins: ['ftp://x']}\n    rate_limits:",
                ),
                "redirects.allow_origins[0]",
            ),
            (
                GOOD.replace(
                    "rate_limits:",
                    "redirects: {max: 2, origins: ['*']}\n    rate_limits:",
                ),
                "redirects",
            ),
            // Arguments never choose the host or the route.
            (
                GOOD.replace(
                    "query: {units: \"{units}\"}",
                    "headers: {Host: \"{units}\"}",
                ),
                "request.headers.Host",
            ),
            (
                GOOD.replace(
                    "query: {units: \"{units}\"}",
                    "headers: {X-Forwarded-Host: \"{units}\"}",
                ),
                "request.headers.X-Forwarded-Host",
            ),
        ];
        for (yaml, field) in cases {
            let e = load(&yaml).unwrap_err();
            assert!(e.contains("tool \""), "{e}");
            assert!(e.contains(field), "expected {field:?} in {e}");
        }
    }

    #[test]
    fn schema_drafts_documents_and_formats_compile_per_tool() {
        let yaml = format!(
            r#"
defaults: {{schema_draft: 7, formats: annotate}}
schemas:
  "https://schemas.example.com/geo.json":
    definitions:
      lat: {{type: number, minimum: -90, maximum: 90}}
      big: {{type: integer, minimum: -18446744073709551615}}
{}    output_schema:
      items: [{{$ref: "https://schemas.example.com/geo.json#/definitions/lat"}}]
    formats: assert
"#,
            &GOOD[1..]
        );
        let r = load(&yaml).unwrap();
        let tool = r.get("weather").unwrap();
        let out = tool.output_schema.as_ref().unwrap();
        assert!(out.violations(&serde_json::json!([45])).is_empty());
        assert!(!out.violations(&serde_json::json!([91])).is_empty());
        // As written, for ListTools: the $ref, not what it points to.
        assert!(r.describe()[0]
            .output_schema
            .contains("geo.json#/definitions/lat"));
        assert!(
            r.describe()[0].input_schema_inlined.is_empty(),
            "no $ref there"
        );

        // The arguments' schema itself from a shared document.
        let shared = yaml
            .replace(
                "      lat: {type: number, minimum: -90, maximum: 90}",
                "      lat: {type: number, minimum: -90, maximum: 90}\n      args: {type: object, \
                 properties: {city: {type: string}, units: {enum: [c, f]}}, required: [city]}",
            )
            .replace(
                "    input_schema:\n      type: object\n      properties: {city: {type: string}, units: {enum: [c, f]}}\n      required: [city]\n",
                "    input_schema: {$ref: 'https://schemas.example.com/geo.json#/definitions/args'}\n",
            );
        assert!(shared.contains("#/definitions/args'}"), "{shared}");
        let r = load(&shared).unwrap();
        let input = &r.get("weather").unwrap().input_schema;
        assert!(input
            .violations(&serde_json::json!({"city": "Oslo"}))
            .is_empty());
        assert!(!input
            .violations(&serde_json::json!({"units": "c"}))
            .is_empty());
        let e = load(&shared.replace("required: [city]}", "required: []}")).unwrap_err();
        assert!(e.contains("request.url"), "{e}");
        let e = load(&shared.replace("args: {type: object,", "args: {type: array,")).unwrap_err();
        assert!(e.contains("input_schema: must be an object schema"), "{e}");
    }

    #[test]
    fn schema_errors_name_tool_field_or_document() {
        let with_output = |schema: &str| {
            format!(
                "{GOOD}    output_schema: {schema}
"
            )
        };
        let cases = [
            (
                with_output("{$schema: 'http://example.com/draft-99'}"),
                "tool \"weather\": output_schema: $schema: \"http://example.com/draft-99\"",
            ),
            (
                with_output("{$ref: 'https://schemas.example.com/none.json'}"),
                "tool \"weather\": output_schema: cannot resolve a $ref",
            ),
            (
                with_output("{$schema: 'http://json-schema.org/draft-04/schema#', type: strung}"),
                "tool \"weather\": output_schema: not a valid JSON Schema",
            ),
            (
                // Not a JSON number (`1e400` is one: kept exactly).
                with_output("{maximum: .inf}"),
                "output_schema.maximum: .inf is not a JSON number",
            ),
            (
                GOOD.replace("rate_limits:", "schema_draft: 5\n    rate_limits:"),
                "tool \"weather\": schema_draft: invalid value",
            ),
            (
                GOOD.replace("rate_limits:", "formats: check\n    rate_limits:"),
                "tool \"weather\": formats: unknown variant",
            ),
            (
                format!("schemas:\n  'https://x.example/a.json': {{type: strung}}\n{GOOD}"),
                "schemas.\"https://x.example/a.json\": not a valid JSON Schema",
            ),
            (
                format!("schemas:\n  'a.json': {{}}\n{GOOD}"),
                "schemas.\"a.json\": must be an absolute URI",
            ),
            (
                format!(
                    "schemas:\n  'https://x.example/a.json': {{$ref: 'https://x.example/b.json'}}\n{GOOD}"
                ),
                "schemas: ",
            ),
        ];
        for (yaml, expected) in cases {
            let e = load(&yaml).unwrap_err();
            assert!(e.contains(expected), "expected {expected:?} in {e}");
        }
    }

    #[test]
    fn upstream_policies_are_checked_and_named() {
        let origin = "http://127.0.0.1:9";
        let with = |policy: &str| format!("upstreams:\n  \"{origin}\": {policy}\n{GOOD}");
        let cases = [
            ("{max_concurrency: 0}", "max_concurrency"),
            ("{max_concurrency: 18446744073709551615}", "max_concurrency"),
            (
                "{circuit_breaker: {failure_ratio: 0}}",
                "circuit_breaker.failure_ratio",
            ),
            (
                "{circuit_breaker: {failure_ratio: 1.5}}",
                "circuit_breaker.failure_ratio",
            ),
            (
                "{circuit_breaker: {failure_ratio: .nan}}",
                "circuit_breaker.failure_ratio",
            ),
            (
                "{circuit_breaker: {min_requests: 0}}",
                "circuit_breaker.min_requests",
            ),
            (
                "{circuit_breaker: {consecutive_failures: 0}}",
                "circuit_breaker.consecutive_failures",
            ),
            (
                "{circuit_breaker: {half_open_probes: 0}}",
                "circuit_breaker.half_open_probes",
            ),
            (
                "{circuit_breaker: {open_for: 0s}}",
                "circuit_breaker.open_for",
            ),
            (
                "{circuit_breaker: {open_for: 100years}}",
                "circuit_breaker.open_for",
            ),
            ("{retry_budget: {ratio: -1}}", "retry_budget.ratio"),
        ];
        for (policy, field) in cases {
            let e = load(&with(policy)).unwrap_err();
            let path = format!("upstreams.\"{origin}\".{field}");
            assert!(e.contains(&path), "expected {path:?} in {e}");
        }
        assert!(load(&with("{max_concurrency: 4}")).is_ok());
        let e = load(&format!(
            "defaults: {{upstream: {{max_concurrency: 0}}}}\n{GOOD}"
        ))
        .unwrap_err();
        assert!(e.contains("defaults.upstream.max_concurrency"), "{e}");
    }

    #[test]
    fn an_upstreams_http_version_is_one_of_three() {
        let origin = "http://127.0.0.1:9";
        let with = |policy: &str| format!("upstreams:\n  \"{origin}\": {policy}\n{GOOD}");
        for version in ["auto", "http1", "http2"] {
            assert!(
                load(&with(&format!("{{http: {version}}}"))).is_ok(),
                "{version}"
            );
        }
        let e = load(&with("{http: http3}")).unwrap_err();
        assert!(
            e.contains("http3") && e.contains("auto") && e.contains("http2"),
            "the error names the value and the choices: {e}"
        );
    }

    #[test]
    fn an_upstreams_key_no_tool_calls_is_refused_with_a_suggestion() {
        let https = GOOD.replace("http://127.0.0.1:9", "https://api.example.com");
        let e = load(&format!(
            "upstreams:\n  \"https://api.example.com:443\": {{max_concurrency: 4}}\n{https}"
        ))
        .unwrap_err();
        assert!(
            e.contains("upstreams.\"https://api.example.com:443\"")
                && e.contains("did you mean \"https://api.example.com\"?"),
            "{e}"
        );
        let e = load(&format!(
            "upstreams:\n  \"https://other.example.com\": {{max_concurrency: 4}}\n{https}"
        ))
        .unwrap_err();
        assert!(
            e.contains("the tools call \"https://api.example.com\""),
            "{e}"
        );
    }
}
