//! The response hot path against the exact path, over every document of the
//! official JSON Schema Test Suite (vendored in `tests/json_schema_suite/`):
//! each test's data, as compact and as pretty text, goes through
//! `json::document::parse` + `Schema::is_valid_fast` (sonic-rs) and through
//! serde_json + `Schema::violations`, and both must agree on the parse, on
//! validity and on `select`. Generated documents get the same property in the
//! `input` fuzz target (`tests/fuzz/input.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;
use sidecar::config::schema::{Schema, SchemaDocuments, SchemaOptions};
use sidecar::config::spec::{Formats, SchemaDraft};
use sidecar::json;

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

#[test]
fn the_fast_path_agrees_with_the_exact_path_on_the_whole_suite() {
    let (mut documents, mut schemas, mut fast) = (0usize, 0usize, 0usize);
    let mut disagreements = Vec::new();
    for (name, draft) in DRAFTS {
        let root = suite().join("tests").join(name);
        let shared = remotes(draft);
        let options = SchemaOptions {
            default_draft: draft,
            // What tools get by default, and the most keywords exercised.
            formats: Formats::Assert,
            documents: shared.as_ref(),
        };
        for file in files(&root) {
            let groups: Vec<Value> =
                serde_json::from_slice(&std::fs::read(&file).expect("readable"))
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            for group in groups {
                // Schemas the sidecar refuses have no documents to disagree about.
                let Ok(schema) = Schema::compile_with(&group["schema"], &options) else {
                    continue;
                };
                schemas += 1;
                for test in group["tests"].as_array().expect("tests") {
                    let data = &test["data"];
                    for text in [
                        serde_json::to_string(data).expect("encodes"),
                        serde_json::to_string_pretty(data).expect("encodes"),
                    ] {
                        documents += 1;
                        let exact: Value = serde_json::from_str(&text).expect("parses");
                        let Some(parsed) = json::document::parse(text.as_bytes()) else {
                            continue;
                        };
                        fast += 1;
                        let what = format!(
                            "{name}/{} / {} / {}",
                            file.strip_prefix(&root).unwrap_or(&file).display(),
                            group["description"],
                            test["description"]
                        );
                        if json::sonic::to_serde(&parsed) != exact {
                            disagreements.push(format!("{what}: the parses differ"));
                        }
                        let valid = schema.violations(&exact).is_empty();
                        if schema.is_valid_fast(&parsed) != valid {
                            disagreements.push(format!("{what}: exact path says valid={valid}"));
                        }
                        let select = pointers(&exact);
                        if json::document::select(&parsed, &select) != json::select(&exact, &select)
                        {
                            disagreements.push(format!("{what}: select differs"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    // The suite is really there and really ran through the fast path.
    assert!(
        schemas >= 1_600,
        "only {schemas} of the suite's 1,705 schemas compiled"
    );
    assert!(
        fast * 100 >= documents * 99,
        "{fast} of {documents} documents took the fast path"
    );
    eprintln!("{documents} documents under {schemas} schemas; {fast} on the fast path, all agree");
}
