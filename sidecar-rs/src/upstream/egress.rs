//! The egress guard: which addresses and ports a tool's requests may reach,
//! and which origins its redirects may go to.
//!
//! Pod-level NetworkPolicy cannot tell the brain's traffic from the sidecar's,
//! and the brain runs LLM-written plans, so the sidecar checks every address
//! itself. An address is *public* when the IANA special-purpose registries
//! (`IPV4_SPECIAL`, `IPV6_SPECIAL` below) do not list it or list it as globally
//! reachable, and every IPv4 address embedded in it (NAT64, 6to4, Teredo,
//! IPv4-compatible, IPv4-translated) is public too. Everything else
//! (loopback, private, link-local with cloud metadata at 169.254.169.254,
//! shared, benchmarking, reserved, documentation, multicast, ...) is refused
//! unless the tool's `egress.allow` names it, optionally with ports.
//!
//! The check runs inside the DNS resolver handed to the HTTP client, so the
//! connection goes to exactly the addresses that were checked: there is no
//! window for DNS rebinding. The connector tells a resolver the host name but
//! not the port, so each resolver is made for one port ([`GuardedResolver::new`]) and
//! [`crate::upstream::client`] sends every request through the client for its
//! port. IP-literal hosts (which skip DNS) are checked when the config loads
//! and, for redirects, before each hop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::{Arc, LazyLock};

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;
use ipnet::IpNet;

use crate::config::spec::{AllowEntry, PortSpec, RedirectSpec};

/// What a tool may reach although it is not public.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct EgressPolicy {
    allow: Vec<AllowRule>,
}

/// One `egress.allow` entry: addresses, and the ports they may be reached on
/// (`None`: every port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct AllowRule {
    net: IpNet,
    ports: Option<Vec<RangeInclusive<u16>>>,
}

impl AllowRule {
    /// Whether this rule admits `ip` on `port`; `port: None` asks for every
    /// port at once (a connection whose port is not known in advance).
    fn covers(&self, ip: IpAddr, port: Option<u16>) -> bool {
        self.net.contains(&ip)
            && match (&self.ports, port) {
                (None, _) => true,
                (Some(ranges), Some(port)) => ranges.iter().any(|r| r.contains(&port)),
                (Some(_), None) => false,
            }
    }
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
    /// Compiles `egress.allow`. Errors are `(field, message)`, the field
    /// naming the entry (`egress.allow[1]`).
    pub fn parse(allow: &[AllowEntry]) -> Result<Self, (String, String)> {
        let allow = allow
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                let field = format!("egress.allow[{i}]");
                match entry {
                    AllowEntry::Text(text) => parse_rule_text(text),
                    AllowEntry::Rule(rule) => {
                        let net = parse_net(&rule.cidr).ok_or_else(|| {
                            format!("cidr {:?} is not an address or CIDR such as 10.0.0.0/8", rule.cidr)
                        });
                        let ports = match &rule.ports {
                            None => Ok(None),
                            Some(list) if list.is_empty() => Err(
                                "ports is empty; list at least one port, or leave ports out to allow every port"
                                    .to_owned(),
                            ),
                            Some(list) => list.iter().map(port_range).collect::<Result<_, _>>().map(Some),
                        };
                        net.and_then(|net| Ok(AllowRule { net, ports: ports? }))
                    }
                }
                .map_err(|m| (field, m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { allow })
    }

    /// Whether a connection to `ip` on `port` is allowed.
    pub fn permits(&self, ip: IpAddr, port: u16) -> bool {
        self.judge(ip, Some(port))
    }

    /// Whether `ip` may be reached on every port (for connections whose port
    /// the resolver cannot know).
    pub fn permits_every_port(&self, ip: IpAddr) -> bool {
        self.judge(ip, None)
    }

    /// The address and every IPv4 address embedded in it must each be public
    /// or allowlisted: allowing `64:ff9b::/96` does not open the metadata
    /// service at `64:ff9b::a9fe:a9fe`.
    fn judge(&self, ip: IpAddr, port: Option<u16>) -> bool {
        let admitted = |ip: IpAddr| is_public(ip) || self.allow.iter().any(|r| r.covers(ip, port));
        let ip = canonical(ip);
        admitted(ip) && embedded_ipv4(ip).all(|v4| admitted(IpAddr::V4(v4)))
    }
}

/// `"10.0.0.0/8"`, `"10.1.2.3"`, `"::1"`, `"127.0.0.1:8080"`,
/// `"127.0.0.0/8:80,8000-8099"`, `"[::1]:8080"`, `"[fd00::/8]:443"`.
fn parse_rule_text(text: &str) -> Result<AllowRule, String> {
    let s = text.trim();
    let bad_addr = |a: &str| {
        format!("{text:?}: {a:?} is not an address or CIDR such as 10.0.0.0/8 (with ports: \"127.0.0.1:8080\", \"[::1]:8080\")")
    };
    let (addr, ports) = if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{text:?}: '[' is not closed by ']'"))?;
        match after {
            "" => (inside, None),
            _ => (
                inside,
                Some(after.strip_prefix(':').ok_or_else(|| {
                    format!("{text:?}: expected ':' and ports after ']', e.g. \"[::1]:8080\"")
                })?),
            ),
        }
    } else if let Some(net) = parse_net(s) {
        return Ok(AllowRule { net, ports: None });
    } else {
        match s.rsplit_once(':') {
            Some((addr, _)) if addr.contains(':') => {
                return Err(format!(
                "{text:?}: write an IPv6 address with ports in brackets, e.g. \"[fd00::/8]:443\""
            ))
            }
            Some((addr, ports)) => (addr, Some(ports)),
            None => return Err(bad_addr(s)),
        }
    };
    let net = parse_net(addr).ok_or_else(|| bad_addr(addr))?;
    let ports = ports
        .map(|p| {
            p.split(',')
                .map(|item| port_range(&PortSpec::Text(item.trim().to_owned())))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()
        .map_err(|m| format!("{text:?}: {m}"))?;
    Ok(AllowRule { net, ports })
}

/// A CIDR, or one address as a /32 or /128.
fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .ok()
}

/// `443`, `"443"` or `"8000-8099"`.
fn port_range(spec: &PortSpec) -> Result<RangeInclusive<u16>, String> {
    let port = |s: &str| match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{s:?} is not a port (1-65535)")),
    };
    match spec {
        PortSpec::Number(n) => port(&n.to_string()).map(|p| p..=p),
        PortSpec::Text(text) => match text.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                if lo > hi {
                    return Err(format!("port range {text:?} is empty"));
                }
                Ok(lo..=hi)
            }
            None => port(text).map(|p| p..=p),
        },
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) are IPv4 addresses on a
/// dual-stack socket, and are judged as such.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses that are not the public internet (see [`EgressPolicy::judge`]).
pub fn is_restricted(ip: IpAddr) -> bool {
    !EgressPolicy::default().permits_every_port(ip)
}

/// Whether the address itself (not what it embeds) is globally reachable:
/// the most specific registry entry covering it says so, or none covers it.
fn is_public(ip: IpAddr) -> bool {
    SPECIAL
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .is_none_or(|(_, reach)| *reach == Reach::Global)
}

/// The IPv4 addresses an IPv6 address carries for a transition mechanism;
/// the connection (or the translator it goes through) ends up there.
fn embedded_ipv4(ip: IpAddr) -> impl Iterator<Item = Ipv4Addr> {
    let found: [Option<Ipv4Addr>; 2] = match ip {
        IpAddr::V4(_) => [None, None],
        IpAddr::V6(v6) => embedded_in_v6(v6),
    };
    found.into_iter().flatten()
}

fn embedded_in_v6(v6: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let s = v6.segments();
    let o = v6.octets();
    let v4 = |b: [u8; 4]| Some(Ipv4Addr::from(b));
    let last32 = v4([o[12], o[13], o[14], o[15]]);
    match s {
        // NAT64 well-known prefix, RFC 6052: 64:ff9b::a.b.c.d
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => [last32, None],
        // NAT64 local-use prefix, RFC 8215: operators carve /96s out of
        // 64:ff9b:1::/48, the IPv4 address in the last 32 bits.
        [0x64, 0xff9b, 1, ..] => [last32, None],
        // The unspecified and loopback addresses are not IPv4-compatible ones.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => [None, None],
        // IPv4-compatible (deprecated, RFC 4291 2.5.5.1): ::a.b.c.d
        [0, 0, 0, 0, 0, 0, _, _] => [last32, None],
        // IPv4-translated (SIIT, RFC 2765): ::ffff:0:a.b.c.d
        [0, 0, 0, 0, 0xffff, 0, _, _] => [last32, None],
        // 6to4, RFC 3056: 2002:AABB:CCDD::/48 for a.b.c.d
        [0x2002, ..] => [v4([o[2], o[3], o[4], o[5]]), None],
        // Teredo, RFC 4380: 2001:0:SERVER:flags:port:CLIENT, the client
        // address with every bit inverted.
        [0x2001, 0, ..] => [
            v4([o[4], o[5], o[6], o[7]]),
            v4([!o[12], !o[13], !o[14], !o[15]]),
        ],
        _ => [None, None],
    }
}

/// The registries' "Globally Reachable" column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Global,
    NotGlobal,
    /// "N/A" in the registry (6to4, Teredo, deprecated blocks): treated as
    /// not globally reachable; the IPv4 address such a block embeds is
    /// judged on its own.
    NotApplicable,
}

/// One registry row: block, name, defining RFC, globally reachable.
type Entry = (&'static str, &'static str, &'static str, Reach);

use Reach::{Global, NotApplicable as NA, NotGlobal};

/// IANA IPv4 Special-Purpose Address Registry
/// (<https://www.iana.org/assignments/iana-ipv4-special-registry>), every
/// entry, as published in 2025 (last change: 192.88.99.2/32, 2023). Keep it
/// in step with the registry; `registries_parse` checks the rows.
const IPV4_SPECIAL: &[Entry] = &[
    ("0.0.0.0/8", "\"This network\"", "RFC 791", NotGlobal),
    (
        "0.0.0.0/32",
        "\"This host on this network\"",
        "RFC 1122",
        NotGlobal,
    ),
    ("10.0.0.0/8", "Private-Use", "RFC 1918", NotGlobal),
    (
        "100.64.0.0/10",
        "Shared Address Space",
        "RFC 6598",
        NotGlobal,
    ),
    ("127.0.0.0/8", "Loopback", "RFC 1122", NotGlobal),
    ("169.254.0.0/16", "Link Local", "RFC 3927", NotGlobal),
    ("172.16.0.0/12", "Private-Use", "RFC 1918", NotGlobal),
    (
        "192.0.0.0/24",
        "IETF Protocol Assignments",
        "RFC 6890",
        NotGlobal,
    ),
    (
        "192.0.0.0/29",
        "IPv4 Service Continuity Prefix",
        "RFC 7335",
        NotGlobal,
    ),
    ("192.0.0.8/32", "IPv4 dummy address", "RFC 7600", NotGlobal),
    (
        "192.0.0.9/32",
        "Port Control Protocol Anycast",
        "RFC 7723",
        Global,
    ),
    (
        "192.0.0.10/32",
        "Traversal Using Relays around NAT Anycast",
        "RFC 8155",
        Global,
    ),
    (
        "192.0.0.170/32",
        "NAT64/DNS64 Discovery",
        "RFC 8880",
        NotGlobal,
    ),
    (
        "192.0.0.171/32",
        "NAT64/DNS64 Discovery",
        "RFC 8880",
        NotGlobal,
    ),
    (
        "192.0.2.0/24",
        "Documentation (TEST-NET-1)",
        "RFC 5737",
        NotGlobal,
    ),
    ("192.31.196.0/24", "AS112-v4", "RFC 7535", Global),
    ("192.52.193.0/24", "AMT", "RFC 7450", Global),
    (
        "192.88.99.0/24",
        "Deprecated (6to4 Relay Anycast)",
        "RFC 7526",
        NA,
    ),
    (
        "192.88.99.2/32",
        "6a44-relay anycast address",
        "RFC 6751",
        NA,
    ),
    ("192.168.0.0/16", "Private-Use", "RFC 1918", NotGlobal),
    (
        "192.175.48.0/24",
        "Direct Delegation AS112 Service",
        "RFC 7534",
        Global,
    ),
    ("198.18.0.0/15", "Benchmarking", "RFC 2544", NotGlobal),
    (
        "198.51.100.0/24",
        "Documentation (TEST-NET-2)",
        "RFC 5737",
        NotGlobal,
    ),
    (
        "203.0.113.0/24",
        "Documentation (TEST-NET-3)",
        "RFC 5737",
        NotGlobal,
    ),
    ("240.0.0.0/4", "Reserved", "RFC 1112", NotGlobal),
    (
        "255.255.255.255/32",
        "Limited Broadcast",
        "RFC 919",
        NotGlobal,
    ),
    // Not special-purpose but never a unicast upstream: multicast, from the
    // IANA IPv4 Address Space Registry.
    ("224.0.0.0/4", "Multicast", "RFC 5771", NotGlobal),
];

/// IANA IPv6 Special-Purpose Address Registry
/// (<https://www.iana.org/assignments/iana-ipv6-special-registry>), every
/// entry, as published in 2025 (last change: 100:0:0:1::/64, RFC 9780).
const IPV6_SPECIAL: &[Entry] = &[
    ("::1/128", "Loopback Address", "RFC 4291", NotGlobal),
    ("::/128", "Unspecified Address", "RFC 4291", NotGlobal),
    (
        "::ffff:0:0/96",
        "IPv4-mapped Address",
        "RFC 4291",
        NotGlobal,
    ),
    ("64:ff9b::/96", "IPv4-IPv6 Translat.", "RFC 6052", Global),
    (
        "64:ff9b:1::/48",
        "IPv4-IPv6 Translat.",
        "RFC 8215",
        NotGlobal,
    ),
    (
        "100::/64",
        "Discard-Only Address Block",
        "RFC 6666",
        NotGlobal,
    ),
    ("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780", NotGlobal),
    (
        "2001::/23",
        "IETF Protocol Assignments",
        "RFC 2928",
        NotGlobal,
    ),
    ("2001::/32", "TEREDO", "RFC 4380", NA),
    (
        "2001:1::1/128",
        "Port Control Protocol Anycast",
        "RFC 7723",
        Global,
    ),
    (
        "2001:1::2/128",
        "Traversal Using Relays around NAT Anycast",
        "RFC 8155",
        Global,
    ),
    (
        "2001:1::3/128",
        "DNS-SD Service Registration Protocol Anycast",
        "RFC 9665",
        Global,
    ),
    ("2001:2::/48", "Benchmarking", "RFC 5180", NotGlobal),
    ("2001:3::/32", "AMT", "RFC 7450", Global),
    ("2001:4:112::/48", "AS112-v6", "RFC 7535", Global),
    (
        "2001:10::/28",
        "Deprecated (previously ORCHID)",
        "RFC 4843",
        NA,
    ),
    ("2001:20::/28", "ORCHIDv2", "RFC 7343", Global),
    (
        "2001:30::/28",
        "Drone Remote ID Protocol Entity Tags (DETs) Prefix",
        "RFC 9374",
        Global,
    ),
    ("2001:db8::/32", "Documentation", "RFC 3849", NotGlobal),
    ("2002::/16", "6to4", "RFC 3056", NA),
    (
        "2620:4f:8000::/48",
        "Direct Delegation AS112 Service",
        "RFC 7534",
        Global,
    ),
    ("3fff::/20", "Documentation", "RFC 9637", NotGlobal),
    (
        "5f00::/16",
        "Segment Routing (SRv6) SIDs",
        "RFC 9602",
        NotGlobal,
    ),
    ("fc00::/7", "Unique-Local", "RFC 4193", NotGlobal),
    ("fe80::/10", "Link-Local Unicast", "RFC 4291", NotGlobal),
    // From the IANA IPv6 Address Space Registry: only 2000::/3 is global
    // unicast; the rest is reserved by the IETF, unique-local, link-local or
    // multicast (ff00::/8).
    ("2000::/3", "Global Unicast", "RFC 4291", Global),
    (
        "::/0",
        "Not global unicast (reserved, multicast, ...)",
        "RFC 4291",
        NotGlobal,
    ),
];

/// Both registries, most specific block first, so the first match is the
/// entry that decides.
static SPECIAL: LazyLock<Vec<(IpNet, Reach)>> = LazyLock::new(|| {
    let mut all: Vec<(IpNet, Reach)> = IPV4_SPECIAL
        .iter()
        .chain(IPV6_SPECIAL)
        .filter_map(|(block, _, _, reach)| Some((block.parse().ok()?, *reach)))
        .collect();
    all.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
    all
});

/// A resolver that drops every address the policy refuses on one port.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<EgressPolicy>,
    /// The port every connection through this resolver's client goes to;
    /// `None` when unknown, and then only addresses allowed on every port
    /// pass.
    port: Option<u16>,
}

impl GuardedResolver {
    pub fn new(policy: EgressPolicy, port: Option<u16>) -> Self {
        Self {
            policy: Arc::new(policy),
            port,
        }
    }

    fn permits(&self, ip: IpAddr) -> bool {
        match self.port {
            Some(port) => self.policy.permits(ip, port),
            None => self.policy.permits_every_port(ip),
        }
    }

    /// Looks `name` up and keeps the addresses the policy permits; none
    /// permitted is an [`EgressDenied`].
    pub fn resolve(&self, name: Name) -> Resolving {
        let guard = self.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = resolved
                .iter()
                .copied()
                .filter(|a| guard.permits(a.ip()))
                .collect();
            if allowed.is_empty() {
                let port = guard
                    .port
                    .map(|p| format!(" on port {p}"))
                    .unwrap_or_default();
                let addrs = resolved
                    .iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(Box::new(EgressDenied {
                    host,
                    addrs: format!("{addrs}{port}"),
                }) as Box<_>);
            }
            Ok(allowed.into_iter())
        })
    }
}

/// What the resolver hands the connector: the permitted addresses.
type Resolved = Result<std::vec::IntoIter<SocketAddr>, Box<dyn std::error::Error + Send + Sync>>;
pub type Resolving = Pin<Box<dyn Future<Output = Resolved> + Send>>;

/// The resolver as hyper-util's connector calls it.
impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Resolving;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        self.resolve(name)
    }
}

/// Where a tool's redirects may go: up to `max` hops, each to the tool's own
/// origin unless `redirects.allow_origins` widens it. Every hop is also
/// checked by the egress rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RedirectRules {
    /// Hops followed; 0: a redirect is returned as the upstream sent it.
    pub max: u8,
    /// Origins besides the tool's own.
    origins: Vec<url::Origin>,
    /// `"*"`: any http(s) origin.
    any_origin: bool,
}

impl RedirectRules {
    /// `follow_redirects: N`: up to `max` hops within the tool's origin.
    pub fn same_origin(max: u8) -> Self {
        Self {
            max,
            ..Self::default()
        }
    }

    /// Compiles `redirects:`. Errors are `(field, message)`.
    pub fn parse(spec: &RedirectSpec) -> Result<Self, (String, String)> {
        let mut rules = Self::same_origin(spec.max);
        if spec.max == 0 && !spec.allow_origins.is_empty() {
            return Err((
                "redirects.allow_origins".into(),
                "has no effect while redirects.max is 0; set max to the hops to follow".into(),
            ));
        }
        for (i, text) in spec.allow_origins.iter().enumerate() {
            let field = format!("redirects.allow_origins[{i}]");
            if text == "*" {
                rules.any_origin = true;
                continue;
            }
            let bad = |why: &str| {
                (
                    field.clone(),
                    format!("{text:?} {why}; write an origin such as \"https://cdn.example.com\" or \"http://10.0.0.5:8080\", or \"*\" for any"),
                )
            };
            let url = url::Url::parse(text).map_err(|e| bad(&format!("is not a URL ({e})")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(bad("is not http or https"));
            }
            if !url.username().is_empty()
                || url.password().is_some()
                || url.path() != "/"
                || url.query().is_some()
                || url.fragment().is_some()
            {
                return Err(bad("is more than scheme, host and port"));
            }
            rules.origins.push(url.origin());
        }
        Ok(rules)
    }

    /// Whether a hop from a tool whose origin is `own` may go to `next`.
    pub fn admits(&self, own: &url::Origin, next: &url::Origin) -> bool {
        self.any_origin || next == own || self.origins.contains(next)
    }

    /// The ports of the listed origins.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.origins.iter().filter_map(|o| match o {
            url::Origin::Tuple(_, _, port) => Some(*port),
            url::Origin::Opaque(_) => None,
        })
    }
}

/// The IP address of an IP-literal URL host (those skip the resolver).
pub fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    }
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

    fn policy(entries: &[&str]) -> Result<EgressPolicy, (String, String)> {
        let entries: Vec<AllowEntry> = entries
            .iter()
            .map(|s| AllowEntry::Text((*s).to_owned()))
            .collect();
        EgressPolicy::parse(&entries)
    }

    #[test]
    fn registries_parse() {
        for (block, name, rfc, _) in IPV4_SPECIAL.iter().chain(IPV6_SPECIAL) {
            let net: IpNet = block.parse().unwrap_or_else(|e| panic!("{block}: {e}"));
            assert_eq!(net, net.trunc(), "{block} has host bits set");
            assert!(!name.is_empty() && rfc.starts_with("RFC "), "{block}");
        }
        assert_eq!(SPECIAL.len(), IPV4_SPECIAL.len() + IPV6_SPECIAL.len());
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
            "0.1.2.3",
            "100.64.0.1",
            "192.0.0.1",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "198.18.0.1",
            "198.19.255.254",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "100::1",
            "2001:db8::1",
            "2001:2::1",
            "3fff::1",
            "5f00::1",
            "64:ff9b:1::1:1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            assert!(is_restricted(ip(s)), "{s}");
        }
        for s in [
            "93.184.216.34",
            "8.8.8.8",
            "1.1.1.1",
            "198.20.0.1",
            "192.0.0.9",
            "192.175.48.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2001:4860:4860::8888",
            "2001:4:112::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_restricted(ip(s)), "{s}");
        }
    }

    #[test]
    fn ipv4_embedded_in_ipv6_is_judged_too() {
        let restricted = [
            // NAT64 well-known prefix: the metadata service, loopback, private.
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::10.0.0.1",
            // IPv4-compatible and IPv4-translated.
            "::169.254.169.254",
            "::127.0.0.1",
            "::ffff:0:169.254.169.254",
            // 6to4: 2002:a9fe:a9fe::/48 is 169.254.169.254's, 2002:7f00:1:: loopback's.
            "2002:a9fe:a9fe::1",
            "2002:7f00:1::",
            "2002:808:808::1",
            // Teredo: server 65.54.227.120, client 169.254.169.254 (inverted: 5601:5601).
            "2001:0:4136:e378:8000:63bf:5601:5601",
            // Teredo with a public client but a private server.
            "2001:0:a00:1:8000:63bf:f7f7:f7f7",
        ];
        for s in restricted {
            assert!(is_restricted(ip(s)), "{s}");
        }
        // The NAT64 well-known prefix is globally reachable in itself.
        assert!(!is_restricted(ip("64:ff9b::808:808")));
        assert!(!is_restricted(ip("64:ff9b::8.8.8.8")));

        // Allowing the carrier does not open what it embeds...
        let nat64 = policy(&["64:ff9b::/96", "2002::/16", "64:ff9b:1::/48"]).unwrap();
        assert!(nat64.permits(ip("64:ff9b::808:808"), 443));
        assert!(!nat64.permits(ip("64:ff9b::a9fe:a9fe"), 80));
        assert!(nat64.permits(ip("2002:808:808::1"), 443));
        assert!(!nat64.permits(ip("2002:a9fe:a9fe::1"), 80));
        assert!(nat64.permits(ip("64:ff9b:1::808:808"), 443));
        assert!(!nat64.permits(ip("64:ff9b:1::a9fe:a9fe"), 80));
        // ...and allowing the embedded address alone does not open the carrier.
        let meta = policy(&["169.254.169.254"]).unwrap();
        assert!(meta.permits(ip("169.254.169.254"), 80));
        assert!(meta.permits(ip("::ffff:169.254.169.254"), 80));
        assert!(!meta.permits(ip("2002:a9fe:a9fe::1"), 80));
        assert!(meta.permits(ip("64:ff9b::a9fe:a9fe"), 80));
    }

    #[test]
    fn allowlist_opens_only_what_it_names() {
        let p = policy(&["127.0.0.0/8", "10.9.9.9"]).unwrap();
        assert!(p.permits(ip("127.0.0.1"), 80));
        assert!(p.permits(ip("::ffff:127.0.0.1"), 6379));
        assert!(p.permits(ip("10.9.9.9"), 1));
        assert!(p.permits_every_port(ip("10.9.9.9")));
        assert!(!p.permits(ip("10.9.9.8"), 80));
        assert!(!p.permits(ip("169.254.169.254"), 80));
    }

    #[test]
    fn allow_rules_can_name_ports() {
        let p = policy(&[
            "127.0.0.1:8080",
            "10.0.0.0/8:80,8000-8099",
            "[::1]:9000",
            "[fd00::/8]:443",
        ])
        .unwrap();
        assert!(p.permits(ip("127.0.0.1"), 8080));
        assert!(!p.permits(ip("127.0.0.1"), 6379));
        assert!(!p.permits(ip("127.0.0.2"), 8080));
        assert!(!p.permits_every_port(ip("127.0.0.1")));
        assert!(p.permits(ip("10.1.2.3"), 80));
        assert!(p.permits(ip("10.1.2.3"), 8050));
        assert!(!p.permits(ip("10.1.2.3"), 8100));
        assert!(p.permits(ip("::1"), 9000));
        assert!(!p.permits(ip("::1"), 9001));
        assert!(p.permits(ip("fd12::1"), 443));
        // Public addresses need no rule, on any port.
        assert!(p.permits(ip("8.8.8.8"), 6379));

        let structured =
            EgressPolicy::parse(&[AllowEntry::Rule(crate::config::spec::AllowRuleSpec {
                cidr: "127.0.0.0/8".into(),
                ports: Some(vec![
                    PortSpec::Number(8080),
                    PortSpec::Text("9000-9001".into()),
                ]),
            })])
            .unwrap();
        assert!(structured.permits(ip("127.0.0.5"), 9001));
        assert!(!structured.permits(ip("127.0.0.5"), 9002));
    }

    #[test]
    fn bad_allow_rules_name_the_entry() {
        for (entry, says) in [
            ("localhost", "not an address"),
            ("nope:80", "not an address"),
            ("127.0.0.1:0", "not a port"),
            ("127.0.0.1:70000", "not a port"),
            ("127.0.0.1:90-80", "empty"),
            ("127.0.0.1:", "not a port"),
            ("fd00::1:80:", "brackets"),
            ("[::1", "not closed"),
            ("[::1]8080", "expected ':'"),
        ] {
            let (field, message) = policy(&["10.0.0.0/8", entry]).unwrap_err();
            assert_eq!(field, "egress.allow[1]", "{entry}");
            assert!(message.contains(says), "{entry}: {message}");
        }
        let (field, message) =
            EgressPolicy::parse(&[AllowEntry::Rule(crate::config::spec::AllowRuleSpec {
                cidr: "10.0.0.0/8".into(),
                ports: Some(vec![]),
            })])
            .unwrap_err();
        assert_eq!(field, "egress.allow[0]");
        assert!(message.contains("ports is empty"), "{message}");
    }

    #[test]
    fn redirect_rules_stay_in_the_origin_unless_widened() {
        let own = url::Url::parse("http://127.0.0.1:8080/x").unwrap().origin();
        let other = url::Url::parse("http://127.0.0.1:9090/").unwrap().origin();
        let same = RedirectRules::same_origin(3);
        assert!(same.admits(&own, &own));
        assert!(!same.admits(&own, &other));
        let listed = RedirectRules::parse(&RedirectSpec {
            max: 2,
            allow_origins: vec!["http://127.0.0.1:9090".into()],
        })
        .unwrap();
        assert!(listed.admits(&own, &other));
        assert_eq!(listed.ports().collect::<Vec<_>>(), vec![9090]);
        let any = RedirectRules::parse(&RedirectSpec {
            max: 2,
            allow_origins: vec!["*".into()],
        })
        .unwrap();
        assert!(any.admits(&own, &other));
        for (origins, max, field) in [
            (vec!["ftp://x"], 1, "redirects.allow_origins[0]"),
            (vec!["*", "http://x/path"], 1, "redirects.allow_origins[1]"),
            (vec!["not a url"], 1, "redirects.allow_origins[0]"),
            (vec!["http://x"], 0, "redirects.allow_origins"),
        ] {
            let spec = RedirectSpec {
                max,
                allow_origins: origins.into_iter().map(String::from).collect(),
            };
            assert_eq!(RedirectRules::parse(&spec).unwrap_err().0, field);
        }
    }

    #[tokio::test]
    async fn resolver_refuses_names_that_resolve_to_loopback() {
        let strict = GuardedResolver::new(EgressPolicy::default(), Some(80));
        let err = strict
            .resolve("localhost".parse().unwrap())
            .await
            .expect_err("localhost must be refused");
        let denied = denial_in(err.as_ref()).expect("an EgressDenied");
        assert_eq!(denied.host, "localhost");

        let open = policy(&["127.0.0.0/8", "::1"]).unwrap();
        let addrs: Vec<_> = GuardedResolver::new(open, None)
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());

        // A rule for one port admits the name on that port only.
        let one_port = policy(&["127.0.0.1:8080", "[::1]:8080"]).unwrap();
        let resolver = GuardedResolver::new(one_port.clone(), Some(8080));
        assert!(resolver.resolve("localhost".parse().unwrap()).await.is_ok());
        for port in [Some(6379), None] {
            let resolver = GuardedResolver::new(one_port.clone(), port);
            let err = resolver
                .resolve("localhost".parse().unwrap())
                .await
                .expect_err("another port must be refused");
            assert!(denial_in(err.as_ref()).is_some());
        }
    }
}
