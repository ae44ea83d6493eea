#![no_main]
//! Request paths: cleaning never panics, is idempotent (a cleaned path cleans to itself),
//! never leaves a dot segment or a double slash when sanitizing, and the routing path is
//! computed from anything.

use berth_common::path::{EncodedCharacters, PathPolicy, clean, routing_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = format!("/{text}");
    for (sanitize, encoded) in [
        (true, EncodedCharacters::REFUSE_ALL),
        (true, EncodedCharacters::ALLOW_ALL),
        (false, EncodedCharacters::ALLOW_ALL),
    ] {
        let policy = PathPolicy { sanitize, encoded };
        let Ok(cleaned) = clean(&path, &policy) else { continue };
        let again = clean(&cleaned, &policy).expect("a cleaned path is accepted again");
        assert_eq!(again, cleaned, "cleaning is idempotent");
        if sanitize {
            assert!(!cleaned.contains("//"), "{cleaned}");
            assert!(!cleaned.split('/').any(|s| s == "." || s == ".."), "{cleaned}");
        }
        let _ = routing_path(&cleaned);
    }
});
