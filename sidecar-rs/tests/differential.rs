//! The response hot path against the exact path, over every document of the
//! official JSON Schema Test Suite (vendored in `tests/json_schema_suite/`):
//! each test's data, as compact and as pretty text, goes through
//! `json::document::parse` + `Schema::is_valid_fast` (sonic-rs) and through
//! serde_json + `Schema::violations`, and both must agree on the parse, on
//! validity and on `select`; and through the streaming path
//! (`json::stream`), whose verdicts must never contradict the exact path's.
//! Generated documents get the same properties in the `input` fuzz target
//! (`tests/fuzz/input.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sidecar::config::schema::{Schema, SchemaDocuments, SchemaOptions};
use sidecar::config::spec::{Formats, SchemaDraft};
use sidecar::json;
use sidecar::json::stream::Verdict;

fn suite() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/json_schema_suite")
}

const DRAFTS: [(&str, SchemaDraft); 5] = [
    ("draft4", SchemaDraft::Draft4),
    ("draft6", SchemaDraft::Draft6),
    ("draft7", SchemaDraft::Draft7),
    ("draft2019-09", SchemaDraft::Draft201909),
    ("draft2020-12", SchemaDraft::Draft202012),
];

/// The suite's `remotes/`, registered as `tools.yaml`'s `schemas:` would
/// (the URIs its tests use), for the groups that `$ref` them.
fn remotes(draft: SchemaDraft) -> Option<SchemaDocuments> {
    let root = suite().join("remotes");
    let documents: BTreeMap<String, Value> = files(&root)
        .into_iter()
        .filter_map(|path| {
            let uri = format!(
                "http://localhost:1234/{}",
                path.strip_prefix(&root).ok()?.to_str()?
            );
            Some((
                uri,
                serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?,
            ))
        })
        .collect();
    SchemaDocuments::new(&documents, draft).ok()
}

/// Every `*.json` file under `dir`, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "json") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Pointers to every member of the document's top level, and the root.
fn pointers(value: &Value) -> Vec<String> {
    let mut out = vec![String::new(), "/0".to_owned(), "/missing".to_owned()];
    if let Value::Object(map) = value {
        out.extend(
            map.keys()
                .map(|k| format!("/{}", k.replace('~', "~0").replace('/', "~1"))),
        );
    }
    out
}

/// A group of the suite whose schema the sidecar compiles, with each of its
/// tests' data as compact and as pretty text.
struct Group {
    schema: Schema,
    /// `draft/file / group / test`, per test.
    tests: Vec<(String, [String; 2])>,
}

/// Every group of the suite whose schema the sidecar compiles (schemas it
/// refuses have no documents to disagree about), under the options tools
/// get by default with the most keywords exercised (formats asserted).
fn suite_groups() -> Vec<Group> {
    let mut out = Vec::new();
    for (name, draft) in DRAFTS {
        let root = suite().join("tests").join(name);
        let shared = remotes(draft);
        let options = SchemaOptions {
            default_draft: draft,
            formats: Formats::Assert,
            documents: shared.as_ref(),
        };
        for file in files(&root) {
            let groups: Vec<Value> =
                serde_json::from_slice(&std::fs::read(&file).expect("readable"))
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let file = file
                .strip_prefix(&root)
                .unwrap_or(&file)
                .display()
                .to_string();
            for group in groups {
                let Ok(schema) = Schema::compile_with(&group["schema"], &options) else {
                    continue;
                };
                let tests = group["tests"]
                    .as_array()
                    .expect("tests")
                    .iter()
                    .map(|test| {
                        let data = &test["data"];
                        let what = format!(
                            "{name}/{file} / {} / {}",
                            group["description"], test["description"]
                        );
                        let texts = [
                            serde_json::to_string(data).expect("encodes"),
                            serde_json::to_string_pretty(data).expect("encodes"),
                        ];
                        (what, texts)
                    })
                    .collect();
                out.push(Group { schema, tests });
            }
        }
    }
    // The suite is really there.
    assert!(
        out.len() >= 1_600,
        "only {} of the suite's 1,705 schemas compiled",
        out.len()
    );
    out
}

fn assert_none(disagreements: &[String]) {
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
}

#[test]
fn the_fast_path_agrees_with_the_exact_path_on_the_whole_suite() {
    let (mut documents, mut fast) = (0usize, 0usize);
    let mut disagreements = Vec::new();
    let groups = suite_groups();
    for Group { schema, tests } in &groups {
        for (what, texts) in tests {
            for text in texts {
                documents += 1;
                let exact: Value = serde_json::from_str(text).expect("parses");
                let Some(parsed) = json::document::parse(text.as_bytes()) else {
                    continue;
                };
                fast += 1;
                if json::sonic::to_serde(&parsed) != exact {
                    disagreements.push(format!("{what}: the parses differ"));
                }
                let valid = schema.violations(&exact).is_empty();
                if schema.is_valid_fast(&parsed) != valid {
                    disagreements.push(format!("{what}: exact path says valid={valid}"));
                }
                let select = pointers(&exact);
                if json::document::select(&parsed, &select) != json::select(&exact, &select) {
                    disagreements.push(format!("{what}: select differs"));
                }
            }
        }
    }
    assert_none(&disagreements);
    // The suite really ran through the fast path.
    assert!(
        fast * 100 >= documents * 99,
        "{fast} of {documents} documents took the fast path"
    );
    eprintln!(
        "{documents} documents under {} schemas; {fast} on the fast path, all agree",
        groups.len()
    );
}

/// The streaming hot path (`json::stream`) against the exact path over the
/// whole suite: its "valid" is always the exact path's "valid", its
/// "invalid" the exact path's "invalid", and it judges (rather than leaving
/// to the tree paths) most documents of the schemas it plans.
#[test]
fn the_streaming_path_agrees_with_the_exact_path_on_the_whole_suite() {
    let (mut planned, mut documents, mut judged) = (0usize, 0usize, 0usize);
    let mut disagreements = Vec::new();
    let groups = suite_groups();
    for Group { schema, tests } in &groups {
        if !schema.has_plan() {
            continue;
        }
        planned += 1;
        for (what, texts) in tests {
            for text in texts {
                documents += 1;
                let exact: Value = serde_json::from_str(text).expect("parses");
                let valid = schema.violations(&exact).is_empty();
                let verdict = schema.check_streaming(text.as_bytes(), 64);
                let agrees = match verdict {
                    Verdict::Valid => valid,
                    Verdict::Invalid => !valid,
                    Verdict::Unsure => true,
                };
                judged += usize::from(verdict != Verdict::Unsure);
                if !agrees {
                    disagreements.push(format!(
                        "{what}: streaming says {verdict:?}, exact valid={valid}"
                    ));
                }
            }
        }
    }
    assert_none(&disagreements);
    // Really planned and really judged: not a walk that always says "unsure".
    let schemas = groups.len();
    assert!(
        planned * 4 >= schemas,
        "only {planned} of {schemas} schemas planned"
    );
    assert!(
        judged * 100 >= documents * 90,
        "{judged} of {documents} documents judged"
    );
    eprintln!(
        "{planned} of {schemas} schemas planned; {judged} of {documents} documents judged, all agree"
    );
}

/// The bench documents (`tests/bench/fixtures/`) take the streaming path,
/// valid, and so do they after any one of their values is broken: invalid.
#[test]
fn the_bench_documents_are_judged_by_the_streaming_path() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/bench/fixtures");
    for name in ["search", "catalog"] {
        let read = |f: &str| std::fs::read(fixtures.join(f)).expect("the fixture exists");
        let schema: Value = serde_json::from_slice(&read(&format!("{name}_schema.json"))).unwrap();
        let schema = Schema::compile(&schema).expect("compiles");
        assert!(schema.has_plan(), "{name}: no plan");
        let document = read(&format!("{name}_100k.json"));
        assert_eq!(
            schema.check_streaming(&document, 64),
            Verdict::Valid,
            "{name}"
        );
        // Too deep for a tight limit: left to the tree paths.
        assert_eq!(
            schema.check_streaming(&document, 2),
            Verdict::Unsure,
            "{name}"
        );
        // A string where a number or object belongs, a number where a
        // string belongs: each is invalid, and the exact path agrees.
        let text = String::from_utf8(document).unwrap();
        for (from, to) in [
            ("\"total\":", "\"total\":\"x\","),
            ("\"id\":\"", "\"id\":7,\"_\":\""),
        ] {
            if let Some(at) = text.find(from) {
                let broken = format!("{}{}{}", &text[..at], to, &text[at + from.len()..]);
                let exact: Result<Value, _> = serde_json::from_str(&broken);
                let valid = exact.is_ok_and(|v| schema.violations(&v).is_empty());
                assert!(!valid, "{name}: the edit {to:?} should break it");
                assert_ne!(
                    schema.check_streaming(broken.as_bytes(), 64),
                    Verdict::Valid
                );
            }
        }
    }
}
