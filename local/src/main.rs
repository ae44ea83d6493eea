//! `berth-local`: a local ECS on one machine, and the one-command demo.
//!
//! `berth-local up` serves the ECS API (awsJson1.1) and the task metadata endpoint,
//! runs the task definitions and services under `--dir` (default: the demo compiled in)
//! as local processes, starts `berth-gateway` discovering through that API, prints
//! `ready` once every service runs its desired count and every task is routable, and
//! stops everything on Ctrl-C or SIGTERM. Every process it starts lives in the process
//! group of a reaper that kills the group when berth-local dies, however it dies.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use berth_local::{Ecs, EcsServer, Faults, tmds};
use berth_local::{Programs, Runner, RunnerConfig, signal};
use serde_json::Value;

const DEMO_TASKDEFS: &[(&str, &str)] = &[
    ("whoami", include_str!("../demo/taskdefs/whoami.json")),
    ("caller", include_str!("../demo/taskdefs/caller.json")),
    ("greeter", include_str!("../demo/taskdefs/greeter.json")),
];
const DEMO_SERVICES: &[(&str, &str)] = &[
    ("whoami", include_str!("../demo/services/whoami.json")),
    ("caller", include_str!("../demo/services/caller.json")),
    ("greeter", include_str!("../demo/services/greeter.json")),
];
const NEEDED: [&str; 4] = ["berth-gateway", "berth-sidecar", "berth-whoami", "berth-greeter"];

struct Opts {
    api: SocketAddr,
    tmds: SocketAddr,
    web: SocketAddr,
    /// The gateway's TCP entrypoint (for `tcp` routers).
    tcp: SocketAddr,
    admin: SocketAddr,
    dir: Option<PathBuf>,
    gateway: bool,
    first_address: std::net::Ipv4Addr,
    faults: Faults,
    refresh: String,
    build: bool,
    mesh: SocketAddr,
    /// Gateway replicas: 1 runs one gateway process on the --web/--admin/--mesh-listen
    /// addresses; more run the gateway as the ECS service `berth-gateway`, each replica on
    /// its own task address with the same ports.
    gateways: u32,
    /// More flags for every gateway (`--gateway-arg --upstream-response-timeout=2s`).
    gateway_args: Vec<String>,
    /// How sidecars prove their task for a first certificate (the gateway's
    /// `--mesh-auth`): `iam` (each task's role, the default), `token`, or `iam,token`.
    mesh_auth: String,
    /// The mesh CA (`--mesh-ca-cert`, `--mesh-ca-key`) instead of a dev CA made for the
    /// run, and more roots (`--mesh-trust-bundle`); the gateway reads them again when
    /// they change (CA rotation), and sidecars start trusting the bundle (else the CA).
    mesh_ca: Option<(PathBuf, PathBuf)>,
    mesh_trust_bundle: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: berth-local [up] [--api ADDR] [--tmds ADDR] [--web ADDR] [--tcp ADDR] [--admin ADDR] [--mesh-listen ADDR] [--dir DIR]\n\
         \x20                 [--no-gateway] [--no-build] [--first-address IP] [--ecs-refresh DUR]\n\
         \x20                 [--throttle-rate F] [--error-rate F] [--latency-ms N] [--mesh-auth iam|token|iam,token]\n\
         \x20                 [--mesh-ca-cert F --mesh-ca-key F] [--mesh-trust-bundle F] [--gateway-arg ARG]..."
    );
    std::process::exit(64);
}

fn parse_args() -> (String, Opts) {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = match args.first().map(String::as_str) {
        Some("up") | None => {
            if !args.is_empty() {
                args.remove(0);
            }
            "up".to_string()
        }
        Some("__reaper") => return ("__reaper".into(), default_opts()),
        Some(a) if a.starts_with("--") => "up".to_string(),
        Some(_) => usage(),
    };
    let mut o = default_opts();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        let addr = |v: String| v.parse::<SocketAddr>().unwrap_or_else(|_| usage());
        match a.as_str() {
            "--api" => o.api = addr(val()),
            "--tmds" => o.tmds = addr(val()),
            "--web" => o.web = addr(val()),
            "--tcp" => o.tcp = addr(val()),
            "--admin" => o.admin = addr(val()),
            "--mesh-listen" => o.mesh = addr(val()),
            "--dir" => o.dir = Some(PathBuf::from(val())),
            "--no-gateway" => o.gateway = false,
            "--gateways" => o.gateways = val().parse().ok().filter(|n| *n >= 1).unwrap_or_else(|| usage()),
            "--no-build" => o.build = false,
            "--gateway-arg" => o.gateway_args.push(val()),
            "--mesh-ca-cert" => o.mesh_ca.get_or_insert_with(Default::default).0 = PathBuf::from(val()),
            "--mesh-ca-key" => o.mesh_ca.get_or_insert_with(Default::default).1 = PathBuf::from(val()),
            "--mesh-trust-bundle" => o.mesh_trust_bundle = Some(PathBuf::from(val())),
            "--mesh-auth" => {
                o.mesh_auth = val();
                if !o.mesh_auth.split(',').all(|m| matches!(m.trim(), "iam" | "token")) {
                    usage()
                }
            }
            "--first-address" => o.first_address = val().parse().unwrap_or_else(|_| usage()),
            "--ecs-refresh" => o.refresh = val(),
            "--throttle-rate" => o.faults.throttle_rate = val().parse().unwrap_or_else(|_| usage()),
            "--error-rate" => o.faults.error_rate = val().parse().unwrap_or_else(|_| usage()),
            "--latency-ms" => o.faults.latency = Duration::from_millis(val().parse().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    (cmd, o)
}

fn default_opts() -> Opts {
    Opts {
        api: SocketAddr::from(([127, 0, 0, 1], 8855)),
        tmds: SocketAddr::from(([127, 0, 0, 1], 51679)),
        web: SocketAddr::from(([127, 0, 0, 1], 8080)),
        tcp: SocketAddr::from(([127, 0, 0, 1], 8081)),
        admin: SocketAddr::from(([127, 0, 0, 1], 9900)),
        dir: None,
        gateway: true,
        first_address: std::net::Ipv4Addr::new(127, 0, 100, 1),
        faults: Faults::default(),
        refresh: "1s".into(),
        build: true,
        mesh: SocketAddr::from(([127, 0, 0, 1], 9443)),
        gateways: 1,
        gateway_args: Vec::new(),
        mesh_auth: "iam".into(),
        mesh_ca: None,
        mesh_trust_bundle: None,
    }
}

/// The reaper: the process-group leader for everything berth-local starts. When its
/// stdin closes (berth-local exited, or was killed), it terminates the whole group.
fn reaper() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    let pgid = std::process::id();
    // TERM the group (but not ourselves first: we are its leader and must finish the job).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
    if let Ok(rt) = rt {
        rt.block_on(async {
            let _guard = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
            let _ = std::process::Command::new("kill")
                .args(["-TERM", "--", &format!("-{pgid}")])
                .status();
            for _ in 0..60 {
                if group_members(pgid) == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .status();
}

/// Processes other than this one in process group `pgid` (from /proc).
fn group_members(pgid: u32) -> usize {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .is_some_and(|stat| {
                    // Fields after the parenthesised command: state ppid pgrp ...
                    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
                    let mut f = rest.split_whitespace();
                    let state = f.next().unwrap_or_default();
                    let pgrp = f.nth(1).and_then(|p| p.parse::<u32>().ok());
                    pgrp == Some(pgid) && state != "Z"
                })
        })
        .count()
}

fn main() {
    let (cmd, opts) = parse_args();
    if cmd == "__reaper" {
        reaper();
        return;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth-local: {e}");
            std::process::exit(70);
        }
    };
    let code = rt.block_on(up(opts));
    std::process::exit(code);
}

fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe().ok()?.parent().map(Path::to_path_buf)
}

/// Find the binaries next to berth-local or on PATH; build them when missing.
fn ensure_binaries(programs: &Programs, build: bool) -> Result<(), String> {
    let missing: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|p| programs.resolve(p).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !build {
        return Err(format!(
            "{} not found next to berth-local or on PATH (--no-build)",
            missing.join(", ")
        ));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    println!(
        "[build] {} not found next to berth-local or on PATH; building (cargo build --release --bins)...",
        missing.join(", ")
    );
    let status = std::process::Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "--bins", "-j2"])
        .status()
        .map_err(|e| format!("cargo: {e}"))?;
    if !status.success() {
        return Err("cargo build failed".into());
    }
    let still: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|p| programs.resolve(p).is_none())
        .collect();
    if still.is_empty() {
        Ok(())
    } else {
        Err(format!("still missing after the build: {}", still.join(", ")))
    }
}

/// Named JSON documents (task definitions or services).
type Docs = Vec<(String, Value)>;

fn load_definitions(dir: Option<&Path>) -> Result<(Docs, Docs), String> {
    let parse = |name: &str, text: &str| -> Result<Value, String> {
        serde_json::from_str(text).map_err(|e| format!("{name}: {e}"))
    };
    let Some(dir) = dir else {
        let t = DEMO_TASKDEFS
            .iter()
            .map(|(n, t)| Ok((n.to_string(), parse(n, t)?)))
            .collect::<Result<_, String>>()?;
        let s = DEMO_SERVICES
            .iter()
            .map(|(n, t)| Ok((n.to_string(), parse(n, t)?)))
            .collect::<Result<_, String>>()?;
        return Ok((t, s));
    };
    let read_dir = |sub: &str| -> Result<Docs, String> {
        let d = dir.join(sub);
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(&d) else {
            return Ok(out);
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "json")) {
            let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            out.push((p.display().to_string(), parse(&p.display().to_string(), &text)?));
        }
        Ok(out)
    };
    Ok((read_dir("taskdefs")?, read_dir("services")?))
}

async fn wait_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn up(opts: Opts) -> i32 {
    let programs = Programs {
        dirs: exe_dir().into_iter().collect(),
    };
    // Our own path, taken before a build may replace the file (afterwards Linux reports
    // it as "… (deleted)"); the reaper runs from it.
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("berth-local: {e}");
            return 1;
        }
    };
    if let Err(e) = ensure_binaries(&programs, opts.build) {
        eprintln!("berth-local: {e}");
        return 1;
    }
    // The reaper leads the process group every child joins.
    let mut reaper = match std::process::Command::new(&me)
        .arg("__reaper")
        .stdin(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("berth-local: cannot start the reaper: {e}");
            return 1;
        }
    };
    let pgid = reaper.id();
    let code = run(opts, programs, pgid).await;
    drop(reaper.stdin.take());
    let _ = reaper.wait();
    code
}

async fn run(opts: Opts, programs: Programs, pgid: u32) -> i32 {
    let (taskdefs, services) = match load_definitions(opts.dir.as_deref()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("berth-local: {e}");
            return 64;
        }
    };
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    let mut ecs = Ecs::new(&region, opts.first_address);
    ecs.create_cluster("default");
    for (name, td) in &taskdefs {
        if let Err(e) = ecs.register_task_definition(td) {
            eprintln!("berth-local: task definition {name}: {}", e.message);
            return 64;
        }
    }
    let server = match EcsServer::start(opts.api, ecs).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("berth-local: cannot serve the ECS API on {}: {e}", opts.api);
            return 1;
        }
    };
    server.set_faults(opts.faults.clone());
    let tmds_addr = match tmds::serve(opts.tmds, server.ecs.clone()).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("berth-local: cannot serve task metadata on {}: {e}", opts.tmds);
            return 1;
        }
    };
    println!(
        "[1/4] local ECS API on http://{}   (export AWS_ENDPOINT_URL=http://{})",
        server.addr, server.addr
    );
    println!("      task metadata endpoint on http://{tmds_addr}");
    let logs = std::env::temp_dir().join(format!("berth-local-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&logs);
    let passthrough: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| (k.starts_with("OTEL_") && k != "OTEL_SERVICE_NAME") || k == "RUST_LOG")
        .collect();
    // The gateway runs the mesh with a dev CA; sidecars get its address, the trust
    // anchor, and prove their task by its role's credentials (IAM), or with a
    // bootstrap token made for this run (`--mesh-auth token`).
    let ca_dir = logs.join("mesh-ca");
    let mut token = None;
    if opts.mesh_auth.split(',').any(|m| m.trim() == "token") {
        let t: String = (0..32)
            .map(|_| char::from_digit(fastrand::u32(..16), 16).unwrap_or('0'))
            .collect();
        let token_file = logs.join("mesh-token");
        if let Err(e) = std::fs::write(&token_file, &t) {
            eprintln!("berth-local: {}: {e}", token_file.display());
            return 1;
        }
        token = Some((t, token_file));
    }
    let mut mesh_args = vec!["--mesh-auth".to_string(), opts.mesh_auth.clone()];
    if let Some((_, file)) = &token {
        mesh_args.extend(["--mesh-token-file".to_string(), file.display().to_string()]);
    }
    // What sidecars start trusting: the bundle, else the CA's certificate.
    let trust_file = match &opts.mesh_ca {
        Some((cert, key)) => {
            if cert.as_os_str().is_empty() || key.as_os_str().is_empty() {
                eprintln!("berth-local: --mesh-ca-cert and --mesh-ca-key go together");
                return 64;
            }
            mesh_args.extend([
                "--mesh-ca-cert".to_string(),
                cert.display().to_string(),
                "--mesh-ca-key".to_string(),
                key.display().to_string(),
            ]);
            cert.clone()
        }
        None => {
            mesh_args.extend(["--mesh-dev-ca".to_string(), ca_dir.display().to_string()]);
            ca_dir.join("ca.crt")
        }
    };
    let trust_file = match &opts.mesh_trust_bundle {
        Some(bundle) => {
            mesh_args.extend(["--mesh-trust-bundle".to_string(), bundle.display().to_string()]);
            bundle.clone()
        }
        None => trust_file,
    };
    let mut gateway = None;
    let replicated = opts.gateway && opts.gateways > 1;
    if replicated {
        let td = gateway_task_definition(&opts, &region, &server.endpoint_url(), &mesh_args, &passthrough);
        let mut ecs = server.ecs.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = ecs.register_task_definition(&td) {
            eprintln!("berth-local: the gateway's task definition: {}", e.message);
            return 1;
        }
        if let Err(e) = ecs.create_service(&serde_json::json!({
            "serviceName": GATEWAY_SERVICE, "taskDefinition": GATEWAY_SERVICE, "desiredCount": 1,
            "launchType": "FARGATE",
            "deploymentConfiguration": { "minimumHealthyPercent": 100, "maximumPercent": 200 }
        })) {
            eprintln!("berth-local: the gateway's service: {}", e.message);
            return 1;
        }
        println!(
            "[2/4] berth-gateway: {} replicas as the ECS service `{GATEWAY_SERVICE}`, each on its task's address (ports {}, {}, {})",
            opts.gateways,
            opts.web.port(),
            opts.admin.port(),
            opts.mesh.port()
        );
    } else if opts.gateway {
        let Some(path) = programs.resolve("berth-gateway") else {
            eprintln!("berth-local: berth-gateway not found");
            return 1;
        };
        let mut cmd = std::process::Command::new(path);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_ENDPOINT_URL", format!("http://{}", server.addr))
            .env("AWS_REGION", &region)
            .env("AWS_ACCESS_KEY_ID", "berth-local")
            .env("AWS_SECRET_ACCESS_KEY", "berth-local")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .args([
                "--entrypoint",
                &format!("web={}", opts.web),
                "--entrypoint",
                &format!("tcp={}", opts.tcp),
                "--admin",
                &opts.admin.to_string(),
            ])
            .args([
                "--ecs-cluster",
                "default",
                "--ecs-refresh",
                &opts.refresh,
                "--shutdown-delay",
                "0s",
            ])
            .args(["--mesh-listen", &opts.mesh.to_string()])
            .args(&mesh_args)
            .args(&opts.gateway_args)
            .stdin(Stdio::null())
            .process_group(pgid as i32);
        for (k, v) in &passthrough {
            cmd.env(k, v);
        }
        let log = logs.join("gateway.log");
        match std::fs::File::create(&log) {
            Ok(f) => {
                let f2 = f.try_clone().ok();
                cmd.stdout(f);
                if let Some(f2) = f2 {
                    cmd.stderr(f2);
                }
            }
            Err(_) => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        match cmd.spawn() {
            Ok(c) => gateway = Some(c),
            Err(e) => {
                eprintln!("berth-local: cannot start berth-gateway: {e}");
                return 1;
            }
        }
        println!(
            "[2/4] berth-gateway: web http://{}, admin http://{} (log {})",
            opts.web,
            opts.admin,
            log.display()
        );
    } else {
        println!("[2/4] no gateway (--no-gateway)");
    }

    let mut sidecar_env = Vec::new();
    if opts.gateway && !replicated {
        // The gateway creates the dev CA at start; sidecars need its certificate.
        let ca_cert = trust_file.clone();
        let mut waited = 0;
        while !ca_cert.exists() && waited < 200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            waited += 1;
        }
        if !ca_cert.exists() {
            eprintln!(
                "berth-local: the gateway did not create its dev CA; see {}",
                logs.join("gateway.log").display()
            );
            return 1;
        }
        sidecar_env = vec![
            ("BERTH_GATEWAY".to_string(), format!("https://{}", opts.mesh)),
            ("BERTH_CA_CERT".to_string(), ca_cert.display().to_string()),
        ];
        if let Some((t, _)) = &token {
            sidecar_env.push(("BERTH_TOKEN".to_string(), t.clone()));
        }
    }
    let runner_cfg = RunnerConfig {
        programs: programs.clone(),
        tmds_base: format!("http://{tmds_addr}"),
        process_group: Some(pgid),
        passthrough: passthrough.clone(),
        logs: logs.clone(),
        default_stop_timeout: Duration::from_secs(30),
        sidecar_env,
        gateway_service: replicated.then(|| (GATEWAY_SERVICE.to_string(), opts.mesh.port())),
        aws_endpoint: Some(format!("http://{}", server.addr)),
    };
    let runner = Arc::new(tokio::sync::Mutex::new(Runner::new(server.ecs.clone(), runner_cfg)));
    let r = runner.clone();
    let driver = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            r.lock().await.step().await;
        }
    });
    let mut check_admin = opts.admin;
    // Every replica must route every task, and say it is ready, before `ready`.
    let mut replica_admins = vec![opts.admin];
    if replicated {
        // The first replica makes the dev CA; the others (and the sidecars) share it.
        let ca_cert = trust_file.clone();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while !ca_cert.exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        if ready.is_err() {
            eprintln!(
                "berth-local: the first gateway replica did not create the dev CA; logs in {}",
                logs.display()
            );
            return 1;
        }
        let mut sidecar_cfg = runner.lock().await;
        sidecar_cfg.add_sidecar_env(&[("BERTH_CA_CERT".to_string(), ca_cert.display().to_string())]);
        if let Some((t, _)) = &token {
            sidecar_cfg.add_sidecar_env(&[("BERTH_TOKEN".to_string(), t.clone())]);
        }
        drop(sidecar_cfg);
        {
            let mut ecs = server.ecs.lock().unwrap_or_else(|e| e.into_inner());
            let _ = ecs.update_service(&serde_json::json!({"service": GATEWAY_SERVICE, "desiredCount": opts.gateways}));
        }
        let running = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let addrs = gateway_addresses(&server);
                if addrs.len() == opts.gateways as usize {
                    return addrs;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        let Ok(addrs) = running else {
            eprintln!(
                "berth-local: the gateway replicas did not start; logs in {}",
                logs.display()
            );
            return 1;
        };
        for a in &addrs {
            println!(
                "      replica {a}: web http://{a}:{}, admin http://{a}:{}, control https://{a}:{}",
                opts.web.port(),
                opts.admin.port(),
                opts.mesh.port()
            );
        }
        check_admin = SocketAddr::new(std::net::IpAddr::V4(addrs[0]), opts.admin.port());
        replica_admins = addrs
            .iter()
            .map(|a| SocketAddr::new(std::net::IpAddr::V4(*a), opts.admin.port()))
            .collect();
    }
    {
        let mut ecs = server.ecs.lock().unwrap_or_else(|e| e.into_inner());
        for (name, s) in &services {
            if let Err(e) = ecs.create_service(s) {
                eprintln!("berth-local: service {name}: {}", e.message);
                return 64;
            }
        }
    }

    // Wait for every service to converge and every exposed task to be routable.
    let mut last_line = String::new();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let (running, desired, addrs) = progress(&server);
            let routable = if opts.gateway {
                let mut least = addrs.len();
                for admin in &replica_admins {
                    let n = if readyz(*admin).await {
                        routable(*admin, &addrs).await
                    } else {
                        0
                    };
                    least = least.min(n);
                }
                least
            } else {
                addrs.len()
            };
            let line = format!(
                "[3/4] tasks running {running}/{desired}; routable {routable}/{}",
                addrs.len()
            );
            if line != last_line {
                println!("{line}");
                last_line = line;
            }
            if running == desired && routable == addrs.len() && (desired > 0 || services.is_empty()) {
                return;
            }
        }
    })
    .await;
    let mut code = 0;
    if ready.is_err() {
        eprintln!(
            "berth-local: not ready after 120 s; container logs are in {}",
            logs.display()
        );
        code = 1;
    } else {
        println!("[4/4] ready");
        println!("ready");
        if opts.gateway && opts.dir.is_none() {
            // With replicas, any one of them (a load balancer would spread clients over all).
            let web = SocketAddr::new(check_admin.ip(), opts.web.port());
            println!(
                "  curl -H 'Host: whoami.localhost' http://{web}/     # repeat: answers come from different tasks"
            );
            println!(
                "  curl -H 'Host: caller.localhost' 'http://{web}/call?url=http://whoami/'   # east-west: caller -> sidecars (mTLS) -> whoami"
            );
            println!("  open http://{check_admin}/                                 # the gateway's dashboard");
        } else {
            // Your own task definitions: where each service's tasks listen.
            for (service, addr, ports) in task_listing(&server) {
                println!("  service {service}: task {addr}, ports {ports}");
            }
        }
        println!(
            "  AWS_ENDPOINT_URL=http://{} aws ecs list-tasks   # the local ECS API (any region, dummy credentials)",
            server.addr
        );
        println!("Ctrl-C stops everything.");
        wait_signal().await;
    }
    println!("stopping...");
    driver.abort();
    runner.lock().await.shutdown(Duration::from_secs(30)).await;
    if let Some(mut g) = gateway {
        signal(g.id(), "TERM");
        for _ in 0..100 {
            if matches!(g.try_wait(), Ok(Some(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = g.kill();
        let _ = g.wait();
    }
    code
}

/// The service the gateway replicas run as (`--gateways N`).
const GATEWAY_SERVICE: &str = "berth-gateway";

/// The gateway as a task definition: one container, its listeners on the task's address.
fn gateway_task_definition(
    opts: &Opts,
    region: &str,
    endpoint: &str,
    mesh_args: &[String],
    passthrough: &[(String, String)],
) -> serde_json::Value {
    let at = |port: u16| format!("${{BERTH_LOCAL_ADDRESS}}:{port}");
    let mut env = vec![
        serde_json::json!({"name": "AWS_ENDPOINT_URL", "value": endpoint}),
        serde_json::json!({"name": "AWS_REGION", "value": region}),
        serde_json::json!({"name": "AWS_ACCESS_KEY_ID", "value": "berth-local"}),
        serde_json::json!({"name": "AWS_SECRET_ACCESS_KEY", "value": "berth-local"}),
        serde_json::json!({"name": "AWS_EC2_METADATA_DISABLED", "value": "true"}),
    ];
    for (k, v) in passthrough {
        env.push(serde_json::json!({"name": k, "value": v}));
    }
    let mut command: Vec<String> = [
        "berth-gateway".to_string(),
        "--entrypoint".to_string(),
        format!("web={}", at(opts.web.port())),
        "--entrypoint".to_string(),
        format!("tcp={}", at(opts.tcp.port())),
        "--admin".to_string(),
        at(opts.admin.port()),
        "--ecs-cluster".to_string(),
        "default".to_string(),
        "--ecs-refresh".to_string(),
        opts.refresh.clone(),
        // Long enough for a load balancer to stop sending before the listener closes.
        "--shutdown-delay".to_string(),
        "2s".to_string(),
        "--mesh-listen".to_string(),
        at(opts.mesh.port()),
        "--mesh-peers-service".to_string(),
        GATEWAY_SERVICE.to_string(),
    ]
    .into();
    command.extend(mesh_args.iter().cloned());
    command.extend(opts.gateway_args.iter().cloned());
    serde_json::json!({
        "family": GATEWAY_SERVICE,
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": "512",
        "memory": "1024",
        "containerDefinitions": [{
            "name": "berth-gateway",
            "image": "berth-gateway",
            "essential": true,
            "command": command,
            "environment": env,
            "stopTimeout": 10
        }]
    })
}

/// Addresses of the running gateway replicas.
fn gateway_addresses(server: &EcsServer) -> Vec<std::net::Ipv4Addr> {
    let ecs = server.ecs.lock().unwrap_or_else(|e| e.into_inner());
    let mut out: Vec<std::net::Ipv4Addr> = ecs
        .clusters
        .values()
        .flat_map(|c| c.tasks.values())
        .filter(|t| {
            t.service.as_deref() == Some(GATEWAY_SERVICE) && t.last_status == "RUNNING" && t.desired_status == "RUNNING"
        })
        .filter_map(|t| t.address)
        .collect();
    out.sort();
    out
}

/// (running tasks, desired tasks, addresses of running tasks with routed containers).
/// Each running service task: its service, address and container ports, for the lines
/// printed once ready.
fn task_listing(server: &EcsServer) -> Vec<(String, String, String)> {
    let ecs = server.ecs.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    for c in ecs.clusters.values() {
        for t in c.tasks.values().filter(|t| t.last_status == "RUNNING") {
            let (Some(service), Some(addr)) = (t.group.strip_prefix("service:"), t.address) else {
                continue;
            };
            let ports: Vec<String> = ecs
                .task_definition(&t.taskdef_arn)
                .ok()
                .into_iter()
                .flat_map(|d| {
                    d["containerDefinitions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|c| c["portMappings"].as_array().into_iter().flatten())
                        .filter_map(|m| m["containerPort"].as_u64().map(|p| p.to_string()))
                        .collect::<Vec<_>>()
                })
                .collect();
            out.push((service.to_string(), addr.to_string(), ports.join(", ")));
        }
    }
    out.sort();
    out
}

fn progress(server: &EcsServer) -> (usize, usize, BTreeSet<String>) {
    let ecs = server.ecs.lock().unwrap_or_else(|e| e.into_inner());
    let mut desired = 0;
    let mut running = 0;
    let mut addrs = BTreeSet::new();
    for c in ecs.clusters.values() {
        for s in c.services.values().filter(|s| s.status == "ACTIVE") {
            desired += s.desired_count;
        }
        for t in c
            .tasks
            .values()
            .filter(|t| t.desired_status == "RUNNING" && t.group.starts_with("service:"))
        {
            if t.last_status == "RUNNING" {
                running += 1;
                let exposed = ecs.task_definition(&t.taskdef_arn).ok().is_some_and(|d| {
                    d["containerDefinitions"].as_array().into_iter().flatten().any(|c| {
                        ["berth.enable", "traefik.enable"]
                            .iter()
                            .any(|k| c["dockerLabels"][*k] == "true")
                    })
                });
                if exposed && let Some(a) = t.address {
                    addrs.insert(a.to_string());
                }
            }
        }
    }
    (running, desired, addrs)
}

/// How many of these task addresses appear among the gateway's servers.
/// Whether a gateway's `/readyz` answers 200.
async fn readyz(admin: SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else {
        return false;
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.is_ok() && head.ends_with(b"200")
}

async fn routable(admin: SocketAddr, addrs: &BTreeSet<String>) -> usize {
    let Ok(mut s) = tokio::net::TcpStream::connect(admin).await else {
        return 0;
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let req = format!("GET /api/http/services HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body).await;
    // One pass over the answer (10,000 tasks make it megabytes): every `://ADDR:` in it.
    let seen: BTreeSet<&str> = body
        .split("://")
        .skip(1)
        .filter_map(|rest| rest.split_once(':').map(|(host, _)| host))
        .collect();
    addrs.iter().filter(|a| seen.contains(a.as_str())).count()
}
