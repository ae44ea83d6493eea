//! Routing at scale (benchmark scenario 6): 10,000 routers as the ECS provider makes
//! them, one per service from its container labels. Measures the snapshot rebuild (what
//! every discovery change costs) and the per-request match for hosts first, last and
//! absent in the table, for path rules behind host-less routers, and for a regex host.
//!
//! `cargo bench -p berth-common --bench routing` (add `-- --quick` for a short run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::IpAddr;

use berth_common::config::Strategy;
use berth_common::labels::Merger;
use berth_common::labels::{self, ContainerTarget};
use berth_common::routing::{BuildOptions, ProviderView, Snapshot, build};
use berth_common::rules::RequestView;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};

const ROUTERS: usize = 10_000;

/// What the ECS provider publishes for `n` services: a host rule each, every tenth one a
/// path rule on a shared host instead, every hundredth a regex host; two tasks each.
fn ecs_view(n: usize) -> ProviderView {
    let mut merger = Merger::default();
    for i in 0..n {
        let name = format!("svc{i:05}");
        let rule = match i {
            i if i % 100 == 0 => format!("HostRegexp(`^{name}-[a-z0-9]+\\.regex\\.test$`)"),
            i if i % 10 == 0 => format!("Host(`shared.test`) && PathPrefix(`/{name}`)"),
            _ => format!("Host(`{name}.example.test`)"),
        };
        let mut map = BTreeMap::new();
        map.insert("berth.enable".to_string(), "true".to_string());
        map.insert(format!("berth.http.routers.{name}.rule"), rule);
        map.insert(format!("berth.http.routers.{name}.entrypoints"), "web".to_string());
        let (parsed, _) = labels::parse(&map);
        for task in 0..2u32 {
            let target = ContainerTarget {
                name: name.clone(),
                address: format!("10.{}.{}.{}", (i / 250) % 250, i % 250, task + 1),
                ports: vec![(8080, 8080)],
                default_rule: None,
                default_strategy: Strategy::P2c,
                via: None,
            };
            let (cfg, _) = labels::container_config(&parsed, &target);
            merger.add(cfg);
        }
    }
    ProviderView {
        provider: "ecs".into(),
        config: merger.config,
        diagnostics: Vec::new(),
        pending: None,
    }
}

fn opts() -> BuildOptions {
    BuildOptions {
        entrypoints: vec!["web".into()],
        version: 1,
        previous: vec![],
        ..BuildOptions::default()
    }
}

fn route<'a>(s: &'a Snapshot, host: &str, path: &str) -> Option<&'a str> {
    let headers = HeaderMap::new();
    let req = RequestView {
        host,
        path,
        method: &Method::GET,
        headers: &headers,
        query: None,
        client_ip: IpAddr::from([10, 0, 0, 1]),
    };
    s.route("web", false, &req).map(|r| r.name.as_str())
}

fn routing(c: &mut Criterion) {
    let views = vec![ecs_view(ROUTERS)];
    let snap = build(&views, &opts());
    assert_eq!(snap.routers.len(), ROUTERS, "{:?}", snap.diagnostics.first());
    // The cases measured below must route where they should, or the figures mean nothing.
    assert_eq!(route(&snap, "svc00001.example.test", "/"), Some("svc00001@ecs"));
    assert_eq!(route(&snap, "svc09999.example.test", "/x"), Some("svc09999@ecs"));
    assert_eq!(route(&snap, "shared.test", "/svc09990/a"), Some("svc09990@ecs"));
    assert_eq!(route(&snap, "svc09900-abc.regex.test", "/"), Some("svc09900@ecs"));
    assert_eq!(route(&snap, "nobody.test", "/"), None);

    let mut g = c.benchmark_group("routing_10k");
    g.sample_size(10);
    g.bench_function("snapshot_rebuild", |b| b.iter(|| build(black_box(&views), &opts())));
    g.finish();

    let mut g = c.benchmark_group("match_10k");
    for (case, host, path) in [
        ("host_first", "svc00001.example.test", "/"),
        ("host_last", "svc09999.example.test", "/x"),
        ("path_on_shared_host", "shared.test", "/svc09990/a"),
        ("regex_host", "svc09900-abc.regex.test", "/"),
        ("no_match", "nobody.test", "/"),
    ] {
        g.bench_function(case, |b| {
            b.iter(|| route(black_box(&snap), black_box(host), black_box(path)))
        });
    }
    g.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
