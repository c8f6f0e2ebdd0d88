//! A strict JSON reader over the received bytes: one pass, no tree, no
//! allocation except a reused buffer for the escaped strings a check reads
//! (and a copy of each escaped item of a `uniqueItems` array).
//!
//! It accepts exactly what serde_json accepts and nothing more (RFC 8259:
//! no trailing commas, no leading zeros, no control characters or invalid
//! UTF-8 in strings, no lone surrogates in `\u` escapes), so a document it
//! reads is a document the exact path would parse. Anything it refuses is
//! [`Stop::Unsure`]: the caller takes the exact path, which words the error.
//!
//! Why not a library: every parser in reach (serde_json, sonic-rs,
//! simd-json) builds a tree or a tape first, and that allocation and second
//! walk are the cost this module exists to avoid; the reader is driven by
//! the schema's plan (`walk.rs`), token by token.

use wide::u8x16;

use super::Stop;

/// What the next value is, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

pub(super) struct Reader<'a> {
    /// The document, UTF-8 checked once as a whole (`Reader::new`): a
    /// non-ASCII byte outside a string is a syntax error anyway, so the one
    /// check is exactly serde_json's, and strings are then borrowed as
    /// `str` without a check each.
    text: &'a str,
    at: usize,
    /// Decoded text of the last string read that carried escapes.
    scratch: String,
}

/// A string as read: its raw text, whether it must be decoded (it
/// carries escapes) before it is compared, whether the raw text is all
/// ASCII, and how many characters its escapes add to the decoded text's
/// (`\n` is two characters for one, a `\u` surrogate pair twelve).
///
/// Words only, no `bool`: an `Option<Raw>` then needs no tag byte (the
/// reference's null is `None`), see [`Reader::string`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Raw<'a> {
    /// Bytes, not `str`: slicing a `str` checks both ends for character
    /// boundaries, a call per string (callgrind: 3% of a walk), and most
    /// strings are only measured ([`Reader::text`] makes the `str`).
    bytes: &'a [u8],
    /// The escapes' extra characters, shifted left once; the low bit is set
    /// when the raw text is not all ASCII.
    packed: usize,
}

impl Raw<'_> {
    #[inline]
    fn escaped(&self) -> bool {
        self.packed > 1
    }

    #[inline]
    fn ascii(&self) -> bool {
        self.packed & 1 == 0
    }

    #[inline]
    fn escape_overhead(&self) -> usize {
        self.packed >> 1
    }
}

/// A member's name as a document writes it when it needs no escapes,
/// with the quotes and the colon after it (`"name":`), for reading a
/// member the walk expects in one sixteen-byte comparison
/// ([`Reader::eat_key`]).
pub(super) struct Key {
    bytes: u8x16,
    /// Bit `i` set: lane `i` is part of the token.
    mask: u32,
    len: usize,
}

impl Key {
    /// The key token of `name`, or `None` when it does not fit sixteen
    /// bytes or `name` holds a byte a document would have to escape.
    pub(super) fn new(name: &str) -> Option<Key> {
        let len = name.len() + 3;
        if len > 16 || name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
            return None;
        }
        let mut bytes = [0u8; 16];
        bytes[0] = b'"';
        bytes[1..=name.len()].copy_from_slice(name.as_bytes());
        bytes[name.len() + 1] = b'"';
        bytes[name.len() + 2] = b':';
        Some(Key {
            bytes: u8x16::new(bytes),
            mask: (1 << len) - 1,
            len,
        })
    }
}

impl<'a> Reader<'a> {
    /// A reader over `document`, or `None` when it is not UTF-8.
    pub(super) fn new(document: &'a [u8]) -> Option<Self> {
        let text = simdutf8::basic::from_utf8(document).ok()?;
        Some(Self {
            text,
            at: 0,
            scratch: String::new(),
        })
    }

    /// Where the reader is: the next byte to read.
    pub(super) fn position(&self) -> usize {
        self.at
    }

    /// The text read since `start` (a [`Reader::position`]).
    pub(super) fn since(&self, start: usize) -> &'a str {
        &self.text[start..self.at]
    }

    #[inline]
    pub(super) fn skip_whitespace(&mut self) {
        while let Some(&b) = self.text.as_bytes().get(self.at) {
            if !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.at += 1;
        }
    }

    /// Whether every byte has been read (trailing whitespace skipped).
    pub(super) fn at_end(&mut self) -> bool {
        self.skip_whitespace();
        self.at == self.text.len()
    }

    /// The kind of the value that starts at the next non-blank byte.
    #[inline]
    pub(super) fn peek_kind(&mut self) -> Result<Kind, Stop> {
        self.skip_whitespace();
        Ok(match self.text.as_bytes().get(self.at) {
            Some(b'{') => Kind::Object,
            Some(b'[') => Kind::Array,
            Some(b'"') => Kind::String,
            Some(b't' | b'f') => Kind::Bool,
            Some(b'n') => Kind::Null,
            Some(b'-' | b'0'..=b'9') => Kind::Number,
            _ => return Err(Stop::Unsure),
        })
    }

    /// Consumes `byte` after optional whitespace, or fails.
    #[inline]
    pub(super) fn expect(&mut self, byte: u8) -> Result<(), Stop> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(Stop::Unsure)
        }
    }

    /// Consumes `byte` after optional whitespace if it is next.
    #[inline]
    pub(super) fn eat(&mut self, byte: u8) -> bool {
        self.skip_whitespace();
        if self.text.as_bytes().get(self.at) == Some(&byte) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Consumes the member name and colon of `key` after optional
    /// whitespace if they are next, exactly as written there (no escapes,
    /// no space before the colon); otherwise reads nothing.
    #[inline]
    pub(super) fn eat_key(&mut self, key: &Key) -> bool {
        self.skip_whitespace();
        let Some(chunk) = self.text.as_bytes().get(self.at..self.at + 16) else {
            return false; // the document's last bytes: read the usual way
        };
        let v = u8x16::new(chunk.try_into().unwrap_or_default());
        if v.simd_eq(key.bytes).to_bitmask() & key.mask == key.mask {
            self.at += key.len;
            true
        } else {
            false
        }
    }

    /// `true`, `false` or `null` (the kind was peeked).
    pub(super) fn literal(&mut self) -> Result<Option<bool>, Stop> {
        let rest = &self.text.as_bytes()[self.at..];
        let (value, len) = if rest.starts_with(b"true") {
            (Some(true), 4)
        } else if rest.starts_with(b"false") {
            (Some(false), 5)
        } else if rest.starts_with(b"null") {
            (None, 4)
        } else {
            return Err(Stop::Unsure);
        };
        self.at += len;
        Ok(value)
    }

    /// A number's text, by the JSON grammar:
    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    pub(super) fn number(&mut self) -> Result<&'a str, Stop> {
        let bytes = self.text.as_bytes();
        let start = self.at;
        let mut i = start;
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
        match bytes.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i = digits(bytes, i + 1),
            _ => return Err(Stop::Unsure),
        }
        if bytes.get(i) == Some(&b'.') {
            let after = digits(bytes, i + 1);
            if after == i + 1 {
                return Err(Stop::Unsure);
            }
            i = after;
        }
        if matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let after = digits(bytes, i);
            if after == i {
                return Err(Stop::Unsure);
            }
            i = after;
        }
        self.at = i;
        Ok(&self.text[start..i])
    }

    /// Reads a string (the opening quote is next) and checks it as serde_json
    /// would: no raw control characters, valid escapes, `\u` surrogates in
    /// high-low pairs (UTF-8 was checked for the whole document). Escapes
    /// are decoded only when the text is asked for ([`Reader::text`]).
    ///
    /// Inlined: most strings (names, short values) end at the first byte
    /// that needs a look, and the caller then keeps the result in registers;
    /// escapes and the document's last bytes go out of line. (A plain
    /// `#[inline]` was not taken.) `None` is a string serde_json refuses, so
    /// [`Stop::Unsure`]; an `Option` rather than a `Result` because the
    /// compiler moved the `Result` through memory in pieces and stalled on
    /// reading it back (perf: a fifth of the walk, at each member name).
    #[inline(always)]
    pub(super) fn string(&mut self) -> Option<Raw<'a>> {
        let bytes = self.text.as_bytes();
        let start = self.at + 1; // after the opening quote
        let (i, high) = scan(bytes, start);
        if bytes.get(i) == Some(&b'"') {
            self.at = i + 1;
            return Some(Raw {
                bytes: &bytes[start..i],
                packed: usize::from(high != 0),
            });
        }
        self.string_rest(start, i, high != 0)
    }

    /// The rest of [`Reader::string`] from `i`, a byte that is not the
    /// closing quote: escapes, control characters, the end of the document.
    #[inline(never)]
    fn string_rest(&mut self, start: usize, mut i: usize, mut high: bool) -> Option<Raw<'a>> {
        let bytes = self.text.as_bytes();
        let mut escape_overhead = 0;
        loop {
            match bytes.get(i) {
                None => return None,
                Some(b'"') => break,
                Some(b'\\') => match bytes.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                        i += 2;
                        escape_overhead += 1;
                    }
                    Some(b'u') => {
                        let unit = hex4(bytes.get(i + 2..i + 6)).ok()?;
                        i += 6;
                        escape_overhead += 5;
                        match unit {
                            0xD800..=0xDBFF => {
                                if bytes.get(i..i + 2) != Some(b"\\u") {
                                    return None;
                                }
                                if !(0xDC00..=0xDFFF).contains(&hex4(bytes.get(i + 2..i + 6)).ok()?)
                                {
                                    return None;
                                }
                                i += 6;
                                escape_overhead += 6;
                            }
                            0xDC00..=0xDFFF => return None,
                            _ => {}
                        }
                    }
                    _ => return None,
                },
                // Control characters must be escaped.
                Some(0..=0x1f) => return None,
                // The document's last few bytes, one at a time.
                Some(&b) => {
                    high |= b >= 0x80;
                    i += 1;
                }
            }
            let (next, more_high) = scan(bytes, i);
            i = next;
            high |= more_high != 0;
        }
        self.at = i + 1;
        Some(Raw {
            bytes: &bytes[start..i],
            packed: escape_overhead << 1 | usize::from(high),
        })
    }

    /// The length of `raw`'s decoded text in characters, as jsonschema
    /// counts `minLength`/`maxLength`, without decoding it.
    #[inline]
    pub(super) fn length(raw: &Raw<'_>) -> usize {
        let raw_length = if raw.ascii() {
            raw.bytes.len()
        } else {
            // Characters are the bytes that do not continue one (UTF-8 was
            // checked).
            raw.bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count()
        };
        raw_length - raw.escape_overhead()
    }

    /// The decoded text of `raw`: borrowed from the document, or (when it
    /// carries escapes) decoded into the reader's buffer.
    #[inline]
    pub(super) fn text<'r>(&'r mut self, raw: &Raw<'r>) -> &'r str {
        // Where `raw` starts in the document: its bytes are a slice of it.
        let start = raw.bytes.as_ptr() as usize - self.text.as_ptr() as usize;
        let text = &self.text[start..start + raw.bytes.len()];
        if !raw.escaped() {
            return text;
        }
        decode(text, &mut self.scratch);
        &self.scratch
    }
}

/// The decoded text of a string's raw text (between its quotes, as read by
/// [`Reader::string`]), owned.
pub(super) fn decoded(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    decode(raw, &mut out);
    out
}

/// Decodes the escapes of `raw` (checked by [`Reader::string`]) into `out`.
fn decode(raw: &str, out: &mut String) {
    let bytes = raw.as_bytes();
    out.clear();
    let mut i = 0;
    while let Some(offset) = memchr::memchr(b'\\', &bytes[i..]) {
        out.push_str(&raw[i..i + offset]);
        i += offset;
        let c = match bytes[i + 1] {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = hex4(bytes.get(i + 2..i + 6)).unwrap_or_default();
                i += 6;
                let scalar = if (0xD800..=0xDBFF).contains(&unit) {
                    let low = hex4(bytes.get(i + 2..i + 6)).unwrap_or_default();
                    i += 6;
                    0x10000 + ((unit - 0xD800) << 10) + (low.wrapping_sub(0xDC00) & 0x3FF)
                } else {
                    unit
                };
                out.push(char::from_u32(scalar).unwrap_or(char::REPLACEMENT_CHARACTER));
                continue;
            }
            // `"`, `\\`, `/`: the character itself.
            other => char::from(other),
        };
        out.push(c);
        i += 2;
    }
    out.push_str(&raw[i..]);
}

/// From `i`, sixteen bytes at a time, to the first byte that is a quote, a
/// backslash or a control character (below 0x20), or to where fewer than
/// sixteen bytes are left: that position, and non-zero when a byte passed
/// over is not ASCII.
#[inline(always)]
fn scan(bytes: &[u8], mut i: usize) -> (usize, u32) {
    let quote = u8x16::splat(b'"');
    let backslash = u8x16::splat(b'\\');
    let below_space = u8x16::splat(0x1f);
    let mut high = 0;
    while let Some(chunk) = bytes.get(i..i + 16) {
        let v = u8x16::new(chunk.try_into().unwrap_or_default());
        // `min(v, 0x1f) == v` is `v <= 0x1f`, unsigned.
        let hits =
            (v.simd_eq(quote) | v.simd_eq(backslash) | v.min(below_space).simd_eq(v)).to_bitmask();
        // Lanes with the top bit set: the bytes that are not ASCII.
        let top = v.to_bitmask();
        if hits != 0 {
            let before = hits.trailing_zeros();
            high |= top & ((1 << before) - 1);
            return (i + before as usize, high);
        }
        high |= top;
        i += 16;
    }
    (i, high)
}

fn digits(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// Four hex digits as a number, or refused.
fn hex4(hex: Option<&[u8]>) -> Result<u32, Stop> {
    let hex = hex.ok_or(Stop::Unsure)?;
    hex.iter().try_fold(0, |n, &h| {
        let digit = match h {
            b'0'..=b'9' => h - b'0',
            b'a'..=b'f' => h - b'a' + 10,
            b'A'..=b'F' => h - b'A' + 10,
            _ => return Err(Stop::Unsure),
        };
        Ok((n << 4) | u32::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings are scanned sixteen bytes at a time: every kind of byte that
    /// needs a look, at every offset around those steps, and with the
    /// document ending right after the string or later, must read as
    /// serde_json reads it (or be refused where serde_json refuses it).
    #[test]
    fn strings_read_as_serde_json_reads_them_at_every_offset() {
        let pieces = [
            "a",
            "é",
            "€",
            "😀",
            "\\n",
            "\\\"",
            "\\\\",
            "\\u00e9",
            "\\ud83d\\ude00",
            // Refused by both:
            "\u{1}",
            "\u{1f}",
            "\\x",
            "\\ud800",
            "\\udc00",
            "\\u12",
        ];
        for len in 0..40 {
            for at in 0..=len {
                for piece in pieces {
                    let body = format!("{}{piece}{}", "x".repeat(at), "y".repeat(len - at));
                    let expected: Result<String, _> = serde_json::from_str(&format!("\"{body}\""));
                    for tail in ["", ",", " 1234567890123456789", ",\"é€\""] {
                        let document = format!("\"{body}\"{tail}");
                        let mut reader = Reader::new(document.as_bytes()).expect("UTF-8");
                        match (reader.string(), &expected) {
                            (Some(raw), Ok(text)) => {
                                assert_eq!(
                                    Reader::length(&raw),
                                    text.chars().count(),
                                    "{document}"
                                );
                                assert_eq!(reader.position(), body.len() + 2, "{document}");
                                assert_eq!(reader.text(&raw), text, "{document}");
                            }
                            (None, Err(_)) => {}
                            (got, expected) => {
                                panic!("{document:?}: read {got:?}, serde_json {expected:?}")
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn an_unterminated_string_is_refused_wherever_it_stops() {
        for len in 0..40 {
            let document = format!("\"{}", "x".repeat(len));
            assert!(Reader::new(document.as_bytes())
                .expect("UTF-8")
                .string()
                .is_none());
            let escaped = format!("\"{}\\", "x".repeat(len));
            assert!(Reader::new(escaped.as_bytes())
                .expect("UTF-8")
                .string()
                .is_none());
        }
    }
}
