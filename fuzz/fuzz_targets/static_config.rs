#![no_main]
//! Traefik's static configuration in its three forms (flags, `TRAEFIK_*` variables, a
//! YAML or TOML file) and the expressions in it (provider constraints, the default-rule
//! template) never panic: bad input is an error naming the option, and a template that
//! parses renders for any name and labels.

use std::collections::BTreeMap;

use berth_common::labels::{Constraint, Template};
use berth_gateway::{Args, Config, Sources};
use clap::Parser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (head, body) = text.split_once('\n').unwrap_or((text, ""));
    let labels: BTreeMap<String, String> = body
        .lines()
        .take(16)
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(c) = Constraint::parse(head) {
        let _ = c.matches(&labels);
    }
    if let Ok(t) = Template::parse(head) {
        let _ = t.render(head, &labels);
    }
    // The lines as flags, then as variables, then the whole text as a file.
    let lines: Vec<String> = text.lines().take(64).map(|l| format!("--{l}")).collect();
    let env: Vec<(String, String)> = text
        .lines()
        .take(64)
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("TRAEFIK_{k}"), v.to_string()))
        .collect();
    let dir = std::env::temp_dir().join(format!("berth-fuzz-static-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let yml = dir.join("traefik.yml");
    let toml = dir.join("traefik.toml");
    let _ = std::fs::write(&yml, text);
    let _ = std::fs::write(&toml, text);
    for sources in [
        Sources {
            flags: lines,
            ..Default::default()
        },
        Sources {
            env,
            ..Default::default()
        },
        Sources {
            search: vec![yml],
            ..Default::default()
        },
        Sources {
            search: vec![toml],
            ..Default::default()
        },
    ] {
        let _ = Config::from_sources(Args::parse_from(["berth-gateway"]), &sources);
    }
});
