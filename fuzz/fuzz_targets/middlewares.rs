#![no_main]
//! Every middleware's options (as labels write them: `kind.option=value` lines) parse or
//! are refused without panicking, whatever the values: circuit-breaker expressions,
//! durations, regexps, hashes, lists, numbers; a middleware that parses then runs its
//! request phase on a request (forwardAuth: its auth request and an answer's verdict). Durations are also fed alone.

use berth_common::config::Node;
use berth_common::middleware::{self, Req};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = berth_common::config::parse_duration(text);
    let mut lines = text.lines();
    let Some(kind) = lines.next() else { return };
    // Files on this machine are not the fuzzer's to read.
    let pairs: Vec<(&str, &str)> = lines
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            !k.contains("usersfile") && !k.contains("tls")
        })
        .collect();
    let mut diags = Vec::new();
    let node = Node::from_dotted(pairs, "", &mut diags);
    let Some(kind) = middleware::find_kind(kind.trim()) else {
        return;
    };
    let Ok(spec) = kind.parse(&node) else { return };
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", http::HeaderValue::from_static("Basic dTpw"));
    headers.insert("x-forwarded-for", http::HeaderValue::from_static("10.0.0.1, ::1"));
    let mut req = Req {
        method: &http::Method::GET,
        tls: false,
        host: "a.test:8080",
        path: "/a/b".into(),
        query: Some("q=1".into()),
        headers: &mut headers,
        peer: std::net::IpAddr::from([127, 0, 0, 1]),
        holds: Vec::new(),
        auth_cookies: Vec::new(),
        grpc_web: None,
        client_certs: None,
    };
    let _ = berth_common::blocking::block_on(spec.request(&mut req));
    // forwardAuth: the auth request's head, and an answer made of the same text.
    if let Some(fa) = spec.forward_auth() {
        let _ = fa.request_head(&req, Some(3));
        let mut answer = http::HeaderMap::new();
        for line in text.lines().skip(1) {
            if let Some((k, v)) = line.split_once(':')
                && let (Ok(k), Ok(v)) = (http::HeaderName::from_bytes(k.as_bytes()), http::HeaderValue::from_str(v))
            {
                answer.append(k, v);
            }
        }
        let status = http::StatusCode::from_u16(200 + (data.len() % 300) as u16).unwrap_or(http::StatusCode::OK);
        let _ = fa.verdict(status, &answer, bytes::Bytes::new(), &mut req);
        for cookies in &req.auth_cookies {
            cookies.apply(&mut answer);
        }
    }
    let mut resp = http::HeaderMap::new();
    spec.response(None, false, &mut resp);
});
