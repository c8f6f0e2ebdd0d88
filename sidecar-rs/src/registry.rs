//! The tool registry: every tool of a config file compiled into what a call
//! needs (validators, request template, rate limiters). Built once per config
//! load and shared read-only by all calls; a reload builds a new one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, ToolSpec};
use crate::error::ConfigError;
use crate::pb;
use crate::ratelimit::RateLimits;
use crate::schema::{self, Schema};
use crate::template::RequestTemplate;

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
    pub rate_limits: RateLimits,
}

/// All tools of one config, by name.
#[derive(Debug, Default)]
pub struct Registry {
    tools: HashMap<String, Arc<Tool>>,
}

impl Registry {
    /// Loads and compiles the tools file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_specs(config::load(path)?.tools)
    }

    /// Compiles parsed specs; the first error names its tool and field.
    pub fn from_specs(specs: Vec<ToolSpec>) -> Result<Self, ConfigError> {
        let mut tools = HashMap::with_capacity(specs.len());
        for spec in specs {
            let tool = Tool::compile(spec)?;
            if tools.contains_key(&tool.name) {
                return Err(ConfigError::tool(
                    &tool.name,
                    "name",
                    "defined more than once",
                ));
            }
            tools.insert(tool.name.clone(), Arc::new(tool));
        }
        Ok(Self { tools })
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

impl Tool {
    fn compile(spec: ToolSpec) -> Result<Self, ConfigError> {
        let name = spec.name.clone();
        let err = |field: &str, msg: String| ConfigError::tool(&name, field, msg);

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
        if spec.input_schema.get("type").and_then(|t| t.as_str()) != Some("object") {
            return Err(err(
                "input_schema",
                "must be an object schema (\"type\": \"object\"): arguments are a JSON object"
                    .into(),
            ));
        }
        let input_schema =
            Schema::compile(&spec.input_schema).map_err(|m| err("input_schema", m))?;
        let output_schema = spec
            .output_schema
            .as_ref()
            .map(Schema::compile)
            .transpose()
            .map_err(|m| err("output_schema", m))?;
        let request = RequestTemplate::compile(&spec.request).map_err(|(f, m)| err(&f, m))?;

        // Every placeholder must be a declared argument, and path segments
        // must be required ones: a typo here would otherwise surface as a
        // confusing error on every call.
        let (props, required) = schema::declared_properties(&spec.input_schema);
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
        let rate_limits = RateLimits::new(&spec.rate_limits).map_err(|(f, m)| err(&f, m))?;

        Ok(Self {
            name: spec.name,
            description: spec.description,
            input_schema,
            output_schema,
            request,
            timeout,
            max_response_bytes,
            rate_limits,
        })
    }

    fn describe(&self) -> pb::ToolInfo {
        pb::ToolInfo {
            name: self.name.clone(),
            description: self.description.clone(),
            input_schema: self.input_schema.text().to_owned(),
            output_schema: self
                .output_schema
                .as_ref()
                .map(|s| s.text().to_owned())
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
        let cfg = config::parse(yaml).map_err(|e| e.to_string())?;
        Registry::from_specs(cfg.tools).map_err(|e| e.to_string())
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
    rate_limits: [{scope: agent_tool, rate: 5}]
"#;

    #[test]
    fn good_config_compiles_and_describes() {
        let r = load(GOOD).unwrap();
        let info = r.describe();
        assert_eq!(info.len(), 1);
        assert_eq!(info[0].name, "weather");
        assert!(info[0].input_schema.contains("\"city\""));
        assert_eq!(info[0].rate_limits[0].scope, "agent_tool");
        assert_eq!(info[0].rate_limits[0].burst, 5);
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
        ];
        for (yaml, field) in cases {
            let e = load(&yaml).unwrap_err();
            assert!(e.contains("tool \""), "{e}");
            assert!(e.contains(field), "expected {field:?} in {e}");
        }
    }
}
