//! Target (d): the config loader on arbitrary YAML. `spec::parse` and
//! `Registry::build` must return Ok or a `ConfigError` that names what is
//! wrong, for any text: never a panic, never a hang.
//!
//! Inputs are generated three ways: YAML documents built from the
//! `tools.yaml` grammar with edge values in every field; seed files with
//! text edits (YAML punctuation, anchors, tags); and raw hostile YAML.
//! Seeds are `.yaml` files; `crash-*.yaml` are inputs that crashed the loader.
//! `FUZZ_DEBUG=1` prints every input with its outcome, to see how far the
//! generators get (the run always prints how many parsed and compiled).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::select;
use serde_yaml_ng::{Mapping, Number, Value};
use sidecar::config::registry::Registry;
use sidecar::config::spec;
use sidecar::error::ConfigError;
use sidecar::metrics::Metrics;
use sidecar::upstream::origins::Upstreams;

use crate::corpus;
use crate::strategies::{apply_edits, edits, nasty_string};

fn s(text: &str) -> Value {
    Value::String(text.to_owned())
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

/// Numbers for every integer and float field: mostly ordinary, often at
/// the edges of u32/u64/f64, sometimes of the wrong sign or type.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        24 => select(&[0u64, 1, 2, 5, 20, 100, 1000][..]).prop_map(|n| Value::Number(n.into())),
        8 => select(
            &[
                255,
                256,
                65_535,
                (1 << 31) - 1,
                1 << 31,
                1 << 32,
                1 << 53,
                (1 << 61) + 1,
                u64::MAX
            ][..]
        )
        .prop_map(|n: u64| Value::Number(n.into())),
        2 => fraction(),
        1 => prop_oneof![
            select(&[-1i64, i64::MIN][..]).prop_map(|n| Value::Number(n.into())),
            Just(s("12")),
            Just(Value::Null),
        ],
    ]
}

/// One of `valid` mostly, one of `invalid` now and then.
fn choice(
    valid: &'static [&'static str],
    invalid: &'static [&'static str],
) -> BoxedStrategy<Value> {
    prop_oneof![
        30 => select(valid).prop_map(s),
        1 => select(invalid).prop_map(s),
    ]
    .boxed()
}

/// Values for the float fields (ratios, jitter): in range, at the edges,
/// and not numbers at all.
fn fraction() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => select(&[0.0, 0.1, 0.5, 1.0][..]).prop_map(|f| Value::Number(Number::from(f))),
        2 => select(&[-0.0, 1.5, 1000.0, 1000.5, 1e308, 5e-324, -1.0][..])
            .prop_map(|f| Value::Number(Number::from(f))),
        1 => select(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY][..])
            .prop_map(|f| Value::Number(Number::from(f))),
        1 => Just(Value::Number(u64::MAX.into())),
    ]
}

fn duration() -> impl Strategy<Value = Value> {
    prop_oneof![
        16 => select(&["1ms", "250ms", "1s", "30s", "5m", "1h", "1d"][..]).prop_map(s),
        5 => select(&[
            "0s", "0ms", "1ns", "1y", "100000000000h", "18446744073709551615s",
            "18446744073709551616s", "584942417355y", "1.5s",
        ][..]).prop_map(s),
        1 => select(&["-1s", "", "soon", "1 s", "1e9s", "1sec 2min"][..]).prop_map(s),
        1 => number(),
    ]
}

fn boolean() -> impl Strategy<Value = Value> {
    prop_oneof![
        30 => any::<bool>().prop_map(Value::Bool),
        1 => select(&["yes", "true", "on", "1"][..]).prop_map(s),
    ]
}

/// `value` or, rarely, something of another type.
fn field(value: impl Strategy<Value = Value> + 'static) -> BoxedStrategy<Value> {
    prop_oneof![
        300 => value,
        1 => number(),
        1 => nasty_string().prop_map(Value::String),
        1 => Just(Value::Sequence(vec![])),
        1 => Just(Value::Mapping(Mapping::new())),
    ]
    .boxed()
}

/// A mapping with all of `required`, some of `optional`, and rarely a
/// field that does not exist.
fn object(
    required: Vec<(&'static str, BoxedStrategy<Value>)>,
    optional: Vec<(&'static str, BoxedStrategy<Value>)>,
) -> BoxedStrategy<Value> {
    let pair = |name: &'static str, value: BoxedStrategy<Value>| {
        value.prop_map(move |v| (name.to_owned(), v))
    };
    let required: Vec<_> = required.into_iter().map(|(n, v)| pair(n, v)).collect();
    let optional: Vec<_> = optional
        .into_iter()
        .map(|(n, v)| prop::option::weighted(0.3, pair(n, v)))
        .collect();
    (
        required,
        optional,
        prop::option::weighted(0.03, nasty_string()),
    )
        .prop_map(|(required, optional, unknown)| {
            let mut m = Mapping::new();
            for (k, v) in required.into_iter().chain(optional.into_iter().flatten()) {
                m.insert(Value::String(k), v);
            }
            if let Some(name) = unknown {
                m.insert(Value::String(name), Value::Null);
            }
            Value::Mapping(m)
        })
        .boxed()
}

fn retry() -> BoxedStrategy<Value> {
    object(
        vec![],
        vec![
            ("max_attempts", field(number())),
            (
                "on_status",
                field(prop::collection::vec(number(), 0..3).prop_map(Value::Sequence)),
            ),
            ("backoff_initial", field(duration())),
            ("backoff_max", field(duration())),
            ("attempt_timeout", field(duration())),
        ],
    )
}

fn upstream() -> BoxedStrategy<Value> {
    object(
        vec![],
        vec![
            ("max_concurrency", field(number())),
            (
                "circuit_breaker",
                field(object(
                    vec![],
                    vec![
                        ("enabled", field(boolean())),
                        ("failure_ratio", field(fraction())),
                        ("window", field(duration())),
                        ("min_requests", field(number())),
                        ("consecutive_failures", field(number())),
                        ("open_for", field(duration())),
                        ("half_open_probes", field(number())),
                    ],
                )),
            ),
            (
                "retry_budget",
                field(object(
                    vec![],
                    vec![
                        ("ratio", field(fraction())),
                        ("min_per_second", field(number())),
                    ],
                )),
            ),
        ],
    )
}

fn rate_limit() -> BoxedStrategy<Value> {
    object(
        vec![("rate", field(number()))],
        vec![
            (
                "key",
                field(choice(&["tool", "agent", "tenant", "upstream"], &["user"])),
            ),
            ("scope", field(choice(&["pod", "fleet"], &["world"]))),
            ("per", field(duration())),
            ("burst", field(number())),
            ("on_limit", field(choice(&["reject", "wait"], &["drop"]))),
            ("unit", field(choice(&["requests", "tokens"], &["bytes"]))),
            ("enforce", field(boolean())),
            (
                "on_redis_error",
                field(choice(&["local_share", "deny"], &["allow"])),
            ),
        ],
    )
}

const PROPS: &[&str] = &["city", "units", "q", "n", "a b"];

fn input_schema() -> BoxedStrategy<Value> {
    prop_oneof![
        20 => (
            prop::collection::vec(select(PROPS), 0..4),
            prop::collection::vec(select(PROPS), 0..3),
            select(&["string", "integer", "number", "boolean", "object", "nonsense"][..]),
        )
            .prop_map(|(props, required, t)| {
                let mut p = Mapping::new();
                for name in props {
                    p.insert(s(name), map(vec![("type", s(t))]));
                }
                map(vec![
                    ("type", s("object")),
                    ("properties", Value::Mapping(p)),
                    (
                        "required",
                        Value::Sequence(required.into_iter().map(s).collect()),
                    ),
                ])
            }),
        1 => Just(map(vec![("type", s("array"))])),
        1 => Just(map(vec![("type", s("object")), ("$ref", s("#/$defs/x"))])),
        1 => Just(Value::Bool(true)),
    ]
    .boxed()
}

fn template_text() -> impl Strategy<Value = Value> {
    prop_oneof![
        12 => select(PROPS).prop_map(|p| s(&format!("{{{p}}}"))),
        4 => select(&[
            "plain", "{*}", "${env:FUZZ_SECRET}", "${env:FUZZ_UNSET}", "${file:/nonexistent}",
            "${file:relative}", "${vault:x}", "{", "}", "a{city}b", "\r\n",
        ][..]).prop_map(s),
        1 => nasty_string().prop_map(Value::String),
    ]
}

fn request() -> BoxedStrategy<Value> {
    let url = prop_oneof![
        select(
            &[
                "http://127.0.0.1:9/w/{city}",
                "http://127.0.0.1:9/",
                "https://api.example.com/v1/{city}/x",
                "http://10.0.0.1/x",
                "http://[::1]:8080/",
                "http://localhost/{q}",
                "http://{city}/",
                "ftp://h/",
                "http://u:p@h/",
                "not a url",
                "http://h/?a={q}",
                "http://h/#x",
                "http://h:99999/",
            ][..]
        )
        .prop_map(s),
        nasty_string().prop_map(Value::String),
    ];
    let strings = |keys: &'static [&'static str]| {
        prop::collection::btree_map(select(keys), template_text(), 0..3)
            .prop_map(|m| Value::Mapping(m.into_iter().map(|(k, v)| (s(k), v)).collect()))
    };
    object(
        vec![("url", field(url))],
        vec![
            (
                "method",
                field(choice(
                    &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"],
                    &["get", "FETCH"],
                )),
            ),
            ("query", field(strings(&["q", "units", "k", ""]))),
            (
                "headers",
                field(strings(&[
                    "x-user",
                    "Authorization",
                    "host",
                    "bad header",
                    "content-type",
                ])),
            ),
            ("body", field(template_text())),
        ],
    )
}

fn tool() -> BoxedStrategy<Value> {
    let name = prop_oneof![
        20 => "[a-z][a-z0-9_.-]{0,10}",
        1 => select(&["", "bad name", "ü", "weather"][..]).prop_map(str::to_owned),
    ];
    object(
        vec![
            ("name", field(name.prop_map(Value::String))),
            ("input_schema", input_schema()),
            ("request", request()),
            // Most tools reach a private test address, so most need this.
            (
                "egress",
                field(object(
                    vec![],
                    vec![(
                        "allow",
                        field(
                            prop::collection::vec(
                                prop_oneof![
                                    12 => Just(s("127.0.0.0/8")),
                                    1 => select(&[
                                        "10.0.0.0/8", "::1/128", "0.0.0.0/0", "::/0",
                                        "127.0.0.1", "localhost", "300.0.0.0/8", "10.0.0.0/33", "",
                                    ][..]).prop_map(s),
                                ],
                                0..3,
                            )
                            .prop_map(Value::Sequence),
                        ),
                    )],
                )),
            ),
        ],
        vec![
            ("description", field(nasty_string().prop_map(Value::String))),
            ("output_schema", field(input_schema())),
            ("timeout", field(duration())),
            ("max_response_bytes", field(number())),
            (
                "rate_limits",
                field(prop::collection::vec(rate_limit(), 0..3).prop_map(Value::Sequence)),
            ),
            ("idempotent", field(boolean())),
            ("retry", field(retry())),
            ("max_concurrency", field(number())),
            (
                "cache",
                field(object(
                    vec![("ttl", field(duration()))],
                    vec![
                        ("jitter", field(fraction())),
                        ("max_entries", field(number())),
                        ("max_bytes", field(number())),
                        ("negative_ttl", field(duration())),
                    ],
                )),
            ),
            ("coalesce", field(boolean())),
            ("max_argument_bytes", field(number())),
            ("max_json_depth", field(number())),
            ("follow_redirects", field(number())),
        ],
    )
}

fn config_file() -> impl Strategy<Value = Value> {
    let tools = prop::collection::vec(tool(), 0..4).prop_map(Value::Sequence);
    object(
        vec![("tools", field(tools))],
        vec![
            (
                "defaults",
                field(object(
                    vec![],
                    vec![
                        ("timeout", field(duration())),
                        ("max_response_bytes", field(number())),
                        ("max_argument_bytes", field(number())),
                        ("max_json_depth", field(number())),
                        ("retry", field(retry())),
                        ("upstream", field(upstream())),
                    ],
                )),
            ),
            (
                "upstreams",
                field(
                    prop::collection::btree_map(
                        select(
                            &[
                                "http://127.0.0.1:9",
                                "https://api.example.com:443",
                                "https://api.example.com",
                                "nonsense",
                            ][..],
                        ),
                        upstream(),
                        0..3,
                    )
                    .prop_map(|m| Value::Mapping(m.into_iter().map(|(k, v)| (s(k), v)).collect())),
                ),
            ),
        ],
    )
}

/// YAML that has hurt YAML loaders: aliases that expand exponentially,
/// merge keys, deep nesting, tags, several documents.
const HOSTILE_YAML: &[&str] = &[
    "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\ntools: [*g, *g, *g, *g, *g, *g, *g, *g, *g]\n",
    "tools: &t [*t]\n",
    "tools:\n  - &x {name: a, <<: *x}\n",
    "--- \ntools: []\n--- \ntools: []\n",
    "!!binary tools: []\n",
    "tools: !!map []\n",
    "tools: [!<tag:yaml.org,2002:str> x]\n",
    "? [a, b]\n: c\ntools: []\n",
    "tools: []\ntools: []\n",
    "\u{feff}tools: []\n",
    "tools: [{name: t, input_schema: {type: object}, request: {url: \"http://127.0.0.1:9/\"}, egress: {allow: [127.0.0.0/8]}, max_concurrency: 18446744073709551615}]\n",
];

fn deep_yaml() -> impl Strategy<Value = String> {
    (1usize..400, select(&["[", "{a: ", "- "][..])).prop_map(|(n, open)| {
        let mut text = String::from("tools: ");
        for i in 0..n {
            if open == "- " {
                text.push('\n');
                text.push_str(&" ".repeat(i));
            }
            text.push_str(open);
        }
        text
    })
}

const DICTIONARY: &[&str] = &[
    ": ",
    "- ",
    "\n",
    "\n  ",
    "\n    - ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "!!binary ",
    "!!float ",
    "~",
    "null",
    "'",
    "\"",
    "#",
    "|",
    ">",
    "---\n",
    "...\n",
    "\t",
    ".nan",
    ".inf",
    "-.inf",
    "0x7fffffffffffffff",
    "0o777",
    "99999999999999999999",
    "1e400",
    "-1",
    "0",
    "?",
    "%YAML 1.1\n",
    "\\u0000",
    "${env:FUZZ_SECRET}",
    "{*}",
    "{city}",
];

fn upstreams() -> &'static Upstreams {
    static UPSTREAMS: OnceLock<Upstreams> = OnceLock::new();
    UPSTREAMS.get_or_init(|| Upstreams::new(Default::default(), Metrics::new()))
}

/// How far inputs got: parsed, compiled. A generator that stops at the
/// parser tests little, so the run prints these.
static PARSED: AtomicU64 = AtomicU64::new(0);
static BUILT: AtomicU64 = AtomicU64::new(0);

fn check(text: &String) -> Result<(), TestCaseError> {
    let file = match spec::parse(text) {
        Ok(file) => file,
        Err(e) => {
            if std::env::var_os("FUZZ_DEBUG").is_some() {
                eprintln!("PARSE ERR {e}\n{text}\n=====");
            }
            return named(e);
        }
    };
    PARSED.fetch_add(1, Ordering::Relaxed);
    match Registry::build(file, upstreams(), None) {
        Ok(_) => {
            if std::env::var_os("FUZZ_DEBUG").is_some() {
                eprintln!("BUILT\n{text}\n=====");
            }
            BUILT.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            if std::env::var_os("FUZZ_DEBUG").is_some() {
                eprintln!("BUILD ERR {e}");
            }
            named(e)
        }
    }
}

/// A config error must say something, and a tool error name its tool.
fn named(e: ConfigError) -> Result<(), TestCaseError> {
    let message = e.to_string();
    prop_assert!(!message.trim().is_empty(), "empty error: {e:?}");
    if let ConfigError::Tool { tool, .. } = &e {
        prop_assert!(message.contains(tool.as_str()), "{message}");
    }
    Ok(())
}

#[test]
fn config_loader() {
    std::env::set_var("FUZZ_SECRET", "fuzz-secret-value");
    let seeds = corpus::load("config");
    let texts: Vec<String> = seeds.iter().map(|(_, t)| t.clone()).collect();
    let strategy = prop_oneof![
        6 => config_file().prop_map(|v| serde_yaml_ng::to_string(&v).expect("YAML serializes")),
        2 => (select(texts), edits(DICTIONARY)).prop_map(|(t, e)| apply_edits(&t, &e)),
        1 => (select(HOSTILE_YAML), edits(DICTIONARY)).prop_map(|(t, e)| apply_edits(t, &e)),
        1 => deep_yaml(),
    ];
    crate::fuzz("config", 1536, &seeds, strategy, check);
    eprintln!(
        "fuzz target config: {} inputs parsed, {} compiled",
        PARSED.load(Ordering::Relaxed),
        BUILT.load(Ordering::Relaxed)
    );
}
