//! Lexer and recursive-descent parser for Traefik v3 rules.
//!
//! Precedence follows Traefik (vulcand/predicate): `!` binds tightest, then `&&`, then
//! `||`; parentheses group. Values are backtick strings (raw) or double-quoted strings
//! (Go escapes). Every error carries the 1-based column where it was found.
//!
//! Rules come from docker labels, which anyone who can register a task definition writes,
//! so the parser is bounded and total: at most [`MAX_RULE_BYTES`] of text, [`MAX_MATCHERS`]
//! matchers and [`MAX_DEPTH`] levels of `(` and `!`. Chains of `&&` and `||` are flat lists,
//! not nested pairs, so every walk over a tree (compile, evaluate, drop) recurses at most
//! [`MAX_DEPTH`] deep whatever the input.

use std::fmt;

use super::v2::{self, Syntax};

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
            MatcherKind::Header | MatcherKind::HeaderRegexp => (2, 2),
            MatcherKind::Query | MatcherKind::QueryRegexp => (1, 2),
            _ => (1, 1),
        }
    }

    /// Traefik registers each matcher under four spellings (`PathPrefix`, `pathprefix`,
    /// `PATHPREFIX`, `Pathprefix`: pkg/rules/parser.go); other mixes are unknown there too.
    fn from_name(name: &str) -> Option<Self> {
        MatcherKind::ALL.into_iter().find(|k| spelled(k.name(), name))
    }
}

/// Whether `name` is one of the four spellings Traefik registers for `canonical`.
pub(super) fn spelled(canonical: &str, name: &str) -> bool {
    let lower = canonical.to_ascii_lowercase();
    let title = format!("{}{}", lower[..1].to_ascii_uppercase(), &lower[1..]);
    [canonical.to_string(), canonical.to_ascii_uppercase(), lower, title]
        .iter()
        .any(|spelling| spelling == name)
}

/// One matcher call as written, with the column of its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatcherCall {
    pub kind: MatcherKind,
    pub args: Vec<String>,
    pub column: usize,
}

/// The longest rule accepted, in bytes (a rule listing a few hundred hosts fits).
pub const MAX_RULE_BYTES: usize = 64 * 1024;
/// The most matchers one rule may hold.
pub const MAX_MATCHERS: usize = 1024;
/// The deepest nesting of parentheses and `!` accepted.
pub const MAX_DEPTH: usize = 32;

/// The rule's syntax tree. `And` and `Or` hold two or more operands, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Matcher(MatcherCall),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// A syntax error: where, what was expected, and what was there instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: expected {expected}, found {found}")]
pub struct ParseError {
    pub column: usize,
    pub expected: String,
    pub found: String,
}

/// A rule's tokens (also Traefik's provider constraints', which share the syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
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

/// The tokens of `input` with their columns, ending with [`Tok::End`].
pub(crate) fn lex(input: &str) -> Result<Vec<(Tok, usize)>, ParseError> {
    if input.len() > MAX_RULE_BYTES {
        return Err(err(
            MAX_RULE_BYTES,
            format!("a rule of at most {MAX_RULE_BYTES} bytes"),
            format!("{} bytes", input.len()),
        ));
    }
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
                // Go's raw strings drop carriage returns.
                let raw: String = chars[start..start + end].iter().filter(|&&ch| ch != '\r').collect();
                out.push((Tok::Str(raw), col));
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

/// A Go double-quoted string starting at `chars[open]` (Go's `strconv.Unquote`: `\a \b
/// \f \n \r \t \v \\ \"`, `\xHH`, three octal digits, `\uHHHH`, `\UHHHHHHHH`; no
/// raw newline); returns it and the index after it.
fn lex_quoted(chars: &[char], open: usize) -> Result<(String, usize), ParseError> {
    let mut s = String::new();
    let mut i = open + 1;
    // `\xHH` and octal escapes are bytes: gathered, then read as UTF-8.
    let mut bytes: Vec<u8> = Vec::new();
    let flush = |bytes: &mut Vec<u8>, s: &mut String| {
        if !bytes.is_empty() {
            s.push_str(&String::from_utf8_lossy(bytes));
            bytes.clear();
        }
    };
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(err(open + 1, "a closing `\"`", "end of rule"));
        };
        match c {
            '"' => {
                flush(&mut bytes, &mut s);
                return Ok((s, i + 1));
            }
            '\n' => return Err(err(i + 1, "a closing `\"` on the same line", "a newline")),
            '\\' => {
                let esc = *chars.get(i + 1).ok_or_else(|| err(i + 1, "an escape", "end of rule"))?;
                let digits = |from: usize, n: usize, radix: u32| -> Option<u32> {
                    let text: String = chars.get(from..from + n)?.iter().collect();
                    (text.chars().all(|c| c.is_digit(radix))).then(|| u32::from_str_radix(&text, radix).ok())?
                };
                let bad = || {
                    err(
                        i + 1,
                        "a Go escape (\\n \\t \\r \\\\ \\\" \\a \\b \\f \\v \\xHH \\uHHHH \\UHHHHHHHH or octal)",
                        format!("`\\{esc}`"),
                    )
                };
                let simple = match esc {
                    'a' => Some('\u{7}'),
                    'b' => Some('\u{8}'),
                    'f' => Some('\u{c}'),
                    'n' => Some('\n'),
                    'r' => Some('\r'),
                    't' => Some('\t'),
                    'v' => Some('\u{b}'),
                    '\\' => Some('\\'),
                    '"' => Some('"'),
                    _ => None,
                };
                if let Some(v) = simple {
                    flush(&mut bytes, &mut s);
                    s.push(v);
                    i += 2;
                    continue;
                }
                match esc {
                    'x' => {
                        let v = digits(i + 2, 2, 16).ok_or_else(bad)?;
                        bytes.push(u8::try_from(v).map_err(|_| bad())?);
                        i += 4;
                    }
                    '0'..='7' => {
                        let v = digits(i + 1, 3, 8).filter(|v| *v <= 255).ok_or_else(bad)?;
                        bytes.push(u8::try_from(v).map_err(|_| bad())?);
                        i += 4;
                    }
                    'u' | 'U' => {
                        let n = if esc == 'u' { 4 } else { 8 };
                        let ch = digits(i + 2, n, 16).and_then(char::from_u32).ok_or_else(bad)?;
                        flush(&mut bytes, &mut s);
                        s.push(ch);
                        i += 2 + n;
                    }
                    _ => return Err(bad()),
                }
            }
            c => {
                flush(&mut bytes, &mut s);
                s.push(c);
                i += 1;
            }
        }
    }
}

struct Parser {
    syntax: Syntax,
    toks: Vec<(Tok, usize)>,
    pos: usize,
    /// Open `(` and `!` around the current position.
    depth: usize,
    matchers: usize,
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
        let first = self.and()?;
        if self.peek().0 != Tok::Or {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.peek().0 == Tok::Or {
            self.bump();
            terms.push(self.and()?);
        }
        Ok(Expr::Or(terms))
    }

    fn and(&mut self) -> Result<Expr, ParseError> {
        let first = self.unary()?;
        if self.peek().0 != Tok::And {
            return Ok(first);
        }
        let mut terms = vec![first];
        while self.peek().0 == Tok::And {
            self.bump();
            terms.push(self.unary()?);
        }
        Ok(Expr::And(terms))
    }

    /// Count `n` more matchers, refusing more than [`MAX_MATCHERS`] in all.
    fn count(&mut self, col: usize, n: usize) -> Result<(), ParseError> {
        self.matchers += n;
        if self.matchers > MAX_MATCHERS {
            return Err(err(col, format!("at most {MAX_MATCHERS} matchers"), "more"));
        }
        Ok(())
    }

    /// Enter one level of `(` or `!`, refusing to go deeper than [`MAX_DEPTH`].
    fn descend(&mut self, col: usize) -> Result<(), ParseError> {
        if self.depth >= MAX_DEPTH {
            return Err(err(
                col,
                format!("at most {MAX_DEPTH} levels of `(` and `!`"),
                "deeper nesting",
            ));
        }
        self.depth += 1;
        Ok(())
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        let (tok, col) = self.peek().clone();
        if tok == Tok::Not {
            self.bump();
            self.descend(col)?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let (tok, col) = self.bump();
        match tok {
            Tok::LParen => {
                self.descend(col)?;
                let inner = self.or()?;
                self.depth -= 1;
                let (close, ccol) = self.bump();
                if close != Tok::RParen {
                    return Err(err(ccol, "`)`", close.to_string()));
                }
                Ok(inner)
            }
            Tok::Ident(name) => {
                // v3 matchers by kind; v2 ones by name, translated once their values are read.
                let callee = match self.syntax {
                    Syntax::V3 => {
                        let kind = MatcherKind::from_name(&name).ok_or_else(|| {
                            let known: Vec<_> = MatcherKind::ALL.iter().map(|k| k.name()).collect();
                            err(col, format!("a matcher ({})", known.join(", ")), format!("`{name}`"))
                        })?;
                        Callee::V3(kind)
                    }
                    Syntax::V2 => {
                        let canonical = v2::canonical(&name).ok_or_else(|| {
                            err(
                                col,
                                format!("a v2 matcher ({})", v2::NAMES.join(", ")),
                                format!("`{name}`"),
                            )
                        })?;
                        Callee::V2(canonical)
                    }
                };
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
                        // Go allows a trailing comma in a call: `Host(`a`,)`.
                        Tok::Comma if self.peek().0 == Tok::RParen => {
                            self.bump();
                            break;
                        }
                        Tok::Comma => continue,
                        Tok::RParen => break,
                        other => return Err(err(scol, "`,` or `)`", other.to_string())),
                    }
                }
                let kind = match callee {
                    Callee::V3(kind) => kind,
                    Callee::V2(name) => {
                        let expr = v2::call(name, args, col)?;
                        self.count(col, leaves(&expr))?;
                        return Ok(expr);
                    }
                };
                self.count(col, 1)?;
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

/// What a matcher name stands for in the rule's syntax.
enum Callee {
    V3(MatcherKind),
    /// A v2 matcher's canonical name, translated by `v2::call` once its values are read.
    V2(&'static str),
}

/// The matcher calls in `expr`.
fn leaves(expr: &Expr) -> usize {
    match expr {
        Expr::Matcher(_) => 1,
        Expr::Not(e) => leaves(e),
        Expr::And(terms) | Expr::Or(terms) => terms.iter().map(leaves).sum(),
    }
}

/// Parse a rule (Traefik v3 syntax) into its syntax tree.
pub fn parse(input: &str) -> Result<Expr, ParseError> {
    parse_with(input, Syntax::V3)
}

/// Parse a rule written in `syntax`; a v2 rule comes out as the v3 matchers it means.
pub fn parse_with(input: &str, syntax: Syntax) -> Result<Expr, ParseError> {
    let toks = lex(input)?;
    let mut p = Parser {
        syntax,
        toks,
        pos: 0,
        depth: 0,
        matchers: 0,
    };
    let expr = p.or()?;
    let (t, col) = p.bump();
    if t != Tok::End {
        return Err(err(col, "`&&`, `||` or end of rule", t.to_string()));
    }
    Ok(expr)
}
