#![no_main]
//! The circuit breaker's expression language (`NetworkErrorRatio() > 0.5 && (...)`) parses
//! or is refused without panicking on any text (non-ASCII spaces, deep parentheses, long
//! chains, odd numbers), and a breaker that parses observes outcomes and answers.

use berth_common::config::Node;
use berth_common::middleware::{self, Spec};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut diags = Vec::new();
    let node = Node::from_dotted([("expression", text), ("checkPeriod", "1ms")], "", &mut diags);
    let Ok(Spec::CircuitBreaker(b)) = middleware::parse("circuitBreaker", &node) else {
        return;
    };
    for status in [200, 500, 503] {
        b.observe(status, status == 503, std::time::Duration::from_millis(3));
    }
    let _ = b.request();
});
