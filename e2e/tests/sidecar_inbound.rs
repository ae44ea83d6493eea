//! The sidecar's inbound listener end to end, with real processes: berth-sidecar gets
//! its certificate from a berth-gateway process (which checks the task in berth-local's
//! ECS API), then accepts only mTLS callers of the mesh that `berth.mesh.allow` names,
//! and passes the verified identity to the app in `x-berth-client-id`.
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use berth_common::identity::SpiffeId;
use berth_common::mtls::{CertSlot, TrustAnchors};
use berth_common::test_util::{Backend, Proto, eventually, get};
use berth_e2e::{GatewayProcess, free_port, go_tlsprobe, inbound_call, mesh_slot, runnable_copy, temp_dir};
use berth_gateway::{MeshCa, new_root};
use berth_local::{Ecs, EcsServer, tmds};
use serde_json::json;

const TOKEN: &str = "sidecar-test-bootstrap-token";

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET /hello` to the inbound over mTLS as `me`, with a forged `x-berth-client-id`.
async fn call(
    inbound: SocketAddr,
    anchors: &TrustAnchors,
    me: Option<Arc<CertSlot>>,
    expect: &SpiffeId,
) -> Result<berth_common::test_util::Reply, String> {
    let mut req = get("orders", "/hello");
    req.headers_mut().insert(
        "x-berth-client-id",
        "spiffe://berth.local/ecs/prod/forged".parse().unwrap(),
    );
    inbound_call(inbound, anchors, me, expect, req).await
}

/// How the fixture runs the sidecar.
enum Run<'a> {
    /// The `berth-sidecar` binary, as `uid:gid` (with `setpriv`) when given, as the image
    /// and the module run it.
    Process(Option<&'a str>),
    /// `berth_sidecar::Sidecar::start` in this test's runtime.
    InProcess,
}

/// The sidecar the fixture started.
enum Running {
    Process(#[allow(dead_code)] Child),
    InProcess(berth_sidecar::Sidecar),
}

struct Fixture {
    server: EcsServer,
    gw: GatewayProcess,
    sidecar: Running,
    app: Backend,
    inbound: SocketAddr,
    /// The sidecar's BERTH_ADMIN.
    admin: SocketAddr,
    dir: std::path::PathBuf,
    arn: String,
}

/// A gateway (ECS discovery + mesh), one `orders` task with a running sidecar, and the
/// app behind it.
async fn fixture(first: Ipv4Addr, labels: serde_json::Value) -> Fixture {
    fixture_with(first, labels, &[], Run::Process(None), &[]).await
}

/// [`fixture`], with more flags for the gateway, the sidecar run as `run` says, and more
/// environment for the sidecar (a process only).
async fn fixture_with(
    first: Ipv4Addr,
    labels: serde_json::Value,
    gateway_extra: &[&str],
    run: Run<'_>,
    sidecar_env: &[(&str, &str)],
) -> Fixture {
    berth_common::tls::install_crypto_provider();
    let sidecar_bin = berth_e2e::bin("berth-sidecar");
    assert!(
        sidecar_bin.exists(),
        "build the workspace first (scripts/test.sh runs cargo test --workspace)"
    );

    let server = EcsServer::start("127.0.0.1:0".parse().unwrap(), Ecs::new("us-east-1", first))
        .await
        .unwrap();
    let app_port = free_port();
    let (arn, task_ip, docker) = {
        let mut ecs = server.ecs.lock().unwrap();
        ecs.create_cluster("prod");
        ecs.register_task_definition(&json!({
            "family": "orders",
            "containerDefinitions": [
                {"name": "berth-sidecar", "image": "berth-sidecar"},
                {"name": "app", "image": "app", "portMappings": [{"containerPort": app_port}],
                 "dockerLabels": labels}
            ]
        }))
        .unwrap();
        let t = ecs.run_service_task("prod", "orders", "orders").unwrap();
        let arn = t["taskArn"].as_str().unwrap().to_string();
        let id = arn.rsplit('/').next().unwrap().to_string();
        let task = &ecs.clusters["prod"].tasks[&id];
        (arn, task.address.unwrap(), task.containers[0].docker_id.clone())
    };
    let tmds_addr = tmds::serve("127.0.0.1:0".parse().unwrap(), server.ecs.clone())
        .await
        .unwrap();
    let app = Backend::start_at("app", Proto::Http1, SocketAddr::from((task_ip, app_port))).await;

    let dir = temp_dir("sidecar");
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (ca_dir, control_addr, token_file) = (
        dir.join("ca").display().to_string(),
        control.to_string(),
        dir.join("token").display().to_string(),
    );
    let mut gw_args: Vec<&str> = vec![
        "--ecs-cluster",
        "prod",
        "--ecs-refresh",
        "500ms",
        "--mesh-dev-ca",
        &ca_dir,
        "--mesh-listen",
        &control_addr,
        "--mesh-token-file",
        &token_file,
    ];
    gw_args.extend_from_slice(gateway_extra);
    let gw = GatewayProcess::spawn(&gw_args, &[("AWS_ENDPOINT_URL", &server.endpoint_url())]);
    gw.wait_admin().await;
    let inbound = SocketAddr::from((task_ip, 15443));
    let admin = SocketAddr::from((task_ip, free_port()));
    let log = dir.join("sidecar.log");
    let outbound = SocketAddr::from((task_ip, free_port()));
    let metadata_uri = format!("http://{tmds_addr}/v4/{docker}");
    let sidecar = match run {
        Run::InProcess => {
            let settings = berth_sidecar::Settings {
                metadata_uri,
                gateways: vec![control.to_string()],
                ca_pem: std::fs::read_to_string(dir.join("ca/ca.crt")).unwrap(),
                token: Some(TOKEN.into()),
                inbound,
                outbound,
                admin,
                admin_set: true,
                proxy: None,
                app_port: None,
                health_path: Some("/health".into()),
                app_protocol: None,
                log_format: berth_common::logging::LogFormat::Text,
                access_log: None,
                tracing: None,
                outbound_response_timeout: Duration::from_secs(60),
                app_response_timeout: Duration::from_secs(60),
                aws_env: Default::default(),
            };
            let started = tokio::time::timeout(Duration::from_secs(20), berth_sidecar::Sidecar::start(settings)).await;
            Running::InProcess(started.expect("the sidecar starts within 20 s").unwrap())
        }
        Run::Process(user) => Running::Process(sidecar_process(
            &sidecar_bin,
            user,
            &dir,
            &[
                ("ECS_CONTAINER_METADATA_URI_V4", metadata_uri),
                ("BERTH_GATEWAY", format!("https://{control}")),
                ("BERTH_CA_CERT", dir.join("ca/ca.crt").display().to_string()),
                ("BERTH_TOKEN", TOKEN.into()),
                ("BERTH_INBOUND", inbound.to_string()),
                ("BERTH_OUTBOUND", outbound.to_string()),
                ("BERTH_ADMIN", admin.to_string()),
                ("BERTH_HEALTH_PATH", "/health".into()),
                ("BERTH_ACCESS_LOG", "json".into()),
            ],
            sidecar_env,
        )),
    };
    let ready = eventually(Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(admin).await.is_ok()
    })
    .await;
    assert!(
        ready,
        "sidecar not ready:\n{}\ngateway:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        gw.log()
    );

    Fixture {
        server,
        gw,
        sidecar,
        app,
        inbound,
        admin,
        dir,
        arn,
    }
}

/// The `berth-sidecar` binary with only `env` and `extra` in its environment, its
/// stdout in `dir/access.log` and its stderr in `dir/sidecar.log`.
fn sidecar_process(
    bin: &std::path::Path,
    user: Option<&str>,
    dir: &std::path::Path,
    env: &[(&str, String)],
    extra: &[(&str, &str)],
) -> Child {
    let mut cmd = match user {
        None => std::process::Command::new(bin),
        Some(user) => {
            let (uid, gid) = user.split_once(':').unwrap();
            let bin_dir = dir.join("bin");
            std::fs::create_dir_all(&bin_dir).unwrap();
            let copy = runnable_copy(bin, &bin_dir);
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid", uid, "--regid", gid, "--clear-groups"]).arg(copy);
            c
        }
    };
    Child(
        cmd.env_clear()
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(extra.iter().copied())
            .stdout(std::fs::File::create(dir.join("access.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("sidecar.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Requests the app got, besides the sidecar's health probes.
fn app_requests(app: &Backend) -> Vec<berth_common::test_util::Seen> {
    app.requests().into_iter().filter(|r| r.uri != "/health").collect()
}

fn calls(app: &Backend) -> usize {
    app_requests(app).len()
}

#[tokio::test]
async fn inbound_mtls_authorization_and_identity_header() {
    let f = fixture(
        Ipv4Addr::new(127, 0, 180, 1),
        json!({"berth.mesh.allow": "billing, gateway"}),
    )
    .await;
    let (dir, inbound, app) = (&f.dir, f.inbound, &f.app);
    assert!(
        f.gw.log().contains(&f.arn),
        "the gateway logged the issuance for the task"
    );
    let ca = MeshCa::dev(&dir.join("ca"), "berth.local").unwrap();
    let anchors = TrustAnchors::from_certs(std::slice::from_ref(ca.anchor())).unwrap();
    let orders = SpiffeId::for_service("berth.local", "prod", "orders").unwrap();
    let billing = SpiffeId::for_service("berth.local", "prod", "billing").unwrap();

    // An allowed caller reaches the app, which sees the verified identity, not the forged one.
    let r = call(inbound, &anchors, Some(mesh_slot(&ca, &billing)), &orders)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = app_requests(app);
    assert_eq!(seen.last().unwrap().headers["x-berth-client-id"], billing.to_string());
    assert_eq!(
        seen.last().unwrap().headers.get_all("x-berth-client-id").iter().count(),
        1
    );

    // A caller without a `Host` (HTTP/1.0, or HTTP/2 whose authority is not a header):
    // the app, spoken to in HTTP/1.1, still gets one, the app's address.
    let mut req = get("orders", "/hello");
    req.headers_mut().remove(http::header::HOST);
    let r = inbound_call(inbound, &anchors, Some(mesh_slot(&ca, &billing)), &orders, req)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let seen = app_requests(app);
    assert_eq!(
        seen.last()
            .unwrap()
            .headers
            .get("host")
            .map(|h| h.to_str().unwrap().to_string()),
        Some(app.addr.to_string()),
        "the app's request has a Host"
    );

    // Another service of the mesh is denied with the reason.
    let web = SpiffeId::for_service("berth.local", "prod", "web").unwrap();
    let before = calls(app);
    let r = call(inbound, &anchors, Some(mesh_slot(&ca, &web)), &orders)
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("spiffe://berth.local/ecs/prod/web") && r.body.contains("berth.mesh.allow"),
        "{}",
        r.body
    );
    assert_eq!(calls(app), before, "a denied call never reaches the app");

    // No client certificate, a certificate from another CA, and plaintext: refused.
    assert!(call(inbound, &anchors, None, &orders).await.is_err());
    let other = {
        let (c, k) = new_root("elsewhere").unwrap();
        MeshCa::from_pem(&c, &k, "berth.local").unwrap()
    };
    assert!(
        call(inbound, &anchors, Some(mesh_slot(&other, &billing)), &orders)
            .await
            .is_err()
    );
    let plain =
        berth_common::test_util::raw_exchange(inbound, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Duration::from_secs(2))
            .await;
    assert!(!plain.contains("HTTP/1.1 200"), "{plain}");
    assert_eq!(calls(app), before);

    // The sidecar's own metrics say what happened.
    let metrics = berth_common::test_util::http1(f.admin, get("sidecar", "/metrics"))
        .await
        .body;
    assert!(
        metrics.contains("berth_sidecar_inbound_requests_total{code=\"200\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_sidecar_inbound_requests_total{code=\"403\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_sidecar_inbound_request_duration_seconds_count"),
        "{metrics}"
    );
    // The access log: one JSON line per request, with the verified caller.
    let lines = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let logged = eventually(Duration::from_secs(5), || async {
        lines().iter().any(|l| l["DownstreamStatus"] == 403)
    })
    .await;
    assert!(logged, "{:?}", lines());
    let all = lines();
    let ok = all
        .iter()
        .find(|l| l["DownstreamStatus"] == 200 && l["RequestPath"] != "/health")
        .unwrap();
    assert_eq!(ok["ClientIdentity"], billing.to_string());
    assert_eq!(ok["entryPointName"], "inbound");
    assert_eq!(ok["OriginStatus"], serde_json::Value::Null);
    let denied = all.iter().find(|l| l["DownstreamStatus"] == 403).unwrap();
    assert_eq!(denied["ClientIdentity"], web.to_string());
    assert!(metrics.contains("berth_sidecar_inbound_denied_total 1"), "{metrics}");
    let expiry = metrics
        .lines()
        .find_map(|l| l.strip_prefix("berth_sidecar_certificate_expiry_timestamp_seconds "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert!(expiry > 1_700_000_000, "{metrics}");
}

#[tokio::test]
async fn north_south_goes_through_the_sidecar_over_mtls() {
    let f = fixture(
        Ipv4Addr::new(127, 0, 181, 1),
        json!({"berth.enable": "true", "berth.http.routers.orders.rule": "Host(`orders.test`)"}),
    )
    .await;
    let web = f.gw.web;
    let routed = eventually(Duration::from_secs(15), || async {
        berth_common::test_util::http1(web, get("orders.test", "/via-gateway"))
            .await
            .status
            == 200
    })
    .await;
    assert!(
        routed,
        "{}\n{}",
        f.gw.admin_json("/api/http/services").await,
        f.gw.log()
    );
    let services = f.gw.admin_json("/api/http/services").await;
    let url = services[0]["loadBalancer"]["servers"][0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        url.starts_with("mesh://127.0.181.1:") && url.ends_with("/ecs/prod/orders"),
        "{url}"
    );
    let seen = app_requests(&f.app);
    let last = seen.last().unwrap();
    assert_eq!(last.uri, "/via-gateway");
    assert_eq!(
        last.headers["x-berth-client-id"], "spiffe://berth.local/gateway",
        "the app sees the gateway's verified identity"
    );

    // The sidecar registered, and its health probe (BERTH_HEALTH_PATH) decides: an app
    // that turns unhealthy leaves the rotation, and comes back when it recovers.
    let listed = f.gw.admin_json("/api/sidecars").await;
    assert_eq!(listed[0]["taskArn"], f.arn.as_str(), "{listed}");
    assert_eq!(
        (listed[0]["state"].as_str(), listed[0]["healthy"].as_bool()),
        (Some("live"), Some(true))
    );
    // In the steady state (the sidecar reads TMDS and probes every second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    f.app.healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    let turned = std::time::Instant::now();
    let out = eventually(Duration::from_secs(5), || async {
        let r = berth_common::test_util::http1(web, get("orders.test", "/")).await;
        r.status != 200
    })
    .await;
    let took = turned.elapsed();
    assert!(out, "the unhealthy app left the rotation");
    println!("unhealthy app out of the rotation after {took:?}");
    assert_eq!(f.gw.admin_json("/api/sidecars").await[0]["healthy"], false);
    f.app.healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    let back = eventually(Duration::from_secs(5), || async {
        berth_common::test_util::http1(web, get("orders.test", "/"))
            .await
            .status
            == 200
    })
    .await;
    assert!(back, "the recovered app is routed again");
}

#[tokio::test]
async fn an_expired_certificate_is_replaced_by_asking_again_with_the_token() {
    let f = fixture_with(
        Ipv4Addr::new(127, 0, 182, 1),
        json!({}),
        &["--mesh-cert-lifetime", "4s"],
        Run::Process(None),
        &[],
    )
    .await;
    let first_issues = |log: &str| log.matches("certificate issued").count();
    let fresh = |log: &str| {
        log.lines()
            .filter(|l| l.contains("certificate issued") && l.contains("\"renewal\":false"))
            .count()
    };
    assert_eq!(fresh(&f.gw.log()), 1, "{}", f.gw.log());
    // Freeze the gateway past the certificate's life: renewals fail, and the certificate
    // expires (as when the gateway is unreachable for longer than a certificate lives).
    let pid = f.gw.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        std::process::Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The expired certificate cannot open the mTLS renewal path: the sidecar asks again
    // as the first time, with its token, and gets a new one.
    let renewed = eventually(Duration::from_secs(40), || async { fresh(&f.gw.log()) >= 2 }).await;
    assert!(
        renewed,
        "issued {} times; sidecar:\n{}\ngateway:\n{}",
        first_issues(&f.gw.log()),
        std::fs::read_to_string(f.dir.join("sidecar.log")).unwrap_or_default(),
        f.gw.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_app_gets_a_504_and_a_grpc_caller_a_grpc_status() {
    let f = fixture_with(
        Ipv4Addr::new(127, 0, 187, 1),
        json!({"berth.mesh.allow": "billing"}),
        &[],
        Run::Process(None),
        &[("BERTH_APP_RESPONSE_TIMEOUT", "1s")],
    )
    .await;
    let ca = MeshCa::dev(&f.dir.join("ca"), "berth.local").unwrap();
    let anchors = TrustAnchors::from_certs(std::slice::from_ref(ca.anchor())).unwrap();
    let orders = SpiffeId::for_service("berth.local", "prod", "orders").unwrap();
    let billing = SpiffeId::for_service("berth.local", "prod", "billing").unwrap();
    let web = SpiffeId::for_service("berth.local", "prod", "web").unwrap();

    // BERTH_APP_RESPONSE_TIMEOUT: an app that takes 5 s is answered for at 1 s.
    let t0 = std::time::Instant::now();
    let r = inbound_call(
        f.inbound,
        &anchors,
        Some(mesh_slot(&ca, &billing)),
        &orders,
        get("orders", "/slow?ms=5000"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.body.contains("did not answer within 1s"), "{}", r.body);
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());

    // A gRPC caller that is refused gets a gRPC status (trailers-only), not an HTTP 403
    // its client reads as a protocol error.
    let mut req = get("orders", "/helloworld.Greeter/SayHello");
    req.headers_mut()
        .insert(http::header::CONTENT_TYPE, "application/grpc".parse().unwrap());
    let r = inbound_call(f.inbound, &anchors, Some(mesh_slot(&ca, &web)), &orders, req)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.headers);
    assert_eq!(r.headers["grpc-status"], "7", "PERMISSION_DENIED: {:?}", r.headers);
    assert_eq!(r.headers["content-type"], "application/grpc");
    let message = r.headers["grpc-message"].to_str().unwrap();
    assert!(message.contains("berth.mesh.allow"), "{message}");

    // An app that closes every connection without answering (one that is stopping): an
    // idempotent request is tried once more, then the caller is told to go elsewhere
    // (503 with x-berth-unreachable, which a gateway or a peer sidecar retries on another
    // task); a request with a body, which may have reached the app, gets a 502.
    f.app.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let hangup = tokio::net::TcpListener::bind(f.app.addr).await.unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    let closer = tokio::spawn(async move {
        while let Ok((mut conn, _)) = hangup.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut conn, &mut buf).await;
        }
    });
    let r = inbound_call(
        f.inbound,
        &anchors,
        Some(mesh_slot(&ca, &billing)),
        &orders,
        get("orders", "/x"),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.headers["x-berth-unreachable"], "app");
    assert!(r.body.contains("closed the connection without answering"), "{}", r.body);
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2, "tried once more");
    let post = http::Request::post("/orders")
        .header("host", "orders")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let r = inbound_call(f.inbound, &anchors, Some(mesh_slot(&ca, &billing)), &orders, post)
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.headers.get("x-berth-unreachable").is_none());
    closer.abort();
}

/// Run a command with `input` on its stdin; its stdout and stderr together.
fn run_with_input(cmd: &mut std::process::Command, input: &[u8]) -> (bool, String) {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_curl_and_python_complete_mtls_handshakes_with_the_inbound() {
    let f = fixture(Ipv4Addr::new(127, 0, 184, 1), json!({"berth.mesh.allow": "billing"})).await;
    let ca = MeshCa::dev(&f.dir.join("ca"), "berth.local").unwrap();
    let billing = SpiffeId::for_service("berth.local", "prod", "billing").unwrap();
    let (issued, key) = ca.issue_local(&billing, Duration::from_secs(600)).unwrap();
    let (crt, key_file, ca_file) = (
        f.dir.join("billing.crt"),
        f.dir.join("billing.key"),
        f.dir.join("ca/ca.crt"),
    );
    std::fs::write(&crt, &issued.chain_pem).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    let inbound = f.inbound.to_string();
    let request = b"GET /hello HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n";

    // OpenSSL 3: the CertificateRequest's CA names must be DER Names (RFC 8446 4.2.4),
    // else `parse_ca_names: ASN1 lib` and no handshake at all.
    let s_client = |extra: &[&str]| {
        let mut c = std::process::Command::new("openssl");
        c.args([
            "s_client",
            "-connect",
            &inbound,
            "-ign_eof",
            "-CAfile",
            ca_file.to_str().unwrap(),
        ]);
        c.args(["-cert", crt.to_str().unwrap(), "-key", key_file.to_str().unwrap()]);
        c.args(extra);
        c
    };
    let mut plain = s_client(&[]);
    let (_, out) = tokio::task::spawn_blocking(move || run_with_input(&mut plain, request))
        .await
        .unwrap();
    assert!(!out.contains("parse_ca_names"), "{out}");
    assert!(out.contains("Acceptable client certificate CA names"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("HTTP/1.1 200"), "{out}");

    // curl (OpenSSL underneath). The sidecar's certificate names a SPIFFE identity, not a
    // host, so curl cannot check a name; -k skips only that, not the client certificate.
    let (ok, out) = tokio::task::spawn_blocking({
        let (crt, key_file, inbound) = (crt.clone(), key_file.clone(), inbound.clone());
        move || {
            run_with_input(
                std::process::Command::new("curl").args([
                    "-sS",
                    "-k",
                    "--http1.1",
                    "--cert",
                    crt.to_str().unwrap(),
                    "--key",
                    key_file.to_str().unwrap(),
                    "-H",
                    "Host: orders",
                    &format!("https://{inbound}/hello"),
                ]),
                b"",
            )
        }
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("backend=app"), "{out}");

    // Python's ssl module (OpenSSL too), verifying the chain to the mesh CA.
    let script = format!(
        r#"
import socket, ssl
ctx = ssl.create_default_context(cafile={ca:?})
ctx.check_hostname = False
ctx.load_cert_chain({crt:?}, {key:?})
host, port = {inbound:?}.rsplit(":", 1)
with socket.create_connection((host, int(port))) as raw:
    with ctx.wrap_socket(raw) as s:
        assert s.version() == "TLSv1.3", s.version()
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
print(data.decode().splitlines()[0])
"#,
        ca = ca_file.display().to_string(),
        crt = crt.display().to_string(),
        key = key_file.display().to_string(),
    );
    let (ok, out) = tokio::task::spawn_blocking(move || {
        run_with_input(std::process::Command::new("python3").args(["-c", &script]), b"")
    })
    .await
    .unwrap();
    assert!(ok && out.starts_with("HTTP/1.1 200"), "{out}");

    // Go's crypto/tls: the chain checked to the mesh CA (a SPIFFE certificate has no host
    // name to check), a client certificate sent on request, HTTP/1.1 over it.
    let go = go_tlsprobe();
    let probe = |extra: &[&str]| {
        let mut c = std::process::Command::new(&go);
        c.args(["-connect", &inbound, "-noname", "-ca", ca_file.to_str().unwrap()]);
        c.args(["-cert", crt.to_str().unwrap(), "-key", key_file.to_str().unwrap()]);
        c.args(extra);
        c
    };
    let send = r"GET /hello HTTP/1.1\r\nHost: orders\r\nConnection: close\r\n\r\n";
    let mut go_http = probe(&["-send", send]);
    let (ok, out) = tokio::task::spawn_blocking(move || run_with_input(&mut go_http, b""))
        .await
        .unwrap();
    assert!(
        ok && out.contains("version=TLSv1.3") && out.contains("HTTP/1.1 200"),
        "{out}"
    );
    assert_eq!(calls(&f.app), 4, "all four reached the app");

    // The TCP-over-mesh path (the gateway's TCP routers): ALPN `berth-tcp/<port>` asks
    // the inbound for a raw stream to that app port; the app's own HTTP answer comes back.
    let alpn = format!("berth-tcp/{}", f.app.addr.port());
    let mut go_tcp = probe(&["-alpn", &alpn, "-send", send]);
    let (ok, out) = tokio::task::spawn_blocking(move || run_with_input(&mut go_tcp, b""))
        .await
        .unwrap();
    assert!(
        ok && out.contains(&format!("alpn={alpn}")) && out.contains("HTTP/1.1 200"),
        "{out}"
    );
    let mut tcp = s_client(&["-alpn", &alpn]);
    let (_, out) = tokio::task::spawn_blocking(move || run_with_input(&mut tcp, request))
        .await
        .unwrap();
    assert!(out.contains(&format!("ALPN protocol: {alpn}")), "{out}");
    assert!(
        out.contains("Verify return code: 0 (ok)") && out.contains("HTTP/1.1 200"),
        "{out}"
    );
    assert_eq!(calls(&f.app), 6, "both raw streams reached the app");
}

#[tokio::test]
async fn the_sidecar_runs_as_65532_as_it_ships() {
    // The published container definition's user (the Terraform module and inject use
    // it); its ports (15443, 15001, 15000) need no privilege.
    let published: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../terraform/modules/sidecar/container-definition.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(published["user"], "65532:65532");
    let f = fixture_with(
        Ipv4Addr::new(127, 0, 186, 1),
        json!({"berth.mesh.allow": "billing"}),
        &[],
        Run::Process(Some("65532:65532")),
        &[],
    )
    .await;
    let ca = MeshCa::dev(&f.dir.join("ca"), "berth.local").unwrap();
    let anchors = TrustAnchors::from_certs(std::slice::from_ref(ca.anchor())).unwrap();
    let orders = SpiffeId::for_service("berth.local", "prod", "orders").unwrap();
    let billing = SpiffeId::for_service("berth.local", "prod", "billing").unwrap();
    let r = call(f.inbound, &anchors, Some(mesh_slot(&ca, &billing)), &orders)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let ps = std::process::Command::new("ps")
        .args(["-o", "uid=", "-C", "berth-sidecar"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ps.stdout).contains("65532"),
        "the sidecar runs as 65532"
    );
}

/// The sidecar as a library: `Sidecar::start` in this process gets its certificate from
/// the gateway process, registers and serves the inbound, and `run` ends once TMDS shows
/// the task stopped and its app gone, after deregistering (the gateway drains it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_started_in_process_serves_and_stops_with_its_task() {
    let f = fixture_with(
        Ipv4Addr::new(127, 0, 188, 1),
        json!({"berth.mesh.allow": "billing"}),
        &[],
        Run::InProcess,
        &[],
    )
    .await;
    let Running::InProcess(sidecar) = f.sidecar else {
        unreachable!("started in process")
    };
    assert_eq!(sidecar.inbound_addr(), f.inbound);
    assert_eq!(sidecar.admin_addr(), f.admin);
    let ca = MeshCa::dev(&f.dir.join("ca"), "berth.local").unwrap();
    let anchors = TrustAnchors::from_certs(std::slice::from_ref(ca.anchor())).unwrap();
    let orders = SpiffeId::for_service("berth.local", "prod", "orders").unwrap();
    let billing = SpiffeId::for_service("berth.local", "prod", "billing").unwrap();
    let r = call(f.inbound, &anchors, Some(mesh_slot(&ca, &billing)), &orders)
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        app_requests(&f.app).last().unwrap().headers["x-berth-client-id"],
        billing.to_string()
    );
    // Registered: the gateway lists the task's sidecar.
    let listed = eventually(Duration::from_secs(10), || async {
        f.gw.admin_json("/api/sidecars").await.to_string().contains(&f.arn)
    })
    .await;
    assert!(listed, "{}", f.gw.admin_json("/api/sidecars").await);

    // ECS stops the task: TMDS says STOPPED, then the app container exits.
    {
        let mut ecs = f.server.ecs.lock().unwrap();
        ecs.stop_task(Some("prod"), &f.arn, None).unwrap();
        let task = ecs.find_task_mut("prod", &f.arn).unwrap();
        let app = task.containers.iter_mut().find(|c| c.name == "app").unwrap();
        app.last_status = "STOPPED".into();
        app.exit_code = Some(0);
    }
    let ran = tokio::time::timeout(Duration::from_secs(15), sidecar.run()).await;
    assert!(ran.is_ok(), "run() did not end after the task stopped");
    // It deregistered: the gateway drains it (no new traffic) until its lease runs out.
    let sidecars = f.gw.admin_json("/api/sidecars").await;
    let ours = sidecars
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["taskArn"] == f.arn.as_str());
    assert!(
        ours.is_none_or(|s| s["state"] == "draining"),
        "the sidecar deregistered: {sidecars}"
    );
}
