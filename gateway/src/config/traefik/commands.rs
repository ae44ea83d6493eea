//! `traefik healthcheck` and `traefik version`, which ECS health checks and scripts
//! written for Traefik's image call: the gateway binary answers them when its first
//! argument names them (it is also installed as `traefik`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::source::Sources;

/// Run `args[1]` when it is one of Traefik's commands, returning the exit code; `None`
/// when it is not (the gateway starts).
pub fn run_command(argv: &[String]) -> Option<i32> {
    let mut rest = argv.iter().skip(1).map(String::as_str).peekable();
    if rest.peek() == Some(&"traefik") {
        rest.next();
    }
    match rest.next() {
        Some("version") => {
            print_version();
            Some(0)
        }
        Some("healthcheck") => {
            let flags: Vec<String> = rest.map(String::from).collect();
            Some(healthcheck(flags))
        }
        _ => None,
    }
}

fn print_version() {
    let version = env!("CARGO_PKG_VERSION");
    let arch = std::env::consts::ARCH
        .replace("x86_64", "amd64")
        .replace("aarch64", "arm64");
    println!("Version:      {version} (berth-gateway, Traefik-compatible configuration)");
    println!("Codename:     berth");
    println!("Go version:   none (Rust)");
    println!("Built:        I don't remember exactly");
    println!("OS/Arch:      {}/{arch}", std::env::consts::OS);
}

/// As Traefik's: read the static configuration (its file, flags or variables), find the
/// ping entrypoint's address, `HEAD /ping` with a 5 s timeout; 0 on 200, else 1, with
/// Traefik's messages on stdout.
fn healthcheck(flags: Vec<String>) -> i32 {
    let (_, flags) = super::split_args(std::iter::once("traefik".to_string()).chain(flags).collect());
    let traefik = match Sources::from_process(flags).load() {
        Ok(Some(t)) => t,
        Ok(None) => {
            println!("Error calling healthcheck: please enable `ping` to use health check");
            return 1;
        }
        Err(e) => {
            println!("Error calling healthcheck: {e}");
            return 1;
        }
    };
    let ping = traefik
        .internal
        .iter()
        .find(|i| i.serves.ping)
        .map(|i| i.addr)
        .or_else(|| {
            let name = traefik.args.ping.as_deref()?;
            traefik
                .entrypoints
                .iter()
                .find(|e| e.name.eq_ignore_ascii_case(name))
                .map(|e| e.addr)
        });
    let Some(addr) = ping else {
        println!("Error calling healthcheck: please enable `ping` to use health check");
        return 1;
    };
    // The gateway's `--listen-host` (`BERTH_LISTEN_HOST`) for a host-less address.
    let listen_host = std::env::var("BERTH_LISTEN_HOST").ok().and_then(|h| h.parse().ok());
    let host = addr
        .host
        .or(listen_host)
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let host = if host.is_unspecified() {
        match host {
            std::net::IpAddr::V4(_) => std::net::IpAddr::from([127, 0, 0, 1]),
            std::net::IpAddr::V6(_) => std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        }
    } else {
        host
    };
    let target = SocketAddr::new(host, addr.port);
    let url = format!("http://{target}/ping");
    match get_status(target) {
        Ok(200) => {
            println!("OK: {url}");
            0
        }
        Ok(code) => {
            let reason = http::StatusCode::from_u16(code)
                .ok()
                .and_then(|c| c.canonical_reason())
                .unwrap_or("");
            println!("Bad healthcheck status: {code} {reason}");
            1
        }
        Err(e) => {
            println!("Error calling healthcheck: Head \"{url}\": {e}");
            1
        }
    }
}

fn get_status(target: SocketAddr) -> std::io::Result<u16> {
    let timeout = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(&target, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "HEAD /ping HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n")?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let got = s.read(&mut buf[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_traefiks_commands_are_taken() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(super::run_command(&v(&["traefik", "version"])), Some(0));
        assert_eq!(
            super::run_command(&v(&["berth-gateway", "traefik", "version"])),
            Some(0)
        );
        assert_eq!(super::run_command(&v(&["berth-gateway", "--entrypoint", "a=1"])), None);
    }
}
