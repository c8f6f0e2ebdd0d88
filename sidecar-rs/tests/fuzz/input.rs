//! Target (b): what arguments and responses go through: bounds → parse →
//! validate → select, with the sidecar's own functions (`json::exceeds_depth`,
//! `serde_json`, `Schema::compile`/`violations`, `json::check_pointers`,
//! `json::select`), in the order `call::input` and `call::response` apply them.
//!
//! Properties: the response hot path (`json::document`, sonic-rs) and the
//! exact path (serde_json) agree on every document either accepts: same
//! tree, same validity, same `select` output; the depth scan agrees with the parsed document's depth (the
//! oracle), so nothing deeper than the limit reaches the parser and nothing
//! within it is refused; violations are at most 32 and each points into the
//! document; `select` returns exactly the pointed values; no panic.
//!
//! Seeds are JSON files `{"schema": ..., "instances": [...], "select": [...]}`,
//! many from the JSON-Schema-Test-Suite (draft 2020-12) and the demo tools.

use proptest::prelude::*;
use proptest::sample::select;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sidecar::config::schema::Schema;
use sidecar::json;
use sidecar::json::stream::{Plan, Verdict};

use crate::corpus;
use crate::strategies::{apply_edits, depth, edits, json_scalar, json_value, nasty_string};

const KEYS: &[&str] = &["a", "b", "city", "items", "0", "", "~", "/", "a/b", "~1"];

const TYPES: &[&str] = &[
    "null", "boolean", "object", "array", "number", "string", "integer", "strung",
];

const FORMATS: &[&str] = &[
    "date",
    "date-time",
    "time",
    "duration",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "ipv4",
    "ipv6",
    "uri",
    "uri-reference",
    "iri",
    "iri-reference",
    "uri-template",
    "uuid",
    "json-pointer",
    "relative-json-pointer",
    "regex",
    "unknown-format",
];

const PATTERNS: &[&str] = &[
    "^a+$",
    "^[a-z]{2,8}$",
    "(a+)+$",
    "(a|aa)+$",
    "^(?!x)",
    "\\p{L}+",
    "\\d{3}",
    "[",
    "a{1000}",
    "^\\w+@\\w+\\.\\w+$",
    "(?i)ABC",
    "\\Z",
    "",
];

/// Schema keywords with a value, combined into JSON Schemas by [`schema`].
fn keyword(inner: BoxedStrategy<Value>) -> impl Strategy<Value = (String, Value)> {
    let k = |name: &'static str| Just(name.to_owned());
    let number = || json_scalar().prop_filter("a number", Value::is_number);
    let count = || prop_oneof![0u64..8, Just(u64::MAX)].prop_map(Value::from);
    prop_oneof![
        (k("type"), select(TYPES).prop_map(Value::from)),
        (
            k("type"),
            prop::collection::vec(select(TYPES).prop_map(Value::from), 0..3).prop_map(Value::Array)
        ),
        (
            select(&["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"][..])
                .prop_map(str::to_owned),
            number()
        ),
        (
            k("multipleOf"),
            select(&[0.5, 0.01, 1e-300, 3.0, 1e308, 0.1, 7.5][..]).prop_map(Value::from)
        ),
        (
            select(
                &[
                    "minLength",
                    "maxLength",
                    "minItems",
                    "maxItems",
                    "minProperties",
                    "maxProperties",
                    "minContains",
                    "maxContains"
                ][..]
            )
            .prop_map(str::to_owned),
            count()
        ),
        (k("pattern"), select(PATTERNS).prop_map(Value::from)),
        (k("format"), select(FORMATS).prop_map(Value::from)),
        (k("const"), json_value(KEYS)),
        (
            k("enum"),
            prop::collection::vec(json_value(KEYS), 0..4).prop_map(Value::Array)
        ),
        (k("uniqueItems"), any::<bool>().prop_map(Value::Bool)),
        (
            k("required"),
            prop::collection::vec(select(KEYS).prop_map(Value::from), 0..3).prop_map(Value::Array)
        ),
        (
            k("properties"),
            prop::collection::btree_map(select(KEYS).prop_map(str::to_owned), inner.clone(), 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        ),
        (
            k("patternProperties"),
            prop::collection::btree_map(
                select(PATTERNS).prop_map(str::to_owned),
                inner.clone(),
                0..2
            )
            .prop_map(|m| Value::Object(m.into_iter().collect()))
        ),
        (
            select(
                &[
                    "items",
                    "additionalProperties",
                    "unevaluatedProperties",
                    "unevaluatedItems",
                    "contains",
                    "not",
                    "if",
                    "then",
                    "else",
                    "propertyNames"
                ][..]
            )
            .prop_map(str::to_owned),
            inner.clone()
        ),
        (
            select(&["allOf", "anyOf", "oneOf", "prefixItems"][..]).prop_map(str::to_owned),
            prop::collection::vec(inner.clone(), 1..3).prop_map(Value::Array)
        ),
        (
            k("dependentSchemas"),
            prop::collection::btree_map(select(KEYS).prop_map(str::to_owned), inner, 0..2)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        ),
        (
            k("dependentRequired"),
            Just(json!({"a": ["b"], "city": []}))
        ),
        (
            k("$ref"),
            select(
                &[
                    "#",
                    "#/$defs/d",
                    "#/$defs/missing",
                    "#/properties/a",
                    "http://example.com/s.json",
                    "#x",
                    "urn:x"
                ][..]
            )
            .prop_map(Value::from)
        ),
        (k("$dynamicRef"), Just(Value::from("#meta"))),
        (k("$anchor"), Just(Value::from("x"))),
        (
            k("$schema"),
            select(
                &[
                    "https://json-schema.org/draft/2020-12/schema",
                    "http://json-schema.org/draft-07/schema#",
                    "nonsense"
                ][..]
            )
            .prop_map(Value::from)
        ),
        (nasty_string(), json_value(KEYS)),
    ]
}

/// A JSON Schema: `true`/`false`, or an object of keywords, nested.
fn schema() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(json!(true)),
        Just(json!(false)),
        Just(json!({})),
        select(TYPES).prop_map(|t| json!({ "type": t })),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop::collection::vec(keyword(inner), 1..5)
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>()))
    })
    .boxed()
}

/// A root schema, sometimes with `$defs` for its references to land on.
fn root_schema() -> impl Strategy<Value = Value> {
    (schema(), prop::option::weighted(0.3, schema())).prop_map(|(mut root, defs)| {
        if let (Value::Object(map), Some(d)) = (&mut root, defs) {
            map.insert("$defs".into(), json!({ "d": d }));
        }
        root
    })
}

/// A document as the sidecar receives it: JSON text, pretty or compact,
/// sometimes edited into invalid JSON, sometimes nested very deep.
fn document() -> impl Strategy<Value = Vec<u8>> {
    let text = || {
        (json_value(KEYS), any::<bool>()).prop_map(|(v, pretty)| {
            if pretty {
                serde_json::to_string_pretty(&v).expect("a Value serializes")
            } else {
                v.to_string()
            }
        })
    };
    prop_oneof![
        6 => text().prop_map(String::into_bytes),
        2 => (text(), edits(&["[", "]", "{", "}", "\"", "\\", ",", ":", "\\u0000", "\\ud800", "1e999", "-", "[[[[", "]]]]"]))
            .prop_map(|(t, e)| apply_edits(&t, &e).into_bytes()),
        1 => (1usize..200, select(&["[", "{\"a\":", "[{\"\\\\\":"][..]), any::<bool>()).prop_map(|(n, open, close)| {
            let mut s = open.repeat(n);
            if close {
                s.push('1');
                for _ in 0..n {
                    s.push(if open.starts_with('[') { ']' } else { '}' });
                }
            }
            s.into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
        1 => repeated_keys(),
    ]
}

fn pointers() -> impl Strategy<Value = Vec<String>> {
    let pointer = prop_oneof![
        4 => prop::collection::vec(select(KEYS), 0..4).prop_map(|p| p.iter().map(|k| format!("/{}", k.replace('~', "~0").replace('/', "~1"))).collect::<String>()),
        1 => select(&["", "/", "//", "/~", "/~2", "a", "/0/0/0", "/-", "/01", "/18446744073709551616"][..]).prop_map(str::to_owned),
        1 => nasty_string(),
    ];
    prop::collection::vec(pointer, 0..4)
}

#[derive(Debug, Clone)]
pub struct Case {
    schema: Value,
    documents: Vec<Vec<u8>>,
    select: Vec<String>,
    max_depth: usize,
}

fn case() -> impl Strategy<Value = Case> {
    (
        root_schema(),
        prop::collection::vec(document(), 1..4),
        pointers(),
        prop_oneof![Just(64usize), 1usize..130],
    )
        .prop_map(|(schema, documents, select, max_depth)| Case {
            schema,
            documents,
            select,
            max_depth,
        })
}

/// serde_json's own nesting limit; deeper documents fail to parse anyway.
const SERDE_RECURSION_LIMIT: usize = 128;

fn check(case: &Case) -> Result<(), TestCaseError> {
    let schema = Schema::compile(&case.schema).ok();
    let pointers_ok = json::check_pointers(&case.select).is_ok();
    for bytes in &case.documents {
        let too_deep = json::exceeds_depth(bytes, case.max_depth);
        let parsed = serde_json::from_slice::<Value>(bytes);
        if case.max_depth <= json::document::SERDE_DEPTH_LIMIT {
            streaming_agrees(schema.as_ref(), bytes, case.max_depth, &parsed, too_deep)?;
        }
        let fast = (case.max_depth <= json::document::SERDE_DEPTH_LIMIT && !too_deep)
            .then(|| json::document::parse(bytes))
            .flatten();
        let value = match parsed {
            Ok(value) => value,
            Err(e) => {
                prop_assert!(
                    fast.is_none(),
                    "the fast path accepts what serde_json refuses ({e})"
                );
                // The scan passed it, so the parser must not be the one to
                // find it too deep (that would mean the scan undercounts).
                if !too_deep && case.max_depth < SERDE_RECURSION_LIMIT {
                    prop_assert!(
                        !e.to_string().contains("recursion limit"),
                        "depth scan passed a document the parser finds too deep"
                    );
                }
                continue;
            }
        };
        // The text's depth: serde_json keeps only the last value of a key
        // given twice, so its tree can be shallower than the text; sonic-rs
        // keeps every member.
        let d = sonic_rs::from_slice::<sonic_rs::Value>(bytes)
            .map_or_else(|_| depth(&value), |all| sonic_depth(&all));
        prop_assert_eq!(
            too_deep,
            d > case.max_depth,
            "exceeds_depth({}) disagrees with the document's depth {}",
            case.max_depth,
            d
        );
        if too_deep {
            continue; // the sidecar stops here
        }
        if let Some(fast) = &fast {
            same_on_both_paths(fast, &value, schema.as_ref(), &case.select)?;
        }
        if let Some(schema) = &schema {
            let violations = schema.violations(&value);
            prop_assert!(violations.len() <= 32, "{} violations", violations.len());
            for v in &violations {
                prop_assert!(!v.message.is_empty());
                prop_assert!(
                    value.pointer(&v.instance_path).is_some(),
                    "violation path {:?} is not in the document",
                    v.instance_path
                );
            }
        }
        if pointers_ok {
            let picked = json::select(&value, &case.select);
            let map = picked.as_object().expect("select returns an object");
            prop_assert!(map.len() <= case.select.len());
            for p in &case.select {
                let expected = value.pointer(p).cloned().unwrap_or(Value::Null);
                prop_assert_eq!(map.get(p), Some(&expected));
            }
            prop_assert!(serde_json::to_vec(&picked).is_ok());
        }
    }
    Ok(())
}

/// The differential property of the streaming hot path (`json::stream`): it
/// reads as JSON exactly what serde_json reads (within the depth limit), its
/// "valid" is the exact path's, and its "invalid" never contradicts it.
fn streaming_agrees(
    schema: Option<&Schema>,
    bytes: &[u8],
    max_depth: usize,
    parsed: &Result<Value, serde_json::Error>,
    too_deep: bool,
) -> Result<(), TestCaseError> {
    let is_json = parsed.is_ok() && !too_deep;
    let any = Plan::any().check(bytes, max_depth);
    prop_assert_ne!(
        any,
        Verdict::Invalid,
        "nothing is invalid against no schema"
    );
    prop_assert_eq!(
        any == Verdict::Valid,
        is_json,
        "the streaming reader and serde_json + the depth scan disagree on {:?}",
        String::from_utf8_lossy(bytes)
    );
    let Some(schema) = schema else {
        return Ok(());
    };
    let verdict = schema.check_streaming(bytes, max_depth);
    let exact_valid = match parsed {
        Ok(value) if !too_deep => schema.violations(value).is_empty(),
        _ => false,
    };
    match verdict {
        Verdict::Valid => prop_assert!(exact_valid, "streaming says valid, the exact path not"),
        // serde_json keeps the last value under a repeated name; the walk
        // judged every one (`Verdict::Invalid`).
        Verdict::Invalid => prop_assert!(
            !exact_valid || repeats_a_name(bytes),
            "streaming says invalid, the exact path valid"
        ),
        Verdict::Unsure => {}
    }
    Ok(())
}

/// Whether an object in `document` (JSON) repeats a member name.
fn repeats_a_name(document: &[u8]) -> bool {
    serde_json::from_slice::<Repeats>(document).is_ok_and(|r| r.0)
}

/// A JSON value read only for whether any of its objects repeats a name.
struct Repeats(bool);

impl<'de> Deserialize<'de> for Repeats {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RepeatsVisitor)
    }
}

struct RepeatsVisitor;

impl<'de> serde::de::Visitor<'de> for RepeatsVisitor {
    type Value = Repeats;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Repeats, E> {
        Ok(Repeats(false))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Repeats, E> {
        Ok(Repeats(false))
    }

    fn visit_u64<E>(self, _: u64) -> Result<Repeats, E> {
        Ok(Repeats(false))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Repeats, E> {
        Ok(Repeats(false))
    }

    fn visit_str<E>(self, _: &str) -> Result<Repeats, E> {
        Ok(Repeats(false))
    }

    fn visit_unit<E>(self) -> Result<Repeats, E> {
        Ok(Repeats(false))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Repeats, A::Error> {
        let mut repeats = false;
        while let Some(Repeats(inner)) = seq.next_element()? {
            repeats |= inner;
        }
        Ok(Repeats(repeats))
    }

    // Also how serde_json's `arbitrary_precision` hands over a number: a
    // one-member map, which repeats nothing.
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Repeats, A::Error> {
        let mut names = std::collections::HashSet::new();
        let mut repeats = false;
        while let Some(name) = map.next_key::<String>()? {
            repeats |= !names.insert(name);
            repeats |= map.next_value::<Repeats>()?.0;
        }
        Ok(Repeats(repeats))
    }
}

/// The differential property of the response hot path: a document sonic-rs
/// parsed is the document serde_json parsed, valid on one road exactly when
/// valid on the other, and selected from to the same bytes.
pub fn same_on_both_paths(
    fast: &sonic_rs::Value,
    exact: &Value,
    schema: Option<&Schema>,
    select: &[String],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(&json::sonic::to_serde(fast), exact, "the two parses differ");
    if let Some(schema) = schema {
        let violations = schema.violations(exact);
        prop_assert_eq!(
            schema.is_valid_fast(fast),
            violations.is_empty(),
            "the fast path disagrees on validity; exact violations: {:?}",
            violations
        );
    }
    if json::check_pointers(select).is_ok() {
        prop_assert_eq!(
            serde_json::to_vec(&json::document::select(fast, select)).expect("encodes"),
            serde_json::to_vec(&json::select(exact, select)).expect("encodes"),
            "select differs"
        );
    }
    Ok(())
}

fn sonic_depth(value: &sonic_rs::Value) -> usize {
    use sonic_rs::JsonContainerTrait;
    if let Some(array) = value.as_array() {
        1 + array.iter().map(sonic_depth).max().unwrap_or(0)
    } else if let Some(object) = value.as_object() {
        1 + object
            .iter()
            .map(|(_, v)| sonic_depth(v))
            .max()
            .unwrap_or(0)
    } else {
        0
    }
}

/// Objects that repeat a key, which serde_json reads as their last value.
fn repeated_keys() -> impl Strategy<Value = Vec<u8>> {
    (
        select(KEYS),
        json_value(KEYS),
        json_value(KEYS),
        any::<bool>(),
    )
        .prop_map(|(key, first, last, nested)| {
            let key = serde_json::to_string(key).expect("a key encodes");
            let object = format!("{{{key}: {first}, \"x\": 1, {key}: {last}}}");
            let text = if nested {
                format!("{{\"a\": [{object}]}}")
            } else {
                object
            };
            text.into_bytes()
        })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Seed {
    schema: Value,
    instances: Vec<Value>,
    #[serde(default)]
    select: Vec<String>,
}

#[test]
fn arguments_and_responses() {
    // The sidecar's own stack for the same work (`main.rs`: unoptimised
    // sonic-rs needs megabytes for a document nested 127 deep).
    let run = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(arguments_and_responses_on_this_thread)
        .expect("a thread starts");
    if let Err(panic) = run.join() {
        std::panic::resume_unwind(panic);
    }
}

fn arguments_and_responses_on_this_thread() {
    let seeds: Vec<(String, Case)> = corpus::load("input")
        .into_iter()
        .map(|(name, text)| {
            let seed: Seed =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("input seed {name}: {e}"));
            let case = Case {
                schema: seed.schema,
                documents: seed
                    .instances
                    .iter()
                    .map(|v| v.to_string().into_bytes())
                    .collect(),
                select: seed.select,
                max_depth: 64,
            };
            (name, case)
        })
        .collect();
    let picks: Vec<Case> = seeds.iter().map(|(_, c)| c.clone()).collect();
    let strategy = prop_oneof![
        3 => case(),
        // A seed's schema against generated documents.
        2 => (select(picks.clone()), prop::collection::vec(document(), 1..4), pointers())
            .prop_map(|(mut c, docs, ptrs)| {
                c.documents.extend(docs);
                c.select = ptrs;
                c
            }),
        // A seed's documents, edited.
        1 => (select(picks), edits(&["[", "]", "{", "}", "\"", "\\", ",", "null", "1e309", "-0"]))
            .prop_map(|(mut c, e)| {
                c.documents = c
                    .documents
                    .iter()
                    .map(|d| apply_edits(&String::from_utf8_lossy(d), &e).into_bytes())
                    .collect();
                c
            }),
    ];
    crate::fuzz("input", 1024, &seeds, strategy, check);
}
