use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Method};

use super::*;

struct Req {
    host: String,
    path: String,
    method: Method,
    headers: HeaderMap,
    query: Option<String>,
    ip: IpAddr,
}

impl Req {
    fn new(host: &str, path_and_query: &str) -> Req {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q.to_string())),
            None => (path_and_query, None),
        };
        Req {
            host: matcher::canonical_host(host),
            path: crate::path::routing_path(path).into_owned(),
            method: Method::GET,
            headers: HeaderMap::new(),
            query,
            ip: "192.0.2.10".parse().unwrap(),
        }
    }
    fn method(mut self, m: Method) -> Self {
        self.method = m;
        self
    }
    fn header(mut self, k: &'static str, v: &str) -> Self {
        self.headers.append(k, HeaderValue::from_str(v).unwrap());
        self
    }
    fn ip(mut self, ip: &str) -> Self {
        self.ip = ip.parse().unwrap();
        self
    }
    fn view(&self) -> RequestView<'_> {
        RequestView {
            host: &self.host,
            path: &self.path,
            method: &self.method,
            headers: &self.headers,
            query: self.query.as_deref(),
            client_ip: self.ip,
        }
    }
}

fn m(rule: &str, req: &Req) -> bool {
    compile(rule)
        .unwrap_or_else(|e| panic!("{rule}: {e}"))
        .matches(&req.view())
}

#[test]
fn host_ignores_case_port_and_trailing_dot() {
    let r = Req::new("WhoAmI.Example.COM:8080", "/");
    assert!(m("Host(`whoami.example.com`)", &r));
    assert!(m("Host(`WHOAMI.example.com.`)", &r));
    assert!(!m("Host(`example.com`)", &r));
    assert!(m("Host(`a.test`)", &Req::new("a.test.", "/")));
}

#[test]
fn host_regexp_is_unanchored_re2() {
    let r = Req::new("api.eu.example.com", "/");
    assert!(m(r"HostRegexp(`^[a-z]+\.eu\.example\.com$`)", &r));
    assert!(m("HostRegexp(`eu`)", &r));
    assert!(!m(r"HostRegexp(`^eu\.`)", &r));
}

#[test]
fn path_exact_prefix_and_regexp() {
    let r = Req::new("h", "/api/v1/users");
    assert!(m("Path(`/api/v1/users`)", &r));
    assert!(!m("Path(`/api/v1`)", &r));
    assert!(m("PathPrefix(`/api`)", &r));
    assert!(
        m("PathPrefix(`/ap`)", &r),
        "PathPrefix is a literal prefix, not segment-wise"
    );
    assert!(!m("PathPrefix(`/api/v2`)", &r));
    assert!(m(r"PathRegexp(`^/api/v[0-9]+/`)", &r));
    assert!(!m(r"PathRegexp(`^/v[0-9]`)", &r));
    // Regexp metacharacters in PathPrefix are literal.
    assert!(!m("PathPrefix(`/api/.*`)", &r));
    // Matching is on the decoded path, as Traefik (Go's URL.Path) does.
    assert!(m("Path(`/a b`)", &Req::new("h", "/a%20b")));
}

#[test]
fn method_header_query_clientip() {
    let r = Req::new("h", "/?mobile=true&tag=a+b&x=%41")
        .method(Method::POST)
        .header("x-env", "staging")
        .header("x-env", "canary")
        .ip("10.1.2.3");
    assert!(m("Method(`POST`)", &r));
    assert!(m("Method(`post`)", &r));
    assert!(!m("Method(`GET`)", &r));
    assert!(m("Header(`X-Env`, `canary`)", &r));
    assert!(!m("Header(`X-Env`, `prod`)", &r));
    assert!(m("HeaderRegexp(`x-env`, `^stag`)", &r));
    assert!(!m("HeaderRegexp(`x-other`, `.*`)", &r));
    assert!(m("Query(`mobile`, `true`)", &r));
    assert!(m("Query(`tag`, `a b`)", &r));
    assert!(m("Query(`x`, `A`)", &r));
    // One argument: only an empty value (`?mobile` or `?mobile=`), as in Traefik.
    assert!(!m("Query(`mobile`)", &r));
    assert!(m("Query(`mobile`)", &Req::new("h", "/?mobile")));
    assert!(m("Query(`mobile`)", &Req::new("h", "/?mobile=")));
    assert!(!m("Query(`mobile`, `false`)", &r));
    assert!(m("QueryRegexp(`tag`, `^a`)", &r));
    assert!(!m("QueryRegexp(`nope`, `.*`)", &r));
    assert!(m("ClientIP(`10.0.0.0/8`)", &r));
    assert!(m("ClientIP(`10.1.2.3`)", &r));
    assert!(!m("ClientIP(`10.1.2.4`)", &r));
    assert!(!m("ClientIP(`192.168.0.0/16`)", &r));
    assert!(m("ClientIP(`10.0.0.0/8`)", &Req::new("h", "/").ip("::ffff:10.9.9.9")));
    assert!(m("ClientIP(`2001:db8::/32`)", &Req::new("h", "/").ip("2001:db8::1")));
}

#[test]
fn operators_and_precedence() {
    let r = Req::new("a.test", "/x");
    assert!(m("Host(`a.test`) && Path(`/x`)", &r));
    assert!(!m("Host(`a.test`) && Path(`/y`)", &r));
    assert!(m("Host(`b.test`) || Path(`/x`)", &r));
    assert!(!m("Host(`b.test`) || Path(`/y`)", &r));
    assert!(m("!Host(`b.test`)", &r));
    assert!(!m("!!Host(`b.test`)", &r));
    // && binds tighter than ||: true || (false && false)
    assert!(m("Path(`/x`) || Host(`no`) && Host(`nope`)", &r));
    // parentheses change it: (true || false) && false
    assert!(!m("(Path(`/x`) || Host(`no`)) && Host(`nope`)", &r));
    assert!(m("!(Host(`b.test`) || Path(`/y`)) && Method(`GET`)", &r));
    assert!(m("Host(\"a.test\") && Path(\"/x\")", &r), "double-quoted values");
    assert!(m("Header(`q`, \"a\\\"b\") || Host(`a.test`)", &r));
}

#[test]
fn parse_errors_name_column_and_expectation() {
    let e = parse::parse("Host(`a`) && Foo(`b`)").unwrap_err();
    assert_eq!(e.column, 14);
    assert!(e.expected.contains("a matcher"), "{e}");
    assert!(e.found.contains("Foo"));

    let e = parse::parse("Host(`a`").unwrap_err();
    assert_eq!(e.column, 9);
    assert_eq!(e.found, "end of rule");

    let e = parse::parse("Host(`a`) & Path(`/`)").unwrap_err();
    assert_eq!(e.column, 11);
    assert!(e.expected.contains("&&"));

    let e = parse::parse("Host(`a`, `b`)").unwrap_err();
    assert!(e.expected.contains("1 argument for Host"), "{e}");
    let e = parse::parse("Header(`a`)").unwrap_err();
    assert!(e.expected.contains("2 arguments"), "{e}");
    let e = parse::parse("Host(`unterminated)").unwrap_err();
    assert!(e.expected.contains("backtick"), "{e}");
    assert!(parse::parse("").is_err());
    assert!(parse::parse("Host(`a`) Path(`/`)").is_err());
    assert!(parse::parse("(Host(`a`)").is_err());
    assert!(parse::parse("Host(a)").is_err());
}

#[test]
fn compile_errors() {
    let e = compile("Host(`a`) && PathRegexp(`(`)").unwrap_err();
    assert!(e.to_string().contains("column 14"), "{e}");
    assert!(e.to_string().contains("invalid regexp"), "{e}");
    assert!(compile("ClientIP(`not-an-ip`)").is_err());
    assert!(compile("Path(`relative`)").is_err());
    assert!(compile("Header(`bad header`, `x`)").is_err());
}

#[test]
fn required_hosts_for_the_index() {
    let hosts = |r: &str| {
        compile(r)
            .unwrap()
            .required_hosts()
            .map(|s| s.iter().cloned().collect::<Vec<_>>())
    };
    assert_eq!(hosts("Host(`A.test`)"), Some(vec!["a.test".to_string()]));
    assert_eq!(hosts("Host(`a`) && PathPrefix(`/x`)"), Some(vec!["a".into()]));
    assert_eq!(hosts("Host(`a`) || Host(`b`)"), Some(vec!["a".into(), "b".into()]));
    assert_eq!(hosts("Host(`a`) || Path(`/`)"), None);
    assert_eq!(hosts("!Host(`a`)"), None);
    assert_eq!(hosts("PathPrefix(`/`)"), None);
    assert_eq!(hosts("(Host(`a`) || Host(`b`)) && Host(`b`)"), Some(vec!["b".into()]));
}

#[test]
fn default_priority_is_rule_length() {
    assert_eq!(default_priority("Host(`a`)"), 9);
}

#[test]
fn hostile_rules_are_refused_with_a_reason_never_fatal() {
    // Thousands of `!` or parentheses once overflowed the stack and aborted the process.
    for rule in [
        format!("{}Host(`a`)", "!".repeat(100_000)),
        format!("{}Host(`a`){}", "(".repeat(50_000), ")".repeat(50_000)),
        format!("{}Host(`a`)", "!(".repeat(5_000)),
    ] {
        let e = compile(&rule).expect_err("too deep or too long");
        assert!(
            e.to_string().contains("levels") || e.to_string().contains("bytes"),
            "{e}"
        );
    }
    let deep = format!(
        "{}Host(`a`){}",
        "(".repeat(parse::MAX_DEPTH + 1),
        ")".repeat(parse::MAX_DEPTH + 1)
    );
    assert!(compile(&deep).unwrap_err().to_string().contains("levels"));
    let ok = format!(
        "{}Host(`a`){}",
        "(".repeat(parse::MAX_DEPTH),
        ")".repeat(parse::MAX_DEPTH)
    );
    assert!(m(&ok, &Req::new("a", "/")));
    // A long flat chain is no deeper than one level, and still matches.
    let hosts: Vec<String> = (0..1000).map(|i| format!("Host(`h{i}.test`)")).collect();
    let chain = hosts.join(" || ");
    assert!(m(&chain, &Req::new("h999.test", "/")));
    assert!(!m(&chain, &Req::new("h1000.test", "/")));
    assert_eq!(compile(&chain).unwrap().required_hosts().map(|h| h.len()), Some(1000));
    let and_chain = vec!["PathPrefix(`/`)"; 1000].join(" && ");
    assert!(m(&and_chain, &Req::new("x", "/y")));
    let too_many = vec!["Path(`/`)"; parse::MAX_MATCHERS + 1].join("||");
    assert!(compile(&too_many).unwrap_err().to_string().contains("matchers"));
    // Non-ASCII anywhere is an error or a value, never a panic.
    for rule in [
        "Host(`ä`)\u{a0}&&\u{a0}Path(`/ü`)",
        "Hóst(`a`)",
        "Host(`a`) \u{2028}",
        "Host(`a`)é",
        "\u{feff}Host(`a`)",
    ] {
        let _ = compile(rule);
    }
    let many = vec!["PathRegexp(`^/x`)"; matcher::MAX_REGEXPS + 1].join(" || ");
    assert!(compile(&many).unwrap_err().to_string().contains("regexps"));
    // A regexp that would compile to a huge automaton is refused, not built.
    let e = compile(r"HostRegexp(`\w{1000}\w{1000}\w{1000}`)").unwrap_err();
    assert!(e.to_string().contains("regexp"), "{e}");
}

#[test]
fn matcher_names_take_traefiks_four_spellings() {
    let r = Req::new("a.test", "/api/x");
    for rule in [
        "PathPrefix(`/api`)",
        "pathprefix(`/api`)",
        "PATHPREFIX(`/api`)",
        "Pathprefix(`/api`)",
    ] {
        assert!(m(rule, &r), "{rule}");
    }
    assert!(m("host(`a.test`) && HOST(`A.test`)", &r));
    assert!(m("clientip(`192.0.2.0/24`)", &r));
    assert!(
        parse::parse("pAthPrefix(`/api`)").is_err(),
        "other mixes are unknown, as in Traefik"
    );
}

/// Rows of Traefik v3's `pkg/muxer/http` test tables where Berth once answered otherwise.
#[test]
fn traefiks_matcher_tables() {
    // Empty values are refused everywhere: an empty regexp would match every request.
    for rule in [
        "HostRegexp(``)",
        "PathRegexp(``)",
        "Header(`X-A`, ``)",
        "HeaderRegexp(`X-A`, ``)",
        "Query(`q`, ``)",
        "QueryRegexp(`q`, ``)",
        "Host(``)",
        "Method(``)",
    ] {
        assert!(compile(rule).is_err(), "{rule}");
    }
    // QueryRegexp with one argument is Query(key).
    assert!(m("QueryRegexp(`mobile`)", &Req::new("h", "/?mobile")));
    assert!(!m("QueryRegexp(`mobile`)", &Req::new("h", "/?mobile=1")));
    // Wildcard hosts: exactly one label.
    let wild = "Host(`*.example.com`)";
    assert!(m(wild, &Req::new("test.example.com", "/")));
    assert!(m(wild, &Req::new("Other.Example.com:8080", "/")));
    assert!(!m(wild, &Req::new("example.com", "/")));
    assert!(!m(wild, &Req::new("a.b.example.com", "/")));
    assert!(!m(wild, &Req::new("test.otherexample.com", "/")));
    assert!(m("Host(`*`)", &Req::new("anything.test", "/")));
    assert!(m("Host(`*`)", &Req::new("", "/")), "`*` even matches no host");
    assert!(!m("Host(`a.test`)", &Req::new("", "/")));
    assert!(compile("Host(`*foo.example.com`)").is_err());
    assert_eq!(
        compile(wild).unwrap().required_hosts(),
        None,
        "not indexed by exact host"
    );
    // IPv6 literals: brackets and port off the request, the rule bare.
    assert!(m("Host(`10::10`)", &Req::new("[10::10]:80", "/")));
    assert!(m("Host(`10::10`)", &Req::new("[10::10]", "/")));
    assert!(m("Host(`::1`)", &Req::new("[::1]:8443", "/")));
    assert!(m("HostRegexp(`^10::10$`)", &Req::new("[10::10]", "/")));
    // A port or non-ASCII in a Host value never matched in Traefik: refused, with why.
    assert!(
        compile("Host(`example.com:8080`)")
            .unwrap_err()
            .to_string()
            .contains("port")
    );
    assert!(compile("Host(`\u{1f9ad}.com`)").is_err());
    assert!(compile("HostRegexp(`\u{1f9ad}.com`)").is_err());
    // HostRegexp sees the trailing dot; Host tolerates one either side.
    assert!(!m(r"HostRegexp(`^example\.com$`)", &Req::new("example.com.", "/")));
    assert!(m(r"HostRegexp(`\.$`)", &Req::new("example.com.", "/")));
    assert!(m("Host(`example.com`)", &Req::new("example.com.", "/")));
    assert!(m("Host(`example.com.`)", &Req::new("example.com", "/")));
    // Encoded reserved characters stay encoded in the routing path.
    assert!(!m("PathPrefix(`/foo/bar`)", &Req::new("h", "/foo%2Fbar")));
    assert!(m("Path(`/foo%2Fbar`)", &Req::new("h", "/foo%2fbar")));
    assert!(m("Path(`/a%25b`)", &Req::new("h", "/a%25b")));
    assert!(m("PathPrefix(`/foo bar`)", &Req::new("h", "/foo%20bar")));
    // Query: `;` separates, a bad escape drops its pair.
    assert!(m("Query(`q`, `traefik`)", &Req::new("h", "/?a=1;q=traefik")));
    assert!(!m("QueryRegexp(`q`, `%zz`)", &Req::new("h", "/?q=%zz")));
    // Go's regexp dialect.
    assert!(m("PathRegexp(`/{path:(css|js)}`)", &Req::new("h", "/{path:css}")));
    assert!(compile("HostRegexp(`{domain:[a-zA-Z-]+\\.com}`)").is_ok());
    // Go keeps Host and Transfer-Encoding out of the header map.
    let r = Req::new("example.com", "/")
        .header("host", "example.com")
        .header("transfer-encoding", "chunked")
        .header("x-name", "café");
    assert!(!m("Header(`Host`, `example.com`)", &r));
    assert!(!m("HeaderRegexp(`host`, `.*`)", &r));
    assert!(!m("Header(`Transfer-Encoding`, `chunked`)", &r));
    assert!(m("HeaderRegexp(`X-Name`, `caf`)", &r));
    // IPv4-mapped rule values compare as IPv4; no spaces around a value.
    assert!(m("ClientIP(`::ffff:10.0.0.1`)", &Req::new("h", "/").ip("10.0.0.1")));
    assert!(m("ClientIP(`::ffff:10.0.0.0/104`)", &Req::new("h", "/").ip("10.1.2.3")));
    assert!(compile("ClientIP(` 10.0.0.1`)").is_err());
}

/// Rows of Traefik's `pkg/rules/parser_test.go` and Go's string syntax.
#[test]
fn traefiks_parser_accepts_what_go_accepts() {
    assert!(m("Host(`a.test`,)", &Req::new("a.test", "/")), "a trailing comma");
    assert!(m("Host(\"\\x61.test\")", &Req::new("a.test", "/")), "\\x escapes");
    assert!(m("Host(\"\\u0061.test\")", &Req::new("a.test", "/")), "\\u escapes");
    assert!(m("Host(\"\\141.test\")", &Req::new("a.test", "/")), "octal escapes");
    assert!(m(
        "Header(`X`, \"\\U0001F600\")",
        &Req::new("h", "/").header("x", "\u{1f600}")
    ));
    assert!(
        parse::parse("Host(\"\\'\")").is_err(),
        "\\' is no Go escape in a double-quoted string"
    );
    assert!(
        parse::parse("Host(\"a\nb\")").is_err(),
        "no raw newline in a double-quoted string"
    );
    assert!(
        m("Path(`/a\r`)", &Req::new("h", "/a")),
        "raw strings drop carriage returns"
    );
}

fn m2(rule: &str, req: &Req) -> bool {
    compile_with(rule, Syntax::V2)
        .unwrap_or_else(|e| panic!("{rule}: {e}"))
        .matches(&req.view())
}

/// Traefik v2's matchers (its `pkg/muxer/http/matcher_v2_test.go` cases), side by side
/// with what the same text means, or fails to mean, in v3.
#[test]
fn v2_syntax_means_what_traefik_v2_means() {
    // Several values: any of them.
    let r = "Host(`a.test`, `b.test`)";
    assert!(m2(r, &Req::new("a.test", "/")) && m2(r, &Req::new("B.TEST:8080", "/")));
    assert!(!m2(r, &Req::new("c.test", "/")));
    assert!(compile(r).is_err(), "v3 takes one host");
    assert!(m2("HostHeader(`a.test`)", &Req::new("a.test.", "/")));
    assert!(
        compile_with("Host(`*.a.test`)", Syntax::V2).is_err(),
        "no wildcards in v2"
    );
    // The hosts are still indexed for the router table.
    let rule = compile_with(r, Syntax::V2).unwrap();
    assert_eq!(rule.required_hosts().unwrap().len(), 2);

    // Host templates: case-insensitive, anchored, `[^.]+` by default.
    let r = "HostRegexp(`{sub:[a-z]+}.example.com`)";
    assert!(m2(r, &Req::new("Foo.example.com", "/")));
    assert!(!m2(r, &Req::new("foo.bar.example.com", "/")));
    assert!(!m2(r, &Req::new("foo.example.com.evil", "/")));
    assert!(m2("HostRegexp(`{any}.example.com`)", &Req::new("x-1.example.com", "/")));
    assert!(!m2(
        "HostRegexp(`{any}.example.com`)",
        &Req::new("a.b.example.com", "/")
    ));
    // In v3 the same text is a raw regexp that only matches itself.
    assert!(!m(r, &Req::new("foo.example.com", "/")));
    // Literal text is literal: `.` is a dot, not any character.
    assert!(!m2("HostRegexp(`a.example.com`)", &Req::new("axexample.com", "/")));

    // Path templates: `[^/]+` by default; Path anchored at both ends, PathPrefix at the start.
    let r = "Path(`/users/{id:[0-9]+}`)";
    assert!(m2(r, &Req::new("h", "/users/42")));
    assert!(!m2(r, &Req::new("h", "/users/42/x")) && !m2(r, &Req::new("h", "/users/ab")));
    assert!(!m(r, &Req::new("h", "/users/42")), "v3 Path is the literal text");
    let r = "PathPrefix(`/api/{v}/`)";
    assert!(m2(r, &Req::new("h", "/api/v1/users")) && !m2(r, &Req::new("h", "/api/v1")));
    assert!(
        m2("PathPrefix(`/foo`)", &Req::new("h", "/foobar")),
        "a raw prefix, as in Traefik"
    );
    assert!(m2("Path(`/a`, `/b`)", &Req::new("h", "/b")) && !m2("Path(`/a`, `/b`)", &Req::new("h", "/a/")));

    // Method and ClientIP: several values, any of them; methods upper-cased.
    let r = "Method(`get`, `POST`)";
    assert!(m2(r, &Req::new("h", "/")) && m2(r, &Req::new("h", "/").method(Method::POST)));
    assert!(!m2(r, &Req::new("h", "/").method(Method::PUT)));
    let r = "ClientIP(`10.0.0.0/8`, `192.0.2.10`)";
    assert!(m2(r, &Req::new("h", "/")) && m2(r, &Req::new("h", "/").ip("10.1.2.3")));
    assert!(!m2(r, &Req::new("h", "/").ip("11.0.0.1")));

    // Headers and Query: pairs, all of them.
    let r = "Headers(`X-A`, `1`, `x-b`, `2`)";
    assert!(m2(r, &Req::new("h", "/").header("x-a", "1").header("x-b", "2")));
    assert!(!m2(r, &Req::new("h", "/").header("x-a", "1")));
    assert!(compile_with("Headers(`X-A`)", Syntax::V2).is_err(), "pairs");
    assert!(compile(r).is_err(), "v3 has Header, not Headers");
    assert!(m2(
        "HeadersRegexp(`X-A`, `^v[0-9]`)",
        &Req::new("h", "/").header("x-a", "v2")
    ));
    let r = "Query(`a=1`, `b=`)";
    assert!(m2(r, &Req::new("h", "/?a=1&b=zz")) && !m2(r, &Req::new("h", "/?a=1")));
    assert!(!m2(r, &Req::new("h", "/?a=2&b=")));
    assert!(m2("Query(`id={n:[0-9]+}`)", &Req::new("h", "/?id=12")));
    assert!(!m2("Query(`id={n:[0-9]+}`)", &Req::new("h", "/?id=1x")));
    assert!(
        m2("Query(`a`, `b`)", &Req::new("h", "/?a=b")),
        "Traefik flattens the pieces"
    );
    assert!(compile_with("Query(`a`)", Syntax::V2).is_err());
    // v3 reads `a=1` as a key: it parses, and never matches this request.
    assert!(!m("Query(`a=1`)", &Req::new("h", "/?a=1")));

    // Operators, precedence and the v3-only matchers.
    let r = "Host(`a.test`) && (PathPrefix(`/x`, `/y`) || !Method(`GET`))";
    assert!(m2(r, &Req::new("a.test", "/y/1")) && !m2(r, &Req::new("a.test", "/z")));
    assert!(
        compile_with("PathRegexp(`^/x`)", Syntax::V2).is_err(),
        "not a v2 matcher"
    );
    assert!(
        compile_with("pathprefix(`/x`)", Syntax::V2).is_ok() && compile_with("pathPrefix(`/x`)", Syntax::V2).is_err()
    );
}

#[test]
fn v2_templates_are_checked_as_traefik_checks_them() {
    for bad in [
        "Path(`/a/{id`)",
        "Path(`/a/id}`)",
        "Path(`/a/{:[0-9]+}`)",
        "Path(`/a/{id:}`)",
        "Path(`a/{id}`)",
        "HostRegexp(`{sub:(}.a.test`)",
        "Host(``)",
    ] {
        assert!(compile_with(bad, Syntax::V2).is_err(), "{bad}");
    }
    // Nested braces in a variable's regexp.
    assert!(m2("Path(`/{id:[0-9]{3}}`)", &Req::new("h", "/123")));
    assert!(!m2("Path(`/{id:[0-9]{3}}`)", &Req::new("h", "/1234")));
    // Expansion counts toward the matcher bound.
    let many = format!("Host({})", vec!["`a.test`"; 1100].join(", "));
    assert!(compile_with(&many, Syntax::V2).is_err());
}
