#![no_main]
//! The HTTP and TCP rule parsers and compilers never panic or overflow the stack on any
//! text (deep nesting, long chains, non-ASCII), in either rule syntax (v3, and Traefik v2's
//! templates), and a compiled rule evaluates without panicking.

use berth_common::rules::tcp::{ConnView, TcpRule};
use berth_common::rules::{self, RequestView};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for syntax in [rules::Syntax::V3, rules::Syntax::V2] {
        let Ok(rule) = rules::compile_with(text, syntax) else {
            continue;
        };
        let headers = http::HeaderMap::new();
        let view = RequestView {
            host: "a.test",
            path: "/x/y",
            method: &http::Method::GET,
            headers: &headers,
            query: Some("a=1&b=%zz"),
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        };
        let _ = rule.matches(&view);
        let _ = rule.required_hosts();
    }
    if let Ok(rule) = TcpRule::compile(text) {
        let alpn = [b"h2".to_vec()];
        let view = ConnView {
            tls: true,
            sni: Some("db.test"),
            alpn: &alpn,
            client_ip: std::net::IpAddr::from([10, 0, 0, 1]),
        };
        let _ = rule.matches(&view);
        let _ = rule.needs_tls();
    }
});
