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
#[derive(Debug, Clone, Copy)]
pub(super) struct Raw<'a> {
    text: &'a str,
    escaped: bool,
    ascii: bool,
    escape_overhead: usize,
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
    pub(super) fn string(&mut self) -> Result<Raw<'a>, Stop> {
        let bytes = self.text.as_bytes();
        let start = self.at + 1; // after the opening quote
        let mut i = start;
        let mut escape_overhead = 0;
        // The high bits of every byte passed over: zero for ASCII text.
        let mut high = 0u64;
        loop {
            // Eight bytes at a time up to the first that needs a look.
            while let Some(word) = bytes.get(i..i + 8) {
                let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
                let hits = needs_a_look(word);
                if hits != 0 {
                    let before = hits.trailing_zeros() / 8;
                    high |= word & ((1u64 << (8 * before)) - 1);
                    i += before as usize;
                    break;
                }
                high |= word;
                i += 8;
            }
            match bytes.get(i) {
                None => return Err(Stop::Unsure),
                Some(b'"') => break,
                Some(b'\\') => match bytes.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                        i += 2;
                        escape_overhead += 1;
                    }
                    Some(b'u') => {
                        let unit = hex4(bytes.get(i + 2..i + 6))?;
                        i += 6;
                        escape_overhead += 5;
                        match unit {
                            0xD800..=0xDBFF => {
                                if bytes.get(i..i + 2) != Some(b"\\u") {
                                    return Err(Stop::Unsure);
                                }
                                if !(0xDC00..=0xDFFF).contains(&hex4(bytes.get(i + 2..i + 6))?) {
                                    return Err(Stop::Unsure);
                                }
                                i += 6;
                                escape_overhead += 6;
                            }
                            0xDC00..=0xDFFF => return Err(Stop::Unsure),
                            _ => {}
                        }
                    }
                    _ => return Err(Stop::Unsure),
                },
                // Control characters must be escaped.
                Some(0..=0x1f) => return Err(Stop::Unsure),
                // The last few bytes of the document, one at a time.
                Some(&b) => {
                    high |= u64::from(b);
                    i += 1;
                }
            }
        }
        self.at = i + 1;
        Ok(Raw {
            text: &self.text[start..i],
            escaped: escape_overhead > 0,
            ascii: high & 0x8080_8080_8080_8080 == 0,
            escape_overhead,
        })
    }

    /// The length of `raw`'s decoded text in characters, as jsonschema
    /// counts `minLength`/`maxLength`, without decoding it.
    #[inline]
    pub(super) fn length(raw: &Raw<'_>) -> usize {
        let raw_length = if raw.ascii {
            raw.text.len()
        } else {
            raw.text.chars().count()
        };
        raw_length - raw.escape_overhead
    }

    /// The decoded text of `raw`: borrowed from the document, or (when it
    /// carries escapes) decoded into the reader's buffer.
    #[inline]
    pub(super) fn text<'r>(&'r mut self, raw: &Raw<'r>) -> &'r str {
        if !raw.escaped {
            return raw.text;
        }
        decode(raw.text, &mut self.scratch);
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

/// The bytes of `word` (little-endian) that are a quote, a backslash or a
/// control character (below 0x20), as their high bits. The classic SWAR
/// tests (a byte is zero after xor-ing with the one sought; a byte is below
/// n): bits past the first hit may be false alarms, the lowest set bit is
/// always the first real hit.
fn needs_a_look(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let quote = zero(word ^ (ONES * u64::from(b'"')));
    let backslash = zero(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    quote | backslash | control
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
