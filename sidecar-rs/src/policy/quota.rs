//! Reading the quota an upstream announces, so the sidecar can hold its
//! requests until the reset instead of retrying into a 429.
//!
//! Understood: `Retry-After` on 429/503; `x-ratelimit-remaining` with
//! `x-ratelimit-reset`; and OpenAI-style `x-ratelimit-remaining-requests` /
//! `-tokens` with `x-ratelimit-reset-requests` / `-tokens` (durations such
//! as `1s`, `6m0s`, `20ms`).

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use crate::policy::retry::upstream_wait;

/// How long the upstream says no request should reach it, if it says so.
pub fn exhausted_for(status: u16, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut wait: Option<Duration> = None;
    let mut longest = |d: Duration| wait = Some(wait.map_or(d, |w| w.max(d)));
    if matches!(status, 429 | 503) {
        if let Some(d) = upstream_wait(headers, now) {
            longest(d);
        }
    }
    for (remaining, reset) in [
        ("x-ratelimit-remaining", "x-ratelimit-reset"),
        (
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        ("x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"),
    ] {
        let Some(left) = number(headers, remaining) else {
            continue;
        };
        if left > 0.0 {
            continue;
        }
        if let Some(d) = headers
            .get(reset)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| reset_after(v.trim(), now))
        {
            longest(d);
        }
    }
    wait.filter(|d| !d.is_zero())
}

fn number(headers: &HeaderMap, name: &str) -> Option<f64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// A reset given as seconds, a Unix timestamp, or a Go-style duration.
fn reset_after(value: &str, now: SystemTime) -> Option<Duration> {
    if let Ok(n) = value.parse::<f64>() {
        if n > 1e9 {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(n);
            return Some(at.duration_since(now).unwrap_or_default());
        }
        return Some(Duration::from_secs_f64(n.clamp(0.0, 86_400.0)));
    }
    go_duration(value)
}

/// `1h2m3.5s`, `6m0s`, `20ms`, `150us`.
fn go_duration(text: &str) -> Option<Duration> {
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
    Some(Duration::from_secs_f64(total.clamp(0.0, 86_400.0)))
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
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("soon"), None);
    }
}
