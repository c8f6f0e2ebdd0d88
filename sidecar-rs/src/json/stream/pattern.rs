//! `pattern` for the walk: the schema's ECMA-262 regex, translated exactly
//! as jsonschema translates it (`jsonschema-regex`), compiled into a dense
//! DFA with the `regex` crate's default syntax (what jsonschema's `regex`
//! engine builds), and searched unanchored, as `Regex::is_match` does.
//!
//! Why not the validator's own `regex::Regex`: each match takes a search
//! cache from a pool shared by the threads, and a string that carries a
//! pattern went through a `serde_json::Value` and the whole validator;
//! together a tenth of a search call's CPU (perf, 256 agents). A dense DFA
//! needs no cache. Patterns a DFA cannot run within the size bound (or at
//! all: Unicode word boundaries, lookarounds, backreferences) get no
//! `Pattern`, and their node keeps the jsonschema leaf.

use regex_automata::dfa::{dense, Automaton};
use regex_automata::util::primitives::StateID;
use regex_automata::util::{start, syntax};
use regex_automata::Anchored;

/// Bytes a pattern's DFA (and its construction) may take; past it, the
/// jsonschema leaf judges the pattern. Each pattern's DFA lives as long as
/// its tool: typical ones take 0.2-6 KiB, `^.{1,64}$` 65 KiB and
/// `^\p{L}+$` 152 KiB, so a tools file of many patterns stays small.
const SIZE_LIMIT: usize = 256 << 10;

pub(crate) struct Pattern {
    dfa: dense::DFA<Vec<u32>>,
    /// The unanchored start state at the start of a text: every string a
    /// pattern sees is a whole text, so it is the same for all of them.
    start: StateID,
}

impl Pattern {
    /// The DFA of the ECMA-262 `pattern`, or `None` when one cannot be
    /// built within [`SIZE_LIMIT`].
    pub(crate) fn compile(pattern: &str) -> Option<Pattern> {
        let translated = jsonschema_regex::to_rust_regex(pattern).ok()?;
        let dfa = dense::Builder::new()
            .syntax(syntax::Config::new())
            .configure(
                dense::Config::new()
                    .dfa_size_limit(Some(SIZE_LIMIT))
                    .determinize_size_limit(Some(SIZE_LIMIT)),
            )
            .build(&translated)
            .ok()?;
        let start = dfa
            .start_state(&start::Config::new().anchored(Anchored::No))
            .ok()?;
        Some(Pattern { dfa, start })
    }

    /// Whether `text` contains a match; `None` when the DFA gave up on it
    /// (the caller then leaves the document to the tree path).
    ///
    /// The DFA is stepped by hand, as regex-automata's `Automaton` docs
    /// show, rather than through `try_search_fwd`: the search's set-up
    /// (its input, the start state's look-behind, prefilter and match
    /// bookkeeping) cost more than the walk over a short string such as an
    /// id (callgrind: about 380 instructions for a 10-byte one, now a few
    /// per byte).
    #[inline]
    pub(crate) fn is_match(&self, text: &str) -> Option<bool> {
        let dfa = &self.dfa;
        let mut state = self.start;
        for &byte in text.as_bytes() {
            state = dfa.next_state(state, byte);
            if dfa.is_special_state(state) {
                if dfa.is_match_state(state) {
                    return Some(true);
                }
                if dfa.is_dead_state(state) {
                    return Some(false);
                }
                if dfa.is_quit_state(state) {
                    return None;
                }
                // A start or an accelerated state: read on.
            }
        }
        state = dfa.next_eoi_state(state);
        if dfa.is_quit_state(state) {
            return None;
        }
        Some(dfa.is_match_state(state))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Against jsonschema's own `pattern` (the `regex` engine the sidecar
    /// configures): ECMA-262 classes, anchors, Unicode, non-BMP text.
    #[test]
    fn matches_as_jsonschema_matches() {
        let patterns = [
            "^doc-[0-9]{6}$",
            "^[a-z][a-z0-9_-]*$",
            "\\d+",
            "^\\w+$",
            "^\\s*$",
            "^\\S+$",
            "a|b",
            "^.$",
            "^🐲*$",
            "^\\p{L}+$",
            "[^\\x00-\\x7F]",
            "^\\cC$",
            "\\bword\\b",
            "(?=a)a",
        ];
        let texts = [
            "",
            "doc-000123",
            "doc-12345",
            "Doc-000123",
            "abc_1-2",
            "1abc",
            "٣",
            "123",
            " \t",
            "\u{3000}",
            "\u{85}",
            "é",
            "🐲🐲",
            "🐲",
            "a word here",
            "\u{3}",
            "\n",
            "ab",
        ];
        let mut compared = 0;
        for pattern in patterns {
            let validator = jsonschema::options()
                .with_pattern_options(jsonschema::PatternOptions::regex())
                .build(&json!({"pattern": pattern}))
                .or_else(|_| jsonschema::validator_for(&json!({"pattern": pattern})));
            let Some(compiled) = Pattern::compile(pattern) else {
                continue; // left to the leaf
            };
            let validator = validator.expect("jsonschema compiles what the DFA compiles");
            compared += 1;
            for text in texts {
                assert_eq!(
                    compiled.is_match(text),
                    Some(validator.is_valid(&json!(text))),
                    "{pattern:?} on {text:?}"
                );
            }
        }
        // All but the lookaround and the (Unicode) word boundaries run as a
        // DFA.
        assert_eq!(compared, patterns.len() - 2);
    }

    #[test]
    fn what_a_dfa_cannot_run_is_left_to_the_leaf() {
        assert!(Pattern::compile("(?=a)a").is_none(), "lookaround");
        assert!(Pattern::compile("(a)\\1").is_none(), "backreference");
        assert!(
            Pattern::compile("\\bword").is_none(),
            "Unicode word boundary"
        );
        assert!(Pattern::compile("[").is_none(), "not a regex");
        // Too large for the bound: 2^k states for "the k-th character from
        // the end is an a".
        assert!(Pattern::compile("a[ab]{24}$").is_none(), "size bound");
        assert!(Pattern::compile("^doc-[0-9]{6}$").is_some());
    }
}
