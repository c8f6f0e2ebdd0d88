//! JSON Schema validation: schemas are compiled once at load and every
//! violation is reported with a JSON Pointer so an LLM can correct its call.
//!
//! How a schema is read, as users write them (OpenAPI documents, MCP servers
//! still on draft-07, hand-written YAML):
//! - **Draft**: a schema's own `$schema` decides (draft 4, 6, 7, 2019-09,
//!   2020-12, or a meta-schema registered under `schemas:`); without one,
//!   [`SchemaOptions::default_draft`] (2020-12 unless `schema_draft` says
//!   otherwise). The schema is meta-validated against that same draft.
//! - **Shared documents**: [`SchemaDocuments`] holds the `schemas:` section,
//!   registered by URI, which `$ref` can reach. Nothing is ever fetched: a
//!   `$ref` that no registered document answers is a config error.
//! - **Formats**: [`Formats::Assert`] checks every format the validator knows
//!   (`idn-hostname` and `idn-email` included); [`Formats::Annotate`] is what
//!   the specification says by default (annotation only, unless the schema's
//!   meta-schema asks for the format-assertion vocabulary).

use std::collections::BTreeMap;
use std::sync::Arc;

use jsonschema::json::Json;
use jsonschema::{Draft, PatternOptions, Registry, Resource, Retrieve, ValidationOptions};
use serde_json::Value;

use crate::config::spec::{Formats, SchemaDraft};
use crate::json::sonic::Sonic;
use crate::json::stream::{Leaf, Plan, Verdict};
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
    /// The streaming plan (`json::stream`), when the schema has one.
    plan: Option<Plan>,
    text: String,
    /// The text with its `$ref`s inlined; `None` when it has none.
    inlined: Option<String>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").field("text", &self.text).finish()
    }
}

/// How schemas are compiled: the defaults a tool (or the file) sets, and the
/// shared documents `$ref` may reach.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchemaOptions<'a> {
    /// The draft of a schema that does not name one in `$schema`.
    pub default_draft: SchemaDraft,
    pub formats: Formats,
    /// The `schemas:` section; `None` when the file has none.
    pub documents: Option<&'a SchemaDocuments>,
}

impl Schema {
    /// Compiles `schema` with the defaults: draft 2020-12 unless `$schema`
    /// names another, formats asserted, no shared documents.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        Self::compile_with(schema, &SchemaOptions::default())
    }

    /// Compiles `schema` under `options`: its draft chosen and meta-checked,
    /// its `$ref`s resolved against the registered documents only.
    pub fn compile_with(schema: &Value, options: &SchemaOptions<'_>) -> Result<Self, String> {
        let validator = options
            .configure(jsonschema::options(), schema)?
            .build(schema)
            .map_err(|e| describe_build_error(schema, options, &e))?;
        // Same options, same schema: it compiles exactly when the one above does.
        let fast = options
            .configure(jsonschema::options_for::<Sonic>(), schema)?
            .build(schema)
            .map_err(|e| describe_build_error(schema, options, &e))?;
        let plan = options.plan(schema);
        Ok(Self {
            validator,
            fast,
            plan,
            text: schema.to_string(),
            inlined: None,
        })
    }

    /// Whether a document parsed by [`crate::json::document::parse`] is
    /// valid; the same answer [`Schema::violations`] gives on its text.
    pub fn is_valid_fast(&self, instance: &sonic_rs::Value) -> bool {
        self.fast.is_valid(instance)
    }

    /// Judges the text `document` in one pass, without a tree
    /// ([`crate::json::stream`]); `Unsure` when the schema has no plan.
    pub fn check_streaming(&self, document: &[u8], max_depth: usize) -> Verdict {
        match &self.plan {
            Some(plan) => plan.check(document, max_depth),
            None => Verdict::Unsure,
        }
    }

    /// Whether [`Schema::check_streaming`] can judge documents at all.
    pub fn has_plan(&self) -> bool {
        self.plan.is_some()
    }

    /// Prepares [`Schema::inlined_text`] from `schema` (the one compiled,
    /// under the same options). Separate from compiling because only what an
    /// LLM sees needs it, and because the crate's inliner does not follow
    /// every base-URI change the validator does: a failure here leaves the
    /// schema valid, served as written only.
    pub fn inline_refs(
        &mut self,
        schema: &Value,
        options: &SchemaOptions<'_>,
    ) -> Result<(), String> {
        if !has_ref(schema) {
            return Ok(());
        }
        let inlined = options
            .configure(jsonschema::options(), schema)?
            .dereference(schema)
            .map_err(|e| format!("cannot inline its $refs: {e}"))?;
        self.inlined = Some(inlined.to_string());
        Ok(())
    }

    /// The schema as compact JSON text, as written (no `$ref` resolved).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The schema with every `$ref` replaced by its target (a recursive one
    /// stays), for consumers that cannot resolve `$ref`; `None` when the
    /// schema has no `$ref`.
    pub fn inlined_text(&self) -> Option<&str> {
        self.inlined.as_deref()
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

impl<'a> SchemaOptions<'a> {
    /// Applies these options to a validator builder for `schema`: its draft,
    /// format behaviour, the registered documents, and no fetching. Generic
    /// over the JSON representation the validator reads, so that a builder
    /// from `jsonschema::options_for::<F>()` gets the same treatment.
    pub fn configure<F: Json>(
        &self,
        options: ValidationOptions<'a, Arc<dyn Retrieve>, F>,
        schema: &Value,
    ) -> Result<ValidationOptions<'a, Arc<dyn Retrieve>, F>, String> {
        let draft = self.draft_of(schema)?;
        let mut options = options.with_retriever(NoFetching);
        if schema.get("$schema").is_none() {
            // `$schema` decides when present; otherwise the configured default.
            options = options.with_draft(self.default_draft.as_draft());
        }
        if let Some(documents) = self.documents {
            options = options.with_registry(&documents.registry);
        }
        match (self.formats, draft) {
            (Formats::Assert, _) => options = options.should_validate_formats(true),
            // Drafts 4 to 7 leave it to the implementation (the crate asserts);
            // annotate means annotate.
            (Formats::Annotate, Some(Draft::Draft4 | Draft::Draft6 | Draft::Draft7)) => {
                options = options.should_validate_formats(false)
            }
            // 2019-09 and 2020-12 annotate by default, and their meta-schema
            // may ask for assertion (the format-assertion vocabulary): the
            // crate's default honours both.
            (Formats::Annotate, _) => {}
        }
        Ok(options)
    }

    /// The streaming plan of `schema` (compiled under these options), or
    /// `None` when it uses what the plan does not reproduce, or its draft
    /// is a registered meta-schema.
    fn plan(&self, schema: &Value) -> Option<Plan> {
        let draft = self.draft_of(schema).ok()??;
        let ref_overrides = matches!(draft, Draft::Draft4 | Draft::Draft6 | Draft::Draft7);
        // The plan hands each leaf the root's `$schema`, so `configure`
        // reads it under the schema's own draft.
        let leaf = |scalar: &Value| -> Option<Leaf> {
            let options = self.configure(jsonschema::options(), scalar).ok()?;
            // The `regex` engine where the pattern needs nothing more: the
            // same translation and matches as fancy-regex, which delegates
            // such patterns to it, without its layer per match (perf: 2%
            // of a search call). Lookarounds and backreferences keep
            // fancy-regex.
            options
                .clone()
                .with_pattern_options(PatternOptions::regex())
                .build(scalar)
                .or_else(|_| options.build(scalar))
                .ok()
        };
        Plan::compile(schema, ref_overrides, &leaf)
    }

    /// The draft `schema` is read as: its `$schema`, else the default.
    /// `None` for a meta-schema registered under `schemas:` (the crate walks
    /// it to its draft). An unknown `$schema` is an error, not a guess.
    fn draft_of(&self, schema: &Value) -> Result<Option<Draft>, String> {
        let Some(declared) = schema.get("$schema") else {
            return Ok(Some(self.default_draft.as_draft()));
        };
        let Some(uri) = declared.as_str() else {
            return Err(format!(
                "$schema: must be a string (a meta-schema URI), not {declared}"
            ));
        };
        match Draft::from_schema_uri(uri) {
            Draft::Unknown
                if self
                    .documents
                    .is_some_and(|d| d.registry.contains_resource(uri.trim_end_matches('#'))) =>
            {
                Ok(None)
            }
            Draft::Unknown => Err(format!(
                "$schema: {uri:?} is not a draft the sidecar knows ({}) nor a meta-schema \
                 registered under `schemas:`",
                SchemaDraft::KNOWN_URIS.join(", ")
            )),
            draft => Ok(Some(draft)),
        }
    }
}

/// Whether `schema` holds a `$ref` anywhere (in a keyword position or not:
/// a false positive only costs an inlining that changes nothing).
fn has_ref(schema: &Value) -> bool {
    match schema {
        Value::Object(map) => map.contains_key("$ref") || map.values().any(has_ref),
        Value::Array(items) => items.iter().any(has_ref),
        _ => false,
    }
}

/// The message for a schema that does not compile, in the user's terms.
fn describe_build_error(
    schema: &Value,
    options: &SchemaOptions<'_>,
    e: &jsonschema::ValidationError<'_>,
) -> String {
    if let jsonschema::error::ValidationErrorKind::Referencing(inner) = e.kind() {
        let registered = options.documents.map_or(0, |d| d.uris.len());
        return format!(
            "cannot resolve a $ref: {inner}; remote fetching is off, so a referenced document \
             must be registered under `schemas:` ({registered} registered)"
        );
    }
    let at = e.instance_path().to_string();
    let draft = match schema.get("$schema").and_then(Value::as_str) {
        Some(uri) => format!("{uri:?}"),
        None => format!("draft {}", options.default_draft.name()),
    };
    if at.is_empty() {
        format!("not a valid JSON Schema ({draft}): {e}")
    } else {
        format!("not a valid JSON Schema ({draft}): {e} (at {at})")
    }
}

/// Refuses every fetch: schemas are resolved from what the config holds,
/// never from the network or the file system at validation time.
struct NoFetching;

impl Retrieve for NoFetching {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("{uri} is not registered (nothing is fetched)").into())
    }
}

/// The `schemas:` section: documents registered by URI, each meta-checked
/// against its own draft, so tools can `$ref` shared definitions.
pub struct SchemaDocuments {
    registry: Registry<'static>,
    uris: Vec<String>,
}

impl std::fmt::Debug for SchemaDocuments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaDocuments")
            .field("uris", &self.uris)
            .finish()
    }
}

impl SchemaDocuments {
    /// Registers `documents` (URI → schema). A document without `$schema`
    /// follows `default_draft`. Errors name the document's URI.
    pub fn new(
        documents: &BTreeMap<String, Value>,
        default_draft: SchemaDraft,
    ) -> Result<Self, (String, String)> {
        let mut builder = Registry::new().retriever(NoFetching);
        for (uri, document) in documents {
            let fail = |m: String| (uri.clone(), m);
            let parsed =
                url::Url::parse(uri).map_err(|e| fail(format!("must be an absolute URI ({e})")))?;
            if parsed.fragment().is_some_and(|f| !f.is_empty()) {
                return Err(fail("must not have a fragment".into()));
            }
            let options = SchemaOptions {
                default_draft,
                formats: Formats::Annotate,
                documents: None,
            };
            let draft = options.draft_of(document);
            // A document that names a custom meta-schema is checked by the
            // registry itself (the meta-schema must be registered too).
            if let Ok(Some(draft)) = draft {
                check_against_meta_schema(draft, document).map_err(fail)?;
            }
            let draft = draft.ok().flatten().unwrap_or(Draft::Unknown);
            let resource: Resource = if draft == Draft::Unknown {
                Resource::from_contents(document.clone())
            } else {
                draft.create_resource(document.clone())
            };
            builder = builder
                .add(uri, resource)
                .map_err(|e| fail(format!("must be an absolute URI ({e})")))?;
        }
        let registry = builder.prepare().map_err(|e| {
            (
                String::new(),
                format!(
                    "{e}; remote fetching is off, so every document a registered one refers \
                     to must be registered too"
                ),
            )
        })?;
        Ok(Self {
            registry,
            uris: documents.keys().cloned().collect(),
        })
    }

    /// The registered URIs, sorted.
    pub fn uris(&self) -> &[String] {
        &self.uris
    }
}

fn check_against_meta_schema(draft: Draft, document: &Value) -> Result<(), String> {
    let result = match draft {
        Draft::Draft4 => jsonschema::draft4::meta::validate(document),
        Draft::Draft6 => jsonschema::draft6::meta::validate(document),
        Draft::Draft7 => jsonschema::draft7::meta::validate(document),
        Draft::Draft201909 => jsonschema::draft201909::meta::validate(document),
        _ => jsonschema::draft202012::meta::validate(document),
    };
    result.map_err(|e| format!("not a valid JSON Schema: {e} (at {})", e.instance_path()))
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

    fn with(default_draft: SchemaDraft, formats: Formats) -> SchemaOptions<'static> {
        SchemaOptions {
            default_draft,
            formats,
            documents: None,
        }
    }

    #[test]
    fn dollar_schema_picks_the_draft_and_its_meta_schema() {
        // Draft-07 array-form items and draft-04 boolean exclusiveMaximum are
        // valid in their own drafts, and mean what those drafts say.
        let items = json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "items": [{"type": "integer"}, {"type": "string"}]
        });
        let s = Schema::compile(&items).unwrap();
        assert!(s.violations(&json!([1, "a", null])).is_empty());
        assert!(!s.violations(&json!(["a"])).is_empty());
        let max = json!({
            "$schema": "http://json-schema.org/draft-04/schema#",
            "maximum": 3, "exclusiveMaximum": true
        });
        let s = Schema::compile(&max).unwrap();
        assert!(!s.violations(&json!(3)).is_empty());
        assert!(s.violations(&json!(2)).is_empty());
        // The same keyword is invalid under the 2020-12 meta-schema.
        let e = Schema::compile(&json!({"maximum": 3, "exclusiveMaximum": true})).unwrap_err();
        assert!(e.contains("2020-12"), "{e}");
    }

    #[test]
    fn the_default_draft_applies_only_without_dollar_schema() {
        let tuple = json!({"items": [{"type": "integer"}]});
        assert!(
            Schema::compile(&tuple).is_err(),
            "2020-12 items is a schema"
        );
        let s = Schema::compile_with(&tuple, &with(SchemaDraft::Draft7, Formats::Assert)).unwrap();
        assert!(!s.violations(&json!(["x"])).is_empty());
        // An explicit $schema wins over the default.
        let mut explicit = tuple.clone();
        explicit["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        assert!(
            Schema::compile_with(&explicit, &with(SchemaDraft::Draft7, Formats::Assert)).is_err()
        );
    }

    #[test]
    fn an_unknown_dollar_schema_is_refused_by_name() {
        let e = Schema::compile(&json!({"$schema": "http://example.com/mine"})).unwrap_err();
        assert!(
            e.contains("$schema") && e.contains("http://example.com/mine"),
            "{e}"
        );
        let e = Schema::compile(&json!({"$schema": 7})).unwrap_err();
        assert!(e.contains("must be a string"), "{e}");
    }

    #[test]
    fn annotate_leaves_formats_unchecked_and_assert_checks_idn() {
        let date = json!({"type": "string", "format": "date"});
        for draft in [SchemaDraft::Draft7, SchemaDraft::Draft202012] {
            let s = Schema::compile_with(&date, &with(draft, Formats::Annotate)).unwrap();
            assert!(s.violations(&json!("yesterday")).is_empty(), "{draft:?}");
            let s = Schema::compile_with(&date, &with(draft, Formats::Assert)).unwrap();
            assert!(!s.violations(&json!("yesterday")).is_empty(), "{draft:?}");
        }
        // idn-hostname needs the crate's idna support, compiled in.
        let idn = Schema::compile(&json!({"format": "idn-hostname"})).unwrap();
        assert!(idn.violations(&json!("실례.테스트")).is_empty());
        assert!(!idn.violations(&json!("〮실례.테스트")).is_empty());
    }

    #[test]
    fn registered_documents_answer_refs_and_nothing_is_fetched() {
        let docs = BTreeMap::from([(
            "https://schemas.example.com/geo.json".to_owned(),
            json!({"$defs": {"lat": {"type": "number", "minimum": -90, "maximum": 90}}}),
        )]);
        let documents = SchemaDocuments::new(&docs, SchemaDraft::Draft202012).unwrap();
        let options = SchemaOptions {
            documents: Some(&documents),
            ..Default::default()
        };
        let schema = json!({"$ref": "https://schemas.example.com/geo.json#/$defs/lat"});
        let mut s = Schema::compile_with(&schema, &options).unwrap();
        s.inline_refs(&schema, &options).unwrap();
        assert!(s.violations(&json!(45)).is_empty());
        assert!(!s.violations(&json!(91)).is_empty());
        assert!(
            s.text().contains("geo.json#/$defs/lat"),
            "served as written"
        );

        let missing = json!({"$ref": "https://schemas.example.com/other.json"});
        let e = Schema::compile_with(&missing, &options).unwrap_err();
        assert!(e.contains("other.json") && e.contains("schemas:"), "{e}");
        let e = Schema::compile(&schema).unwrap_err();
        assert!(e.contains("geo.json"), "{e}");
    }

    #[test]
    fn odd_uses_of_registered_uris_are_errors_or_work_never_panics() {
        let docs = BTreeMap::from([(
            "https://schemas.example.com/geo.json".to_owned(),
            json!({"$defs": {"lat": {"type": "number"}}}),
        )]);
        let documents = SchemaDocuments::new(&docs, SchemaDraft::Draft202012).unwrap();
        let options = SchemaOptions {
            documents: Some(&documents),
            ..Default::default()
        };
        // A tool schema claiming a registered document's URI as its own.
        let same_id = json!({"$id": "https://schemas.example.com/geo.json", "type": "object"});
        let _ = Schema::compile_with(&same_id, &options);
        // A registered document that is not a meta-schema, named as $schema.
        let not_meta = json!({"$schema": "https://schemas.example.com/geo.json", "type": "object"});
        let _ = Schema::compile_with(&not_meta, &options);
        // A self-referencing document, and one that refers in a circle.
        let circle = BTreeMap::from([
            ("urn:a".to_owned(), json!({"$ref": "urn:b"})),
            ("urn:b".to_owned(), json!({"$ref": "urn:a"})),
        ]);
        if let Ok(documents) = SchemaDocuments::new(&circle, SchemaDraft::Draft202012) {
            let options = SchemaOptions {
                documents: Some(&documents),
                ..Default::default()
            };
            let mut s = match Schema::compile_with(&json!({"$ref": "urn:a"}), &options) {
                Ok(s) => s,
                Err(_) => return,
            };
            let _ = s.inline_refs(&json!({"$ref": "urn:a"}), &options);
        }
    }

    #[test]
    fn registered_documents_are_checked_against_their_draft() {
        let bad = BTreeMap::from([(
            "https://schemas.example.com/bad.json".to_owned(),
            json!({"type": "strung"}),
        )]);
        let (uri, e) = SchemaDocuments::new(&bad, SchemaDraft::Draft202012).unwrap_err();
        assert_eq!(uri, "https://schemas.example.com/bad.json");
        assert!(e.contains("not a valid JSON Schema"), "{e}");
        // Draft-04 boolean exclusiveMaximum is fine when the file's default is 4.
        let old = BTreeMap::from([(
            "https://schemas.example.com/old.json".to_owned(),
            json!({"maximum": 3, "exclusiveMaximum": true}),
        )]);
        assert!(SchemaDocuments::new(&old, SchemaDraft::Draft4).is_ok());
        assert!(SchemaDocuments::new(&old, SchemaDraft::Draft202012).is_err());
        let relative = BTreeMap::from([("geo.json".to_owned(), json!({}))]);
        assert!(SchemaDocuments::new(&relative, SchemaDraft::Draft202012).is_err());
    }

    #[test]
    fn big_integers_are_compared_exactly() {
        let s = Schema::compile(
            &serde_json::from_str(r#"{"minimum": -18446744073709551615}"#).unwrap(),
        )
        .unwrap();
        let n = |t: &str| serde_json::from_str::<Value>(t).unwrap();
        assert!(s.violations(&n("-18446744073709551615")).is_empty());
        assert!(!s.violations(&n("-18446744073709551616")).is_empty());
        let s = Schema::compile(&n(
            r#"{"maximum": 98249283749234923498293171823948729348710298301928331}"#,
        ))
        .unwrap();
        assert!(!s
            .violations(&n("98249283749234923498293171823948729348710298301928332"))
            .is_empty());
        assert!(s
            .violations(&n("98249283749234923498293171823948729348710298301928331"))
            .is_empty());
    }
}
