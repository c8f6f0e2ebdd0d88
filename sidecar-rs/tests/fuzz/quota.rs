//! Target (c): the headers an upstream sends about its quota. Any status,
//! any header value and any clock must give a wait or none, never a panic.
//!
//! Seeds are response heads: `HTTP/1.1 429` then `name: value` lines.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::sample::select;
use sidecar::policy::{quota, retry};

use crate::corpus;
use crate::strategies::nasty_string;

const HEADERS: &[&str] = &[
    "retry-after",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
];

/// Header values that parse as something: numbers of every shape, Go
/// durations, HTTP dates.
const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "1.5",
    "-0",
    "0.0001",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "infinity",
    "1e30",
    "-1e30",
    "1e308",
    "1e309",
    "1e-400",
    "86400",
    "86401",
    "999999999",
    "1000000001",
    "1700000003",
    "4102444800",
    "18446744073709551615",
    "18446744073709551616",
    "1e19",
    "1e20",
    "9223372036854775807",
    "1s",
    "6m0s",
    "20ms",
    "150us",
    "150µs",
    "1h2m3.5s",
    "1.5.5s",
    "99999999999999999999h",
    "1e400h",
    "s",
    "m",
    "1x",
    "1h1",
    ".s",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "Thu, 01 Jan 1970 00:00:00 GMT",
    "Sunday, 06-Nov-94 08:49:37 GMT",
    "Sun Nov  6 08:49:37 1994",
    "",
    " ",
];

#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<(String, Bytes)>,
    /// Seconds since the Unix epoch of the sidecar's clock.
    now_secs: u64,
    now_nanos: u32,
}

/// A header value's bytes, printed as text.
#[derive(Clone)]
pub struct Bytes(Vec<u8>);

impl std::fmt::Debug for Bytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

fn header_value() -> impl Strategy<Value = Bytes> {
    let value = prop_oneof![
        6 => select(VALUES).prop_map(|v| v.as_bytes().to_vec()),
        2 => (select(VALUES), select(VALUES)).prop_map(|(a, b)| format!("{a}{b}").into_bytes()),
        2 => nasty_string().prop_map(String::into_bytes),
        1 => prop::collection::vec(any::<u8>(), 0..24),
    ];
    value.prop_map(Bytes)
}

fn response() -> impl Strategy<Value = Response> {
    (
        prop_oneof![select(&[200u16, 429, 503][..]), 100u16..1000],
        prop::collection::vec(
            (select(HEADERS).prop_map(str::to_owned), header_value()),
            0..6,
        ),
        prop_oneof![
            Just(1_700_000_000u64),
            0u64..4_200_000_000,
            Just(0u64),
            // Far in the future: what a wrong clock reads.
            Just(253_402_300_799u64),
        ],
        0u32..1_000_000_000,
    )
        .prop_map(|(status, headers, now_secs, now_nanos)| Response {
            status,
            headers,
            now_secs,
            now_nanos,
        })
}

fn header_map(pairs: &[(String, Bytes)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        // What no HTTP parser would hand over is not an input.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value.0),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The longest hold an upstream may announce (the sidecar's default
/// `--max-upstream-hold`).
const MAX_HOLD: Duration = Duration::from_secs(600);

fn check(response: &Response) -> Result<(), TestCaseError> {
    let headers = header_map(&response.headers);
    let now = SystemTime::UNIX_EPOCH + Duration::new(response.now_secs, response.now_nanos);
    // The property is that these return: any panic fails the target.
    let wait = retry::upstream_wait(&headers, now, MAX_HOLD);
    let exhausted = quota::exhausted_for(response.status, &headers, now, MAX_HOLD);
    if let Some(d) = exhausted {
        prop_assert!(!d.is_zero(), "exhausted_for returned a zero hold");
    }
    for d in wait.iter().chain(exhausted.iter()) {
        prop_assert!(*d <= MAX_HOLD, "a hold of {d:?} is longer than the maximum");
    }
    if matches!(response.status, 429 | 503) {
        if let (Some(w), Some(e)) = (wait, exhausted) {
            prop_assert!(e >= w, "the hold {e:?} is shorter than Retry-After {w:?}");
        }
    }
    Ok(())
}

fn parse_seed(text: &str) -> Response {
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a quota seed starts with a status line: HTTP/1.1 429");
    let headers = lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.split_once(':').expect("name: value");
            (
                name.trim().to_ascii_lowercase(),
                Bytes(value.trim().as_bytes().to_vec()),
            )
        })
        .collect();
    Response {
        status,
        headers,
        now_secs: 1_700_000_000,
        now_nanos: 0,
    }
}

#[test]
fn quota_headers() {
    let seeds: Vec<(String, Response)> = corpus::load("quota")
        .into_iter()
        .map(|(name, text)| {
            let r = parse_seed(&text);
            (name, r)
        })
        .collect();
    let picks: Vec<Response> = seeds.iter().map(|(_, r)| r.clone()).collect();
    let strategy = prop_oneof![
        3 => response(),
        // A seed with one header's value replaced.
        1 => (select(picks), any::<prop::sample::Index>(), header_value()).prop_map(
            |(mut r, i, value)| {
                if !r.headers.is_empty() {
                    let i = i.index(r.headers.len());
                    r.headers[i].1 = value;
                }
                r
            }
        ),
    ];
    crate::fuzz("quota", 4096, &seeds, strategy, check);
}
