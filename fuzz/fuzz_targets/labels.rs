#![no_main]
//! Label parsing and the container defaults never panic on any key or value.

use std::collections::BTreeMap;

use berth_common::config::Strategy;
use berth_common::labels::{self, ContainerTarget};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let map: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (parsed, _) = labels::parse(&map);
    let mut target = ContainerTarget {
        name: "fuzz".into(),
        address: "127.0.0.1".into(),
        ports: vec![(80, 32768)],
        default_rule: Some("Host(`{{ normalize .Name }}`)".into()),
        default_strategy: Strategy::P2c,
        via: None,
    };
    let _ = labels::container_config(&parsed, &target);
    // The same task behind its sidecar.
    target.via = Some(labels::Via {
        port: 15443,
        identity: "ecs/prod/fuzz".into(),
    });
    let _ = labels::container_config(&parsed, &target);
});
