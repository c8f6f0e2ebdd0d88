//! sonic-rs documents as validator instances: jsonschema's [`Json`] traits
//! implemented over `sonic_rs::Value`, so a response is validated on the
//! tree sonic-rs builds in one arena (strings decoded once, numbers kept as
//! written) instead of on a `serde_json::Value` of a heap allocation per
//! string, number and map node.
//!
//! The semantics must be exactly those of jsonschema's own `SerdeJson`: a
//! document valid here is valid there. Numbers therefore read their written
//! digits the way `serde_json::Number` does under `arbitrary_precision`, and
//! anything rare (equality of containers, error instances) converts the node
//! to a `serde_json::Value` and uses jsonschema's own code.

use std::borrow::Cow;

use jsonschema::json::{Array, Json, JsonNumber, Node, NodeIdentity, Object};
use jsonschema::types::JsonType;
use serde_json::Value;
use sonic_rs::{JsonContainerTrait, JsonValueTrait};

/// The representation: nodes are `&sonic_rs::Value`.
pub struct Sonic;

impl Json for Sonic {
    type Node<'a> = &'a sonic_rs::Value;
    type PreparedKey = String;
    type StringBuffer = sonic_rs::Value;

    // A lookup is a linear scan over the object's members, so a members pass
    // is never costlier than the lookups it replaces. (Bounded so the
    // validator's `KEYS_PER_LOOKUP * count` cannot overflow.)
    const KEYS_PER_LOOKUP: usize = 1 << 20;

    fn prepare_key(key: &str) -> String {
        key.to_owned()
    }

    fn with_string_node<T>(
        buffer: &mut sonic_rs::Value,
        string: &str,
        f: impl FnOnce(&sonic_rs::Value) -> T,
    ) -> T {
        *buffer = sonic_rs::Value::from(string);
        f(buffer)
    }
}

/// A number as written in the document.
#[derive(Clone)]
pub struct Written(sonic_rs::RawNumber);

impl Written {
    fn text(&self) -> &str {
        self.0.as_str()
    }
}

/// As `serde_json::Number` reads its text under `arbitrary_precision`.
impl JsonNumber for Written {
    fn as_u64(&self) -> Option<u64> {
        self.text().parse().ok()
    }
    fn as_i64(&self) -> Option<i64> {
        self.text().parse().ok()
    }
    fn as_f64(&self) -> Option<f64> {
        self.text().parse::<f64>().ok().filter(|f| f.is_finite())
    }
    fn as_str(&self) -> Cow<'_, str> {
        Cow::Borrowed(self.text())
    }
    fn to_number(&self) -> Cow<'_, serde_json::Number> {
        Cow::Owned(number(self.text()))
    }
    fn is_integer(&self) -> bool {
        // Digits alone are an integer however many there are; anything with
        // a fraction or an exponent is settled by jsonschema's own rule.
        is_integer_literal(self.text())
            || jsonschema_value::types::number_is_integer(&number(self.text()))
    }
}

fn is_integer_literal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `text` (a JSON number sonic-rs accepted) as serde_json's number.
fn number(text: &str) -> serde_json::Number {
    text.parse()
        .unwrap_or_else(|_| serde_json::Number::from(0u8))
}

impl<'a> Node<'a, Sonic> for &'a sonic_rs::Value {
    type Object = &'a sonic_rs::Object;
    type Array = &'a sonic_rs::Array;
    type Number = Written;

    fn as_object(&self) -> Option<&'a sonic_rs::Object> {
        sonic_rs::Value::as_object(self)
    }

    fn as_array(&self) -> Option<&'a sonic_rs::Array> {
        sonic_rs::Value::as_array(self)
    }

    fn as_string(&self) -> Option<Cow<'a, str>> {
        sonic_rs::Value::as_str(self).map(Cow::Borrowed)
    }

    fn as_number(&self) -> Option<Written> {
        if !sonic_rs::Value::is_number(self) {
            return None;
        }
        // Parsed with `arbitrary_precision`, every number is raw; one built
        // in memory (a property name node never is) reads as its text.
        Some(Written(self.as_raw_number().unwrap_or_else(|| {
            sonic_rs::from_str(&self.to_string()).expect("a number's text is a number")
        })))
    }

    fn is_number(&self) -> bool {
        sonic_rs::Value::is_number(self)
    }

    fn as_boolean(&self) -> Option<bool> {
        sonic_rs::Value::as_bool(self)
    }

    fn is_null(&self) -> bool {
        sonic_rs::Value::is_null(self)
    }

    fn json_type(&self) -> JsonType {
        match self.get_type() {
            sonic_rs::JsonType::Null => JsonType::Null,
            sonic_rs::JsonType::Boolean => JsonType::Boolean,
            sonic_rs::JsonType::Number => JsonType::Number,
            sonic_rs::JsonType::String => JsonType::String,
            sonic_rs::JsonType::Array => JsonType::Array,
            sonic_rs::JsonType::Object => JsonType::Object,
        }
    }

    fn string_length(&self) -> Option<u64> {
        // Most strings are ASCII, and `is_ascii` checks a word at a time.
        sonic_rs::Value::as_str(self).map(|s| {
            if s.is_ascii() {
                s.len() as u64
            } else {
                s.chars().count() as u64
            }
        })
    }

    fn equals_value(&self, expected: &Value) -> bool {
        // `enum`s and `const`s of strings are the common case: no conversion.
        match (expected, sonic_rs::Value::as_str(self)) {
            (Value::String(e), Some(s)) => e == s,
            (Value::String(_), None) => false,
            _ => jsonschema::json::cmp::equal(&to_serde(self), expected),
        }
    }

    fn to_value(&self) -> Cow<'a, Value> {
        Cow::Owned(to_serde(self))
    }

    fn identity(&self) -> Option<NodeIdentity> {
        // Nodes live in one arena for the whole validation: distinct
        // addresses, stable while the document lives.
        Some(NodeIdentity::new(
            std::ptr::from_ref::<sonic_rs::Value>(self) as usize,
        ))
    }
}

impl<'a> Object<'a, Sonic> for &'a sonic_rs::Object {
    type Node = &'a sonic_rs::Value;
    type MemberName = &'a str;
    type MembersIter = sonic_rs::value::object::Iter<'a>;

    fn len(&self) -> usize {
        sonic_rs::Object::len(self)
    }

    fn get(&self, key: &String) -> Option<&'a sonic_rs::Value> {
        sonic_rs::Object::get(self, key)
    }

    fn members(&self) -> Self::MembersIter {
        self.iter()
    }
}

impl<'a> Array<'a, Sonic> for &'a sonic_rs::Array {
    type Node = &'a sonic_rs::Value;
    type ElementsIter = std::slice::Iter<'a, sonic_rs::Value>;

    fn len(&self) -> usize {
        sonic_rs::Array::len(self)
    }

    fn elements(&self) -> Self::ElementsIter {
        self.iter()
    }
}

/// `value` as the `serde_json::Value` serde_json would have parsed from the
/// same text (objects without repeated keys: see `document::parse`).
pub fn to_serde(value: &sonic_rs::Value) -> Value {
    if let Some(s) = value.as_str() {
        return Value::String(s.to_owned());
    }
    if let Some(object) = value.as_object() {
        return Value::Object(
            object
                .iter()
                .map(|(k, v)| (k.to_owned(), to_serde(v)))
                .collect(),
        );
    }
    if let Some(array) = value.as_array() {
        return Value::Array(array.iter().map(to_serde).collect());
    }
    if let Some(b) = value.as_bool() {
        return Value::Bool(b);
    }
    if value.is_number() {
        let raw = value.as_raw_number();
        return Value::Number(match raw {
            Some(raw) => number(raw.as_str()),
            None => number(&value.to_string()),
        });
    }
    Value::Null
}
