//! The processes the tests start and look at: the workspace's binaries in the target
//! directory, temporary folders, processes found through `/proc`, signals, and Go's TLS
//! client built from `tools/tlsprobe.go`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The path of one of the workspace's binaries (`berth-gateway`, `berth-sidecar`,
/// `berth-local`, `berth-whoami`, `berth-greeter`) in the target directory the tests were
/// built in. `cargo test` does not build another package's binaries: `scripts/test.sh`
/// runs `cargo build --workspace --bins` first; a missing one panics saying so.
pub fn bin(name: &str) -> PathBuf {
    // The test executable is `<target>/<profile>/deps/<test>-<hash>`.
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in <target>/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (cargo build --workspace --bins; scripts/test.sh does)",
        path.display()
    );
    path
}

/// A new empty folder under the system's temporary folder, unique per process and call.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "berth-test-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A process found by [`find_process`]: its pid, command line and environment.
#[derive(Debug, Clone)]
pub struct ProcessInfo {
    pub pid: u32,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// A live process's resident set, `VmRSS` from `/proc/PID/status`, in KiB; panics when
/// the process is gone or the line is missing, so no memory bound passes on a zero.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e} (the process is gone?)"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Processes whose executable's file name is `name` and whose environment has
/// `key=value`, from `/proc`.
pub fn find_process(name: &str, key: &str, value: &str) -> Vec<ProcessInfo> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let split = |bytes: Vec<u8>| -> Vec<String> {
            bytes
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args = split(cmdline);
        let exe = args.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_string());
        if exe.as_deref() != Some(name) {
            continue;
        }
        let env: Vec<(String, String)> = std::fs::read(entry.path().join("environ"))
            .map(split)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
            .collect();
        if env.iter().any(|(k, v)| k == key && v == value) {
            out.push(ProcessInfo { pid, args, env });
        }
    }
    out
}

/// The sidecar serving `inbound` (`IP:15443`), not its health checks (`berth-sidecar health`
/// runs with the same environment).
pub fn sidecar_process(inbound: &str) -> Vec<ProcessInfo> {
    find_process("berth-sidecar", "BERTH_INBOUND", inbound)
        .into_iter()
        .filter(|p| p.args.len() == 1)
        .collect()
}

/// Send a signal by pid through `kill(1)`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// A copy of a binary that any user may run (the target directory may be private).
pub fn runnable_copy(bin: &std::path::Path, dir: &std::path::Path) -> PathBuf {
    std::fs::set_permissions(
        dir,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    let copy = dir.join(bin.file_name().unwrap());
    std::fs::copy(bin, &copy).unwrap();
    std::fs::set_permissions(
        &copy,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    copy
}

/// Go's `crypto/tls` and `net/http` as a client: `e2e/tools/tlsprobe.go`, built once
/// per test binary with the machine's Go (golang-go; scripts/test.sh installs it).
pub fn go_tlsprobe() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/tlsprobe.go");
        let out = temp_dir("go").join("tlsprobe");
        let cache = std::env::temp_dir().join("berth-test-go-cache");
        let built = std::process::Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .env("GO111MODULE", "off")
            .env("GOFLAGS", "")
            .env("GOCACHE", &cache)
            .env("GOPATH", cache.join("path"))
            .output()
            .unwrap_or_else(|e| panic!("go: {e} (install golang-go: scripts/test.sh does)"));
        assert!(
            built.status.success(),
            "go build tlsprobe: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        out
    })
    .clone()
}

/// A Python fixture server from `tests/fixtures` (servers nobody here wrote: Python's
/// `http.server` and `ssl`), which prints its port first. Stopped when dropped: its
/// stdin closed, then killed by its PID.
pub struct PythonServer {
    child: std::process::Child,
    pub port: u16,
    /// Its stdout after the port.
    pub out: std::io::BufReader<std::process::ChildStdout>,
}

impl PythonServer {
    /// Run `tests/fixtures/<script>` with `args`, once it has said its port.
    pub fn start(script: &str, args: &[&str]) -> PythonServer {
        use std::io::BufRead;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(script);
        let mut child = std::process::Command::new("python3")
            .arg("-u")
            .arg(&path)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("the fixture's first line");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{script} said `{line}`, not its port"));
        PythonServer { child, port, out }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a client nobody here wrote (`curl`, `openssl`, `nghttp`, `python3`, ...) with
/// `args`, `input` on its stdin, for at most 30 s: whether it succeeded, and its stdout
/// and stderr together. It runs off the async runtime, so an in-process gateway keeps
/// serving while it waits.
pub async fn tool(program: &str, args: Vec<String>, input: Vec<u8>) -> (bool, String) {
    use std::io::Write;
    use std::process::Stdio;
    let program = program.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("timeout")
            .arg("30")
            .arg(&program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        if let Some(mut stdin) = child.stdin.take() {
            // A tool that exits before reading its input is not an error here.
            let _ = stdin.write_all(&input);
        }
        let out = child.wait_with_output().unwrap_or_else(|e| panic!("{program}: {e}"));
        if out.status.code() == Some(127) {
            panic!("{program} is not installed (.ci/run installs it)");
        }
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// A tool's arguments, as [`tool`] takes them.
pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// A TCP forwarder to `target` on a free port, cut (listener and connections) when the
/// sender says `true`: a way to a server that can fail on
/// demand, or a hop that makes every connection come from 127.0.0.1.
pub async fn forwarder(target: std::net::SocketAddr) -> (u16, tokio::sync::watch::Sender<bool>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut stop = rx.clone();
        loop {
            tokio::select! {
                _ = stop.wait_for(|cut| *cut) => return,
                accepted = l.accept() => {
                    let Ok((mut inbound, _)) = accepted else { return };
                    let mut stop = rx.clone();
                    tokio::spawn(async move {
                        if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                                _ = stop.wait_for(|cut| *cut) => {}
                            }
                        }
                    });
                }
            }
        }
    });
    (port, tx)
}
