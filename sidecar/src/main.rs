//! `berth-sidecar`: the per-task sidecar.
//!
//! `berth-sidecar inspect` reads the task metadata endpoint once (5 s limit) and prints
//! the registration the sidecar would send, as one JSON object: the first thing to run
//! when a task does not show up. The run mode (registration, mTLS data path) lands with
//! the sidecar issue; until then it says so and exits 2.

use berth_sidecar::metadata;

use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-sidecar: {e}");
            std::process::exit(70);
        }
    };
    match args.next().as_deref() {
        Some("inspect") => std::process::exit(rt.block_on(inspect())),
        Some("--help") | Some("-h") => {
            println!("usage: berth-sidecar [inspect]");
        }
        _ => {
            eprintln!("berth-sidecar: the run mode is not built yet; `berth-sidecar inspect` is");
            std::process::exit(2);
        }
    }
}

async fn inspect() -> i32 {
    let Some(uri) = std::env::var(metadata::ENV).ok().filter(|v| !v.is_empty()) else {
        eprintln!("berth-sidecar: {}", metadata::MetadataError::Missing);
        return 1;
    };
    let app_port = match std::env::var("BERTH_APP_PORT") {
        Ok(p) => match p.parse::<u16>() {
            Ok(p) => Some(p),
            Err(_) => {
                eprintln!("berth-sidecar: BERTH_APP_PORT={p} is not a port number");
                return 1;
            }
        },
        Err(_) => None,
    };
    match metadata::fetch(&uri, Duration::from_secs(5)).await {
        Ok(md) => match serde_json::to_string_pretty(&md.registration(app_port)) {
            Ok(json) => {
                println!("{json}");
                0
            }
            Err(e) => {
                eprintln!("berth-sidecar: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("berth-sidecar: {e}");
            1
        }
    }
}
