//! `berth-gateway`: parse configuration, install the crypto provider, run until
//! SIGTERM or Ctrl-C, drain, exit 0. Bad configuration exits 64 (EX_USAGE).
//! `berth-gateway check [flags]` verifies what that configuration needs instead.

use berth_gateway::Gateway;
use berth_gateway::{Args, Config, Sources};
use clap::Parser;

/// glibc's malloc showed up as ~15% of the proxy's CPU time under load; mimalloc's
/// per-thread free lists suit many small short-lived allocations.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    berth_common::tls::install_crypto_provider();
    let mut argv: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    // `berth-gateway check [flags]`: the checks, with the configuration it would run with.
    let check = argv.get(1).is_some_and(|a| a == "check");
    if check {
        argv.remove(1);
    }
    // `traefik version`, `traefik healthcheck --ping`: Traefik's commands, then exit.
    if let Some(code) = berth_gateway::run_command(&argv) {
        std::process::exit(code);
    }
    // Installed as `traefik`, it is Traefik mode even with no option at all.
    let as_traefik = argv
        .first()
        .and_then(|p| std::path::Path::new(p).file_name())
        .is_some_and(|n| n == "traefik");
    let (berth, traefik) = berth_gateway::split_args(argv);
    let args = Args::parse_from(berth);
    let mut sources = Sources::from_process(traefik);
    sources.always = as_traefik;
    let cfg = match Config::from_sources(args, &sources) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth-gateway: {e}");
            std::process::exit(64);
        }
    };
    berth_common::logging::init_with(cfg.log_format, &cfg.log_filter);
    if let Some(form) = &cfg.traefik_form {
        tracing::info!(from = %form, "Traefik mode: reading Traefik's static configuration");
    }
    for note in &cfg.notes {
        tracing::warn!("{note}");
    }
    // As many threads as CPUs: on one (a task with one vCPU, or a process pinned to one)
    // that is Tokio's current-thread runtime, which beat a multi-thread runtime's single
    // worker by 18 % (docs/benchmarks.md).
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let built = berth_common::runtime::build(threads);
    tracing::debug!(runtime = berth_common::runtime::flavor(threads), "Tokio runtime");
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-gateway: cannot start the runtime: {e}");
            std::process::exit(70);
        }
    };
    if check {
        std::process::exit(rt.block_on(berth_gateway::check(&cfg)));
    }
    let code = rt.block_on(run(cfg));
    std::process::exit(code);
}

async fn run(cfg: Config) -> i32 {
    // Listened for before the listeners open: a SIGTERM while starting (ECS stopping a
    // task that has just started) drains and exits 0 instead of killing the process.
    let mut signals = Signals::new();
    let gw = match Gateway::start(cfg).await {
        Ok(g) => g,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("berth-gateway: {e}");
            return 1;
        }
    };
    signals.next().await;
    gw.shutdown();
    tokio::select! {
        _ = gw.wait() => {}
        _ = signals.next() => tracing::warn!("second signal: exiting without draining"),
    }
    tracing::info!("stopped");
    0
}

/// SIGTERM (ECS's stop) and SIGINT, registered once.
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        Signals {
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    async fn next(&mut self) {
        match &mut self.term {
            Some(term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}
