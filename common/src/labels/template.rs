//! The subset of Go's `text/template` that Traefik users write in `defaultRule`:
//! actions `{{ ... }}` (with `{{-` and `-}}` trimming), pipelines with `|`, parentheses,
//! string literals, `.Name`, `.Labels` (with `index .Labels "key"` or `.Labels.key`), and
//! the functions Traefik adds or users reach for from sprig: `normalize`, `index`,
//! `lower`, `upper`, `trim`, `trimPrefix`, `trimSuffix`, `trimAll`, `replace`,
//! `default`. Anything else is an error when the template is parsed (at startup), never
//! a rule with template text left in it.
//!
//! Bounded: templates of at most [`MAX_BYTES`], pipelines at most [`MAX_DEPTH`] deep.

use std::collections::BTreeMap;

use super::normalize_name;

const MAX_BYTES: usize = 4096;
const MAX_DEPTH: usize = 8;

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Action(Pipeline),
}

/// Commands separated by `|`: each command's value is the last argument of the next.
#[derive(Debug, Clone, PartialEq)]
struct Pipeline(Vec<Command>);

#[derive(Debug, Clone, PartialEq)]
enum Command {
    Operand(Operand),
    Call(Func, Vec<Operand>),
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Name,
    Labels,
    Label(String),
    Str(String),
    Sub(Box<Pipeline>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Normalize,
    Index,
    Lower,
    Upper,
    Trim,
    TrimPrefix,
    TrimSuffix,
    TrimAll,
    Replace,
    Default,
}

impl Func {
    fn from_name(s: &str) -> Option<Func> {
        Some(match s {
            "normalize" => Func::Normalize,
            "index" => Func::Index,
            "lower" => Func::Lower,
            "upper" => Func::Upper,
            "trim" => Func::Trim,
            "trimPrefix" => Func::TrimPrefix,
            "trimSuffix" => Func::TrimSuffix,
            "trimAll" => Func::TrimAll,
            "replace" => Func::Replace,
            "default" => Func::Default,
            _ => return None,
        })
    }

    fn arity(self) -> usize {
        match self {
            Func::Normalize | Func::Lower | Func::Upper | Func::Trim => 1,
            Func::Index | Func::TrimPrefix | Func::TrimSuffix | Func::TrimAll | Func::Default => 2,
            Func::Replace => 3,
        }
    }
}

/// A parsed `defaultRule` template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(Vec<Part>);

enum Value<'a> {
    Str(String),
    Labels(&'a BTreeMap<String, String>),
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.len() > MAX_BYTES {
            return Err(format!("the template is longer than {MAX_BYTES} bytes"));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        let mut trim_next = false;
        while let Some(start) = rest.find("{{") {
            let mut before = &rest[..start];
            if trim_next {
                before = before.trim_start();
            }
            let mut inner_start = start + 2;
            if rest[inner_start..].starts_with('-') && rest[inner_start + 1..].starts_with([' ', '\t', '\n']) {
                before = before.trim_end();
                inner_start += 1;
            }
            if !before.is_empty() {
                parts.push(Part::Text(before.to_string()));
            }
            let end = rest[inner_start..]
                .find("}}")
                .map(|e| e + inner_start)
                .ok_or("`{{` without `}}`")?;
            let mut inner = &rest[inner_start..end];
            trim_next = false;
            if inner.ends_with(" -") || inner.ends_with("\t-") || inner.ends_with("\n-") {
                inner = &inner[..inner.len() - 1];
                trim_next = true;
            }
            let toks = lex(inner)?;
            let mut p = Parser { toks, pos: 0, depth: 0 };
            let pipe = p.pipeline()?;
            if p.pos != p.toks.len() {
                return Err(format!("unexpected `{}` in `{{{{{inner}}}}}`", p.toks[p.pos]));
            }
            parts.push(Part::Action(pipe));
            rest = &rest[end + 2..];
        }
        let tail = if trim_next { rest.trim_start() } else { rest };
        if !tail.is_empty() {
            parts.push(Part::Text(tail.to_string()));
        }
        if text.contains("}}") && parts.iter().all(|p| matches!(p, Part::Text(_))) {
            return Err("`}}` without `{{`".into());
        }
        Ok(Template(parts))
    }

    /// The template for a container: `.Name` its (normalized) instance name, `.Labels`
    /// its labels. A value with a quote or backtick in it is refused: it would change
    /// the rule's syntax, not only its strings.
    pub fn render(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.0 {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Action(p) => match eval(p, name, labels)? {
                    Value::Str(s) if s.contains(['`', '"']) => {
                        return Err(format!("the value `{s}` holds a quote or backtick"));
                    }
                    Value::Str(s) => out.push_str(&s),
                    Value::Labels(_) => return Err("`.Labels` is a map; use index .Labels \"key\"".into()),
                },
            }
        }
        Ok(out)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Field(String),
    Ident(String),
    Str(String),
    Pipe,
    LParen,
    RParen,
}

impl std::fmt::Display for Tok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tok::Field(s) => write!(f, ".{s}"),
            Tok::Ident(s) => f.write_str(s),
            Tok::Str(s) => write!(f, "{s:?}"),
            Tok::Pipe => f.write_str("|"),
            Tok::LParen => f.write_str("("),
            Tok::RParen => f.write_str(")"),
        }
    }
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '|' => out.push(Tok::Pipe),
            '(' => out.push(Tok::LParen),
            ')' => out.push(Tok::RParen),
            '"' | '`' => {
                let mut v = String::new();
                let mut closed = false;
                while let Some((_, ch)) = chars.next() {
                    if ch == c {
                        closed = true;
                        break;
                    }
                    if ch == '\\' && c == '"' {
                        match chars.next() {
                            Some((_, e @ ('"' | '\\'))) => v.push(e),
                            Some((_, 'n')) => v.push('\n'),
                            Some((_, 't')) => v.push('\t'),
                            other => return Err(format!("unsupported escape `\\{}`", other.map_or(' ', |o| o.1))),
                        }
                    } else {
                        v.push(ch);
                    }
                }
                if !closed {
                    return Err("unterminated string".into());
                }
                out.push(Tok::Str(v));
            }
            '.' | 'a'..='z' | 'A'..='Z' | '_' => {
                let mut end = i + c.len_utf8();
                while let Some(&(j, ch)) = chars.peek() {
                    if ch.is_alphanumeric() || ch == '_' || ch == '.' {
                        end = j + ch.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                let word = &s[i..end];
                out.push(match word.strip_prefix('.') {
                    Some(field) => Tok::Field(field.to_string()),
                    None => Tok::Ident(word.to_string()),
                });
            }
            other => return Err(format!("unexpected `{other}`")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn pipeline(&mut self) -> Result<Pipeline, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        let mut cmds = vec![self.command()?];
        while self.toks.get(self.pos) == Some(&Tok::Pipe) {
            self.pos += 1;
            cmds.push(self.command()?);
        }
        self.depth -= 1;
        // A function after `|` takes the value before it as its last argument.
        for (i, c) in cmds.iter().enumerate().skip(1) {
            match c {
                Command::Call(f, args) if args.len() + 1 == f.arity() => {}
                Command::Call(f, args) => {
                    return Err(format!(
                        "{f:?} takes {} arguments, given {} and the pipe",
                        f.arity(),
                        args.len()
                    ));
                }
                Command::Operand(_) => return Err(format!("command {} after `|` is not a function", i + 1)),
            }
        }
        if let Some(Command::Call(f, args)) = cmds.first()
            && args.len() != f.arity()
        {
            return Err(format!("{f:?} takes {} arguments, given {}", f.arity(), args.len()));
        }
        Ok(Pipeline(cmds))
    }

    fn command(&mut self) -> Result<Command, String> {
        match self.toks.get(self.pos).cloned() {
            Some(Tok::Ident(name)) => {
                self.pos += 1;
                let f = Func::from_name(&name).ok_or_else(|| {
                    format!(
                        "unknown function `{name}` (normalize, index, lower, upper, trim, trimPrefix, trimSuffix, \
                         trimAll, replace, default)"
                    )
                })?;
                let mut args = Vec::new();
                while let Some(t) = self.toks.get(self.pos) {
                    if matches!(t, Tok::Pipe | Tok::RParen) {
                        break;
                    }
                    args.push(self.operand()?);
                }
                Ok(Command::Call(f, args))
            }
            Some(_) => Ok(Command::Operand(self.operand()?)),
            None => Err("an empty action".into()),
        }
    }

    fn operand(&mut self) -> Result<Operand, String> {
        let t = self.toks.get(self.pos).cloned().ok_or("missing operand")?;
        self.pos += 1;
        match t {
            Tok::Str(s) => Ok(Operand::Str(s)),
            Tok::Field(f) if f == "Name" => Ok(Operand::Name),
            Tok::Field(f) if f == "Labels" => Ok(Operand::Labels),
            Tok::Field(f) => match f.strip_prefix("Labels.") {
                Some(key) if !key.is_empty() && !key.contains('.') => Ok(Operand::Label(key.to_string())),
                _ => Err(format!("unknown field `.{f}` (.Name, .Labels)")),
            },
            Tok::LParen => {
                let p = self.pipeline()?;
                match self.toks.get(self.pos) {
                    Some(Tok::RParen) => {
                        self.pos += 1;
                        Ok(Operand::Sub(Box::new(p)))
                    }
                    _ => Err("`(` without `)`".into()),
                }
            }
            other => Err(format!("unexpected `{other}`")),
        }
    }
}

fn eval<'a>(p: &Pipeline, name: &str, labels: &'a BTreeMap<String, String>) -> Result<Value<'a>, String> {
    let mut piped: Option<Value<'a>> = None;
    for c in &p.0 {
        let v = match c {
            Command::Operand(o) => operand(o, name, labels)?,
            Command::Call(f, args) => {
                let mut vals = args
                    .iter()
                    .map(|a| operand(a, name, labels))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(v) = piped.take() {
                    vals.push(v);
                }
                call(*f, vals)?
            }
        };
        piped = Some(v);
    }
    piped.ok_or_else(|| "an empty action".into())
}

fn operand<'a>(o: &Operand, name: &str, labels: &'a BTreeMap<String, String>) -> Result<Value<'a>, String> {
    Ok(match o {
        Operand::Name => Value::Str(name.to_string()),
        Operand::Labels => Value::Labels(labels),
        Operand::Label(k) => Value::Str(labels.get(k).cloned().unwrap_or_default()),
        Operand::Str(s) => Value::Str(s.clone()),
        Operand::Sub(p) => eval(p, name, labels)?,
    })
}

fn call<'a>(f: Func, vals: Vec<Value<'a>>) -> Result<Value<'a>, String> {
    let mut it = vals.into_iter();
    if f == Func::Index {
        // Go's index on a map: the value, or "" for a missing key.
        return match (it.next(), it.next()) {
            (Some(Value::Labels(m)), Some(Value::Str(k))) => Ok(Value::Str(m.get(&k).cloned().unwrap_or_default())),
            _ => Err("index takes .Labels and a key".into()),
        };
    }
    let mut s = || match it.next() {
        Some(Value::Str(s)) => Ok(s),
        Some(Value::Labels(_)) => Err(format!("{f:?}: `.Labels` is a map, not a string")),
        None => Err(format!("{f:?}: missing argument")),
    };
    Ok(Value::Str(match f {
        Func::Normalize => normalize_name(&s()?),
        Func::Lower => s()?.to_lowercase(),
        Func::Upper => s()?.to_uppercase(),
        Func::Trim => s()?.trim().to_string(),
        Func::TrimPrefix => {
            let (p, v) = (s()?, s()?);
            v.strip_prefix(p.as_str()).unwrap_or(&v).to_string()
        }
        Func::TrimSuffix => {
            let (p, v) = (s()?, s()?);
            v.strip_suffix(p.as_str()).unwrap_or(&v).to_string()
        }
        Func::TrimAll => {
            let (cut, v) = (s()?, s()?);
            v.trim_matches(|c| cut.contains(c)).to_string()
        }
        Func::Replace => {
            let (old, new, v) = (s()?, s()?, s()?);
            v.replace(&old, &new)
        }
        Func::Default => {
            let (d, v) = (s()?, s()?);
            if v.is_empty() { d } else { v }
        }
        Func::Index => String::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, name: &str, labels: &[(&str, &str)]) -> Result<String, String> {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Template::parse(t)?.render(name, &labels)
    }

    #[test]
    fn what_traefik_users_write_renders() {
        let l = [
            ("customLabel", "example.com"),
            ("com.docker.compose.service", "Web_App"),
        ];
        assert_eq!(
            render("Host(`{{ normalize .Name }}`)", "my_app", &l).unwrap(),
            "Host(`my-app`)"
        );
        // Traefik's documented example.
        assert_eq!(
            render("Host(`{{ .Name }}.{{ index .Labels \"customLabel\"}}`)", "whoami", &l).unwrap(),
            "Host(`whoami.example.com`)"
        );
        assert_eq!(
            render("Host(`{{ .Labels.customLabel }}`)", "x", &l).unwrap(),
            "Host(`example.com`)"
        );
        assert_eq!(
            render(
                "Host(`{{ index .Labels \"com.docker.compose.service\" | lower | replace \"_\" \"-\" }}.local`)",
                "x",
                &l
            )
            .unwrap(),
            "Host(`web-app.local`)"
        );
        assert_eq!(
            render("{{ trimPrefix \"svc-\" .Name }}", "svc-api", &[]).unwrap(),
            "api"
        );
        assert_eq!(
            render("{{ .Name | trimSuffix `-v2` | upper }}", "api-v2", &[]).unwrap(),
            "API"
        );
        assert_eq!(
            render("{{ index .Labels `missing` | default `none` }}", "x", &[]).unwrap(),
            "none"
        );
        assert_eq!(render("{{ (normalize .Name) }}", "a_b", &[]).unwrap(), "a-b");
        assert_eq!(render("a {{- .Name -}} b", "x", &[]).unwrap(), "axb");
        assert_eq!(render("PathPrefix(`/`)", "x", &[]).unwrap(), "PathPrefix(`/`)");
    }

    #[test]
    fn what_it_cannot_evaluate_is_refused_when_parsed() {
        for bad in [
            "{{ .Foo }}",
            "{{ printf \"%s\" .Name }}",
            "{{ .Name",
            "}}",
            "{{ }}",
            "{{ lower }}",
            "{{ .Name | .Name }}",
            "{{ replace \"a\" .Name }}",
            "{{ if .Name }}x{{ end }}",
            "{{ \"unterminated }}",
            "{{ (lower .Name }}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        let deep = format!("{{{{ {}.Name{} }}}}", "(".repeat(50), ")".repeat(50));
        assert!(Template::parse(&deep).is_err());
        // A label value may not carry rule syntax into the rule.
        assert!(render("Host(`{{ .Labels.h }}`)", "x", &[("h", "a`) || Host(`b")]).is_err());
        assert!(render("{{ .Labels }}", "x", &[]).is_err());
    }
}
