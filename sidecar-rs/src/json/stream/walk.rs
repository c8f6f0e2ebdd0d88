//! The walk: reads a document once, token by token, checking each value
//! against its plan node as it goes, and the nesting depth on the way.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::atomic;

use serde_json::Value;

use super::lexer::{self, Kind, Reader};
use super::plan::{types, Bounds, Checks, Node, NodeId, Plan, ANY};
use super::Stop;

pub(super) struct Walk<'p, 'a> {
    plan: &'p Plan,
    reader: Reader<'a>,
    max_depth: usize,
}

impl<'p, 'a> Walk<'p, 'a> {
    pub(super) fn new(plan: &'p Plan, reader: Reader<'a>, max_depth: usize) -> Self {
        Self {
            plan,
            reader,
            max_depth,
        }
    }

    /// The whole document: one value, then nothing but whitespace.
    pub(super) fn document(&mut self) -> Result<(), Stop> {
        self.value(self.plan.root, 0)?;
        if self.reader.at_end() {
            Ok(())
        } else {
            Err(Stop::Unsure)
        }
    }

    /// Inlined into the member and element loops (and the containers kept
    /// out of line): most values are scalars, and a call per value, whose
    /// prologue saves the walk's registers, was 7% of a walk's instructions
    /// on the search document (callgrind: 973,304 -> 902,650).
    #[inline(always)]
    fn value(&mut self, id: NodeId, depth: usize) -> Result<(), Stop> {
        let kind = self.reader.peek_kind()?;
        let Node::Checks(checks) = &self.plan.nodes[id] else {
            return self.unchecked(id, kind, depth);
        };
        match kind {
            Kind::String => self.string(checks),
            Kind::Number => self.number(checks),
            Kind::Object => self.object(checks, depth),
            Kind::Array => self.array(checks, depth),
            Kind::Bool | Kind::Null => self.literal(checks),
        }
    }

    /// A value whose node makes no checks of its own.
    #[inline(never)]
    fn unchecked(&mut self, id: NodeId, kind: Kind, depth: usize) -> Result<(), Stop> {
        match &self.plan.nodes[id] {
            Node::Any => self.skip(kind, depth),
            Node::Dispatch(table) => self.value(table[kind as usize], depth),
            Node::Never => Err(Stop::Invalid),
            Node::Checks(_) => unreachable!("a node with checks is walked by `value`"),
        }
    }

    /// A value nothing constrains: read for syntax and depth only.
    fn skip(&mut self, kind: Kind, depth: usize) -> Result<(), Stop> {
        match kind {
            Kind::Object => self.members(depth, None, |walk, _, depth| walk.value(ANY, depth)),
            Kind::Array => self.elements(depth, |walk, depth| walk.value(ANY, depth)),
            Kind::String => self.reader.string().map(drop).ok_or(Stop::Unsure),
            Kind::Number => self.reader.number().map(drop),
            Kind::Null | Kind::Bool => self.reader.literal().map(drop),
        }
    }

    #[inline(never)]
    fn object(&mut self, checks: &Checks, depth: usize) -> Result<(), Stop> {
        // Planned `enum`/`const` members are scalars.
        if checks.types & types::OBJECT == 0 || checks.one_of_values.is_some() {
            return Err(Stop::Invalid);
        }
        let mut seen = 0u64;
        self.members(depth, Some(checks), |walk, index, depth| {
            let node = match index {
                Some(i) => {
                    if i < 64 {
                        seen |= 1 << i;
                    }
                    checks.properties[i].1
                }
                None => checks.additional,
            };
            walk.value(node, depth)
        })?;
        if seen & checks.required != checks.required {
            return Err(Stop::Invalid);
        }
        Ok(())
    }

    #[inline(never)]
    fn array(&mut self, checks: &Checks, depth: usize) -> Result<(), Stop> {
        if checks.types & types::ARRAY == 0 || checks.one_of_values.is_some() {
            return Err(Stop::Invalid);
        }
        let mut count = 0u64;
        let max = checks.max_items.unwrap_or(u64::MAX);
        // Hashed: an array may hold many thousands of items.
        let mut seen: HashSet<(Kind, Cow<'a, str>)> = HashSet::new();
        self.elements(depth, |walk, depth| {
            count += 1;
            if count > max {
                return Err(Stop::Invalid);
            }
            let kind = walk.reader.peek_kind()?;
            let start = walk.reader.position();
            walk.value(checks.items, depth)?;
            if checks.unique_items {
                // Items equal as JSON exactly when their decoded texts are
                // equal: strings, booleans, null. Numbers (`1` is `1.0`)
                // and containers are left to the tree paths.
                let text = walk.reader.since(start);
                let item = match kind {
                    Kind::String => {
                        let inner = &text[1..text.len() - 1];
                        if inner.contains('\\') {
                            Cow::Owned(lexer::decoded(inner))
                        } else {
                            Cow::Borrowed(inner)
                        }
                    }
                    Kind::Bool | Kind::Null => Cow::Borrowed(text),
                    _ => return Err(Stop::Unsure),
                };
                if !seen.insert((kind, item)) {
                    return Err(Stop::Invalid);
                }
            }
            Ok(())
        })?;
        if checks.min_items.is_some_and(|min| count < min) {
            return Err(Stop::Invalid);
        }
        Ok(())
    }

    /// One level deeper, refused past the tool's limit (the tree path then
    /// words the error).
    fn enter(&self, depth: usize) -> Result<usize, Stop> {
        if depth >= self.max_depth {
            return Err(Stop::Unsure);
        }
        Ok(depth + 1)
    }

    /// An object's members: `each` gets the index of the member's name in
    /// `lookup`'s properties (when it is one) and the depth inside.
    fn members(
        &mut self,
        depth: usize,
        lookup: Option<&Checks>,
        mut each: impl FnMut(&mut Self, Option<usize>, usize) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        let depth = self.enter(depth)?;
        self.reader.expect(b'{')?;
        if self.reader.eat(b'}') {
            return Ok(());
        }
        // The member expected first, then after each one read, as the
        // schema's `successors` predict (the last slot: before the first).
        let mut previous = lookup.map_or(0, |checks| checks.properties.len());
        loop {
            let index = match lookup.filter(|c| !c.properties.is_empty()) {
                Some(checks) => {
                    let guess =
                        checks.successors[previous].load(atomic::Ordering::Relaxed) as usize;
                    let expected = checks.keys.get(guess).and_then(Option::as_ref);
                    if expected.is_some_and(|key| self.reader.eat_key(key)) {
                        Some(guess)
                    } else {
                        let found = self.name(Some(checks))?;
                        if let Some(i) = found.filter(|&i| i != guess) {
                            let i = u32::try_from(i).unwrap_or(u32::MAX);
                            checks.successors[previous].store(i, atomic::Ordering::Relaxed);
                        }
                        found
                    }
                }
                None => self.name(None)?,
            };
            if let Some(i) = index {
                previous = i;
            }
            each(self, index, depth)?;
            if !self.reader.eat(b',') {
                return self.reader.expect(b'}');
            }
        }
    }

    /// A member's name and the colon after it: the index of the name in
    /// `lookup`'s properties, when it is one.
    fn name(&mut self, lookup: Option<&Checks>) -> Result<Option<usize>, Stop> {
        if self.reader.peek_kind()? != Kind::String {
            return Err(Stop::Unsure);
        }
        let Some(raw) = self.reader.string() else {
            return Err(Stop::Unsure);
        };
        let index = lookup.and_then(|checks| {
            let name = self.reader.text(&raw);
            checks.properties.iter().position(|(n, _)| same(n, name))
        });
        self.reader.expect(b':')?;
        Ok(index)
    }

    /// An array's elements: `each` gets the depth inside.
    fn elements(
        &mut self,
        depth: usize,
        mut each: impl FnMut(&mut Self, usize) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        let depth = self.enter(depth)?;
        self.reader.expect(b'[')?;
        if self.reader.eat(b']') {
            return Ok(());
        }
        loop {
            each(self, depth)?;
            if !self.reader.eat(b',') {
                return self.reader.expect(b']');
            }
        }
    }

    #[inline(always)]
    fn string(&mut self, checks: &Checks) -> Result<(), Stop> {
        let Some(raw) = self.reader.string() else {
            return Err(Stop::Unsure);
        };
        if let Some(leaf) = &checks.leaf {
            let text = self.reader.text(&raw);
            return judge(leaf, &Value::String(text.to_owned()));
        }
        if checks.types & types::STRING == 0 {
            return Err(Stop::Invalid);
        }
        if checks.min_length.is_some() || checks.max_length.is_some() {
            let length = Reader::length(&raw) as u64;
            if checks.min_length.is_some_and(|min| length < min)
                || checks.max_length.is_some_and(|max| length > max)
            {
                return Err(Stop::Invalid);
            }
        }
        if let Some(members) = &checks.one_of_values {
            let text = self.reader.text(&raw);
            if !members
                .iter()
                .any(|m| m.as_str().is_some_and(|m| same(m, text)))
            {
                return Err(Stop::Invalid);
            }
        }
        match &checks.pattern {
            Some(pattern) => match pattern.is_match(self.reader.text(&raw)) {
                Some(true) => Ok(()),
                Some(false) => Err(Stop::Invalid),
                None => Err(Stop::Unsure),
            },
            None => Ok(()),
        }
    }

    #[inline(always)]
    fn number(&mut self, checks: &Checks) -> Result<(), Stop> {
        let text = self.reader.number()?;
        if let Some(leaf) = &checks.leaf {
            let number = text.parse().map_err(|_| Stop::Unsure)?;
            return judge(leaf, &Value::Number(number));
        }
        if checks.types & types::NUMBER == 0 {
            if checks.types & types::INTEGER == 0 {
                return Err(Stop::Invalid);
            }
            if !is_integer_literal(text) {
                // `1.0` and `1e2` are integers to some drafts.
                return Err(Stop::Unsure);
            }
        }
        if checks.one_of_values.is_some() {
            // Planned enums hold no numbers (those go to a leaf).
            return Err(Stop::Invalid);
        }
        within(text, &checks.bounds)
    }

    /// `true`, `false` or `null`.
    #[inline(never)]
    fn literal(&mut self, checks: &Checks) -> Result<(), Stop> {
        let literal = self.reader.literal()?;
        let value = literal.map_or(Value::Null, Value::Bool);
        if let Some(leaf) = &checks.leaf {
            return judge(leaf, &value);
        }
        let bit = if literal.is_some() {
            types::BOOLEAN
        } else {
            types::NULL
        };
        if checks.types & bit == 0 {
            return Err(Stop::Invalid);
        }
        match &checks.one_of_values {
            Some(members) if !members.contains(&value) => Err(Stop::Invalid),
            _ => Ok(()),
        }
    }
}

/// String equality without a call to `memcmp`: property names are mostly
/// a few bytes, where the call costs more than the comparison (perf put
/// ~9% of a walk in it).
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| x == y)
}

fn judge(leaf: &jsonschema::Validator, value: &Value) -> Result<(), Stop> {
    if leaf.is_valid(value) {
        Ok(())
    } else {
        Err(Stop::Invalid)
    }
}

fn is_integer_literal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Whether the number `text` meets `bounds`, judged exactly or not at all.
fn within(text: &str, bounds: &Bounds) -> Result<(), Stop> {
    if bounds.is_empty() {
        return Ok(());
    }
    let number = Reading::of(text);
    let fails = |bound: Option<i64>, ok: fn(Ordering) -> bool| -> Result<bool, Stop> {
        match bound {
            None => Ok(false),
            Some(b) => number.compare(b).map(|o| !ok(o)).ok_or(Stop::Unsure),
        }
    };
    if fails(bounds.minimum, Ordering::is_ge)?
        || fails(bounds.maximum, Ordering::is_le)?
        || fails(bounds.exclusive_minimum, Ordering::is_gt)?
        || fails(bounds.exclusive_maximum, Ordering::is_lt)?
    {
        return Err(Stop::Invalid);
    }
    Ok(())
}

/// A JSON number read once for comparing with integer bounds.
enum Reading {
    /// Without an exponent: sign, integer part, and whether any fraction
    /// digit is not 0. Exact.
    Decimal {
        negative: bool,
        whole: u64,
        has_fraction: bool,
    },
    /// With an exponent: the nearest `f64` (rounding is monotonic and a
    /// bound is an exact `f64`, so only a tie is unsure).
    Float(f64),
    /// Neither can be told exactly (an integer part past 18 digits, or a
    /// value past `f64`'s range).
    Unknown,
}

impl Reading {
    /// `text` is a number as the reader's grammar admits it.
    fn of(text: &str) -> Reading {
        let bytes = text.as_bytes();
        let negative = bytes.first() == Some(&b'-');
        let mut i = usize::from(negative);
        let mut whole = 0u64;
        while let Some(&b) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
            if i - usize::from(negative) >= 18 {
                return Reading::Unknown;
            }
            whole = whole * 10 + u64::from(b - b'0');
            i += 1;
        }
        let mut has_fraction = false;
        if bytes.get(i) == Some(&b'.') {
            i += 1;
            while let Some(&b) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
                has_fraction |= b != b'0';
                i += 1;
            }
        }
        if i == bytes.len() {
            return Reading::Decimal {
                negative,
                whole,
                has_fraction,
            };
        }
        match text.parse::<f64>() {
            Ok(value) if value.is_finite() => Reading::Float(value),
            _ => Reading::Unknown,
        }
    }

    /// This number against the integer `bound` (|bound| <= 2^53), or `None`
    /// when that cannot be told exactly.
    fn compare(&self, bound: i64) -> Option<Ordering> {
        match *self {
            Reading::Decimal {
                negative,
                whole,
                has_fraction,
            } => {
                let whole = i128::from(whole);
                // |value| = whole + f, 0 <= f < 1, f > 0 exactly when
                // has_fraction.
                let magnitude_vs = |c: i128| match whole.cmp(&c) {
                    Ordering::Equal if has_fraction => Ordering::Greater,
                    // Greater, or Less: whole + f < whole + 1 <= c.
                    other => other,
                };
                let bound = i128::from(bound);
                Some(if negative {
                    magnitude_vs(-bound).reverse()
                } else {
                    magnitude_vs(bound)
                })
            }
            Reading::Float(value) => {
                #[allow(clippy::cast_precision_loss)] // |bound| <= 2^53: exact
                let bound = bound as f64;
                value.partial_cmp(&bound).filter(|o| o.is_ne())
            }
            Reading::Unknown => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_with_integer_bounds_exactly_or_not_at_all() {
        use Ordering::{Equal, Greater, Less};
        for (text, bound, expected) in [
            ("5", 5, Some(Equal)),
            ("5.0", 5, Some(Equal)),
            ("5.000000000000000000001", 5, Some(Greater)),
            ("4.99999999999999999999", 5, Some(Less)),
            ("-0", 0, Some(Equal)),
            ("-0.0001", 0, Some(Less)),
            ("0.0001", 0, Some(Greater)),
            ("-5.5", -5, Some(Less)),
            ("-4.5", -5, Some(Greater)),
            ("-5.0", -5, Some(Equal)),
            ("123456789012345678901", 0, None),
            ("999999999999999999", 0, Some(Greater)),
            ("-1234567890123456789.5", 0, None),
            ("1e2", 100, None),
            ("1e2", 99, Some(Greater)),
            ("1.5e-400", 0, None),
            ("-1e400", 0, None),
            ("9007199254740993", 9_007_199_254_740_992, Some(Greater)),
        ] {
            assert_eq!(
                Reading::of(text).compare(bound),
                expected,
                "{text} vs {bound}"
            );
        }
    }
}
