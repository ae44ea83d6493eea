//! HTTP plumbing shared by every hop: hop-by-hop header removal and the
//! `X-Forwarded-*` headers (and the one reader of AWS's XML answers, [`xml_text`]).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The largest JSON document Berth reads from a peer it asked (task metadata, the control
/// API, AWS): a real one is a few kilobytes; a peer streaming without end must not grow
/// memory without end.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// `host:port` as a URI authority (RFC 3986 3.2.2): an IPv6 literal goes in brackets.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The identity header the inbound sidecar sets; nobody else may.
pub const CLIENT_ID_HEADER: &str = "x-berth-client-id";

/// Set by an inbound sidecar on the 503 it answers when its app refused the connection
/// (to a gRPC call: the trailers-only `UNAVAILABLE`): the request never reached the app,
/// so the caller may send it elsewhere.
pub const UNREACHABLE_HEADER: &str = "x-berth-unreachable";

/// Whether a response is an inbound sidecar saying its app is not listening (a
/// stopping or crashed app): as safe to retry as a refused connection.
pub fn is_app_unreachable(status: http::StatusCode, headers: &HeaderMap) -> bool {
    headers.contains_key(UNREACHABLE_HEADER)
        && (status == http::StatusCode::SERVICE_UNAVAILABLE
            || (status == http::StatusCode::OK && headers.get("grpc-status").is_some_and(|c| c == "14")))
}

/// The methods of RFC 9110 and RFC 5789 (PATCH): the only ones a metric label or a span
/// attribute names, as the OpenTelemetry HTTP conventions say.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The method as a label value: a registered method, or `_OTHER` for anything a client
/// made up (methods are client input; a label per made-up method grows without bound).
pub fn method_label(m: &http::Method) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|k| **k == m.as_str())
        .copied()
        .unwrap_or("_OTHER")
}

/// Answer in our own HTTP version, never the upstream's (RFC 9110 6.2: an intermediary
/// sends its own version in forwarded messages): HTTP/1.1 to HTTP/1.x clients (hyper
/// frames the body itself), HTTP/2 on HTTP/2 connections.
pub fn use_own_version<B>(resp: &mut http::Response<B>, request: http::Version) {
    *resp.version_mut() = if request == http::Version::HTTP_2 {
        http::Version::HTTP_2
    } else {
        http::Version::HTTP_11
    };
}

/// Methods whose requests may be sent twice (RFC 9110 9.2.2).
/// Whether `status` is in one of the inclusive `ranges` (`errors.status`, `retry.status`,
/// a failover's `errors.status`).
pub fn status_in(ranges: &[(u16, u16)], status: u16) -> bool {
    ranges.iter().any(|(a, b)| (*a..=*b).contains(&status))
}

pub fn is_idempotent(m: &http::Method) -> bool {
    use http::Method;
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Headers that belong to one connection, never forwarded (RFC 9110 7.6.1, plus the
/// legacy ones proxies conventionally drop).
const HOP_BY_HOP_COUNT: usize = 8;
/// Where `Connection` is in [`HOP_BY_HOP`].
const CONNECTION_AT: usize = 0;
const HOP_BY_HOP: [HeaderName; HOP_BY_HOP_COUNT] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The protocol the client asked to switch to, if the request is an upgrade
/// (`Connection: upgrade` and an `Upgrade` header).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if wants {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

/// Remove hop-by-hop headers and every header the `Connection` header names. `te` is
/// kept only as `te: trailers` (gRPC needs it). Upgrade headers are restored by the
/// caller when it forwards an upgrade.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of these, and most others only `Connection: keep-alive`:
    // one pass over the names they carry finds which are there, and only those are
    // removed (a hashed removal per hop-by-hop name cost more than the whole pass; the
    // profiles in docs/benchmarks.md).
    let mut present = [false; HOP_BY_HOP_COUNT];
    let mut te = false;
    for name in headers.keys() {
        if name == header::TE {
            te = true;
        } else if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
        }
    }
    if !te && !present.contains(&true) {
        return;
    }
    // Remove what `Connection` names, by name as sent (a name that is not a valid
    // header name names nothing; `&str` lookups do not allocate).
    if present[CONNECTION_AT] {
        let values: Vec<HeaderValue> = headers.get_all(header::CONNECTION).iter().cloned().collect();
        for v in &values {
            for token in v.to_str().unwrap_or_default().split(',') {
                let token = token.trim();
                if !token.is_empty() && headers.remove(token).is_some() && token.eq_ignore_ascii_case("te") {
                    te = false;
                }
            }
        }
    }
    for (name, here) in HOP_BY_HOP.iter().zip(present) {
        if here {
            headers.remove(name);
        }
    }
    if !te {
        return;
    }
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("trailers")))
    });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// What the proxy knows about the client connection.
#[derive(Debug, Clone, Copy)]
pub struct ForwardInfo<'a> {
    pub client_ip: IpAddr,
    pub tls: bool,
    /// The Host the client asked for (with port, as sent).
    pub host: Option<&'a str>,
    pub local_port: u16,
}

const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
const XF_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const XF_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const XF_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The headers by which a proxy in front tells who the client was and what it asked:
/// from a peer that is not a trusted proxy they are the client's own words, so they are
/// removed before anything reads them (rules, `ipStrategy`, the app). Traefik's list
/// (`forwardedheaders`), and beside it RFC 7239's `Forwarded` and the other names apps
/// are known to believe.
const FORWARDING: [&str; 18] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-uri",
    "x-forwarded-method",
    "x-forwarded-prefix",
    "x-forwarded-tls-client-cert",
    "x-forwarded-tls-client-cert-info",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-scheme",
    "x-real-ip",
    "forwarded",
    "x-original-forwarded-for",
    "x-original-url",
    "x-rewrite-url",
];

/// Remove every forwarding header (and its `_` spelling, which some servers read as the
/// same header) a client sent: the request did not come through a trusted proxy.
pub fn strip_untrusted_forwarding(headers: &mut HeaderMap) {
    // One pass over the names the request carries (usually none of these), instead of
    // 35 parsed and hashed removals per request.
    let found: Vec<HeaderName> = headers.keys().filter(|n| is_forwarding(n.as_str())).cloned().collect();
    for name in &found {
        headers.remove(name);
    }
}

/// Whether `name` (lower case, as `HeaderName` keeps it) is a forwarding header, with
/// `_` read as `-`.
fn is_forwarding(name: &str) -> bool {
    FORWARDING.iter().any(|f| {
        f.len() == name.len()
            && f.bytes()
                .zip(name.bytes())
                .all(|(f, n)| f == n || (f == b'-' && n == b'_'))
    })
}

/// Set `X-Forwarded-For/-Proto/-Host/-Port` and `X-Real-Ip` as Traefik does: the client's
/// address is appended, the others set when no trusted proxy set them. Headers from an
/// untrusted client must be gone already ([`strip_untrusted_forwarding`]).
pub fn set_forwarded(headers: &mut HeaderMap, info: &ForwardInfo<'_>) {
    let ip = IpText::new(info.client_ip);
    let ip_value = HeaderValue::from_str(ip.as_str()).ok();
    let xff = match headers.get(&XFF).and_then(|v| v.to_str().ok()) {
        Some(prior) if !prior.trim().is_empty() => {
            let mut joined = String::with_capacity(prior.len() + 2 + ip.as_str().len());
            joined.push_str(prior);
            joined.push_str(", ");
            joined.push_str(ip.as_str());
            HeaderValue::from_str(&joined).ok()
        }
        _ => ip_value.clone(),
    };
    if let Some(v) = xff {
        headers.insert(XFF, v);
    }
    // Each set only where absent: one hashed lookup each (entry), not two.
    if let header::Entry::Vacant(e) = headers.entry(XF_PROTO) {
        e.insert(HeaderValue::from_static(if info.tls { "https" } else { "http" }));
    }
    if let header::Entry::Vacant(e) = headers.entry(XF_HOST)
        && let Some(v) = info.host.and_then(|h| HeaderValue::from_str(h).ok())
    {
        e.insert(v);
    }
    if let header::Entry::Vacant(e) = headers.entry(XF_PORT) {
        e.insert(HeaderValue::from(info.local_port));
    }
    if let header::Entry::Vacant(e) = headers.entry(X_REAL_IP)
        && let Some(v) = ip_value
    {
        e.insert(v);
    }
}

/// An IP address as text, on the stack: the forward path writes the client's address
/// into two headers and, when traced, two span attributes per request, and the
/// formatter's `Display` for an address cost about a thousand instructions each
/// (callgrind, docs/benchmarks.md). IPv4 is written digit by digit; IPv6 (rarer on this
/// path) goes through `Display` into the same buffer, still without allocating.
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; IpText::MAX],
    len: u8,
}

impl IpText {
    /// Room for the longest text form any address has (45 bytes, an IPv6 address with
    /// a dotted tail in full); `Display` writes at most 39.
    const MAX: usize = 45;

    pub fn new(ip: IpAddr) -> IpText {
        let mut t = IpText {
            buf: [0; IpText::MAX],
            len: 0,
        };
        match ip {
            IpAddr::V4(v4) => {
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push(b'.');
                    }
                    if octet >= 100 {
                        t.push(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        t.push(b'0' + (octet / 10) % 10);
                    }
                    t.push(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::fmt::Write as _;
                // Display never writes more than MAX bytes for an address; `push` keeps
                // the bound regardless.
                let _ = write!(t, "{v6}");
            }
        }
        t
    }

    fn push(&mut self, b: u8) {
        if let Some(slot) = self.buf.get_mut(usize::from(self.len)) {
            *slot = b;
            self.len += 1;
        }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        if usize::from(self.len) + s.len() > IpText::MAX {
            return Err(std::fmt::Error);
        }
        s.bytes().for_each(|b| self.push(b));
        Ok(())
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `ip` is the machine itself, unspecified, link-local, or AWS's instance
/// metadata address over IPv6 (`fd00:ec2::254`): where a label may not make the gateway
/// call.
pub fn is_local_address(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let ip = ip.to_canonical();
    ip.is_loopback()
        || ip.is_unspecified()
        || match ip {
            IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
            IpAddr::V6(v6) => {
                (v6.segments()[0] & 0xffc0) == 0xfe80
                    || v6 == std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
            }
        }
}

/// The text of the first `<name>…</name>` in an AWS query-protocol (XML) answer (EC2,
/// STS): those answers are flat enough that no XML parser is needed, and nothing here
/// allocates more than the two tags.
pub fn xml_text<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml.get(start..)?.find(&close)?;
    xml.get(start..start + len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_is_what_display_writes() {
        let cases = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "100.64.9.200",
            "127.0.0.9",
            "1.20.199.99",
            "::",
            "::1",
            "fd00:ec2::254",
            "2001:db8:85a3:0:0:8a2e:370:7334",
            "::ffff:192.0.2.128",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ];
        for c in cases {
            let ip: IpAddr = c.parse().expect("address");
            assert_eq!(IpText::new(ip).as_str(), ip.to_string(), "{c}");
        }
        for i in 0..=255u8 {
            let ip = IpAddr::from([i, 255 - i, i / 3, i.wrapping_mul(7)]);
            assert_eq!(IpText::new(ip).as_str(), ip.to_string());
        }
    }

    #[test]
    fn made_up_methods_fold_into_other() {
        assert_eq!(method_label(&http::Method::PATCH), "PATCH");
        assert_eq!(method_label(&http::Method::from_bytes(b"FOO").unwrap()), "_OTHER");
        assert_eq!(method_label(&http::Method::from_bytes(b"get").unwrap()), "_OTHER");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        assert_eq!(HOP_BY_HOP[CONNECTION_AT], header::CONNECTION);
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers, deflate"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert!(h.get("x-secret").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get("transfer-encoding").is_none());
        assert_eq!(h.get("te").unwrap(), "trailers");
        assert_eq!(h.get("x-keep").unwrap(), "yes");
    }

    #[test]
    fn connection_tokens_are_matched_without_case_and_across_values() {
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("X-One"));
        h.append("connection", HeaderValue::from_static(" , x-two ,bad name,"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.insert("x-two", HeaderValue::from_static("2"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get("x-keep").unwrap(), "yes");

        // Connection naming TE removes it, even as `te: trailers`.
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("TE"));
        h.insert("te", HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");

        // TE alone: kept only as trailers.
        let mut h = HeaderMap::new();
        h.insert("te", HeaderValue::from_static("gzip"));
        remove_hop_by_hop(&mut h);
        assert!(h.is_empty(), "{h:?}");

        // The common response: only `Connection: keep-alive`.
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.insert("content-length", HeaderValue::from_static("3"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-length"));
    }

    #[test]
    fn forwarded_untrusted_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x_forwarded_for", HeaderValue::from_static("6.6.6.6"));
        h.insert("forwarded", HeaderValue::from_static("for=6.6.6.6"));
        h.insert("x-forwarded-prefix", HeaderValue::from_static("/evil"));
        h.insert("x-forwarded-tls-client-cert", HeaderValue::from_static("forged"));
        let info = ForwardInfo {
            client_ip: "127.0.0.9".parse().unwrap(),
            tls: false,
            host: Some("a.test:8080"),
            local_port: 8080,
        };
        strip_untrusted_forwarding(&mut h);
        for gone in [
            "x_forwarded_for",
            "forwarded",
            "x-forwarded-prefix",
            "x-forwarded-tls-client-cert",
        ] {
            assert!(!h.contains_key(gone), "{gone}");
        }
        set_forwarded(&mut h, &info);
        assert_eq!(h.get("x-forwarded-for").unwrap(), "127.0.0.9");
        assert_eq!(h.get("x-forwarded-proto").unwrap(), "http");
        assert_eq!(h.get("x-forwarded-host").unwrap(), "a.test:8080");
        assert_eq!(h.get("x-forwarded-port").unwrap(), "8080");
        let mut h2 = HeaderMap::new();
        h2.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        set_forwarded(&mut h2, &info);
        assert_eq!(h2.get("x-forwarded-for").unwrap(), "6.6.6.6, 127.0.0.9");
    }
}
