//! JSON Schema validation: schemas are compiled once at load (draft 2020-12,
//! no remote `$ref` resolution: nothing is fetched at run time), and every
//! violation is reported with a JSON Pointer so an LLM can correct its call.

use serde_json::Value;

use crate::json::sonic::Sonic;
use crate::pb::Violation;

/// At most this many violations are reported for one document; a response
/// that fails thousands of times is summarised by its first failures.
const MAX_VIOLATIONS: usize = 32;

/// A compiled schema plus its source text (served by ListTools).
///
/// Compiled twice with the same options: once for `serde_json` documents
/// (arguments, and the exact path that words violations) and once for
/// sonic-rs documents (the response hot path, see [`crate::json::document`]).
pub struct Schema {
    validator: jsonschema::Validator,
    fast: jsonschema::Validator<Sonic>,
    text: String,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").field("text", &self.text).finish()
    }
}

impl Schema {
    /// Compiles `schema` as draft 2020-12 (unless it names another draft in
    /// `$schema`). Formats are asserted, since tools rely on them.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        jsonschema::draft202012::meta::validate(schema)
            .map_err(|e| format!("not a valid JSON Schema: {e} (at {})", e.instance_path()))?;
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(schema)
            .map_err(|e| format!("cannot compile schema: {e}"))?;
        let fast = jsonschema::options_for::<Sonic>()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(schema)
            .map_err(|e| format!("cannot compile schema: {e}"))?;
        Ok(Self {
            validator,
            fast,
            text: schema.to_string(),
        })
    }

    /// Whether a document parsed by [`crate::json::document::parse`] is
    /// valid; the same answer [`Schema::violations`] gives on its text.
    pub fn is_valid_fast(&self, instance: &sonic_rs::Value) -> bool {
        self.fast.is_valid(instance)
    }

    /// The schema as compact JSON text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Every violation of `instance` (up to a cap), or empty when valid.
    pub fn violations(&self, instance: &Value) -> Vec<Violation> {
        if self.validator.is_valid(instance) {
            return Vec::new();
        }
        self.validator
            .iter_errors(instance)
            .take(MAX_VIOLATIONS)
            .map(|e| Violation {
                instance_path: e.instance_path().to_string(),
                schema_path: e.schema_path().to_string(),
                message: e.to_string(),
            })
            .collect()
    }
}

/// Top-level property names declared by an object schema, and which of them
/// are required; used to check request templates against the schema.
pub fn declared_properties(schema: &Value) -> (Vec<&str>, Vec<&str>) {
    let props = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let required = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    (props, required)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reports_every_violation_with_pointers() {
        let s = Schema::compile(&json!({
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "units": {"enum": ["c", "f"]},
                "days": {"type": "integer", "minimum": 1}
            },
            "required": ["city"],
            "additionalProperties": false
        }))
        .unwrap();
        let v = s.violations(&json!({"units": "k", "days": 0, "x": 1}));
        let paths: Vec<&str> = v.iter().map(|v| v.instance_path.as_str()).collect();
        assert!(paths.contains(&""), "{v:?}"); // missing city + extra x
        assert!(paths.contains(&"/units"), "{v:?}");
        assert!(paths.contains(&"/days"), "{v:?}");
        assert!(v.iter().any(|v| v.message.contains("city")), "{v:?}");
        assert!(s.violations(&json!({"city": "Oslo"})).is_empty());
    }

    #[test]
    fn invalid_schema_is_rejected() {
        assert!(Schema::compile(&json!({"type": "strung"})).is_err());
    }

    #[test]
    fn formats_are_asserted() {
        let s = Schema::compile(&json!({"type": "string", "format": "date"})).unwrap();
        assert!(!s.violations(&json!("yesterday")).is_empty());
        assert!(s.violations(&json!("2026-11-21")).is_empty());
    }
}
