//! Generators shared by the targets: hostile strings, JSON values, and text
//! mutation of seeds.

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::{Map, Number, Value};

/// Fragments that have broken parsers and renderers before: separators,
/// escapes, encodings of them, placeholders, control and non-ASCII text.
pub const NASTY: &[&str] = &[
    "",
    " ",
    "a",
    "Oslo",
    "São Paulo",
    "/",
    "\\",
    "..",
    ".",
    "%2e%2e",
    "%2E",
    "%2f",
    "%5c",
    "%",
    "%zz",
    "%00",
    "%E0%A4%A",
    "%C0%AE",
    "@",
    ":",
    "?",
    "#",
    "&",
    "=",
    "+",
    ";",
    "{",
    "}",
    "{a}",
    "{*}",
    "{}",
    "${",
    "${env:FUZZ_SECRET}",
    "${env:}",
    "${file:relative}",
    "$",
    "\r\n",
    "\n",
    "\0",
    "\t",
    "\u{7f}",
    "\u{85}",
    "\u{2028}",
    "\u{202e}",
    "\u{feff}",
    "\u{fffd}",
    "😀",
    "ﬁ",
    "İ",
    "\"",
    "'",
    "~0",
    "~1",
    "~",
    "[",
    "]",
    "//evil.example",
    "http://evil.example/",
    "user@evil.example",
    "[::1]",
    "127.0.0.1:6379",
    "-1",
    "1e309",
    "NaN",
];

/// A string made of hostile fragments and random characters.
pub fn nasty_string() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => select(NASTY).prop_map(str::to_owned),
        1 => "\\PC{0,8}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..6).prop_map(|parts| parts.concat())
}

/// Numbers at the edges of what JSON, f64 and u64 can hold.
pub fn json_number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        select(&[0i64, 1, -1, 9_007_199_254_740_993, i64::MIN, i64::MAX][..])
            .prop_map(Number::from),
        any::<f64>().prop_filter_map("finite", Number::from_f64),
        select(&[0.5, -0.0, 1e308, -1e308, 5e-324, 1e-7, 0.1, 1e21][..])
            .prop_filter_map("finite", Number::from_f64),
    ]
}

pub fn json_scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number().prop_map(Value::Number),
        nasty_string().prop_map(Value::String),
    ]
}

/// Any JSON value, nested a few levels, with keys from `keys` or hostile.
pub fn json_value(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    json_scalar().prop_recursive(5, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((json_key(keys), inner), 0..6)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

pub fn json_key(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => select(keys).prop_map(str::to_owned),
        1 => nasty_string(),
    ]
}

/// Text edits a careless hand or a hostile one makes: delete a range,
/// insert a fragment, duplicate a span, swap bytes.
#[derive(Debug, Clone)]
pub enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    Duplicate { at: usize, len: usize },
    Truncate { at: usize },
}

pub fn edits(dictionary: &'static [&'static str]) -> impl Strategy<Value = Vec<Edit>> {
    let at = any::<usize>();
    let edit = prop_oneof![
        (at, 1usize..16).prop_map(|(at, len)| Edit::Delete { at, len }),
        (
            at,
            prop_oneof![
                3 => select(dictionary).prop_map(str::to_owned),
                1 => nasty_string(),
            ]
        )
            .prop_map(|(at, text)| Edit::Insert { at, text }),
        (at, 1usize..64).prop_map(|(at, len)| Edit::Duplicate { at, len }),
        at.prop_map(|at| Edit::Truncate { at }),
    ];
    prop::collection::vec(edit, 1..6)
}

/// `text` with `edits` applied; positions wrap around and snap to character
/// boundaries, so the result stays a `String`.
pub fn apply_edits(text: &str, edits: &[Edit]) -> String {
    let mut out = text.to_owned();
    let snap = |s: &str, at: usize| {
        let mut at = if s.is_empty() { 0 } else { at % (s.len() + 1) };
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    for edit in edits {
        match edit {
            Edit::Delete { at, len } => {
                let start = snap(&out, *at);
                let end = snap(&out, (start + len).min(out.len()));
                out.replace_range(start..end.max(start), "");
            }
            Edit::Insert { at, text } => {
                let at = snap(&out, *at);
                out.insert_str(at, text);
            }
            Edit::Duplicate { at, len } => {
                let start = snap(&out, *at);
                let end = snap(&out, (start + len).min(out.len())).max(start);
                let span = out[start..end].to_owned();
                out.insert_str(end, &span);
            }
            Edit::Truncate { at } => {
                let at = snap(&out, *at);
                out.truncate(at);
            }
        }
    }
    out
}

/// How deep `value` nests arrays and objects (a scalar is 0, `[]` is 1),
/// counted the way `json::exceeds_depth` counts brackets.
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}
