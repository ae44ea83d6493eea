//! `buffering`: the request is read whole before it is forwarded (so a slow client never
//! holds a backend connection, and the request can be sent again), and the response is
//! read whole before it is sent on. Over `maxRequestBodyBytes`: 413; over
//! `maxResponseBodyBytes`: 500, as Traefik (oxy's buffer) answers.
//!
//! Where Berth differs: bodies are held in memory only (Traefik spills to disk past the
//! `mem*` sizes, which Berth accepts and ignores), so both are bounded by [`MAX_BUFFERED`]
//! even when the option is 0 (no limit in Traefik); `retryExpression` is refused (use the
//! `retry` middleware). The gateway does the reading ([`super::Spec::buffering`]).

use super::options::Options;
use crate::tree::Node;

/// The most a buffered body may hold, whatever the options say.
pub const MAX_BUFFERED: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Buffering {
    pub max_request: u64,
    pub max_response: u64,
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
        if o.string("retryExpression")?.is_some_and(|e| !e.trim().is_empty()) {
            return Err(
                "buffering.retryExpression is not supported by Berth yet (use the retry middleware); the router is not served"
                    .into(),
            );
        }
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
        assert!(Buffering::parse(&node(&[("retryExpression", "IsNetworkError() && Attempts() < 2")])).is_err());
        assert!(Buffering::parse(&node(&[("maxResponseBodyBytes", "99999999999")])).is_err());
        assert!(Buffering::parse(&node(&[("maxRequestBodyBytes", "-1")])).is_err());
    }
}
