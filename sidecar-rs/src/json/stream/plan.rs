//! A schema compiled into a plan the streaming walk follows: per node, the
//! JSON types it admits and the checks it makes, with `$ref`s resolved to
//! node numbers (recursive schemas become cycles).
//!
//! Only keywords whose meaning the walk reproduces exactly are planned
//! (the structural ones: `type`, `properties`, `required`,
//! `additionalProperties`, `items`, `minItems`/`maxItems`, `uniqueItems`,
//! local `$ref`,
//! `anyOf`/`oneOf` whose branches admit disjoint types; and on scalars
//! `minLength`/`maxLength`, integer bounds, `enum`/`const` of strings,
//! booleans and null, and `pattern` where a DFA can run it; see
//! `pattern.rs`). Scalar keywords beyond those (`format`,
//! `multipleOf`, numeric `enum`s, fractional bounds, ...) are left to a
//! jsonschema validator compiled for that node's scalar keywords alone, so
//! they keep jsonschema's exact semantics. A schema using anything else
//! gets no plan, and its documents take the tree path.

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;

use serde_json::{Map, Value};

use super::lexer::Key;
use super::pattern::Pattern;

/// Index of a node in [`Plan::nodes`].
pub(super) type NodeId = usize;

/// The node that admits anything (a `true` schema, or no schema).
pub(super) const ANY: NodeId = 0;
/// The node that admits nothing (a `false` schema).
pub(super) const NEVER: NodeId = 1;

/// JSON types as bits. A number is admitted by `NUMBER`, or by `INTEGER`
/// when its text is an integer.
pub(super) mod types {
    pub const NULL: u8 = 1;
    pub const BOOLEAN: u8 = 2;
    pub const INTEGER: u8 = 4;
    pub const NUMBER: u8 = 8;
    pub const STRING: u8 = 16;
    pub const ARRAY: u8 = 32;
    pub const OBJECT: u8 = 64;
    pub const ALL: u8 = 127;
}

/// A validator for scalar instances, built by the caller under the same
/// options as the schema's own validator.
pub type Leaf = jsonschema::Validator;

pub(super) enum Node {
    Any,
    Never,
    /// `anyOf`/`oneOf` whose branches admit disjoint types: the value's type
    /// picks the one branch that can match. Indexed by [`super::lexer::Kind`].
    Dispatch([NodeId; 6]),
    Checks(Box<Checks>),
}

#[derive(Default)]
pub(super) struct Checks {
    pub types: u8,
    /// Scalars go to this validator instead of the checks below.
    pub leaf: Option<Leaf>,
    pub min_length: Option<u64>,
    pub max_length: Option<u64>,
    pub bounds: Bounds,
    /// `enum`/`const` members, all strings, booleans or null.
    pub one_of_values: Option<Vec<Value>>,
    /// `pattern`, for strings.
    pub pattern: Option<Pattern>,
    pub properties: Vec<(String, NodeId)>,
    /// `properties[i]`'s name as a document writes it, when it needs no
    /// escapes and is short ([`Key`]).
    pub keys: Vec<Option<Key>>,
    /// `successors[i]`: the member documents put after `properties[i]`
    /// (the last slot: the first member), learned as they are read.
    /// Property names come sorted (serde_json's map), not in the order
    /// an upstream writes them, and one tool's documents keep one order,
    /// so after the first document the walk reads each expected member
    /// with one comparison ([`super::lexer::Reader::eat_key`]). Written
    /// only when a guess missed: in steady state the walk's threads only
    /// read it, so it costs no cache traffic between them.
    pub successors: Vec<AtomicU32>,
    /// Bit `i` set: `properties[i]` is required.
    pub required: u64,
    pub additional: NodeId,
    pub items: NodeId,
    pub min_items: Option<u64>,
    pub max_items: Option<u64>,
    /// `uniqueItems: true`: judged here for strings, booleans and null;
    /// other items leave the document unsure.
    pub unique_items: bool,
}

/// Integer bounds, exactly representable as `f64` (|b| <= 2^53).
#[derive(Default)]
pub(super) struct Bounds {
    pub minimum: Option<i64>,
    pub maximum: Option<i64>,
    pub exclusive_minimum: Option<i64>,
    pub exclusive_maximum: Option<i64>,
}

impl Bounds {
    pub(super) fn is_empty(&self) -> bool {
        self.minimum.is_none()
            && self.maximum.is_none()
            && self.exclusive_minimum.is_none()
            && self.exclusive_maximum.is_none()
    }
}

pub struct Plan {
    pub(super) nodes: Vec<Node>,
    pub(super) root: NodeId,
}

/// Keywords that never change whether a document is valid.
const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "default",
    "examples",
    "$comment",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$defs",
    "definitions",
];

/// Keywords that only ever look at a scalar, left to a [`Leaf`] when the
/// walk does not check them itself.
const SCALAR: &[&str] = &[
    "type",
    "enum",
    "const",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "contentEncoding",
    "contentMediaType",
];

/// Keywords the walk checks on containers.
const STRUCTURAL: &[&str] = &[
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "uniqueItems",
];

/// Largest |bound| checked without a leaf: every integer up to it is an
/// exact `f64`, so comparing a rounded instance against it cannot err.
const EXACT_BOUND: u64 = 1 << 53;

struct Compiler<'s, 'f> {
    root: &'s Value,
    /// Drafts 4 to 7 ignore every keyword beside a `$ref`.
    ref_overrides: bool,
    leaf: &'f dyn Fn(&Value) -> Option<Leaf>,
    nodes: Vec<Node>,
    by_pointer: HashMap<String, NodeId>,
    /// `$ref`s being followed: a chain of refs back to one of them is a
    /// cycle with no schema in it.
    following: Vec<String>,
}

impl Plan {
    /// The plan for `schema`, or `None` when it uses anything the walk does
    /// not reproduce exactly. `ref_overrides`: the draft is 4, 6 or 7.
    /// `leaf` compiles a schema of scalar keywords under the schema's own
    /// options (it gets the root's `$schema`, if any).
    pub fn compile(
        schema: &Value,
        ref_overrides: bool,
        leaf: &dyn Fn(&Value) -> Option<Leaf>,
    ) -> Option<Plan> {
        let mut compiler = Compiler {
            root: schema,
            ref_overrides,
            leaf,
            nodes: vec![Node::Any, Node::Never],
            by_pointer: HashMap::new(),
            following: Vec::new(),
        };
        if let Value::Object(map) = schema {
            // A `$schema` that is not a string is jsonschema's error to word.
            if map.get("$schema").is_some_and(|s| !s.is_string()) {
                return None;
            }
        }
        let root = compiler.node(schema, "", true)?;
        Some(Plan {
            nodes: compiler.nodes,
            root,
        })
    }
}

impl Compiler<'_, '_> {
    /// The node for the schema at `pointer` (`schema` is what it points at).
    fn node(&mut self, schema: &Value, pointer: &str, is_root: bool) -> Option<NodeId> {
        if let Some(&id) = self.by_pointer.get(pointer) {
            return Some(id);
        }
        let map = match schema {
            Value::Bool(true) => return Some(ANY),
            Value::Bool(false) => return Some(NEVER),
            Value::Object(map) => map,
            _ => return None,
        };
        if let Some(target) = map.get("$ref") {
            let others = map.keys().any(|k| k != "$ref" && !is_inert(k, is_root));
            if others && !self.ref_overrides {
                return None;
            }
            let target = target.as_str()?;
            let target_pointer = local_pointer(target)?;
            let resolved = self.root.pointer(&target_pointer)?;
            if target_pointer == pointer || self.following.contains(&target_pointer) {
                return None;
            }
            self.following.push(pointer.to_owned());
            let id = self.node(resolved, &target_pointer, target_pointer.is_empty());
            self.following.pop();
            let id = id?;
            self.by_pointer.insert(pointer.to_owned(), id);
            return Some(id);
        }
        // Reserve the id before the children, so refs back here find it.
        let id = self.nodes.len();
        self.nodes.push(Node::Any);
        self.by_pointer.insert(pointer.to_owned(), id);
        let node = self.compile_map(map, pointer, is_root)?;
        self.nodes[id] = node;
        Some(id)
    }

    fn compile_map(
        &mut self,
        map: &Map<String, Value>,
        pointer: &str,
        is_root: bool,
    ) -> Option<Node> {
        let mut branches = None;
        for key in map.keys() {
            let known = is_inert(key, is_root)
                || SCALAR.contains(&key.as_str())
                || STRUCTURAL.contains(&key.as_str());
            if key == "anyOf" || key == "oneOf" {
                if branches.is_some() {
                    return None;
                }
                branches = Some(key.as_str());
            } else if !known {
                return None;
            }
        }
        if let Some(keyword) = branches {
            // Beside the branches, only annotations: the value is then
            // judged by its branch alone.
            if map.keys().any(|k| k != keyword && !is_inert(k, is_root)) {
                return None;
            }
            return self.dispatch(map[keyword].as_array()?, &format!("{pointer}/{keyword}"));
        }
        let mut checks = Checks {
            types: types::ALL,
            additional: ANY,
            items: ANY,
            ..Checks::default()
        };
        if let Some(t) = map.get("type") {
            checks.types = type_bits(t)?;
        }
        self.scalars(map, &mut checks)?;
        if let Some(properties) = map.get("properties") {
            for (name, schema) in properties.as_object()? {
                let child = format!("{pointer}/properties/{}", escape(name));
                let id = self.node(schema, &child, false)?;
                checks.properties.push((name.clone(), id));
            }
        }
        if let Some(additional) = map.get("additionalProperties") {
            checks.additional = self.node(
                additional,
                &format!("{pointer}/additionalProperties"),
                false,
            )?;
        }
        if let Some(required) = map.get("required") {
            for name in required.as_array()? {
                let name = name.as_str()?;
                let index = match checks.properties.iter().position(|(n, _)| n == name) {
                    Some(i) => i,
                    None => {
                        // Required but not declared: judged as an additional
                        // property, tracked for presence.
                        checks.properties.push((name.to_owned(), checks.additional));
                        checks.properties.len() - 1
                    }
                };
                if index >= 64 {
                    return None;
                }
                checks.required |= 1 << index;
            }
        }
        if let Some(items) = map.get("items") {
            if items.is_array() {
                return None; // the tuple form (drafts before 2020-12)
            }
            checks.items = self.node(items, &format!("{pointer}/items"), false)?;
        }
        checks.min_items = count(map, "minItems")?;
        checks.max_items = count(map, "maxItems")?;
        checks.unique_items = match map.get("uniqueItems") {
            None => false,
            Some(unique) => unique.as_bool()?,
        };
        checks.keys = checks.properties.iter().map(|(n, _)| Key::new(n)).collect();
        // At first, each member is expected after the one before it.
        checks.successors = (1..=checks.properties.len())
            .chain([0])
            .map(|i| AtomicU32::new(u32::try_from(i).unwrap_or(0)))
            .collect();
        Some(Node::Checks(Box::new(checks)))
    }

    /// The scalar keywords: checked by the walk where it can be exact,
    /// otherwise all of them go to one leaf validator.
    fn scalars(&mut self, map: &Map<String, Value>, checks: &mut Checks) -> Option<()> {
        let mut needs_leaf = false;
        checks.min_length = count(map, "minLength")?;
        checks.max_length = count(map, "maxLength")?;
        for (key, slot) in [
            ("minimum", &mut checks.bounds.minimum),
            ("maximum", &mut checks.bounds.maximum),
            ("exclusiveMinimum", &mut checks.bounds.exclusive_minimum),
            ("exclusiveMaximum", &mut checks.bounds.exclusive_maximum),
        ] {
            if let Some(bound) = map.get(key) {
                match bound.as_i64().filter(|b| b.unsigned_abs() <= EXACT_BOUND) {
                    Some(b) => *slot = Some(b),
                    None => needs_leaf = true,
                }
            }
        }
        let members = match (map.get("enum"), map.get("const")) {
            (Some(_), Some(_)) => return None,
            (Some(Value::Array(members)), None) => Some(members.clone()),
            (Some(_), None) => return None,
            (None, Some(member)) => Some(vec![member.clone()]),
            (None, None) => None,
        };
        if let Some(members) = members {
            if members.iter().any(|m| m.is_array() || m.is_object()) {
                return None; // containers compared by value: not planned
            }
            if members.iter().any(Value::is_number) {
                needs_leaf = true;
            }
            checks.one_of_values = Some(members);
        }
        needs_leaf |= [
            "format",
            "multipleOf",
            "contentEncoding",
            "contentMediaType",
        ]
        .iter()
        .any(|k| map.contains_key(*k));
        // A leaf judges every scalar keyword, `pattern` included: its DFA is
        // built only where there is no leaf.
        if let (Some(pattern), false) = (map.get("pattern"), needs_leaf) {
            checks.pattern = pattern.as_str().and_then(Pattern::compile);
            needs_leaf = checks.pattern.is_none();
        }
        if needs_leaf {
            let mut scalar: Map<String, Value> = map
                .iter()
                .filter(|(k, _)| SCALAR.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Some(draft) = self.root.get("$schema") {
                scalar.insert("$schema".to_owned(), draft.clone());
            }
            checks.leaf = Some((self.leaf)(&Value::Object(scalar))?);
        }
        Some(())
    }

    /// `anyOf`/`oneOf` branches that admit disjoint sets of types: the type
    /// of a value selects its one candidate branch (so `oneOf` is `anyOf`).
    fn dispatch(&mut self, branches: &[Value], pointer: &str) -> Option<Node> {
        let mut table = [NEVER; 6];
        let mut taken = 0u8;
        for (i, branch) in branches.iter().enumerate() {
            let id = self.node(branch, &format!("{pointer}/{i}"), false)?;
            let admitted = match &self.nodes[id] {
                Node::Checks(checks) => checks.types,
                Node::Never => 0,
                // A branch admitting anything (or itself a dispatch, or one
                // still being compiled) is not disjoint enough to plan.
                Node::Any | Node::Dispatch(_) => return None,
            };
            // Integers and other numbers share a token: one branch for both.
            let kinds = kinds_of(admitted);
            if kinds & taken != 0 {
                return None;
            }
            taken |= kinds;
            for (kind, slot) in table.iter_mut().enumerate() {
                if kinds & (1 << kind) != 0 {
                    *slot = id;
                }
            }
        }
        Some(Node::Dispatch(table))
    }
}

/// The token kinds (`lexer::Kind` order: null, bool, number, string,
/// array, object) a type set admits, as bits.
fn kinds_of(admitted: u8) -> u8 {
    let mut kinds = 0;
    if admitted & types::NULL != 0 {
        kinds |= 1;
    }
    if admitted & types::BOOLEAN != 0 {
        kinds |= 2;
    }
    if admitted & (types::INTEGER | types::NUMBER) != 0 {
        kinds |= 4;
    }
    if admitted & types::STRING != 0 {
        kinds |= 8;
    }
    if admitted & types::ARRAY != 0 {
        kinds |= 16;
    }
    if admitted & types::OBJECT != 0 {
        kinds |= 32;
    }
    kinds
}

/// A keyword that does not change validity here: an annotation, or at the
/// root `$schema` and `$id` (which only name the document; `#...` refs
/// still resolve within it).
fn is_inert(key: &str, is_root: bool) -> bool {
    ANNOTATIONS.contains(&key) || (is_root && (key == "$schema" || key == "$id"))
}

fn type_bits(value: &Value) -> Option<u8> {
    let one = |name: &str| -> Option<u8> {
        Some(match name {
            "null" => types::NULL,
            "boolean" => types::BOOLEAN,
            "integer" => types::INTEGER,
            "number" => types::NUMBER,
            "string" => types::STRING,
            "array" => types::ARRAY,
            "object" => types::OBJECT,
            _ => return None,
        })
    };
    match value {
        Value::String(name) => one(name),
        Value::Array(names) => names
            .iter()
            .try_fold(0, |bits, n| Some(bits | one(n.as_str()?)?)),
        _ => None,
    }
}

/// A non-negative integer keyword (`minLength`, `maxItems`, ...). `None`
/// (no plan) when present but not a plain integer: a draft may read `2.0`
/// as 2, and jsonschema words that; the tree path keeps that reading.
fn count(map: &Map<String, Value>, key: &str) -> Option<Option<u64>> {
    match map.get(key) {
        None => Some(None),
        Some(v) => v.as_u64().map(Some),
    }
}

/// The JSON Pointer a same-document `$ref` names (`#` or `#/...`), or
/// `None` for anything else (another document, an anchor, percent-encoded
/// text: not planned).
fn local_pointer(reference: &str) -> Option<String> {
    let fragment = reference.strip_prefix('#')?;
    if fragment.is_empty() {
        return Some(String::new());
    }
    if !fragment.starts_with('/') || fragment.contains('%') {
        return None;
    }
    Some(fragment.to_owned())
}

/// `name` as a JSON Pointer token.
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}
