#![no_main]
//! The file provider's decoder never panics on YAML or TOML input.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut diags = Vec::new();
    let _ = berth_common::config::parse_file(text, false, &mut diags);
    let _ = berth_common::config::parse_file(text, true, &mut diags);
});
