#![no_main]
//! The rule parser and compiler never panic, and a compiled rule evaluates without panicking.

use berth_common::rules::{self, RequestView};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(rule) = rules::compile(text) {
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
});
