//! Traefik's TCP middlewares, applied to a connection once a TCP router has taken it and
//! before a server is dialled: `ipAllowList` (and its old name `ipWhiteList`), the peer
//! must be in `sourceRange`; `inFlightConn`, at most `amount` connections open at once
//! from one client address. A connection either refuses is closed at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use ipnet::IpNet;

use super::options::Options;
use crate::tree::Node;

/// Every TCP middleware type Traefik has, in its canonical spelling.
pub const TCP_KINDS: &[&str] = &["inFlightConn", "ipAllowList", "ipWhiteList"];

/// The TCP kind named `name`, in any case.
pub fn find_tcp_kind(name: &str) -> Option<&'static str> {
    TCP_KINDS.iter().copied().find(|k| k.eq_ignore_ascii_case(name))
}

/// A TCP middleware, ready to run.
#[derive(Debug)]
pub enum TcpSpec {
    IpAllowList(Vec<IpNet>),
    InFlightConn(InFlightConn),
}

/// Open connections by client address; an address's entry goes when its last closes,
/// so the map never holds more than the connections open.
#[derive(Debug)]
pub struct InFlightConn {
    amount: u64,
    open: Arc<Mutex<HashMap<IpAddr, u64>>>,
}

/// A connection counted by `inFlightConn`, released when dropped.
#[derive(Debug)]
pub struct ConnHold {
    open: Arc<Mutex<HashMap<IpAddr, u64>>>,
    ip: IpAddr,
}

impl Drop for ConnHold {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Parse a TCP middleware of type `kind` (any spelling) from its options.
pub fn parse_tcp(kind: &str, node: &Node) -> Result<TcpSpec, String> {
    match find_tcp_kind(kind) {
        Some(k @ ("ipAllowList" | "ipWhiteList")) => {
            let o = Options::new(k, node, &["sourceRange"])?;
            let ranges = o
                .list("sourceRange")?
                .iter()
                .map(|s| {
                    s.parse::<IpNet>()
                        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| format!("{k}.sourceRange: `{s}` is not an IP or CIDR"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if ranges.is_empty() {
                return Err(format!("{k}.sourceRange is required"));
            }
            Ok(TcpSpec::IpAllowList(ranges))
        }
        Some(k) => {
            let o = Options::new(k, node, &["amount"])?;
            let amount = o
                .number("amount")?
                .filter(|n| *n > 0)
                .ok_or("inFlightConn.amount must be above 0")?;
            Ok(TcpSpec::InFlightConn(InFlightConn {
                amount,
                open: Arc::default(),
            }))
        }
        None => Err(format!("unknown tcp middleware type `{kind}`")),
    }
}

impl TcpSpec {
    /// Whether a connection from `peer` may go on; `Ok(Some(_))` holds its place until
    /// dropped. `Err`: why it is closed.
    pub fn admit(&self, peer: IpAddr) -> Result<Option<ConnHold>, &'static str> {
        let ip = peer.to_canonical();
        match self {
            TcpSpec::IpAllowList(ranges) => {
                if ranges.iter().any(|r| r.contains(&ip)) {
                    Ok(None)
                } else {
                    Err("not in ipAllowList.sourceRange")
                }
            }
            TcpSpec::InFlightConn(f) => {
                let mut open = f.open.lock().unwrap_or_else(|e| e.into_inner());
                let n = open.entry(ip).or_insert(0);
                if *n >= f.amount {
                    return Err("over inFlightConn.amount");
                }
                *n += 1;
                Ok(Some(ConnHold {
                    open: f.open.clone(),
                    ip,
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::middleware::testing::node;

    #[test]
    fn allow_list_checks_the_peer() {
        let s = parse_tcp("ipallowlist", &node(&[("sourceRange", "10.0.0.0/8,192.0.2.7")])).unwrap();
        assert!(s.admit("10.1.2.3".parse().unwrap()).is_ok());
        assert!(s.admit("::ffff:192.0.2.7".parse().unwrap()).is_ok());
        assert!(s.admit("192.0.2.8".parse().unwrap()).is_err());
    }

    #[test]
    fn in_flight_counts_per_client_and_releases() {
        let s = parse_tcp("inFlightConn", &node(&[("amount", "2")])).unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let h1 = s.admit(a).unwrap();
        let _h2 = s.admit(a).unwrap();
        assert!(s.admit(a).is_err());
        assert!(s.admit("10.0.0.2".parse().unwrap()).is_ok());
        drop(h1);
        assert!(s.admit(a).is_ok());
        let TcpSpec::InFlightConn(f) = &s else { panic!() };
        drop(_h2);
        // Released entries leave the map.
        assert!(f.open.lock().unwrap().len() <= 1);
    }

    #[test]
    fn bad_options_are_refused() {
        assert!(parse_tcp("inFlightConn", &node(&[("amount", "0")])).is_err());
        assert!(parse_tcp("inFlightConn", &node(&[])).is_err());
        assert!(parse_tcp("ipAllowList", &node(&[("sourceRange", "nope")])).is_err());
        assert!(parse_tcp("ipAllowList", &node(&[("ipStrategy.depth", "1")])).is_err());
        assert!(parse_tcp("rateLimit", &node(&[])).is_err());
    }
}
