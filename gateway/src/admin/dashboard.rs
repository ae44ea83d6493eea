//! The dashboard at the admin root: one server-rendered page (no CDN, no build step)
//! showing what the admin API shows — discovery per source and cluster, routers,
//! services with each endpoint's live health, sidecars, certificates and their expiry,
//! and configuration diagnostics. A few lines of JavaScript refresh it in place every
//! few seconds and filter the tables; without JavaScript it is still complete.

use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Everything the page shows, gathered by the admin API.
pub(crate) struct View<'a> {
    pub version: &'a str,
    pub ready: bool,
    pub snapshot_version: u64,
    pub routers: &'a [Value],
    pub services: &'a [Value],
    pub providers: &'a [Value],
    pub clusters: Option<&'a [Value]>,
    pub sidecars: Option<&'a [Value]>,
    pub certificates: &'a [Value],
    pub diagnostics: &'a [Value],
    /// Requests by router name (from the metrics), for the routers table.
    pub router_requests: &'a dyn Fn(&str) -> u64,
}

pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// "3 s ago", "in 23 h": a readable distance from now.
fn relative(unix: f64) -> String {
    let d = unix - now_unix();
    let a = d.abs();
    let amount = if a < 90.0 {
        format!("{a:.0} s")
    } else if a < 90.0 * 60.0 {
        format!("{:.0} min", a / 60.0)
    } else if a < 48.0 * 3600.0 {
        format!("{:.1} h", a / 3600.0)
    } else {
        format!("{:.0} d", a / 86400.0)
    };
    if d < 0.0 {
        format!("{amount} ago")
    } else {
        format!("in {amount}")
    }
}

fn s<'v>(v: &'v Value, k: &str) -> &'v str {
    v[k].as_str().unwrap_or_default()
}

/// A JSON array of strings, escaped and comma-separated.
fn joined(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(esc)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

fn badge(class: &str, text: &str) -> String {
    format!("<span class=\"b {}\">{}</span>", esc(class), esc(text))
}

const STYLE: &str = "\
:root{--ok:#17803d;--bad:#c0262d;--warn:#a15c00;--mute:#667;--line:#e3e5ea;--bg:#f7f8fa}\
*{box-sizing:border-box}body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1d2330;background:var(--bg)}\
header{background:#14213d;color:#fff;padding:14px 24px;display:flex;gap:18px;align-items:center;flex-wrap:wrap}\
header h1{font-size:18px;margin:0}header .meta{opacity:.8;font-size:13px}header input{margin-left:auto;padding:6px 10px;border-radius:6px;border:0;min-width:240px}\
main{padding:18px 24px;max-width:1400px}section{background:#fff;border:1px solid var(--line);border-radius:8px;margin:0 0 18px;padding:12px 16px}\
h2{font-size:15px;margin:2px 0 10px}h2 small{color:var(--mute);font-weight:400}\
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:18px}.card{background:#fff;border:1px solid var(--line);border-radius:8px;padding:10px 16px;min-width:150px}\
.card .n{font-size:24px;font-weight:600}.card .l{color:var(--mute);font-size:12px;text-transform:uppercase;letter-spacing:.04em}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}\
th{font-size:12px;color:var(--mute);text-transform:uppercase;letter-spacing:.04em}code{font-size:12.5px;background:#f1f3f6;padding:1px 4px;border-radius:4px}\
.b{display:inline-block;padding:0 7px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;background:var(--mute)}\
.b.UP,.b.enabled,.b.live,.b.ok,.b.healthy{background:var(--ok)}.b.DOWN,.b.disabled,.b.lost,.b.error,.b.unhealthy,.b.expired{background:var(--bad)}\
.b.draining,.b.warning,.b.soon{background:var(--warn)}.empty{color:var(--mute)}.err{color:var(--bad)}.mute{color:var(--mute)}";

const SCRIPT: &str = "\
(function(){var q=document.getElementById('filter');function apply(){var t=q.value.toLowerCase();\
document.querySelectorAll('tbody tr').forEach(function(r){r.style.display=!t||r.textContent.toLowerCase().indexOf(t)>=0?'':'none'})}\
q.addEventListener('input',apply);setInterval(function(){if(document.hidden)return;fetch(location.pathname,{cache:'no-store'})\
.then(function(r){return r.text()}).then(function(h){var d=new DOMParser().parseFromString(h,'text/html');\
var m=d.querySelector('main'),s=d.getElementById('asof');if(m){document.querySelector('main').replaceWith(m);apply()}\
if(s)document.getElementById('asof').textContent=s.textContent}).catch(function(){})},5000)})();";

pub(crate) fn render(v: &View<'_>) -> String {
    let mut h = String::with_capacity(32 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
         <title>Berth gateway</title><style>{STYLE}</style></head><body><header><h1>Berth gateway</h1>\
         <span class=meta>v{} · snapshot {} · {} · <span id=asof>as of {}</span></span>\
         <input id=filter type=search placeholder=\"Filter rows…\" aria-label=Filter></header><main>",
        esc(v.version),
        v.snapshot_version,
        if v.ready {
            badge("ok", "ready")
        } else {
            badge("error", "not ready")
        },
        crate::admin::dashboard::clock(now_unix()),
    );
    cards(&mut h, v);
    discovery(&mut h, v);
    routers(&mut h, v);
    services(&mut h, v);
    sidecars(&mut h, v);
    certificates(&mut h, v);
    diagnostics(&mut h, v);
    let _ = write!(h, "</main><script>{SCRIPT}</script></body></html>");
    h
}

/// `HH:MM:SS UTC` of a unix time.
pub(crate) fn clock(unix: f64) -> String {
    let secs = unix as u64 % 86_400;
    format!("{:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Open a section with a table of `columns`; `count` is shown beside the title.
fn open_table(h: &mut String, id: &str, title: &str, count: Option<usize>, columns: &[&str]) {
    let _ = write!(h, "<section id={id}><h2>{title}");
    if let Some(n) = count {
        let _ = write!(h, " <small>{n}</small>");
    }
    h.push_str("</h2><table><thead><tr>");
    for c in columns {
        let _ = write!(h, "<th>{c}</th>");
    }
    h.push_str("</tr></thead><tbody>");
}

/// Close what [`open_table`] opened, with `empty` as the only row when there were none.
fn close_table(h: &mut String, rows: usize, columns: usize, empty: &str) {
    if rows == 0 {
        let _ = write!(h, "<tr><td colspan={columns} class=empty>{empty}</td></tr>");
    }
    h.push_str("</tbody></table></section>");
}

fn cards(h: &mut String, v: &View<'_>) {
    let enabled = v.routers.iter().filter(|r| s(r, "status") == "enabled").count();
    let (mut up, mut down) = (0, 0);
    for svc in v.services {
        for st in svc["serverStatus"].as_object().into_iter().flat_map(|m| m.values()) {
            if st == "UP" { up += 1 } else { down += 1 }
        }
    }
    let live = v
        .sidecars
        .map(|sc| sc.iter().filter(|x| s(x, "state") == "live").count());
    let errors = v.diagnostics.iter().filter(|d| s(d, "severity") == "error").count();
    h.push_str("<div class=cards>");
    let mut card = |n: String, label: &str| {
        let _ = write!(
            h,
            "<div class=card><div class=n>{n}</div><div class=l>{}</div></div>",
            esc(label)
        );
    };
    card(format!("{enabled}/{}", v.routers.len()), "routers enabled");
    card(v.services.len().to_string(), "services");
    card(
        format!("{up} <small class=mute>up</small> · {down} <small class=mute>down</small>"),
        "endpoints",
    );
    if let Some(l) = live {
        card(l.to_string(), "sidecars live");
    }
    card(
        format!("{} <small class=mute>({errors} errors)</small>", v.diagnostics.len()),
        "diagnostics",
    );
    h.push_str("</div>");
}

fn discovery(h: &mut String, v: &View<'_>) {
    let columns = ["Source", "Last refresh", "Staleness", "Tasks", "Errors"];
    open_table(h, "discovery", "Discovery", None, &columns);
    for p in v.providers {
        let last = p["lastSuccess"].as_f64().or_else(|| p["last_success"].as_f64());
        let err = p["lastError"].as_str().or_else(|| p["last_error"].as_str());
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>—</td><td>—</td><td>{}</td></tr>",
            esc(s(p, "name")),
            last.map(relative).unwrap_or_else(|| "never".into()),
            err.map(|e| format!("<span class=err>{}</span>", esc(e)))
                .unwrap_or_else(|| badge("ok", "none")),
        );
    }
    for c in v.clusters.unwrap_or_default() {
        let stale = c["stale_seconds"].as_f64().or_else(|| c["staleSeconds"].as_f64());
        let last = c["last_success_unix"]
            .as_f64()
            .or_else(|| c["lastSuccessUnix"].as_f64());
        let err = c["last_error"].as_str().or_else(|| c["lastError"].as_str());
        let failed = c["failed_rounds"]
            .as_u64()
            .or_else(|| c["failedRounds"].as_u64())
            .unwrap_or(0);
        let rounds = c["rounds"].as_u64().unwrap_or(0);
        let _ = write!(
            h,
            "<tr><td>ECS cluster <b>{}</b></td><td>{}</td><td>{}</td><td>{} <span class=mute>({} routable)</span></td><td>{}</td></tr>",
            esc(s(c, "name")),
            last.map(relative).unwrap_or_else(|| "never".into()),
            stale.map(|x| format!("{x:.1} s")).unwrap_or_else(|| "—".into()),
            c["tasks"].as_u64().unwrap_or(0),
            c["routable_containers"]
                .as_u64()
                .or_else(|| c["routableContainers"].as_u64())
                .unwrap_or(0),
            match err {
                Some(e) => format!(
                    "<span class=err>{}</span> <span class=mute>({failed} of {rounds} rounds failed)</span>",
                    esc(e)
                ),
                None => format!("{} <span class=mute>{rounds} rounds</span>", badge("ok", "none")),
            },
        );
    }
    let rows = v.providers.len() + v.clusters.map_or(0, <[Value]>::len);
    close_table(h, rows, columns.len(), "No discovery source is configured.");
}

fn routers(h: &mut String, v: &View<'_>) {
    let columns = [
        "Name",
        "Rule",
        "Entrypoints",
        "Service",
        "Middlewares",
        "Requests",
        "Status",
    ];
    open_table(h, "routers", "Routers", Some(v.routers.len()), &columns);
    for r in v.routers {
        let list = |k: &str| joined(&r[k]);
        let errors = list("error");
        let _ = write!(
            h,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
            esc(s(r, "name")),
            esc(s(r, "rule")),
            list("entryPoints"),
            esc(s(r, "service")),
            list("middlewares"),
            (v.router_requests)(s(r, "name")),
            badge(s(r, "status"), s(r, "status")),
            if errors.is_empty() {
                String::new()
            } else {
                format!(" <span class=err>{errors}</span>")
            },
        );
    }
    close_table(h, v.routers.len(), columns.len(), "No routers yet.");
}

fn services(h: &mut String, v: &View<'_>) {
    let columns = ["Service", "Endpoint", "Health"];
    open_table(h, "services", "Services", Some(v.services.len()), &columns);
    for svc in v.services {
        let status = svc["serverStatus"].as_object();
        let servers = svc["loadBalancer"]["servers"].as_array().cloned().unwrap_or_default();
        if servers.is_empty() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td class=empty>no endpoints</td><td>{}</td></tr>",
                esc(s(svc, "name")),
                badge("DOWN", "none")
            );
        }
        for server in &servers {
            let url = s(server, "url");
            let st = status
                .and_then(|m| m.get(url))
                .and_then(Value::as_str)
                .unwrap_or("DOWN");
            let _ = write!(
                h,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                esc(s(svc, "name")),
                esc(url),
                badge(st, st)
            );
        }
    }
    close_table(h, v.services.len(), columns.len(), "No services yet.");
}

fn sidecars(h: &mut String, v: &View<'_>) {
    let Some(list) = v.sidecars else { return };
    let columns = [
        "Identity",
        "Task",
        "Address",
        "Version",
        "State",
        "App",
        "Heartbeat",
        "Certificate",
    ];
    open_table(h, "sidecars", "Sidecars", Some(list.len()), &columns);
    for x in list {
        let task = s(x, "taskArn");
        let short = task.rsplit('/').next().unwrap_or(task);
        let healthy = x["healthy"].as_bool().unwrap_or(false);
        let _ = write!(
            h,
            "<tr><td><code>{}</code></td><td title=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} s ago</td><td>{}</td></tr>",
            esc(s(x, "identity")),
            esc(task),
            esc(short),
            esc(s(x, "address")),
            esc(s(x, "version")),
            badge(s(x, "state"), s(x, "state")),
            if healthy {
                badge("healthy", "healthy")
            } else {
                badge("unhealthy", "unhealthy")
            },
            x["lastHeartbeatAgeSeconds"].as_f64().unwrap_or(0.0),
            x["certificateNotAfterUnix"]
                .as_f64()
                .map(expiry)
                .unwrap_or_else(|| "—".into()),
        );
    }
    close_table(h, list.len(), columns.len(), "No sidecar has registered.");
}

/// Expiry with a warning colour inside two hours (certificates renew well before) and
/// red once past.
fn expiry(unix: f64) -> String {
    let left = unix - now_unix();
    let class = if left <= 0.0 {
        "expired"
    } else if left < 7_200.0 {
        "soon"
    } else {
        "ok"
    };
    format!(
        "{} {}",
        badge(class, if left <= 0.0 { "expired" } else { "valid" }),
        relative(unix)
    )
}

fn certificates(h: &mut String, v: &View<'_>) {
    let columns = ["Use", "Subject", "Names", "Expires"];
    open_table(h, "certificates", "Certificates", None, &columns);
    for c in v.certificates {
        let names = joined(&c["names"]);
        // An ACME domain set waiting for its certificate (or a renewal): why, instead of
        // an expiry it does not have yet.
        let state = match (c["notAfterUnix"].as_f64(), c["lastError"].as_str()) {
            (_, Some(why)) => format!("{} {}", badge("error", "not obtained"), esc(why)),
            (Some(t), None) => match c["renewAtUnix"].as_f64() {
                Some(r) => format!(
                    "{} <span class=\"mute\">renews {} ({})</span>",
                    expiry(t),
                    relative(r),
                    esc(s(c, "renewalBy"))
                ),
                None => expiry(t),
            },
            (None, None) => match c["orderedBy"].as_str() {
                Some(by) => format!("{} by {}", badge("soon", "ordering"), esc(by)),
                None if s(c, "use").ends_with("(pending)") => badge("soon", "ordering"),
                None => String::new(),
            },
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(s(c, "use")),
            esc(s(c, "subject")),
            names,
            state,
        );
    }
    close_table(h, v.certificates.len(), columns.len(), "No certificates configured.");
}

fn diagnostics(h: &mut String, v: &View<'_>) {
    let columns = ["Severity", "Source", "Key", "Message"];
    open_table(
        h,
        "diagnostics",
        "Configuration diagnostics",
        Some(v.diagnostics.len()),
        &columns,
    );
    for d in v.diagnostics {
        let sev = s(d, "severity");
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
            badge(sev, sev),
            esc(s(d, "source")),
            esc(s(d, "key")),
            esc(s(d, "message")),
        );
    }
    close_table(
        h,
        v.diagnostics.len(),
        columns.len(),
        "No problems found in the configuration.",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_every_section_and_escapes_input() {
        let routers = vec![
            json!({"name": "evil<script>@ecs", "rule": "Host(`a`)", "status": "enabled",
            "service": "s", "entryPoints": ["web"]}),
        ];
        let services = vec![
            json!({"name": "s@ecs", "loadBalancer": {"servers": [{"url": "http://10.0.0.1:80"}, {"url": "http://10.0.0.2:80"}]},
            "serverStatus": {"http://10.0.0.1:80": "UP", "http://10.0.0.2:80": "DOWN"}}),
        ];
        let clusters = vec![
            json!({"name": "prod", "last_success_unix": now_unix() - 2.0, "stale_seconds": 2.0,
            "tasks": 3, "routable_containers": 3, "rounds": 10, "failed_rounds": 1, "last_error": "ThrottlingException"}),
        ];
        let diags = vec![
            json!({"severity": "error", "source": "ecs:prod/whoami", "key": "traefik.http.routers.r.rule", "message": "bad rule"}),
        ];
        let certs =
            vec![json!({"use": "mesh CA", "subject": "CN=Berth", "names": [], "notAfterUnix": now_unix() + 600.0})];
        let html = render(&View {
            version: "0.1.0",
            ready: true,
            snapshot_version: 7,
            routers: &routers,
            services: &services,
            providers: &[],
            clusters: Some(&clusters),
            sidecars: Some(&[]),
            certificates: &certs,
            diagnostics: &diags,
            router_requests: &|_| 42,
        });
        for needle in [
            "evil&lt;script&gt;@ecs",
            "http://10.0.0.2:80</code></td><td><span class=\"b DOWN\">DOWN</span>",
            "ECS cluster <b>prod</b>",
            "ThrottlingException",
            "(1 of 10 rounds failed)",
            "bad rule",
            "<td>42</td>",
            "b soon",
            "1 <small class=mute>up</small> · 1 <small class=mute>down</small>",
            "No sidecar has registered.",
        ] {
            assert!(html.contains(needle), "missing {needle}");
        }
        assert!(!html.contains("<script>@"));
        assert!(
            !html.contains("http://") || !html.contains("src=\"http"),
            "no external assets"
        );
    }
}
