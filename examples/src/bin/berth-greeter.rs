//! `berth-greeter`: the gRPC demo app (`helloworld.Greeter` and `grpc.health.v1.Health`
//! over HTTP/2 without TLS; its sidecar adds mTLS). See `berth_examples::greeter`.
//!
//! Flags: `--listen ADDR` (default `GREETER_LISTEN`, else `$BERTH_LOCAL_ADDRESS:$GREETER_PORT`,
//! else `0.0.0.0:50051`), `--name NAME` (default `GREETER_NAME`, then `HOSTNAME`).

fn main() {
    let (listen, name, rt) = berth_examples::demo_app_setup("berth-greeter", "GREETER", 50051);
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
