//! Lexer and recursive-descent parser for Traefik v3 rules.
//!
//! Precedence follows Traefik (vulcand/predicate): `!` binds tightest, then `&&`, then
//! `||`; parentheses group. Values are backtick strings (raw) or double-quoted strings
//! (Go escapes). Every error carries the 1-based column where it was found.

use std::fmt;

/// The matchers Traefik v3 knows: HTTP routers', and TCP routers' (`HostSNI`,
/// `HostSNIRegexp`, `ALPN`; `ClientIP` serves both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MatcherKind {
    Host,
    HostRegexp,
    Path,
    PathPrefix,
    PathRegexp,
    Method,
    Header,
    HeaderRegexp,
    Query,
    QueryRegexp,
    ClientIp,
    HostSni,
    HostSniRegexp,
    Alpn,
}

impl MatcherKind {
    pub const ALL: [MatcherKind; 14] = [
        MatcherKind::Host,
        MatcherKind::HostRegexp,
        MatcherKind::Path,
        MatcherKind::PathPrefix,
        MatcherKind::PathRegexp,
        MatcherKind::Method,
        MatcherKind::Header,
        MatcherKind::HeaderRegexp,
        MatcherKind::Query,
        MatcherKind::QueryRegexp,
        MatcherKind::ClientIp,
        MatcherKind::HostSni,
        MatcherKind::HostSniRegexp,
        MatcherKind::Alpn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MatcherKind::Host => "Host",
            MatcherKind::HostRegexp => "HostRegexp",
            MatcherKind::Path => "Path",
            MatcherKind::PathPrefix => "PathPrefix",
            MatcherKind::PathRegexp => "PathRegexp",
            MatcherKind::Method => "Method",
            MatcherKind::Header => "Header",
            MatcherKind::HeaderRegexp => "HeaderRegexp",
            MatcherKind::Query => "Query",
            MatcherKind::QueryRegexp => "QueryRegexp",
            MatcherKind::ClientIp => "ClientIP",
            MatcherKind::HostSni => "HostSNI",
            MatcherKind::HostSniRegexp => "HostSNIRegexp",
            MatcherKind::Alpn => "ALPN",
        }
    }

    /// Accepted argument counts (inclusive range).
    pub fn arity(self) -> (usize, usize) {
        match self {
            MatcherKind::Header | MatcherKind::HeaderRegexp | MatcherKind::QueryRegexp => (2, 2),
            MatcherKind::Query => (1, 2),
            _ => (1, 1),
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        MatcherKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One matcher call as written, with the column of its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatcherCall {
    pub kind: MatcherKind,
    pub args: Vec<String>,
    pub column: usize,
}

/// The rule's syntax tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Matcher(MatcherCall),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// A syntax error: where, what was expected, and what was there instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: expected {expected}, found {found}")]
pub struct ParseError {
    pub column: usize,
    pub expected: String,
    pub found: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    And,
    Or,
    Not,
    End,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(s) => write!(f, "`{s}`"),
            Tok::Str(_) => f.write_str("a string"),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::And => f.write_str("`&&`"),
            Tok::Or => f.write_str("`||`"),
            Tok::Not => f.write_str("`!`"),
            Tok::End => f.write_str("end of rule"),
        }
    }
}

fn err(column: usize, expected: impl Into<String>, found: impl Into<String>) -> ParseError {
    ParseError {
        column,
        expected: expected.into(),
        found: found.into(),
    }
}

fn lex(input: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push((Tok::LParen, col));
                i += 1;
            }
            ')' => {
                out.push((Tok::RParen, col));
                i += 1;
            }
            ',' => {
                out.push((Tok::Comma, col));
                i += 1;
            }
            '!' => {
                out.push((Tok::Not, col));
                i += 1;
            }
            '&' | '|' => {
                if chars.get(i + 1) != Some(&c) {
                    return Err(err(col, format!("`{c}{c}`"), format!("`{c}`")));
                }
                out.push((if c == '&' { Tok::And } else { Tok::Or }, col));
                i += 2;
            }
            '`' => {
                let start = i + 1;
                let end = chars[start..]
                    .iter()
                    .position(|&ch| ch == '`')
                    .ok_or_else(|| err(col, "a closing backtick", "end of rule"))?;
                out.push((Tok::Str(chars[start..start + end].iter().collect()), col));
                i = start + end + 1;
            }
            '"' => {
                let (s, next) = lex_quoted(&chars, i)?;
                out.push((Tok::Str(s), col));
                i = next;
            }
            c if c.is_ascii_alphabetic() => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                out.push((Tok::Ident(chars[start..i].iter().collect()), col));
            }
            other => {
                return Err(err(col, "a matcher, `(`, `!` or a string", format!("`{other}`")));
            }
        }
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

/// A Go-style double-quoted string starting at `chars[open]`; returns it and the index after it.
fn lex_quoted(chars: &[char], open: usize) -> Result<(String, usize), ParseError> {
    let mut s = String::new();
    let mut i = open + 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(err(open + 1, "a closing `\"`", "end of rule"));
        };
        match c {
            '"' => return Ok((s, i + 1)),
            '\\' => {
                let esc = chars.get(i + 1).ok_or_else(|| err(i + 1, "an escape", "end of rule"))?;
                let v = match esc {
                    'n' => '\n',
                    't' => '\t',
                    'r' => '\r',
                    '\\' => '\\',
                    '"' => '"',
                    '\'' => '\'',
                    other => {
                        return Err(err(
                            i + 1,
                            "one of the escapes \\n \\t \\r \\\\ \\\"",
                            format!("`\\{other}`"),
                        ));
                    }
                };
                s.push(v);
                i += 2;
            }
            c => {
                s.push(c);
                i += 1;
            }
        }
    }
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> &(Tok, usize) {
        // `lex` always ends with `End`, and `bump` never passes it.
        &self.toks[self.pos.min(self.toks.len() - 1)]
    }

    fn bump(&mut self) -> (Tok, usize) {
        let t = self.peek().clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.and()?;
        while self.peek().0 == Tok::Or {
            self.bump();
            let right = self.and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let mut left = self.unary()?;
        while self.peek().0 == Tok::And {
            self.bump();
            let right = self.unary()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.peek().0 == Tok::Not {
            self.bump();
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let (tok, col) = self.bump();
        match tok {
            Tok::LParen => {
                let inner = self.or()?;
                let (close, ccol) = self.bump();
                if close != Tok::RParen {
                    return Err(err(ccol, "`)`", close.to_string()));
                }
                Ok(inner)
            }
            Tok::Ident(name) => {
                let kind = MatcherKind::from_name(&name).ok_or_else(|| {
                    let known: Vec<_> = MatcherKind::ALL.iter().map(|k| k.name()).collect();
                    err(col, format!("a matcher ({})", known.join(", ")), format!("`{name}`"))
                })?;
                let (open, ocol) = self.bump();
                if open != Tok::LParen {
                    return Err(err(ocol, format!("`(` after {name}"), open.to_string()));
                }
                let mut args = Vec::new();
                loop {
                    let (t, tcol) = self.bump();
                    match t {
                        Tok::Str(s) => args.push(s),
                        other => {
                            return Err(err(tcol, "a quoted or backtick string", other.to_string()));
                        }
                    }
                    let (sep, scol) = self.bump();
                    match sep {
                        Tok::Comma => continue,
                        Tok::RParen => break,
                        other => return Err(err(scol, "`,` or `)`", other.to_string())),
                    }
                }
                let (min, max) = kind.arity();
                if args.len() < min || args.len() > max {
                    let want = if min == max {
                        format!("{min} argument{}", if min == 1 { "" } else { "s" })
                    } else {
                        format!("{min} to {max} arguments")
                    };
                    return Err(err(col, format!("{want} for {name}"), format!("{}", args.len())));
                }
                Ok(Expr::Matcher(MatcherCall {
                    kind,
                    args,
                    column: col,
                }))
            }
            other => Err(err(col, "a matcher, `(` or `!`", other.to_string())),
        }
    }
}

/// Parse a rule into its syntax tree.
pub fn parse(input: &str) -> Result<Expr, ParseError> {
    let toks = lex(input)?;
    let mut p = Parser { toks, pos: 0 };
    let expr = p.or()?;
    let (t, col) = p.bump();
    if t != Tok::End {
        return Err(err(col, "`&&`, `||` or end of rule", t.to_string()));
    }
    Ok(expr)
}
