//! The egress guard: which addresses a tool's requests may reach.
//!
//! Pod-level NetworkPolicy cannot tell the brain's traffic from the sidecar's,
//! and the brain runs LLM-written plans, so the sidecar checks every address
//! itself. Loopback, private, link-local (cloud metadata at 169.254.169.254),
//! shared, multicast and unspecified addresses are refused unless the tool
//! allowlists them.
//!
//! The check runs inside the DNS resolver handed to the HTTP client, so the
//! connection goes to exactly the addresses that were checked: there is no
//! window for DNS rebinding. IP-literal hosts (which skip DNS) are checked when
//! the config loads and, for redirects, in the redirect policy.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Address ranges a tool may reach despite being restricted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

/// Why an address was refused; carried through the HTTP client's error chain
/// so the call can report EGRESS_DENIED.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to addresses this tool may not reach ({addrs}); allowlist them under the tool's egress.allow")]
pub struct EgressDenied {
    pub host: String,
    pub addrs: String,
}

impl EgressPolicy {
    /// Parses CIDR strings (`10.0.0.0/8`, or a bare address for one host).
    pub fn parse(allow: &[String]) -> Result<Self, String> {
        let allow = allow
            .iter()
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{s:?} is not a CIDR such as 10.0.0.0/8"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { allow })
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        !is_restricted(ip) || self.allow.iter().any(|net| net.contains(&ip))
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are judged as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses that are not the public internet.
pub fn is_restricted(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0 // "this network"
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80 // link-local
        }
    }
}

/// A resolver that drops every address the policy refuses.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: EgressPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if allowed.is_empty() {
                let addrs = resolved
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(EgressDenied { host, addrs }) as Box<_>);
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// The redirect policy for a tool: none, or up to `max` hops, each to an
/// http(s) URL whose IP-literal host (if any) the policy permits. Hosts given
/// by name go through [`GuardedResolver`] like the first request.
///
/// With `same_origin`, a hop may not leave the first request's origin: the
/// HTTP client re-sends every request header on a redirect, and strips only
/// the standard credential headers (`Authorization`, `Cookie`) when the host
/// changes, so a key in a header such as `X-Api-Key` would go to whatever
/// origin the upstream names.
pub fn redirect_policy(
    max: u8,
    policy: EgressPolicy,
    same_origin: bool,
) -> reqwest::redirect::Policy {
    if max == 0 {
        return reqwest::redirect::Policy::none();
    }
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > usize::from(max) {
            return attempt.error(format!("more than {max} redirects"));
        }
        let url = attempt.url().clone();
        let first = attempt.previous().first().map(url::Url::origin);
        if same_origin && first.is_some_and(|first| first != url.origin()) {
            return attempt.error(CredentialsWouldFollow);
        }
        if !matches!(url.scheme(), "http" | "https") {
            return attempt.error(format!("redirect to a {} URL", url.scheme()));
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        match literal {
            Some(ip) if !policy.permits(ip) => attempt.error(EgressDenied {
                host: ip.to_string(),
                addrs: ip.to_string(),
            }),
            _ => attempt.follow(),
        }
    })
}

/// A redirect refused because the credentials in the request headers would
/// go along to another origin.
#[derive(Debug, thiserror::Error)]
#[error("a redirect to another origin is not followed: this tool sends credentials in request headers, which would go along")]
pub struct CredentialsWouldFollow;

/// The [`CredentialsWouldFollow`] inside an HTTP client error, if any.
pub fn credentials_would_follow_in(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<CredentialsWouldFollow>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The `EgressDenied` inside an HTTP client error, if that is what it was.
pub fn denial_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a EgressDenied> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(denied) = e.downcast_ref::<EgressDenied>() {
            return Some(denied);
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn restricted_ranges() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_restricted(ip(s)), "{s}");
        }
        for s in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(!is_restricted(ip(s)), "{s}");
        }
    }

    #[test]
    fn allowlist_opens_only_what_it_names() {
        let p = EgressPolicy::parse(&["127.0.0.0/8".into(), "10.9.9.9".into()]).unwrap();
        assert!(p.permits(ip("127.0.0.1")));
        assert!(p.permits(ip("::ffff:127.0.0.1")));
        assert!(p.permits(ip("10.9.9.9")));
        assert!(!p.permits(ip("10.9.9.8")));
        assert!(!p.permits(ip("169.254.169.254")));
        assert!(EgressPolicy::parse(&["nope".into()]).is_err());
    }

    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_to_loopback() {
        let strict = GuardedResolver::new(EgressPolicy::default());
        let err = strict
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("localhost must be refused");
        let denied = denial_in(err.as_ref()).expect("an EgressDenied");
        assert_eq!(denied.host, "localhost");

        let open = GuardedResolver::new(
            EgressPolicy::parse(&["127.0.0.0/8".into(), "::1".into()]).unwrap(),
        );
        let addrs: Vec<_> = open
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
    }
}
