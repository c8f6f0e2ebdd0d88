//! YAML text to a `serde_json::Value`, every number exactly as written.
//!
//! `tools.yaml` is a JSON document written in YAML: schemas, body templates
//! and the settings around them. serde's data model hands a YAML number over
//! as `u64`/`i64`/`u128`/`i128` or `f64` (serde_yaml_ng does exactly that),
//! so `minimum: -340282366920938463463374607431768211457` or
//! `const: 3.14159265358979323846264338327950288` would reach the validator
//! and the upstream rounded. No YAML library for serde offers the scalar's
//! text, so this module builds the JSON tree from the events of
//! [`yaml_rust2`]'s parser and resolves plain scalars itself, as YAML 1.2's
//! core schema says and serde_yaml_ng did before: `null`, booleans,
//! integers (decimal, `0x`, `0o`, `0b`), floats, else strings. The one
//! change: a number that neither 128 bits nor an `f64` can hold keeps its
//! digits (`serde_json` is built with `arbitrary_precision`).
//!
//! Also, as before: a repeated key is an error (serde's map visitors would
//! let the last one win), nesting is bounded, and aliases are expanded
//! within a node budget so that a "billion laughs" file is an error, not an
//! out-of-memory kill.

use std::collections::HashMap;

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Deepest nesting of mappings and sequences (serde_yaml_ng's limit).
const MAX_DEPTH: usize = 128;
/// Nodes a document may expand to, aliases included.
const MAX_NODES: usize = 1 << 20;

/// Parses one YAML document (an empty text is `null`). Errors name the
/// place as a path and a line: `upstreams."https://a.example".circuit_breaker
/// .failure_ratio: .nan is not a JSON number at line 3 column 40`.
pub fn parse(text: &str) -> Result<Value, String> {
    let mut builder = Builder {
        parser: Parser::new_from_str(text),
        anchors: HashMap::new(),
        nodes: 0,
        path: Vec::new(),
    };
    builder.expect(
        |e| matches!(e, Event::StreamStart),
        "the start of the stream",
    )?;
    let (event, mark) = builder.next()?;
    let value = match event {
        Event::StreamEnd => return Ok(Value::Null),
        Event::DocumentStart => {
            let (event, mark) = builder.next()?;
            let value = builder.node(event, mark, 0)?;
            builder.expect(
                |e| matches!(e, Event::DocumentEnd),
                "the end of the document",
            )?;
            value
        }
        other => return Err(builder.fail(mark, format!("unexpected {other:?}"))),
    };
    let (event, mark) = builder.next()?;
    match event {
        Event::StreamEnd => Ok(value),
        _ => Err(builder.fail(
            mark,
            "more than one YAML document; a tools file is one document",
        )),
    }
}

struct Builder<'a> {
    parser: Parser<std::str::Chars<'a>>,
    /// Anchored nodes and their sizes in nodes, for aliases.
    anchors: HashMap<usize, (Value, usize)>,
    /// Nodes built so far, alias copies included.
    nodes: usize,
    /// Where the node being built is, for errors.
    path: Vec<Segment>,
}

enum Segment {
    Key(String),
    Index(usize),
}

impl Builder<'_> {
    fn next(&mut self) -> Result<(Event, Marker), String> {
        match self.parser.next_token() {
            Ok(next) => Ok(next),
            Err(e) => Err(self.fail(*e.marker(), e.info())),
        }
    }

    /// An error at `mark`, named by the path of the node being built.
    fn fail(&self, mark: Marker, message: impl std::fmt::Display) -> String {
        let mut path = String::new();
        for segment in &self.path {
            match segment {
                Segment::Index(i) => path.push_str(&format!("[{i}]")),
                Segment::Key(k) => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    let plain = !k.is_empty()
                        && k.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_-$".contains(&b));
                    if plain {
                        path.push_str(k);
                    } else {
                        path.push_str(&format!("{k:?}"));
                    }
                }
            }
        }
        let place = format!("line {} column {}", mark.line(), mark.col() + 1);
        if path.is_empty() {
            format!("{message} at {place}")
        } else {
            format!("{path}: {message} at {place}")
        }
    }

    fn expect(&mut self, is: impl Fn(&Event) -> bool, what: &str) -> Result<(), String> {
        let (event, mark) = self.next()?;
        if is(&event) {
            Ok(())
        } else {
            Err(self.fail(mark, format!("expected {what}, found {event:?}")))
        }
    }

    fn count(&mut self, nodes: usize, mark: Marker) -> Result<(), String> {
        self.nodes += nodes;
        if self.nodes > MAX_NODES {
            return Err(self.fail(
                mark,
                format!("the document expands to more than {MAX_NODES} nodes (aliases included)"),
            ));
        }
        Ok(())
    }

    /// Builds the node that starts with `event`. Recursive, bounded by
    /// [`MAX_DEPTH`].
    fn node(&mut self, event: Event, mark: Marker, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(self.fail(mark, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let start = self.nodes;
        self.count(1, mark)?;
        let (value, anchor) = match event {
            Event::Scalar(text, style, anchor, tag) => {
                let value = scalar(text, style, tag.as_ref()).map_err(|e| self.fail(mark, e))?;
                (value, anchor)
            }
            Event::SequenceStart(anchor, tag) => {
                collection_tag(tag.as_ref(), "seq").map_err(|e| self.fail(mark, e))?;
                let mut items = Vec::new();
                loop {
                    let (event, mark) = self.next()?;
                    if matches!(event, Event::SequenceEnd) {
                        break;
                    }
                    self.path.push(Segment::Index(items.len()));
                    let item = self.node(event, mark, depth + 1)?;
                    self.path.pop();
                    items.push(item);
                }
                (Value::Array(items), anchor)
            }
            Event::MappingStart(anchor, tag) => {
                collection_tag(tag.as_ref(), "map").map_err(|e| self.fail(mark, e))?;
                let mut map = Map::new();
                loop {
                    let (event, key_mark) = self.next()?;
                    let key = match event {
                        Event::MappingEnd => break,
                        // serde_yaml_ng read keys as strings too: `200:` is "200".
                        Event::Scalar(text, _, anchor, _) => {
                            if anchor != 0 {
                                self.anchors
                                    .insert(anchor, (Value::String(text.clone()), 1));
                            }
                            text
                        }
                        Event::Alias(id) => match self.anchors.get(&id) {
                            Some((Value::String(s), _)) => s.clone(),
                            Some(_) => {
                                return Err(self.fail(key_mark, "a mapping key must be a string"))
                            }
                            None => return Err(self.fail(key_mark, "unknown alias")),
                        },
                        _ => return Err(self.fail(key_mark, "a mapping key must be a string")),
                    };
                    if map.contains_key(&key) {
                        return Err(self.fail(key_mark, format!("duplicate key {key:?}")));
                    }
                    let (event, mark) = self.next()?;
                    self.path.push(Segment::Key(key));
                    let value = self.node(event, mark, depth + 1)?;
                    let Some(Segment::Key(key)) = self.path.pop() else {
                        unreachable!("pushed above")
                    };
                    map.insert(key, value);
                }
                (Value::Object(map), anchor)
            }
            Event::Alias(id) => {
                let Some(&(_, size)) = self.anchors.get(&id) else {
                    return Err(self.fail(mark, "unknown alias"));
                };
                // Counted before copying: the budget is what stops the copy.
                self.count(size.saturating_sub(1), mark)?;
                return Ok(self.anchors[&id].0.clone());
            }
            other => return Err(self.fail(mark, format!("unexpected {other:?}"))),
        };
        if anchor != 0 {
            self.anchors
                .insert(anchor, (value.clone(), self.nodes - start));
        }
        Ok(value)
    }
}

/// The YAML core schema's tags (`!!str`, ...); `None` for none.
fn core_tag(tag: Option<&Tag>) -> Result<Option<&str>, String> {
    match tag {
        None => Ok(None),
        Some(t) if t.handle == "tag:yaml.org,2002:" => Ok(Some(t.suffix.as_str())),
        // A lone `!` is YAML's "not specific" tag: a plain string.
        Some(t) if t.handle == "!" && t.suffix.is_empty() => Ok(Some("str")),
        Some(t) => Err(format!(
            "unsupported tag {}{}: a tools file is plain JSON data",
            t.handle, t.suffix
        )),
    }
}

fn collection_tag(tag: Option<&Tag>, expected: &str) -> Result<(), String> {
    match core_tag(tag)? {
        None => Ok(()),
        Some(t) if t == expected => Ok(()),
        Some(t) => Err(format!("tag !!{t} on a {expected}")),
    }
}

fn scalar(text: String, style: TScalarStyle, tag: Option<&Tag>) -> Result<Value, String> {
    let resolved = match core_tag(tag)? {
        Some("str") => return Ok(Value::String(text)),
        Some("null") => null(&text).then_some(Value::Null),
        Some("bool") => boolean(&text).map(Value::Bool),
        Some("int") => integer(&text).map(Value::Number),
        Some("float") => float(&text)?.map(Value::Number),
        Some(other) => return Err(format!("unsupported tag !!{other}")),
        // Quoted and block scalars are strings.
        None if style != TScalarStyle::Plain => return Ok(Value::String(text)),
        None => return untagged(text),
    };
    resolved.ok_or_else(|| {
        let tag = tag.map(|t| t.suffix.as_str()).unwrap_or_default();
        format!("{text:?} is not a valid !!{tag}")
    })
}

/// A plain scalar without a tag, resolved as serde_yaml_ng did.
fn untagged(text: String) -> Result<Value, String> {
    if text.is_empty() || null(&text) {
        return Ok(Value::Null);
    }
    if let Some(b) = boolean(&text) {
        return Ok(Value::Bool(b));
    }
    if let Some(n) = integer(&text) {
        return Ok(Value::Number(n));
    }
    if !leading_zero_digits(&text) {
        if let Some(n) = float(&text)? {
            return Ok(Value::Number(n));
        }
    }
    Ok(Value::String(text))
}

fn null(text: &str) -> bool {
    matches!(text, "~" | "null" | "Null" | "NULL")
}

fn boolean(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// `007` is a string in YAML 1.2, not a number.
fn leading_zero_digits(text: &str) -> bool {
    let t = text.strip_prefix(['-', '+']).unwrap_or(text);
    t.len() > 1 && t.starts_with('0') && t.bytes().all(|b| b.is_ascii_digit())
}

/// An integer: decimal of any length, or `0x`/`0o`/`0b` within 128 bits.
fn integer(text: &str) -> Option<Number> {
    if leading_zero_digits(text) {
        return None;
    }
    let (negative, unsigned) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] {
        if let Some(digits) = unsigned.strip_prefix(prefix) {
            if digits.starts_with(['+', '-']) {
                return None;
            }
            let magnitude = u128::from_str_radix(digits, radix).ok()?;
            return if negative {
                0i128
                    .checked_sub_unsigned(magnitude)
                    .and_then(Number::from_i128)
            } else {
                Number::from_u128(magnitude)
            };
        }
    }
    if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Within 128 bits, canonical as before; beyond, the digits as written.
    let fits = if negative {
        text.parse::<i128>().ok().and_then(Number::from_i128)
    } else {
        unsigned.parse::<u128>().ok().and_then(Number::from_u128)
    };
    fits.or_else(|| {
        let digits = if negative { text } else { unsigned };
        digits.parse::<Number>().ok()
    })
}

/// A float: `.inf`/`.nan` are not JSON numbers (an error); a number the
/// nearest `f64` represents exactly — in the sense that the `f64`'s shortest
/// decimal is the number written — is that `f64`, as before (`0.50` is 0.5,
/// so `f64` settings keep reading it); any other keeps its digits
/// (`3.14159265358979323846`, `1e400`). `None`: not a float.
fn float(text: &str) -> Result<Option<Number>, String> {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    if matches!(
        unsigned,
        ".inf" | ".Inf" | ".INF" | ".nan" | ".NaN" | ".NAN"
    ) {
        return Err(format!("{text} is not a JSON number"));
    }
    let Some(decimal) = Decimal::parse(text) else {
        return Ok(None);
    };
    let body = text.strip_prefix('+').unwrap_or(text);
    match body.parse::<f64>() {
        Ok(f)
            if f.is_finite()
                && Decimal::parse(&format!("{f:e}")).is_some_and(|d| d.same_value(&decimal)) =>
        {
            Ok(Number::from_f64(f))
        }
        _ => Ok(decimal.json.parse::<Number>().ok()),
    }
}

/// A decimal number as sign, significant digits and exponent, so that two
/// spellings of one value compare equal (`0.50`, `5e-1`, `5.0E-1`).
#[derive(Debug)]
struct Decimal {
    negative: bool,
    /// No leading or trailing zeros; empty for zero.
    digits: String,
    /// The value is `0.digits × 10^exponent`.
    exponent: i64,
    /// The text in JSON's grammar (`.5` becomes `0.5`, `5.` becomes `5`).
    json: String,
}

impl Decimal {
    /// Parses `[+-]? (digits [. digits?] | . digits) ([eE] [+-]? digits)?`,
    /// the YAML core schema's float; `None` for anything else.
    fn parse(text: &str) -> Option<Self> {
        let (negative, rest) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((i, f)) => (i, f),
            None => (mantissa, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (int.is_empty() && frac.is_empty()) || !all_digits(int) || !all_digits(frac) {
            return None;
        }
        let exp_value: i64 = match exp {
            None => 0,
            Some(e) => {
                let d = e.strip_prefix(['+', '-']).unwrap_or(e);
                if d.is_empty() || !all_digits(d) {
                    return None;
                }
                // Beyond this no f64 and no sane schema goes; refuse rather
                // than overflow.
                e.parse().ok().filter(|v: &i64| v.abs() < 1_000_000_000)?
            }
        };
        let all = format!("{int}{frac}");
        let leading = all.len() - all.trim_start_matches('0').len();
        let digits = all.trim_matches('0').to_owned();
        let exponent = if digits.is_empty() {
            0
        } else {
            int.len() as i64 - leading as i64 + exp_value
        };
        let mut json = String::with_capacity(text.len() + 2);
        if negative {
            json.push('-');
        }
        json.push_str(if int.is_empty() { "0" } else { int });
        if !frac.is_empty() {
            json.push('.');
            json.push_str(frac);
        }
        if let Some(e) = exp {
            json.push('e');
            json.push_str(e);
        }
        Some(Self {
            negative: negative && !digits.is_empty(),
            digits,
            exponent,
            json,
        })
    }

    /// Whether both are one value, whatever the spelling.
    fn same_value(&self, other: &Decimal) -> bool {
        self.negative == other.negative
            && self.digits == other.digits
            && self.exponent == other.exponent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Value {
        parse(&format!("v: {text}")).unwrap()["v"].take()
    }

    #[test]
    fn numbers_keep_their_digits_when_nothing_smaller_holds_them() {
        let big = "-340282366920938463463374607431768211457";
        assert_eq!(one(big).to_string(), big);
        assert_eq!(
            one("+340282366920938463463374607431768211456").to_string(),
            "340282366920938463463374607431768211456"
        );
        let long = "3.14159265358979323846264338327950288";
        assert_eq!(one(long).to_string(), long);
        // serde_json spells the exponent with its sign: the same number.
        assert_eq!(one("1e400").to_string(), "1e+400");
        assert_eq!(one("-.5e-400").to_string(), "-0.5e-400");
        // An f64 holds these: read as before, so `f64` settings take them.
        assert_eq!(one("0.50").as_f64(), Some(0.5));
        assert_eq!(one("0.50").to_string(), "0.5");
        assert_eq!(one("5e-1").to_string(), "0.5");
        assert_eq!(one(".5").to_string(), "0.5");
        assert_eq!(one("0.1").to_string(), "0.1");
        assert_eq!(
            one("-18446744073709551615").to_string(),
            "-18446744073709551615"
        );
        assert_eq!(one("0x1F").as_u64(), Some(31));
        assert_eq!(one("-0o17").as_i64(), Some(-15));
        assert_eq!(one("7").as_u64(), Some(7));
        assert_eq!(one("-7").as_i64(), Some(-7));
    }

    #[test]
    fn scalars_resolve_as_the_yaml_core_schema_says() {
        assert_eq!(one("~"), Value::Null);
        assert_eq!(one(""), Value::Null);
        assert_eq!(one("True"), Value::Bool(true));
        assert_eq!(one("yes"), Value::from("yes"));
        assert_eq!(one("007"), Value::from("007"));
        assert_eq!(one("1_000"), Value::from("1_000"));
        assert_eq!(one("inf"), Value::from("inf"));
        assert_eq!(one("'12'"), Value::from("12"));
        assert_eq!(one("!!str 12"), Value::from("12"));
        assert_eq!(one("!!int \"12\"").as_u64(), Some(12));
        assert_eq!(
            one("\"123456789012345678901234567890123456789012\""),
            Value::from("123456789012345678901234567890123456789012")
        );
        assert_eq!(parse("200: x").unwrap()["200"], Value::from("x"));
        assert_eq!(parse("").unwrap(), Value::Null);
    }

    #[test]
    fn bad_documents_are_errors_with_a_place() {
        for (text, says) in [
            ("a: 1\na: 2\n", "duplicate key \"a\" at line 2"),
            ("v: .inf", "v: .inf is not a JSON number at line 1 column 4"),
            (
                "u:\n  \"http://a\": {r: [1, -.NaN]}",
                "u.\"http://a\".r[1]: -.NaN is not a JSON number at line 2",
            ),
            ("v: !!int x", "not a valid !!int"),
            ("v: !Custom x", "unsupported tag"),
            ("v: [1, 2", "line"),
            ("--- 1\n--- 2\n", "more than one YAML document"),
            ("? [a]\n: b\n", "key must be a string"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(says), "{text:?}: {err}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(parse(&deep).unwrap_err().contains("nested deeper"));
    }

    #[test]
    fn aliases_expand_within_a_budget() {
        let v = parse("a: &x {n: 1}\nb: *x\n").unwrap();
        assert_eq!(v["b"]["n"].as_u64(), Some(1));
        let mut laughs = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            laughs.push_str(&format!("l{i}: &l{i} [*l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}, *l{p}]\n"));
        }
        assert!(parse(&laughs).unwrap_err().contains("more than"));
    }
}
