//! Target (a): request templates and the arguments rendered into them.
//!
//! `RequestTemplate::compile` must accept or refuse any template with a
//! message; `render` must turn any argument object into a request or a
//! specific error, and a request it builds must stay where the operator put
//! it: the configured origin, the same number of path segments as with
//! harmless arguments, no query key and no header that the template does not
//! name, and a body that is JSON.
//!
//! Seeds are YAML files `{request: <a tool's request>, args: {...}}`.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::sample::select;
use serde::Deserialize;
use serde_json::{Map, Value};
use sidecar::config::spec::{Method, RequestSpec};
use sidecar::config::template::{Args, RequestTemplate, Template};
use sidecar::error::CallError;

use crate::corpus;
use crate::strategies::{json_value, nasty_string, NASTY};

/// Argument names the generated templates refer to.
const NAMES: &[&str] = &["a", "b", "city", "id", "q", "_x9", "*"];

const ORIGINS: &[&str] = &[
    "http://h",
    "http://h:8",
    "https://api.example.com:8443",
    "http://127.0.0.1:9",
    "http://[::1]:80",
    "HTTP://H.EXAMPLE",
    "http://xn--nxasmq6b.example",
    "http://h.example.",
    "ftp://h",
    "http://u:p@h",
    "http://u@h",
    "http://{a}",
    "http://h:{a}",
    "http://h#f",
    "http://",
    "http:///x",
    "h/x",
    "",
    "http://h:99999",
    "file:///etc",
    "http://h%2f.example",
    "http://[::1",
];

fn method() -> impl Strategy<Value = Method> {
    select(
        &[
            Method::Get,
            Method::Post,
            Method::Put,
            Method::Patch,
            Method::Delete,
            Method::Head,
        ][..],
    )
}

/// A piece of template text: a placeholder, a literal, or something broken.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(NAMES).prop_map(|n| format!("{{{n}}}")),
        3 => "[a-z0-9._~-]{1,6}",
        2 => select(NASTY).prop_map(str::to_owned),
        1 => "\\PC{0,4}",
    ]
}

fn template_text() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..5).prop_map(|p| p.concat())
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(template_text(), 0..5)
        .prop_map(|segments| segments.iter().map(|s| format!("/{s}")).collect::<String>())
}

fn url() -> impl Strategy<Value = String> {
    (
        prop_oneof![4 => select(ORIGINS).prop_map(str::to_owned), 1 => nasty_string()],
        path(),
        prop_oneof![
            3 => Just(String::new()),
            1 => select(&["?v=1", "?", "?a=1&a=2", "?x={a}", "?#", "?k=%zz"][..])
                .prop_map(str::to_owned),
        ],
    )
        .prop_map(|(origin, path, query)| format!("{origin}{path}{query}"))
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(&[
            "x-user",
            "X-Api-Key",
            "authorization",
            "accept",
            "content-type",
            "user-agent",
        ][..])
        .prop_map(str::to_owned),
        1 => select(&["", "x bad", "x:y", "x\r\ny", "ü", "host"][..]).prop_map(str::to_owned),
    ]
}

/// A JSON body template: JSON whose strings are template text.
fn body() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        3 => template_text().prop_map(Value::String),
        1 => json_value(NAMES),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(select(NAMES).prop_map(str::to_owned), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn request() -> impl Strategy<Value = RequestSpec> {
    (
        method(),
        url(),
        prop::collection::btree_map(select(NAMES).prop_map(str::to_owned), template_text(), 0..3),
        prop::collection::btree_map(header_name(), template_text(), 0..3),
        prop::option::weighted(0.4, body()),
    )
        .prop_map(|(method, url, query, headers, body)| RequestSpec {
            method,
            url,
            query,
            headers,
            body,
        })
}

fn args() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        select(NAMES).prop_map(str::to_owned),
        json_value(NAMES),
        0..6,
    )
    .prop_map(|m| Value::Object(m.into_iter().collect()))
}

#[derive(Debug, Clone)]
pub struct Case {
    request: RequestSpec,
    args: Value,
    /// Text also fed to `Template::parse` / `parse_with_secrets` alone.
    text: String,
}

fn case() -> impl Strategy<Value = Case> {
    (request(), args(), template_text()).prop_map(|(request, args, text)| Case {
        request,
        args,
        text,
    })
}

/// `args` with every scalar replaced by a value that is harmless anywhere.
fn harmless(args: &Args) -> Args {
    args.iter()
        .map(|(k, v)| {
            let v = match v {
                Value::Null | Value::Array(_) | Value::Object(_) => v.clone(),
                _ => Value::String("x".into()),
            };
            (k.clone(), v)
        })
        .collect()
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let _ = Template::parse(&case.text);
    let _ = Template::parse_with_secrets(&case.text);
    let template = match RequestTemplate::compile(&case.request) {
        Ok(t) => t,
        Err((field, message)) => {
            prop_assert!(field.starts_with("request."), "field {field:?}");
            prop_assert!(!message.is_empty());
            return Ok(());
        }
    };
    let args: Args = match &case.args {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    let rendered = match template.render(&args) {
        Ok(r) => r,
        Err(CallError::UnusableArgument { reason, .. }) => {
            prop_assert!(!reason.is_empty());
            return Ok(());
        }
        Err(CallError::EgressDenied(message)) => {
            prop_assert!(!message.is_empty());
            return Ok(());
        }
        Err(other) => return Err(TestCaseError::fail(format!("render failed: {other:?}"))),
    };
    // The origin is the operator's.
    prop_assert_eq!(rendered.url.origin(), template.origin().origin());
    prop_assert_eq!(rendered.url.scheme(), template.origin().scheme());
    prop_assert!(rendered.url.username().is_empty() && rendered.url.password().is_none());
    prop_assert!(rendered.url.fragment().is_none());
    // Arguments fill segments; they never add or remove one.
    let benign = template
        .render(&harmless(&args))
        .map_err(|e| TestCaseError::fail(format!("harmless arguments fail: {e:?}")))?;
    let segments = |u: &url::Url| u.path_segments().map_or(0, Iterator::count);
    prop_assert_eq!(
        segments(&rendered.url),
        segments(&benign.url),
        "path {} vs {}",
        rendered.url.path(),
        benign.url.path()
    );
    // Query keys come from the template, never from a value.
    // The configured query as the URL parser keeps it (it drops tabs and
    // newlines, as the WHATWG URL standard says).
    let fixed: BTreeSet<String> = case
        .request
        .url
        .split_once('?')
        .map(|(_, q)| {
            let mut u = template.origin().clone();
            u.set_query(Some(q));
            u.query_pairs().map(|(k, _)| k.into_owned()).collect()
        })
        .unwrap_or_default();
    for (key, _) in rendered.url.query_pairs() {
        prop_assert!(
            fixed.contains(key.as_ref()) || case.request.query.contains_key(key.as_ref()),
            "query key {key:?} is not in the template: {}",
            rendered.url
        );
    }
    // Headers come from the template too.
    let configured: BTreeMap<String, ()> = case
        .request
        .headers
        .keys()
        .map(|k| (k.to_ascii_lowercase(), ()))
        .collect();
    for name in rendered.headers.keys() {
        prop_assert!(
            configured.contains_key(name.as_str()) || name == http::header::CONTENT_TYPE,
            "header {name} is not in the template"
        );
    }
    if let Some(body) = &rendered.body {
        prop_assert!(
            serde_json::from_slice::<Value>(body).is_ok(),
            "body is not JSON"
        );
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Seed {
    request: RequestSpec,
    #[serde(default)]
    args: Value,
}

#[test]
fn request_templates() {
    // The secret placeholders resolve to something.
    std::env::set_var("FUZZ_SECRET", "fuzz-secret-value");
    let seeds: Vec<(String, Case)> = corpus::load("template")
        .into_iter()
        .map(|(name, text)| {
            let seed: Seed = serde_yaml_ng::from_str(&text)
                .unwrap_or_else(|e| panic!("template seed {name}: {e}"));
            let case = Case {
                request: seed.request,
                args: seed.args,
                text: String::new(),
            };
            (name, case)
        })
        .collect();
    let picks: Vec<Case> = seeds.iter().map(|(_, c)| c.clone()).collect();
    let strategy = prop_oneof![
        3 => case(),
        // A seed's template with generated arguments.
        2 => (select(picks.clone()), args()).prop_map(|(mut c, args)| {
            c.args = args;
            c
        }),
        // A seed's arguments with one value made hostile.
        1 => (select(picks), json_value(NAMES)).prop_map(|(mut c, v)| {
            if let Value::Object(map) = &mut c.args {
                if let Some(key) = map.keys().next().cloned() {
                    map.insert(key, v);
                }
            }
            c
        }),
    ];
    crate::fuzz("template", 2048, &seeds, strategy, check);
}
