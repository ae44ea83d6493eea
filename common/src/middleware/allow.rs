//! `ipAllowList` (and its old name `ipWhiteList`): the client address must be in
//! `sourceRange`. By default the address is the TCP peer; with `ipStrategy.depth` it is the
//! depth-th address from the right of `X-Forwarded-For` (the proxies in front are
//! trusted), and with `ipStrategy.excludedIPs` the first address from the right that is
//! not excluded. Refused with `rejectStatusCode` (403 by default).

use std::net::IpAddr;

use http::StatusCode;
use ipnet::IpNet;

use super::options::Options;
use super::{Reply, Req, Step};
use crate::tree::Node;

#[derive(Debug)]
pub struct IpAllowList {
    ranges: Vec<IpNet>,
    strategy: IpStrategy,
    reject: StatusCode,
}

/// Traefik's `ipStrategy`: which address a request counts as coming from.
#[derive(Debug, Clone, Default)]
pub struct IpStrategy {
    depth: usize,
    excluded: Vec<IpNet>,
    /// `ipv6Subnet`: an IPv6 address counts as its /N network (one client holds a whole
    /// /64, and would otherwise be 2^64 sources). Not applied with `excludedIPs`, as in
    /// Traefik.
    ipv6_subnet: Option<u8>,
}

impl IpStrategy {
    /// From the options holding an `ipStrategy` (none: the TCP peer).
    pub fn parse(kind: &str, o: &Options<'_>) -> Result<IpStrategy, String> {
        let Some(s) = o.nested("ipStrategy", &["depth", "excludedIPs", "ipv6Subnet"])? else {
            return Ok(IpStrategy::default());
        };
        let ipv6_subnet = match s.number("ipv6Subnet")? {
            None => None,
            Some(n) => Some(
                u8::try_from(n)
                    .ok()
                    .filter(|n| (1..=128).contains(n))
                    .ok_or_else(|| format!("{kind}.ipStrategy.ipv6Subnet: `{n}` is not 1 to 128"))?,
            ),
        };
        Ok(IpStrategy {
            depth: usize::try_from(s.number("depth")?.unwrap_or(0)).unwrap_or(usize::MAX),
            excluded: s
                .list("excludedIPs")?
                .iter()
                .map(|x| net(kind, "ipStrategy.excludedIPs", x))
                .collect::<Result<Vec<_>, _>>()?,
            ipv6_subnet,
        })
    }
}

/// The address a request counts as coming from: the TCP peer by default; with a depth,
/// that hop of `X-Forwarded-For` from the right; with excluded addresses, the first from
/// the right not excluded.
pub fn client_ip(strategy: &IpStrategy, req: &Req<'_>) -> Option<IpAddr> {
    let subnet = |ip: IpAddr| match (ip.to_canonical(), strategy.ipv6_subnet) {
        (IpAddr::V6(v6), Some(bits)) => ipnet::Ipv6Net::new(v6, bits)
            .map(|n| IpAddr::V6(n.network()))
            .unwrap_or(ip),
        (other, _) => other,
    };
    if strategy.depth == 0 && strategy.excluded.is_empty() {
        return Some(subnet(req.peer));
    }
    let xff: Vec<IpAddr> = req
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    if strategy.depth > 0 {
        return xff.len().checked_sub(strategy.depth).map(|i| subnet(xff[i]));
    }
    xff.iter()
        .rev()
        .find(|ip| !strategy.excluded.iter().any(|n| n.contains(*ip)))
        .copied()
}

fn net(kind: &str, key: &str, s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{kind}.{key}: `{s}` is not an IP or CIDR"))
}

impl IpAllowList {
    pub fn parse(kind: &str, node: &Node) -> Result<Self, String> {
        let o = Options::new(kind, node, &["sourceRange", "ipStrategy", "rejectStatusCode"])?;
        let ranges = o
            .list("sourceRange")?
            .iter()
            .map(|s| net(kind, "sourceRange", s))
            .collect::<Result<Vec<_>, _>>()?;
        if ranges.is_empty() {
            return Err(format!("{kind}.sourceRange is required"));
        }
        let strategy = IpStrategy::parse(kind, &o)?;
        let reject = match o.number("rejectStatusCode")? {
            None => StatusCode::FORBIDDEN,
            Some(code) => u16::try_from(code)
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .filter(|c| c.as_u16() >= 400)
                .ok_or_else(|| format!("{kind}.rejectStatusCode: `{code}` is not an error status"))?,
        };
        Ok(IpAllowList {
            ranges,
            strategy,
            reject,
        })
    }

    pub(super) fn request(&self, req: &mut Req<'_>) -> Step {
        match client_ip(&self.strategy, req) {
            Some(ip) if self.ranges.iter().any(|n| n.contains(&ip.to_canonical())) => Step::Next,
            _ => Step::Reply(Reply::new(self.reject, format!("{}\n", self.reject))),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderMap, HeaderValue, Method};

    use super::*;
    use crate::middleware::parse;
    use crate::middleware::testing::{self, node};

    fn decide(pairs: &[(&str, &str)], peer: &str, xff: Option<&str>) -> Step {
        let spec = parse("ipAllowList", &node(pairs)).unwrap();
        let mut h = HeaderMap::new();
        if let Some(x) = xff {
            h.insert("x-forwarded-for", HeaderValue::from_str(x).unwrap());
        }
        testing::run(&spec, &Method::GET, false, "h", "/", &mut h, peer).0
    }

    #[test]
    fn ipv6_subnet_counts_a_network_as_one_client() {
        let subnet = [("sourceRange", "2001:db8:1:2::/64"), ("ipStrategy.ipv6Subnet", "64")];
        assert_eq!(decide(&subnet, "2001:db8:1:2::77", None), Step::Next);
        let Some(e) = parse(
            "ipAllowList",
            &node(&[("sourceRange", "::/0"), ("ipStrategy.ipv6Subnet", "129")]),
        )
        .err() else {
            panic!("129 is refused")
        };
        assert!(e.contains("ipv6Subnet"), "{e}");
        // IPv4 addresses are not masked.
        let v4 = [("sourceRange", "10.0.0.1/32"), ("ipStrategy.ipv6Subnet", "64")];
        assert_eq!(decide(&v4, "10.0.0.1", None), Step::Next);
    }

    #[test]
    fn the_peer_by_default_and_forwarded_addresses_only_when_told() {
        let ranges = [("sourceRange", "127.0.0.1/32, 10.0.0.0/8")];
        assert_eq!(decide(&ranges, "10.1.2.3", None), Step::Next);
        let Step::Reply(r) = decide(&ranges, "192.168.1.1", Some("10.0.0.1")) else {
            panic!("a forged X-Forwarded-For is not trusted by default");
        };
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        let depth = [("sourceRange", "10.0.0.0/8"), ("ipStrategy.depth", "2")];
        assert_eq!(
            decide(&depth, "192.168.1.1", Some("1.1.1.1, 10.9.9.9, 172.16.0.1")),
            Step::Next
        );
        assert_ne!(
            decide(&depth, "192.168.1.1", Some("10.9.9.9")),
            Step::Next,
            "too few hops"
        );
        let excluded = [
            ("sourceRange", "1.1.1.1"),
            ("ipStrategy.excludedIPs", "172.16.0.0/12,10.0.0.0/8"),
        ];
        assert_eq!(
            decide(&excluded, "10.0.0.5", Some("1.1.1.1, 10.9.9.9, 172.16.0.1")),
            Step::Next
        );
        let custom = [("sourceRange", "10.0.0.0/8"), ("rejectStatusCode", "404")];
        let Step::Reply(r) = decide(&custom, "8.8.8.8", None) else {
            panic!()
        };
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        let mut diags = Vec::new();
        assert!(
            parse(
                "ipAllowList",
                &Node::from_dotted([("sourceRange", "nope")], "", &mut diags)
            )
            .is_err()
        );
    }
}
