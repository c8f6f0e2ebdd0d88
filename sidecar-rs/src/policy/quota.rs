//! Reading the quota an upstream announces, so the sidecar can hold its
//! requests until the reset instead of retrying into a 429.
//!
//! Understood: `Retry-After` on 429/503; `x-ratelimit-remaining` with
//! `x-ratelimit-reset`; and OpenAI-style `x-ratelimit-remaining-requests` /
//! `-tokens` with `x-ratelimit-reset-requests` / `-tokens` (durations such
//! as `1s`, `6m0s`, `20ms`).
//!
//! Every value is an upstream's word, not ours: one response must not be able
//! to stop an origin for years (`x-ratelimit-reset: 4102444800`) or crash a
//! call (`Retry-After: nan`). [`bounded`] is the one gate every announced
//! delay passes: non-finite values are ignored, negative ones mean "now",
//! and anything above the sidecar's `--max-upstream-hold` is clamped to it,
//! each logged with the header and the value the upstream sent.

use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::HeaderMap;

use crate::policy::retry::{upstream_wait, X_RATELIMIT_RESET};

/// The quota headers, each a remaining count and its reset, as constants:
/// every response is searched for the three counts, and a lookup by `&str`
/// parses and validates the name first (about 480 instructions each under
/// callgrind).
const QUOTA_HEADERS: [(HeaderName, HeaderName); 3] = [
    (
        HeaderName::from_static("x-ratelimit-remaining"),
        X_RATELIMIT_RESET,
    ),
    (
        HeaderName::from_static("x-ratelimit-remaining-requests"),
        HeaderName::from_static("x-ratelimit-reset-requests"),
    ),
    (
        HeaderName::from_static("x-ratelimit-remaining-tokens"),
        HeaderName::from_static("x-ratelimit-reset-tokens"),
    ),
];

/// The response headers the sidecar reads ([`exhausted_for`],
/// [`upstream_wait`]), copied out of `headers`. A call keeps these while its
/// body arrives instead of the whole head: over HTTP/1.1 hyper's header values
/// are slices of the connection's read buffer, so holding them would pin that
/// buffer (8 KiB or more) and make the body's reads take a second one.
pub fn kept_headers(headers: &HeaderMap) -> HeaderMap {
    // One pass over the head rather than a lookup per name: most of a head
    // is standard headers, which a prefix test passes over for a few
    // instructions, where each lookup hashes its name.
    let mut kept = HeaderMap::new();
    for (name, value) in headers {
        let read = *name == http::header::RETRY_AFTER
            || (name.as_str().starts_with("x-ratelimit-")
                && QUOTA_HEADERS
                    .iter()
                    .any(|(remaining, reset)| name == remaining || name == reset));
        if read {
            if let Ok(copy) = http::HeaderValue::from_bytes(value.as_bytes()) {
                kept.append(name.clone(), copy);
            }
        }
    }
    kept
}

/// How long the upstream says no request should reach it, if it says so,
/// at most `max`.
pub fn exhausted_for(
    status: u16,
    headers: &HeaderMap,
    now: SystemTime,
    max: Duration,
) -> Option<Duration> {
    let mut wait: Option<Duration> = None;
    let mut longest = |d: Duration| wait = Some(wait.map_or(d, |w| w.max(d)));
    if matches!(status, 429 | 503) {
        if let Some(d) = upstream_wait(headers, now, max) {
            longest(d);
        }
    }
    for (remaining, reset) in &QUOTA_HEADERS {
        let Some(left) = number(headers, remaining) else {
            continue;
        };
        if left > 0.0 {
            continue;
        }
        if let Some(d) = headers
            .get(reset)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| reset_after(reset.as_str(), v.trim(), now, max))
        {
            longest(d);
        }
    }
    wait.filter(|d| !d.is_zero())
}

fn number(headers: &HeaderMap, name: &HeaderName) -> Option<f64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A reset given as seconds, a Unix timestamp, or a Go-style duration.
fn reset_after(header: &str, value: &str, now: SystemTime, max: Duration) -> Option<Duration> {
    if let Ok(n) = value.parse::<f64>() {
        return bounded(header, value, delay_or_epoch(n, now), max);
    }
    bounded(header, value, go_duration(value)?, max)
}

/// Seconds from `now` for a reset that is either a delay in seconds or, when
/// large, a Unix timestamp in seconds (as GitHub and others send it).
pub(crate) fn delay_or_epoch(n: f64, now: SystemTime) -> f64 {
    if n > 1e9 {
        let now = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        n - now
    } else {
        n
    }
}

/// The one gate for a delay an upstream announced in `header` (`value` as
/// sent, `secs` as read): non-finite values are ignored, negative ones are
/// no wait, values above `max` are clamped to it. Refusals and clamps are
/// logged, naming the header and the value.
pub(crate) fn bounded(header: &str, value: &str, secs: f64, max: Duration) -> Option<Duration> {
    if !secs.is_finite() {
        tracing::warn!(
            header,
            value,
            "upstream sent a delay that is not a finite number; ignored"
        );
        return None;
    }
    if secs <= 0.0 {
        return Some(Duration::ZERO);
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d <= max => Some(d),
        _ => {
            tracing::warn!(
                header,
                value,
                max_upstream_hold = ?max,
                "upstream asked for a longer wait than --max-upstream-hold allows; clamped"
            );
            Some(max)
        }
    }
}

/// `1h2m3.5s`, `6m0s`, `20ms`, `150us`, as seconds.
fn go_duration(text: &str) -> Option<f64> {
    let mut total = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    const MAX: Duration = Duration::from_secs(600);

    #[test]
    fn the_kept_headers_are_the_ones_read_and_say_the_same() {
        let now = SystemTime::now();
        let full = headers(&[
            ("content-type", "application/json"),
            ("server", "nginx"),
            ("retry-after", "7"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "1m30s"),
            ("x-ratelimit-remaining", "12"),
        ]);
        let kept = kept_headers(&full);
        assert_eq!(kept.len(), 4);
        assert_eq!(
            exhausted_for(429, &kept, now),
            Some(Duration::from_secs(90))
        );
        assert!(kept.get("content-type").is_none() && kept.get("server").is_none());
        assert_eq!(
            exhausted_for(429, &kept, now),
            exhausted_for(429, &full, now)
        );
        assert_eq!(
            upstream_wait(&kept, now, MAX),
            upstream_wait(&full, now, MAX)
        );
        assert!(kept_headers(&headers(&[("server", "nginx")])).is_empty());
    }

    fn exhausted_for(status: u16, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
        super::exhausted_for(status, headers, now, MAX)
    }

    #[test]
    fn reads_announced_quotas() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let h = headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "2")]);
        assert_eq!(exhausted_for(200, &h, now), Some(Duration::from_secs(2)));
        let h = headers(&[("x-ratelimit-remaining", "5"), ("x-ratelimit-reset", "2")]);
        assert_eq!(exhausted_for(200, &h, now), None);
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "10"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]);
        assert_eq!(exhausted_for(200, &h, now), Some(Duration::from_secs(360)));
        let h = headers(&[("retry-after", "3")]);
        assert_eq!(exhausted_for(429, &h, now), Some(Duration::from_secs(3)));
        assert_eq!(exhausted_for(200, &h, now), None);
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(go_duration("20ms"), Some(0.02));
        assert_eq!(go_duration("1m30s"), Some(90.0));
        assert_eq!(go_duration("1.5s"), Some(1.5));
        assert_eq!(go_duration("soon"), None);
    }

    #[test]
    fn absurd_signals_are_clamped_or_ignored_never_a_panic() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let spent =
            |reset: &str| headers(&[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", reset)]);
        // 2100-01-01: clamped to the maximum hold, not 74 years.
        assert_eq!(exhausted_for(200, &spent("4102444800"), now), Some(MAX));
        assert_eq!(exhausted_for(200, &spent("1e30"), now), Some(MAX));
        assert_eq!(exhausted_for(200, &spent("86400"), now), Some(MAX));
        for bad in ["nan", "NaN", "inf", "-inf", "infinity"] {
            assert_eq!(exhausted_for(200, &spent(bad), now), None, "{bad}");
            let h = headers(&[("retry-after", bad)]);
            assert_eq!(exhausted_for(429, &h, now), None, "{bad}");
        }
        for huge in ["1e30", "1e308", "99999999999999999999"] {
            let h = headers(&[("retry-after", huge)]);
            assert_eq!(exhausted_for(503, &h, now), Some(MAX), "{huge}");
        }
        let h = headers(&[
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "876000h"),
        ]);
        assert_eq!(exhausted_for(200, &h, now), Some(MAX));
        // A reset in the past is no hold at all.
        assert_eq!(exhausted_for(200, &spent("1600000000"), now), None);
        assert_eq!(exhausted_for(200, &spent("-5"), now), None);
    }
}
