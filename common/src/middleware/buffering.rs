//! `buffering`: the request is read whole before it is forwarded (so a slow client never
//! holds a backend connection, and the request can be sent again), and the response is
//! read whole before it is sent on. Over `maxRequestBodyBytes`: 413; over
//! `maxResponseBodyBytes`: 500, as Traefik (oxy's buffer) answers.
//!
//! `retryExpression` (oxy's, as Traefik documents it) sends the buffered request to the
//! service again while the expression holds for the answer, at most 10 more times:
//! `IsNetworkError()` (the answer is 502 or 504, as a failed trip becomes), `Attempts()`
//! (1 for the first), `ResponseCode()` and `RequestMethod()`, compared with `==`, `!=`,
//! `<`, `<=`, `>`, `>=` (the method with `==` and `!=` against a quoted string) and
//! combined with `&&`, `||` and parentheses.
//!
//! Where Berth differs: bodies are held in memory only (Traefik spills to disk past the
//! `mem*` sizes, which Berth accepts and ignores), so both are bounded by [`MAX_BUFFERED`]
//! even when the option is 0 (no limit in Traefik); a retried request goes to the service
//! again without running the middlewares after `buffering` in the chain a second time.
//! The gateway does the reading and the sending ([`super::Spec::buffering`]).

use std::sync::Arc;

use super::options::Options;
use super::predicate::{self, Cmp};
use crate::tree::Node;

/// The most a buffered body may hold, whatever the options say.
pub const MAX_BUFFERED: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Buffering {
    pub max_request: u64,
    pub max_response: u64,
    /// `retryExpression`: when the request goes to the service again.
    pub retry: Option<Arc<RetryExpression>>,
}

/// The most times a request is sent again (oxy's `DefaultMaxRetryAttempts`).
pub const MAX_RETRIES: u32 = 10;

#[derive(Debug, Clone, PartialEq)]
enum Term {
    IsNetworkError,
    Attempts(Cmp, i64),
    ResponseCode(Cmp, i64),
    /// `==` (true) or `!=` (false) a method.
    Method(bool, String),
}

/// A parsed `retryExpression`.
#[derive(Debug)]
pub struct RetryExpression(predicate::Expr<Term>);

impl RetryExpression {
    pub fn parse(text: &str) -> Result<RetryExpression, String> {
        predicate::parse("buffering.retryExpression", text, |p| {
            let int = |p: &mut predicate::Parser<'_>| -> Result<(Cmp, i64), String> {
                p.args(0)?;
                let cmp = p.expect_cmp()?;
                let n = p.number()?;
                if n.fract() != 0.0 || n.abs() > 1e9 {
                    return p.err("expected an integer");
                }
                Ok((cmp, n as i64))
            };
            if p.eat("IsNetworkError") {
                p.args(0)?;
                Ok(Term::IsNetworkError)
            } else if p.eat("Attempts") {
                int(p).map(|(c, n)| Term::Attempts(c, n))
            } else if p.eat("ResponseCode") {
                int(p).map(|(c, n)| Term::ResponseCode(c, n))
            } else if p.eat("RequestMethod") {
                p.args(0)?;
                let eq = match p.cmp() {
                    Some(Cmp::Eq) => true,
                    Some(Cmp::Ne) => false,
                    _ => return p.err("a method is compared with == or !="),
                };
                Ok(Term::Method(eq, p.string()?))
            } else {
                p.err("expected IsNetworkError(), Attempts(), ResponseCode() or RequestMethod()")
            }
        })
        .map(RetryExpression)
    }

    /// Whether a request with `method`, answered `status` on its `attempt`th try (1 for
    /// the first), goes again.
    pub fn holds(&self, method: &str, attempt: u32, status: u16) -> bool {
        self.0.holds(&|t: &Term| match t {
            Term::IsNetworkError => status == 502 || status == 504,
            Term::Attempts(c, n) => c.holds(i64::from(attempt), *n),
            Term::ResponseCode(c, n) => c.holds(i64::from(status), *n),
            Term::Method(eq, m) => (method == m) == *eq,
        })
    }
}

impl Buffering {
    pub fn parse(node: &Node) -> Result<Buffering, String> {
        let o = Options::new(
            "buffering",
            node,
            &[
                "maxRequestBodyBytes",
                "memRequestBodyBytes",
                "maxResponseBodyBytes",
                "memResponseBodyBytes",
                "retryExpression",
            ],
        )?;
        let retry = match o.string("retryExpression")? {
            Some(e) if !e.trim().is_empty() => Some(Arc::new(RetryExpression::parse(&e)?)),
            _ => None,
        };
        let size = |key: &str| -> Result<u64, String> {
            match o.number(key)? {
                None | Some(0) => Ok(MAX_BUFFERED),
                Some(n) if n <= MAX_BUFFERED => Ok(n),
                Some(n) => Err(format!(
                    "buffering.{key}: {n} is above Berth's bound of {MAX_BUFFERED} bytes"
                )),
            }
        };
        // Accepted for compatibility: Berth keeps buffers in memory.
        o.number("memRequestBodyBytes")?;
        o.number("memResponseBodyBytes")?;
        Ok(Buffering {
            max_request: size("maxRequestBodyBytes")?,
            max_response: size("maxResponseBodyBytes")?,
            retry,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::middleware::testing::node;

    #[test]
    fn sizes_and_refusals() {
        let b = Buffering::parse(&node(&[("maxRequestBodyBytes", "10"), ("memRequestBodyBytes", "5")])).unwrap();
        assert_eq!((b.max_request, b.max_response), (10, MAX_BUFFERED));
        let b = Buffering::parse(&node(&[("retryExpression", "IsNetworkError() && Attempts() < 2")])).unwrap();
        assert!(b.retry.is_some());
        assert!(Buffering::parse(&node(&[("retryExpression", "IsNetworkError(")])).is_err());
        assert!(Buffering::parse(&node(&[("maxResponseBodyBytes", "99999999999")])).is_err());
        assert!(Buffering::parse(&node(&[("maxRequestBodyBytes", "-1")])).is_err());
    }

    #[test]
    fn retry_expressions_follow_oxy() {
        let e = RetryExpression::parse("IsNetworkError() && Attempts() < 2").unwrap();
        assert!(e.holds("GET", 1, 502));
        assert!(e.holds("POST", 1, 504));
        assert!(!e.holds("GET", 2, 502), "the second attempt is the last");
        assert!(!e.holds("GET", 1, 500), "a 500 is an answer, not a network error");
        let e =
            RetryExpression::parse(r#"(ResponseCode() >= 500 && ResponseCode() != 501) || RequestMethod() == "PUT""#)
                .unwrap();
        assert!(e.holds("GET", 5, 503));
        assert!(!e.holds("GET", 1, 501));
        assert!(e.holds("PUT", 1, 200));
        assert!(!e.holds("GET", 1, 404));
        let e = RetryExpression::parse(r#"RequestMethod() != "POST" && Attempts() <= 3"#).unwrap();
        assert!(e.holds("GET", 3, 200) && !e.holds("GET", 4, 200) && !e.holds("POST", 1, 200));
        for bad in [
            "Attempts()",
            "Attempts() < 2.5",
            "IsNetworkError() > 1",
            r#"RequestMethod() < "GET""#,
            r#"RequestMethod() == "GET"#,
            "ResponseCode() == ",
            "Nope()",
            "IsNetworkError() &&",
            "((((((((((((((((((IsNetworkError()))))))))))))))))))",
        ] {
            assert!(RetryExpression::parse(bad).is_err(), "{bad}");
        }
    }
}
