//! `berth-sidecar`: the per-task sidecar. `berth-sidecar inspect` prints the
//! registration it would send; `berth-sidecar health` is the container health check;
//! `berth-sidecar check` verifies what the sidecar needs (`berth_sidecar::check`);
//! `berth-sidecar inject [--uninject] [FILE]` adds the sidecar to a task definition
//! (`berth_sidecar::inject`).
//! Without arguments it reads its settings from the environment and runs
//! [`Sidecar::start`] then [`Sidecar::run`] (the library's `start.rs` has the phases),
//! turning SIGTERM and Ctrl-C into a stop. Bad configuration exits 64.

use std::time::Duration;

use berth_sidecar::Settings;
use berth_sidecar::Sidecar;
use berth_sidecar::metadata;

fn main() {
    berth_common::tls::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    let threads = match worker_threads(std::env::var("BERTH_SIDECAR_THREADS").ok().as_deref()) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("berth-sidecar: {e}");
            std::process::exit(64);
        }
    };
    // One thread by default, as linkerd2-proxy runs: a task's traffic rarely needs more
    // than a core, and on one thread a request crosses no thread to reach its upstream
    // connection (docs/benchmarks.md).
    let built = berth_common::runtime::build(threads);
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-sidecar: {e}");
            std::process::exit(70);
        }
    };
    match args.next().as_deref() {
        Some("inject") => std::process::exit(inject(&args.collect::<Vec<_>>())),
        Some("inspect") => std::process::exit(rt.block_on(inspect())),
        Some("health") => std::process::exit(rt.block_on(health())),
        Some("check") => std::process::exit(rt.block_on(berth_sidecar::check::run())),
        Some("--help") | Some("-h") => {
            println!("usage: berth-sidecar [inspect | health | check | inject [OPTIONS] [FILE]]")
        }
        None => std::process::exit(rt.block_on(run())),
        Some(other) => {
            eprintln!(
                "berth-sidecar: unknown command `{other}` (usage: berth-sidecar [inspect | health | check | inject])"
            );
            std::process::exit(64);
        }
    }
}

/// `BERTH_SIDECAR_THREADS`: how many threads carry the traffic (default 1, at most 64).
fn worker_threads(v: Option<&str>) -> Result<usize, String> {
    match v.map(str::trim) {
        None | Some("") => Ok(1),
        Some(t) => match t.parse::<usize>() {
            Ok(n @ 1..=64) => Ok(n),
            _ => Err(format!(
                "BERTH_SIDECAR_THREADS: `{t}` is not a thread count from 1 to 64"
            )),
        },
    }
}

/// `inject`: the task definition from FILE or stdin, the result on stdout; a usage
/// error exits 64, a task definition that cannot be meshed 1, with the reason.
fn inject(args: &[String]) -> i32 {
    use berth_sidecar::inject;
    use std::io::Read;
    let (options, file) = match inject::Options::parse(args) {
        Ok(x) => x,
        Err(e) => {
            eprintln!(
                "berth-sidecar inject: {e}\nusage: berth-sidecar inject [--uninject] [--image I] [--gateway URL] \
                 [--app-port N] [--health-path P] [--ca-cert-secret ARN] [--token-secret ARN] [--mesh-name N] \
                 [--mesh-allow A,B] [--http-proxy CONTAINER,...] [FILE | -]"
            );
            return 64;
        }
    };
    let mut text = String::new();
    let read = match file.as_deref() {
        None | Some("-") => std::io::stdin()
            .take(inject::MAX_INPUT as u64 + 1)
            .read_to_string(&mut text)
            .map(|_| ()),
        Some(path) => std::fs::File::open(path).and_then(|f| {
            f.take(inject::MAX_INPUT as u64 + 1)
                .read_to_string(&mut text)
                .map(|_| ())
        }),
    };
    if let Err(e) = read {
        eprintln!("berth-sidecar inject: {}: {e}", file.as_deref().unwrap_or("stdin"));
        return 64;
    }
    if !inject::layout_kept(&text) {
        eprintln!(
            "berth-sidecar inject: note: the input's layout (line endings, number or escape forms, indentation) \
             is not one written back exactly; the output is the same JSON re-laid out"
        );
    }
    match inject::run(&text, &options) {
        Ok(out) => {
            print!("{out}");
            0
        }
        Err(e) => {
            eprintln!("berth-sidecar inject: {e}");
            1
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

/// The container health check: `GET http://$BERTH_ADMIN/readyz` answers 200.
async fn health() -> i32 {
    let admin = std::env::var("BERTH_ADMIN").unwrap_or_else(|_| "127.0.0.1:15000".into());
    let check = async {
        let stream = tokio::net::TcpStream::connect(&admin).await.ok()?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = http::Request::builder()
            .uri("/readyz")
            .header("host", admin.as_str())
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        Some(send.send_request(req).await.ok()?.status().is_success())
    };
    match tokio::time::timeout(Duration::from_secs(2), check).await {
        Ok(Some(true)) => 0,
        _ => 1,
    }
}

async fn run() -> i32 {
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth-sidecar: {e}");
            return 64;
        }
    };
    berth_common::logging::init(settings.log_format);
    let sidecar = match Sidecar::start(settings).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth-sidecar: {e}");
            return e.exit_code();
        }
    };
    // SIGTERM or Ctrl-C: deregister, drain while the app still runs, leave.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return 0,
    };
    let stop = sidecar.stop_handle();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.stop();
    });
    sidecar.run().await;
    0
}

#[cfg(test)]
mod tests {
    use super::worker_threads;

    #[test]
    fn thread_counts_are_bounded() {
        assert_eq!(worker_threads(None), Ok(1));
        assert_eq!(worker_threads(Some(" 4 ")), Ok(4));
        assert_eq!(worker_threads(Some("64")), Ok(64));
        for bad in ["0", "65", "-1", "two", "99999999999999999999"] {
            assert!(worker_threads(Some(bad)).is_err(), "{bad}");
        }
    }
}
