//! `berth-greeter`: the gRPC demo app (`helloworld.Greeter` and `grpc.health.v1.Health`
//! over HTTP/2 without TLS; its sidecar adds mTLS). See `berth_examples::greeter`.
//!
//! Flags: `--listen ADDR` (default `GREETER_LISTEN`, else `$BERTH_LOCAL_ADDRESS:$GREETER_PORT`,
//! else `0.0.0.0:50051`), `--name NAME` (default `GREETER_NAME`, then `HOSTNAME`).

use std::net::SocketAddr;

fn main() {
    let mut listen = std::env::var("GREETER_LISTEN").unwrap_or_else(|_| {
        let host = std::env::var("BERTH_LOCAL_ADDRESS").unwrap_or_else(|_| "0.0.0.0".into());
        let port = std::env::var("GREETER_PORT").unwrap_or_else(|_| "50051".into());
        format!("{host}:{port}")
    });
    let mut name = std::env::var("GREETER_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "greeter".into());
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--listen", Some(v)) => listen = v,
            ("--name", Some(v)) => name = v,
            _ => {
                eprintln!("usage: berth-greeter [--listen ADDR] [--name NAME]");
                std::process::exit(64);
            }
        }
    }
    let listen: SocketAddr = match listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("berth-greeter: --listen {listen}: {e}");
            std::process::exit(64);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-greeter: {e}");
            std::process::exit(70);
        }
    };
    rt.block_on(async move {
        match berth_examples::greeter::start(listen, &name).await {
            Ok((addr, _)) => eprintln!("berth-greeter {name} listening on {addr}"),
            Err(e) => {
                eprintln!("berth-greeter: {listen}: {e}");
                std::process::exit(1);
            }
        }
        std::future::pending::<()>().await;
    });
}
