//! The access log: one line per request, written after its response body has been
//! sent, as JSON with Traefik's field names or in Traefik's Common Log Format.
//!
//! Lines go through a bounded channel to a writer thread, so a slow disk or a blocked
//! stdout pipe never stalls a request: a full channel drops the line and counts it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object a line, Traefik's field names.
    Json,
    /// Traefik's extended Common Log Format.
    Common,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "json" => Ok(Format::Json),
            "common" => Ok(Format::Common),
            other => Err(format!("`{other}`: use json or common")),
        }
    }
}

/// What is known about one request when its response is done.
#[derive(Debug, Clone, Default)]
pub struct Entry {
    pub start: Option<SystemTime>,
    pub client: Option<SocketAddr>,
    pub method: String,
    /// Path and query as received.
    pub path: String,
    pub protocol: &'static str,
    pub scheme: &'static str,
    pub host: String,
    pub user_agent: Option<String>,
    pub referer: Option<String>,
    pub entrypoint: String,
    pub router: Option<String>,
    pub service: Option<String>,
    pub service_url: Option<String>,
    pub origin_status: Option<u16>,
    pub origin_duration: Option<Duration>,
    pub status: u16,
    pub duration: Duration,
    pub size: u64,
    pub retries: u32,
    /// The caller's mesh identity (sidecar inbound).
    pub client_identity: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
}

impl Entry {
    /// The fields known when a request arrives.
    pub fn for_request<B>(req: &http::Request<B>, peer: SocketAddr, tls: bool, entrypoint: &str) -> Box<Entry> {
        let header =
            |n: http::header::HeaderName| req.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        Box::new(Entry {
            start: Some(SystemTime::now()),
            client: Some(peer),
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            protocol: match req.version() {
                http::Version::HTTP_10 => "HTTP/1.0",
                http::Version::HTTP_2 => "HTTP/2.0",
                http::Version::HTTP_09 => "HTTP/0.9",
                _ => "HTTP/1.1",
            },
            scheme: if tls { "https" } else { "http" },
            host: header(http::header::HOST)
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_default(),
            user_agent: header(http::header::USER_AGENT),
            referer: header(http::header::REFERER),
            entrypoint: entrypoint.to_string(),
            ..Entry::default()
        })
    }
}

/// A handle to the writer; cheap to clone.
#[derive(Clone, Debug)]
pub struct AccessLog {
    tx: SyncSender<String>,
    format: Format,
    count: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Start the writer thread; `path` None writes to stdout. The file is opened for
    /// appending now, so a bad path fails at start.
    pub fn open(path: Option<PathBuf>, format: Format) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn std::io::Write + Send> = match &path {
            Some(p) => Box::new(std::fs::OpenOptions::new().create(true).append(true).open(p)?),
            None => Box::new(std::io::stdout()),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(8192);
        std::thread::Builder::new().name("access-log".into()).spawn(move || {
            let mut buf = Vec::with_capacity(64 * 1024);
            while let Ok(line) = rx.recv() {
                buf.extend_from_slice(line.as_bytes());
                // Batch whatever else is waiting into one write.
                while buf.len() < 60 * 1024 {
                    match rx.try_recv() {
                        Ok(l) => buf.extend_from_slice(l.as_bytes()),
                        Err(_) => break,
                    }
                }
                if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
                    // Keep draining so senders never block; lines are lost while it fails.
                }
                buf.clear();
            }
        })?;
        Ok(AccessLog {
            tx,
            format,
            count: Arc::new(AtomicU64::new(0)),
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn log(&self, e: &Entry) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let line = match self.format {
            Format::Json => json_line(e),
            Format::Common => common_line(e, n),
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(line) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn json_line(e: &Entry) -> String {
    let start = e.start.unwrap_or(UNIX_EPOCH);
    let mut v = json!({
        "StartUTC": rfc3339(start),
        "ClientAddr": e.client.map(|c| c.to_string()),
        "ClientHost": e.client.map(|c| c.ip().to_string()),
        "ClientPort": e.client.map(|c| c.port().to_string()),
        "RequestMethod": e.method,
        "RequestPath": e.path,
        "RequestProtocol": e.protocol,
        "RequestScheme": e.scheme,
        "RequestHost": e.host,
        "entryPointName": e.entrypoint,
        "DownstreamStatus": e.status,
        "DownstreamContentSize": e.size,
        "Duration": e.duration.as_nanos() as u64,
        "RetryAttempts": e.retries,
    });
    let obj = v.as_object_mut();
    if let Some(o) = obj {
        let mut put = |k: &str, val: serde_json::Value| {
            if !val.is_null() {
                o.insert(k.to_string(), val);
            }
        };
        put("RouterName", json!(e.router));
        put("ServiceName", json!(e.service));
        put("ServiceURL", json!(e.service_url));
        put("OriginStatus", json!(e.origin_status));
        put("OriginDuration", json!(e.origin_duration.map(|d| d.as_nanos() as u64)));
        put("request_User-Agent", json!(e.user_agent));
        put("request_Referer", json!(e.referer));
        put("ClientIdentity", json!(e.client_identity));
        put("TraceId", json!(e.trace_id));
        put("SpanId", json!(e.span_id));
    }
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// `<client> - - [<time>] "<method> <path> <proto>" <status> <size> "<referer>" "<ua>"
/// <count> "<router>" "<server URL>" <duration>ms`, as Traefik writes it.
fn common_line(e: &Entry, n: u64) -> String {
    let dash = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    let mut s = String::with_capacity(200);
    let _ = writeln!(
        s,
        "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" {} \"{}\" \"{}\" {}ms",
        e.client.map(|c| c.ip().to_string()).unwrap_or_else(|| "-".into()),
        clf_time(e.start.unwrap_or(UNIX_EPOCH)),
        e.method,
        e.path,
        e.protocol,
        e.status,
        e.size,
        dash(&e.referer),
        dash(&e.user_agent),
        n,
        dash(&e.router),
        dash(&e.service_url),
        e.duration.as_millis()
    );
    s
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn split(t: SystemTime) -> ((i64, u32, u32), u64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    (civil((secs / 86_400) as i64), secs % 86_400, d.subsec_nanos())
}

/// `2026-11-26T17:51:14.123456789Z`
pub fn rfc3339(t: SystemTime) -> String {
    let ((y, m, d), sod, nanos) = split(t);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

fn clf_time(t: SystemTime) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let ((y, m, d), sod, _) = split(t);
    format!(
        "{d:02}/{}/{y:04}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m as usize).saturating_sub(1) % 12],
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_715_474) + Duration::from_nanos(5);
        assert_eq!(rfc3339(t), "2026-11-26T17:51:14.000000005Z");
        assert_eq!(clf_time(t), "26/Nov/2026:17:51:14 +0000");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn lines_carry_traefiks_fields() {
        let e = Entry {
            start: Some(UNIX_EPOCH),
            client: Some("127.0.0.9:5000".parse().expect("addr")),
            method: "GET".into(),
            path: "/a?b=1".into(),
            protocol: "HTTP/1.1",
            scheme: "http",
            host: "whoami.localhost".into(),
            router: Some("whoami@ecs".into()),
            service_url: Some("http://127.0.100.1:80".into()),
            status: 200,
            size: 12,
            duration: Duration::from_millis(3),
            ..Entry::default()
        };
        let v: serde_json::Value = serde_json::from_str(&json_line(&e)).expect("json");
        assert_eq!(v["RouterName"], "whoami@ecs");
        assert_eq!(v["DownstreamStatus"], 200);
        assert_eq!(v["ClientHost"], "127.0.0.9");
        assert_eq!(v["Duration"], 3_000_000);
        assert!(v.get("OriginStatus").is_none());
        assert_eq!(
            common_line(&e, 7),
            "127.0.0.9 - - [01/Jan/1970:00:00:00 +0000] \"GET /a?b=1 HTTP/1.1\" 200 12 \"-\" \"-\" 7 \
             \"whoami@ecs\" \"http://127.0.100.1:80\" 3ms\n"
        );
    }
}
