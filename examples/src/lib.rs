//! The demo apps and the discovery benchmark. The binaries live in `src/bin/`
//! (`berth-whoami`, `berth-greeter`, `berth-discovery-bench`); [`greeter`] is the gRPC demo
//! service, which the end-to-end tests call with its client. The local ECS they run in is
//! the `berth-local` crate.

pub mod greeter;

/// The demo apps' command line: `--listen ADDR` (default `<PREFIX>_LISTEN`, else
/// `$BERTH_LOCAL_ADDRESS:$<PREFIX>_PORT`, else `0.0.0.0:<port>`; in berth-local every task
/// has its own loopback address) and `--name NAME` (default `<PREFIX>_NAME`, then
/// `HOSTNAME`). Bad input exits 64; a runtime that cannot start exits 70.
pub fn demo_app_setup(
    program: &str,
    prefix: &str,
    default_port: u16,
) -> (std::net::SocketAddr, String, tokio::runtime::Runtime) {
    let env = |k: &str| std::env::var(format!("{prefix}_{k}")).ok();
    let mut listen = env("LISTEN").unwrap_or_else(|| {
        let host = std::env::var("BERTH_LOCAL_ADDRESS").unwrap_or_else(|_| "0.0.0.0".into());
        let port = env("PORT").unwrap_or_else(|| default_port.to_string());
        format!("{host}:{port}")
    });
    let mut name = env("NAME")
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| program.trim_start_matches("berth-").to_string());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            ("--name", Some(v)) => name = v,
            _ => {
                eprintln!("usage: {program} [--listen ADDR] [--name NAME]");
                std::process::exit(64);
            }
        }
    }
    let listen = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{program}: --listen {listen}: {e}");
            std::process::exit(64);
        }
    };
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => (listen, name, rt),
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::exit(70);
        }
    }
}
