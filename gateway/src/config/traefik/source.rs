//! Where Traefik's static configuration comes from, read as Traefik reads it: a file
//! (`--configFile`, else the first of Traefik's default locations), else the flags, else
//! the `TRAEFIK_*` variables. The three are exclusive, as in Traefik: the first found is
//! used and the others, when present, are ignored with a warning.
//!
//! Every form becomes the same list of entries (an option's path and its value), checked
//! against [`options`](super::options): unknown or refused options stop the start.

use std::path::{Path, PathBuf};

use berth_common::config::Node;

use super::options::{self, Kind, Use};
use crate::config::ConfigError;

/// Traefik's top-level sections: a flag under one of these is Traefik's, not Berth's.
const ROOTS: &[&str] = &[
    "configfile",
    "global",
    "serverstransport",
    "tcpserverstransport",
    "entrypoints",
    "providers",
    "api",
    "metrics",
    "ping",
    "log",
    "accesslog",
    "tracing",
    "hostresolver",
    "certificatesresolvers",
    "experimental",
    "core",
    "spiffe",
    "ocsp",
    "pilot",
    "hub",
];

/// The most entries a configuration may hold, and the longest value (bounded input).
const MAX_ENTRIES: usize = 4096;
const MAX_VALUE_BYTES: usize = 64 * 1024;
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Which form the configuration came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Form {
    Flags,
    File(PathBuf),
    Env,
}

impl std::fmt::Display for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Form::Flags => f.write_str("flags"),
            Form::File(p) => write!(f, "file {}", p.display()),
            Form::Env => f.write_str("TRAEFIK_* environment variables"),
        }
    }
}

/// An option's value as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Scalar(String),
    List(Vec<String>),
}

/// One option: its path (segments as written), how the user wrote it, its value.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub path: Vec<String>,
    pub shown: String,
    pub value: Value,
}

/// Traefik's static configuration, from one form, every entry known.
#[derive(Debug, Clone)]
pub(crate) struct Static {
    pub form: Form,
    pub entries: Vec<Entry>,
    /// Accepted options that change nothing, with the reason; and ignored forms.
    pub notes: Vec<String>,
}

/// What the process was given: the flags that are Traefik's (see [`split_args`]), its
/// `TRAEFIK_*` variables and the places Traefik looks for its file.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub flags: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Traefik's default file locations, in its order.
    pub search: Vec<PathBuf>,
    /// Traefik mode even when no form is present (the binary runs as `traefik`).
    pub always: bool,
}

impl Sources {
    /// The process's own: its environment, and Traefik's default locations
    /// (`/etc/traefik/`, `$XDG_CONFIG_HOME/`, `$HOME/.config/`, the working directory);
    /// an unset variable means no such place.
    pub fn from_process(flags: Vec<String>) -> Sources {
        let env: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.to_ascii_uppercase().starts_with("TRAEFIK_"))
            .collect();
        let mut dirs = vec![PathBuf::from("/etc/traefik")];
        if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            dirs.push(PathBuf::from(x));
        }
        if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            dirs.push(PathBuf::from(h).join(".config"));
        }
        dirs.push(PathBuf::from("."));
        let search = dirs
            .iter()
            .flat_map(|d| ["traefik.toml", "traefik.yaml", "traefik.yml"].map(|f| d.join(f)))
            .collect();
        Sources {
            flags,
            env,
            search,
            always: false,
        }
    }

    /// The configuration Traefik would use, or `None` when none of the forms is given.
    pub(crate) fn resolve(&self) -> Result<Option<Static>, ConfigError> {
        let flags = parse_flags(&self.flags)?;
        let config_file = flags
            .iter()
            .find(|e| e.path.len() == 1 && e.path[0].eq_ignore_ascii_case("configfile"))
            .map(|e| match &e.value {
                Value::Scalar(s) => s.clone(),
                Value::List(l) => l.last().cloned().unwrap_or_default(),
            });
        let env_given = !self.env.is_empty();
        let file = match &config_file {
            Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
            _ => self.search.iter().find(|p| p.is_file()).cloned(),
        };
        let mut notes = Vec::new();
        let (form, entries) = if let Some(path) = file {
            let entries = read_file(&path)?;
            if flags.iter().any(|e| !e.path[0].eq_ignore_ascii_case("configfile")) {
                notes.push(format!(
                    "Traefik's static file {} is used, so its command-line flags are ignored (as Traefik does)",
                    path.display()
                ));
            }
            if env_given {
                notes.push(format!(
                    "Traefik's static file {} is used, so the TRAEFIK_* variables are ignored (as Traefik does)",
                    path.display()
                ));
            }
            (Form::File(path), entries)
        } else if !flags.is_empty() {
            if env_given {
                notes.push("Traefik's flags are used, so the TRAEFIK_* variables are ignored (as Traefik does)".into());
            }
            (Form::Flags, flags)
        } else if env_given {
            (Form::Env, parse_env(&self.env)?)
        } else if self.always {
            (Form::Flags, Vec::new())
        } else {
            return Ok(None);
        };
        let mut errors = Vec::new();
        let mut kept = Vec::new();
        for e in entries {
            if e.path.len() == 1 && e.path[0].eq_ignore_ascii_case("configfile") {
                continue;
            }
            match options::find(&e.path) {
                None => errors.push(format!("unknown Traefik option `{}`", e.shown)),
                Some(o) => match o.use_ {
                    Use::Unknown => errors.push(format!("unknown Traefik option `{}`", e.shown)),
                    Use::Refused(why) => errors.push(format!("Traefik option `{}` is not supported: {why}", e.shown)),
                    Use::Note(why) => {
                        notes.push(format!("Traefik option `{}` accepted, no effect: {why}", e.shown));
                    }
                    Use::Read => {
                        if let Err(why) = check_kind(o.kind, &e.value) {
                            errors.push(format!("Traefik option `{}`: {why}", e.shown));
                        } else {
                            kept.push(e);
                        }
                    }
                },
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError(format!("{} ({form})", errors.join("; "))));
        }
        Ok(Some(Static {
            form,
            entries: kept,
            notes,
        }))
    }
}

fn check_kind(kind: Kind, value: &Value) -> Result<(), String> {
    let scalar = match value {
        Value::Scalar(s) => s,
        Value::List(_) if kind == Kind::List => return Ok(()),
        Value::List(_) => return Err("expected one value, found a list".into()),
    };
    match kind {
        Kind::Section | Kind::Bool if !scalar.is_empty() && berth_common::config::parse_bool(scalar).is_none() => {
            Err(format!("`{scalar}` is not a boolean (true or false)"))
        }
        Kind::Duration if berth_common::config::parse_duration(scalar).is_err() => {
            Err(format!("`{scalar}` is not a duration (10s, 1m, or seconds)"))
        }
        Kind::Number if scalar.trim().parse::<f64>().map_or(true, |n| !n.is_finite()) => {
            Err(format!("`{scalar}` is not a number"))
        }
        _ => Ok(()),
    }
}

/// Whether `arg` (`--key` or `--key=value`) is one of Traefik's flags. Berth's own
/// `--ping NAME` shares a name with Traefik's `--ping`: a value that is not a boolean
/// makes it Berth's.
fn traefik_key(arg: &str) -> Option<&str> {
    let body = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    let key = body.split_once('=').map_or(body, |(k, _)| k);
    let root = key.split('.').next().unwrap_or(key);
    ROOTS.iter().any(|r| r.eq_ignore_ascii_case(root)).then_some(key)
}

/// Split the command line into Berth's arguments (the program name first) and Traefik's
/// flags. A leading `traefik` word (a task definition written for Traefik's image,
/// whose entrypoint script accepts it) is dropped.
pub fn split_args(argv: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut berth = Vec::new();
    let mut traefik = Vec::new();
    let mut it = argv.into_iter().peekable();
    if let Some(program) = it.next() {
        berth.push(program);
    }
    if it.peek().map(String::as_str) == Some("traefik") {
        it.next();
    }
    while let Some(arg) = it.next() {
        let Some(key) = traefik_key(&arg) else {
            berth.push(arg);
            continue;
        };
        let has_value = arg.contains('=');
        let is_ping = key.eq_ignore_ascii_case("ping");
        if is_ping {
            // `--ping=web` or `--ping web`: Berth's entrypoint name.
            let value = match arg.split_once('=') {
                Some((_, v)) => Some(v.to_string()),
                None => it.peek().filter(|v| !v.starts_with('-')).cloned(),
            };
            if let Some(v) = value
                && berth_common::config::parse_bool(&v).is_none()
            {
                berth.push(arg);
                if !has_value && let Some(v) = it.next() {
                    berth.push(v);
                }
                continue;
            }
        }
        if !has_value && let Some(next) = it.peek().filter(|v| !v.starts_with('-')) {
            let joined = format!("{arg}={next}");
            it.next();
            traefik.push(joined);
        } else {
            traefik.push(arg);
        }
    }
    (berth, traefik)
}

fn bounded(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.len() > MAX_VALUE_BYTES || key.len() > 512 || key.split('.').count() > 16 {
        return Err(ConfigError(format!(
            "Traefik option `{}`: too long",
            key.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// Traefik's flags (`--a.b=v`, already joined by [`split_args`]): keys are matched without
/// regard to case; a flag without a value is `true` (a switch, or a section turned on);
/// a repeated flag adds values to a list.
fn parse_flags(flags: &[String]) -> Result<Vec<Entry>, ConfigError> {
    let mut out: Vec<Entry> = Vec::new();
    for f in flags {
        let body = f.trim_start_matches('-');
        let (key, value) = body.split_once('=').unwrap_or((body, "true"));
        bounded(key, value)?;
        let path: Vec<String> = key.split('.').map(String::from).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError(format!("Traefik flag `--{key}`: empty segment")));
        }
        if let Some(e) = out.iter_mut().find(|e| same_path(&e.path, &path)) {
            let mut values = match std::mem::replace(&mut e.value, Value::List(Vec::new())) {
                Value::Scalar(s) => vec![s],
                Value::List(l) => l,
            };
            values.push(value.to_string());
            e.value = Value::List(values);
        } else {
            out.push(Entry {
                path,
                shown: format!("--{key}"),
                value: Value::Scalar(value.to_string()),
            });
        }
        if out.len() > MAX_ENTRIES {
            return Err(ConfigError("too many Traefik flags".into()));
        }
    }
    Ok(out)
}

pub(crate) fn same_path(a: &[String], b: &[String]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
}

/// `TRAEFIK_PROVIDERS_ECS_CLUSTERS=a,b`: the name split into an option's path by the
/// option table, since names may hold `_`.
fn parse_env(env: &[(String, String)]) -> Result<Vec<Entry>, ConfigError> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (k, v) in env {
        bounded(k, v)?;
        let rest = &k["TRAEFIK_".len()..];
        let words: Vec<&str> = rest.split('_').collect();
        match options::split_env(&words) {
            Some(path) => out.push(Entry {
                path,
                shown: k.clone(),
                value: Value::Scalar(v.clone()),
            }),
            None => errors.push(format!("unknown Traefik option `{k}`")),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigError(format!(
            "{} (TRAEFIK_* environment variables)",
            errors.join("; ")
        )));
    }
    if out.len() > MAX_ENTRIES {
        return Err(ConfigError("too many TRAEFIK_* variables".into()));
    }
    Ok(out)
}

/// A YAML or TOML file (TOML by its `.toml` name, as Traefik decides), flattened into
/// entries: maps into paths, lists of values into lists, lists of maps by index.
fn read_file(path: &Path) -> Result<Vec<Entry>, ConfigError> {
    let fail = |e: String| ConfigError(format!("Traefik static file {}: {e}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(fail(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let toml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let root = berth_common::config::parse_tree(&text, toml).map_err(fail)?;
    let mut out = Vec::new();
    flatten(&root, &mut Vec::new(), &mut out, 0).map_err(fail)?;
    Ok(out)
}

fn flatten(node: &Node, path: &mut Vec<String>, out: &mut Vec<Entry>, depth: usize) -> Result<(), String> {
    if depth > 16 || out.len() > MAX_ENTRIES {
        return Err("too deep or too many options".into());
    }
    let shown = |path: &[String]| path.join(".");
    match node {
        Node::Leaf(s) => out.push(Entry {
            path: path.clone(),
            shown: shown(path),
            value: Value::Scalar(s.clone()),
        }),
        Node::List(items) if items.iter().all(|i| matches!(i, Node::Leaf(_))) => out.push(Entry {
            path: path.clone(),
            shown: shown(path),
            value: Value::List(
                items
                    .iter()
                    .filter_map(|i| match i {
                        Node::Leaf(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect(),
            ),
        }),
        Node::List(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(i.to_string());
                flatten(item, path, out, depth + 1)?;
                path.pop();
            }
        }
        // An empty section (`api: {}`) turns it on.
        Node::Map(m) if m.is_empty() && !path.is_empty() => out.push(Entry {
            path: path.clone(),
            shown: shown(path),
            value: Value::Scalar("true".into()),
        }),
        Node::Map(m) => {
            for (k, v) in m {
                path.push(k.clone());
                flatten(v, path, out, depth + 1)?;
                path.pop();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_command_line_splits_into_berth_and_traefik() {
        let (berth, traefik) = split_args(s(&[
            "berth-gateway",
            "traefik",
            "--entrypoint",
            "web=127.0.0.1:1",
            "--providers.ecs.clusters",
            "prod",
            "--api.insecure",
            "--entryPoints.web.address=:80",
            "--ping",
            "--log.level=DEBUG",
        ]));
        assert_eq!(berth, s(&["berth-gateway", "--entrypoint", "web=127.0.0.1:1"]));
        assert_eq!(
            traefik,
            s(&[
                "--providers.ecs.clusters=prod",
                "--api.insecure",
                "--entryPoints.web.address=:80",
                "--ping",
                "--log.level=DEBUG"
            ])
        );
        // Berth's `--ping NAME` stays Berth's; Traefik's boolean `--ping=true` is Traefik's.
        let (berth, traefik) = split_args(s(&["g", "--ping", "web", "--ping=true"]));
        assert_eq!(berth, s(&["g", "--ping", "web"]));
        assert_eq!(traefik, s(&["--ping=true"]));
    }

    #[test]
    fn the_forms_are_exclusive_file_then_flags_then_env() {
        let dir = std::env::temp_dir().join(format!("berth-traefik-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("traefik.yml");
        std::fs::write(&file, "providers:\n  ecs:\n    clusters: [a, b]\napi: {}\n").unwrap();
        let sources = Sources {
            flags: s(&["--api.insecure"]),
            env: vec![("TRAEFIK_PING".into(), "true".into())],
            search: vec![dir.join("missing.toml"), file.clone()],
            always: false,
        };
        let st = sources.resolve().unwrap().unwrap();
        assert_eq!(st.form, Form::File(file.clone()));
        assert_eq!(st.entries.len(), 2);
        assert!(
            st.notes.iter().any(|n| n.contains("flags are ignored")),
            "{:?}",
            st.notes
        );
        assert!(st.notes.iter().any(|n| n.contains("variables are ignored")));
        let sources = Sources {
            search: vec![],
            ..sources
        };
        let st = sources.resolve().unwrap().unwrap();
        assert_eq!(st.form, Form::Flags);
        let sources = Sources {
            flags: vec![],
            ..sources
        };
        let st = sources.resolve().unwrap().unwrap();
        assert_eq!(st.form, Form::Env);
        assert_eq!(st.entries[0].path, s(&["ping"]));
        let none = Sources::default();
        assert!(none.resolve().unwrap().is_none());
    }

    #[test]
    fn unknown_and_refused_options_are_named() {
        let e = Sources {
            flags: s(&[
                "--providers.ecs.clusterz=a",
                "--certificatesresolvers.le.acme.preferredchain=X",
            ]),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .0;
        assert!(e.contains("unknown Traefik option `--providers.ecs.clusterz`"), "{e}");
        assert!(
            e.contains("`--certificatesresolvers.le.acme.preferredchain` is not supported: this ACME option"),
            "{e}"
        );
        let e = Sources {
            env: vec![("TRAEFIK_API_BOGUS".into(), "1".into())],
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .0;
        assert!(e.contains("TRAEFIK_API_BOGUS"), "{e}");
        let e = Sources {
            flags: s(&["--api.insecure=maybe"]),
            ..Default::default()
        }
        .resolve()
        .unwrap_err()
        .0;
        assert!(e.contains("not a boolean"), "{e}");
    }

    #[test]
    fn repeated_flags_make_a_list_and_toml_files_read_too() {
        let st = Sources {
            flags: s(&["--providers.ecs.clusters=a", "--providers.ecs.clusters=b"]),
            ..Default::default()
        }
        .resolve()
        .unwrap()
        .unwrap();
        assert_eq!(st.entries[0].value, Value::List(s(&["a", "b"])));
        let dir = std::env::temp_dir().join(format!("berth-traefik-toml-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("traefik.toml");
        std::fs::write(&file, "[entryPoints.web]\naddress = \":80\"\n[api]\n").unwrap();
        let st = Sources {
            search: vec![file],
            ..Default::default()
        }
        .resolve()
        .unwrap()
        .unwrap();
        let mut paths: Vec<String> = st.entries.iter().map(|e| e.shown.clone()).collect();
        paths.sort();
        assert_eq!(paths, s(&["api", "entryPoints.web.address"]));
    }
}
