//! Validation while reading: a response body checked against its tool's
//! output schema in one pass over the bytes, with no tree built.
//!
//! The schema is compiled once into a [`Plan`] (`plan.rs`); [`Plan::check`]
//! then walks the document with a strict reader (`lexer.rs`), checking each
//! value as it is read and the nesting depth on the way (`walk.rs`). The
//! answer is [`Verdict::Valid`] only when it is certain: the document is
//! JSON serde_json accepts, nests no deeper than allowed, and jsonschema
//! would find it valid. Anything else (invalid, or a case the walk does not
//! judge exactly) sends the body down the tree paths, which decide and word
//! the error as they always have (`call/response.rs`).

mod lexer;
mod pattern;
mod plan;
mod walk;

pub use plan::{Leaf, Plan};

/// Why a walk stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The document is certainly invalid against the schema.
    Invalid,
    /// Not judged here: not JSON, too deep, or a value only the tree
    /// paths can judge exactly.
    Unsure,
}

/// The outcome of [`Plan::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid JSON, within the depth limit, valid against the schema.
    Valid,
    /// A value that fails the schema was read (what follows it was not:
    /// the body may not even be JSON). The exact path words the error.
    /// Certain, except where an object repeats a name: serde_json keeps
    /// only the last value under a name, so an earlier one that failed may
    /// not count (the walk stops at the first failure, before it could see
    /// the repeat). The exact path settles it, as it does every `Invalid`.
    Invalid,
    /// Not decided here; the tree paths decide.
    Unsure,
}

impl Plan {
    /// The plan of a tool without an output schema: any JSON value.
    pub fn any() -> Plan {
        Plan {
            nodes: vec![plan::Node::Any, plan::Node::Never],
            root: plan::ANY,
        }
    }

    /// Judges `document` (nesting at most `max_depth` levels) in one pass.
    pub fn check(&self, document: &[u8], max_depth: usize) -> Verdict {
        // Not UTF-8: serde_json refuses it, and the exact path says why.
        let Some(reader) = lexer::Reader::new(document) else {
            return Verdict::Unsure;
        };
        let mut walk = walk::Walk::new(self, reader, max_depth);
        match walk.document() {
            Ok(()) => Verdict::Valid,
            Err(Stop::Invalid) => Verdict::Invalid,
            Err(Stop::Unsure) => Verdict::Unsure,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::schema::Schema;

    fn verdict(schema: serde_json::Value, document: &str) -> Verdict {
        Schema::compile(&schema)
            .expect("compiles")
            .check_streaming(document.as_bytes(), 64)
    }

    #[test]
    fn the_reader_refuses_what_serde_json_refuses() {
        for bad in [
            "",
            " ",
            "[1,]",
            "{\"a\":1,}",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "[1 2]",
            "\"\\x\"",
            "\"\\ud800\"",
            "\"\\udc00\\ud800\"",
            "\"a\u{1}b\"",
            "\"\\u12\"",
            "nul",
            "truee",
            "[",
            "{\"a\"}",
            "{1:2}",
            "\"abc",
            "1 2",
            "NaN",
            "\u{feff}1",
        ] {
            assert!(
                serde_json::from_str::<serde_json::Value>(bad).is_err(),
                "{bad:?}"
            );
            assert_eq!(
                Plan::any().check(bad.as_bytes(), 64),
                Verdict::Unsure,
                "{bad:?}"
            );
        }
        assert_eq!(Plan::any().check(b"\"\xff\"", 64), Verdict::Unsure);
        for good in [
            "0",
            "-0.0e+0",
            " [ ] ",
            "{\"\\ud83d\\ude00\":\"\\u00e9\\n\"}",
            "\"é\"",
            "[[[]]]",
        ] {
            assert_eq!(
                Plan::any().check(good.as_bytes(), 64),
                Verdict::Valid,
                "{good:?}"
            );
        }
        assert_eq!(Plan::any().check(b"[[[]]]", 2), Verdict::Unsure);
        assert_eq!(Plan::any().check(b"[[[]]]", 3), Verdict::Valid);
    }

    #[test]
    fn the_walk_judges_the_planned_keywords() {
        let schema = json!({
            "type": "object",
            "required": ["id", "tags"],
            "additionalProperties": false,
            "properties": {
                "id": {"type": "string", "pattern": "^doc-[0-9]+$"},
                "name": {"type": "string", "maxLength": 3},
                "tags": {"type": "array", "maxItems": 2, "uniqueItems": true, "items": {"enum": ["a", "é", true]}},
                "n": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}
            }
        });
        for (document, expected) in [
            (r#"{"id": "doc-1", "tags": []}"#, Verdict::Valid),
            (
                r#"{"id": "doc-1", "tags": ["\u00e9", true], "name": "ééé", "n": null}"#,
                Verdict::Valid,
            ),
            (r#"{"id": "doc-1", "tags": [], "n": 2}"#, Verdict::Valid),
            (r#"{"id": "doc-1", "tags": [], "n": 0}"#, Verdict::Invalid),
            (r#"{"id": "doc-1", "tags": [], "n": 1.5}"#, Verdict::Unsure),
            (r#"{"id": "doc-1", "tags": [], "n": "1"}"#, Verdict::Invalid),
            (r#"{"id": "doc-x", "tags": []}"#, Verdict::Invalid),
            (r#"{"id": "doc-1"}"#, Verdict::Invalid),
            (
                r#"{"id": "doc-1", "tags": [], "other": 1}"#,
                Verdict::Invalid,
            ),
            (
                r#"{"id": "doc-1", "tags": ["a", "\u0061"]}"#,
                Verdict::Invalid,
            ),
            (
                r#"{"id": "doc-1", "tags": ["a", "é", "a"]}"#,
                Verdict::Invalid,
            ),
            (
                r#"{"id": "doc-1", "tags": [], "name": "éééé"}"#,
                Verdict::Invalid,
            ),
            (r#"{"id": "doc-1", "tags": [] "#, Verdict::Unsure),
            // serde_json keeps the last of a repeated name: `Invalid` is
            // then only a hint, and the exact path judges.
            (
                r#"{"id": "doc-x", "tags": [], "id": "doc-1"}"#,
                Verdict::Invalid,
            ),
            (
                r#"{"id": "doc-1", "tags": [], "id": "doc-2"}"#,
                Verdict::Valid,
            ),
        ] {
            assert_eq!(verdict(schema.clone(), document), expected, "{document}");
        }
    }

    /// Members are read with one comparison when they come as the plan
    /// expects (`Checks::successors`, learned from earlier documents):
    /// one plan, documents in every order of their members and with names
    /// spelled every way, judged as jsonschema judges them, whatever the
    /// plan learned from the documents before.
    #[test]
    fn members_are_judged_alike_in_any_order_and_spelling() {
        let long = "a_member_name_longer_than_sixteen_bytes";
        let schema = json!({
            "type": "object",
            "required": ["id", "idx"],
            "additionalProperties": {"type": "integer"},
            "properties": {
                "id": {"type": "string", "maxLength": 3},
                "idx": {"type": "integer", "minimum": 1},
                "a\"q": {"type": "boolean"},
                "é": {"type": "null"},
                long: {"type": "string"}
            }
        });
        let validator = jsonschema::validator_for(&schema).expect("compiles");
        let compiled = Schema::compile(&schema).expect("compiles");
        assert!(compiled.has_plan());
        let (long_string, long_number) = (format!(r#""{long}":"x""#), format!(r#""{long}":1"#));
        // Each member as a document may spell it, valid or not.
        let members = [
            vec![
                r#""id":"abc""#,
                r#""id" : "abcd""#,
                r#""\u0069d":"ab""#,
                r#""id":7"#,
            ],
            vec![
                r#""idx":2"#,
                r#""idx":0"#,
                r#""id\u0078":"2""#,
                "\n\"idx\"\t:\r5",
            ],
            vec![r#""a\"q":true"#, r#""a\u0022q":1"#],
            vec![r#""é":null"#, r#""\u00e9":false"#],
            vec![long_string.as_str(), long_number.as_str()],
            vec![r#""other":1"#, r#""other":"x""#, r#""i":1"#],
        ];
        let mut checked = 0;
        for pass in 0..2 {
            for first in 0..members.len() {
                for spelling in 0..4 {
                    // Rotations of the members, each a different spelling.
                    let document = (0..members.len())
                        .map(|k| {
                            let options = &members[(first + k) % members.len()];
                            options[(spelling + k + pass) % options.len()]
                        })
                        .collect::<Vec<_>>()
                        .join(",");
                    for document in [format!("{{{document}}}"), format!(" {{ {document} }} ")] {
                        let value: serde_json::Value =
                            serde_json::from_str(&document).expect("JSON");
                        let expected = if validator.is_valid(&value) {
                            Verdict::Valid
                        } else {
                            Verdict::Invalid
                        };
                        assert_eq!(
                            compiled.check_streaming(document.as_bytes(), 64),
                            expected,
                            "{document}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert_eq!(checked, 2 * members.len() * 4 * 2);
        // The document's last bytes: shorter than one comparison.
        for (document, expected) in [
            (r#"{"idx":1,"id":"a"}"#, Verdict::Valid),
            (r#"{"id":"a","idx":1}"#, Verdict::Valid),
            (r#"{"id":"a","idx":0}"#, Verdict::Invalid),
            (r#"{"id":"a","idx":1,"i":1}"#, Verdict::Valid),
            (r#"{"id":"a","idx":1,"id":"#, Verdict::Unsure),
        ] {
            assert_eq!(
                compiled.check_streaming(document.as_bytes(), 64),
                expected,
                "{document}"
            );
        }
    }

    #[test]
    fn escaped_strings_are_measured_and_matched_as_decoded() {
        // Lengths are counted from the raw text less what its escapes add;
        // names and enum members are compared decoded.
        let schema = json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "é": {"type": "string", "minLength": 2, "maxLength": 2},
                "k": {"enum": ["a\"b"]},
                "skipped": true
            }
        });
        for (document, expected) in [
            (r#"{"\u00e9": "ab"}"#, Verdict::Valid),
            (r#"{"é": "\ud83d\ude00\n"}"#, Verdict::Valid),
            (r#"{"é": "\\\/"}"#, Verdict::Valid),
            (r#"{"é": "é\u00e9"}"#, Verdict::Valid),
            (r#"{"é": "\ud83d\ude00"}"#, Verdict::Invalid),
            (r#"{"é": "a\tb"}"#, Verdict::Invalid),
            (r#"{"é": "\u0061\u0062\u0063"}"#, Verdict::Invalid),
            (r#"{"k": "a\u0022b"}"#, Verdict::Valid),
            (r#"{"k": "a\\b"}"#, Verdict::Invalid),
            (r#"{"\u006b": "a\"b"}"#, Verdict::Valid),
            // A lone surrogate is refused even where nothing reads the text.
            (r#"{"skipped": "\udc00"}"#, Verdict::Unsure),
            (r#"{"skipped": "\ud800x"}"#, Verdict::Unsure),
            (r#"{"skipped": "\ud800\u0041"}"#, Verdict::Unsure),
            (r#"{"skipped": ["\uD83D\uDE00", "\u00E9"]}"#, Verdict::Valid),
        ] {
            assert_eq!(verdict(schema.clone(), document), expected, "{document}");
            let parses = serde_json::from_str::<serde_json::Value>(document).is_ok();
            assert_eq!(parses, expected != Verdict::Unsure, "{document}");
        }
    }

    #[test]
    fn scalar_keywords_are_judged_under_the_root_draft() {
        // A leaf is read under the schema's own `$schema` (here draft 4,
        // whose `exclusiveMinimum` is a boolean), not the default draft.
        let schema = json!({
            "$schema": "http://json-schema.org/draft-04/schema#",
            "type": "array",
            "items": {"type": "number", "minimum": 1.5, "exclusiveMinimum": true, "pattern": "x"}
        });
        let schema = Schema::compile(&schema).expect("compiles");
        assert!(schema.has_plan());
        assert_eq!(schema.check_streaming(b"[1.6, 2]", 64), Verdict::Valid);
        assert_eq!(schema.check_streaming(b"[1.5]", 64), Verdict::Invalid);
        // A pattern the `regex` engine cannot compile (a lookahead) still
        // gets its leaf, on fancy-regex.
        let lookahead = json!({"type": "array", "items": {"type": "string", "pattern": "^(?!no)"}});
        let lookahead = Schema::compile(&lookahead).expect("compiles");
        assert!(lookahead.has_plan());
        assert_eq!(lookahead.check_streaming(br#"["yes"]"#, 64), Verdict::Valid);
        assert_eq!(
            lookahead.check_streaming(br#"["nope"]"#, 64),
            Verdict::Invalid
        );
    }

    #[test]
    fn what_the_walk_cannot_reproduce_gets_no_plan() {
        for schema in [
            json!({"not": {"type": "string"}}),
            json!({"patternProperties": {"^a": {"type": "string"}}}),
            json!({"minProperties": 1}),
            json!({"propertyNames": {"maxLength": 2}}),
            json!({"properties": {"a": {"$id": "x", "type": "string"}}}),
            json!({"anyOf": [{"type": "string"}, {"type": "string", "maxLength": 1}]}),
            json!({"enum": [{"a": 1}]}),
            json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
        ] {
            assert!(
                !Schema::compile(&schema).expect("compiles").has_plan(),
                "{schema}"
            );
        }
        // Recursion through a schema (not a ref to a ref) is planned.
        let tree = json!({"$defs": {"node": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}, "$ref": "#/$defs/node"});
        let schema = Schema::compile(&tree).expect("compiles");
        assert!(schema.has_plan());
        assert_eq!(
            schema.check_streaming(br#"{"kids": [{"kids": []}, {}]}"#, 64),
            Verdict::Valid
        );
        assert_eq!(
            schema.check_streaming(br#"{"kids": [{"kids": 1}]}"#, 64),
            Verdict::Invalid
        );
    }
}
