//! The expression language of Traefik's `circuitBreaker.expression` and
//! `buffering.retryExpression` (vulcand/predicate): terms combined with `&&`, `||` and
//! parentheses. Each middleware parses its own terms (functions compared with values);
//! the combining, the bounds and the error positions are here, once.

/// The longest expression accepted, in bytes.
const MAX_EXPRESSION_BYTES: usize = 4096;
/// The deepest nesting of parentheses accepted.
const MAX_DEPTH: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Cmp {
    pub(crate) fn holds<T: PartialOrd>(self, a: T, b: T) -> bool {
        match self {
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
        }
    }
}

/// `&&` and `||` hold their operands as flat lists, so only parentheses nest.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr<T> {
    Term(T),
    And(Vec<Expr<T>>),
    Or(Vec<Expr<T>>),
}

impl<T> Expr<T> {
    /// Whether the expression holds, `term` telling for each term.
    pub(crate) fn holds(&self, term: &impl Fn(&T) -> bool) -> bool {
        match self {
            Expr::Term(t) => term(t),
            Expr::And(all) => all.iter().all(|e| e.holds(term)),
            Expr::Or(any) => any.iter().any(|e| e.holds(term)),
        }
    }
}

/// A recursive-descent parser over the expression's text. `pos` is a byte offset that
/// only ever moves over whole characters.
pub(crate) struct Parser<'a> {
    /// `circuitBreaker.expression`: where errors say they are.
    what: &'static str,
    s: &'a str,
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    pub(crate) fn ws(&mut self) {
        let rest = &self.s[self.pos..];
        self.pos += rest.len() - rest.trim_start().len();
    }

    /// Consume `t` (after any spaces) when it comes next.
    pub(crate) fn eat(&mut self, t: &str) -> bool {
        self.ws();
        if self.s[self.pos..].starts_with(t) {
            self.pos += t.len();
            true
        } else {
            false
        }
    }

    pub(crate) fn err<T>(&self, what: &str) -> Result<T, String> {
        Err(format!("{}: {what} at column {}", self.what, self.pos + 1))
    }

    fn or<T>(&mut self, term: &mut impl FnMut(&mut Self) -> Result<T, String>) -> Result<Expr<T>, String> {
        let mut terms = vec![self.and(term)?];
        while self.eat("||") {
            terms.push(self.and(term)?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn and<T>(&mut self, term: &mut impl FnMut(&mut Self) -> Result<T, String>) -> Result<Expr<T>, String> {
        let mut terms = vec![self.unary(term)?];
        while self.eat("&&") {
            terms.push(self.unary(term)?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    fn unary<T>(&mut self, term: &mut impl FnMut(&mut Self) -> Result<T, String>) -> Result<Expr<T>, String> {
        if self.eat("(") {
            if self.depth >= MAX_DEPTH {
                return self.err(&format!("more than {MAX_DEPTH} levels of parentheses"));
            }
            self.depth += 1;
            let e = self.or(term)?;
            self.depth -= 1;
            if !self.eat(")") {
                return self.err("expected `)`");
            }
            return Ok(e);
        }
        Ok(Expr::Term(term(self)?))
    }

    /// A comparison operator, when one comes next.
    pub(crate) fn cmp(&mut self) -> Option<Cmp> {
        for (t, c) in [
            (">=", Cmp::Ge),
            ("<=", Cmp::Le),
            ("==", Cmp::Eq),
            ("!=", Cmp::Ne),
            (">", Cmp::Gt),
            ("<", Cmp::Lt),
        ] {
            if self.eat(t) {
                return Some(c);
            }
        }
        None
    }

    /// A comparison operator, which must come next.
    pub(crate) fn expect_cmp(&mut self) -> Result<Cmp, String> {
        match self.cmp() {
            Some(c) => Ok(c),
            None => self.err("expected a comparison (>, >=, <, <=, ==, !=)"),
        }
    }

    pub(crate) fn number(&mut self) -> Result<f64, String> {
        self.ws();
        let start = self.pos;
        while self.s[self.pos..].starts_with(|c: char| c.is_ascii_digit() || c == '.' || c == '-') {
            self.pos += 1;
        }
        match self.s[start..self.pos].parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(n),
            _ => self.err("expected a number"),
        }
    }

    /// A double-quoted string without escapes (`"GET"`).
    pub(crate) fn string(&mut self) -> Result<String, String> {
        self.ws();
        let rest = &self.s[self.pos..];
        let Some(body) = rest.strip_prefix('"') else {
            return self.err("expected a double-quoted string");
        };
        match body.find(['"', '\\']) {
            Some(end) if body[end..].starts_with('"') => {
                self.pos += end + 2;
                Ok(body[..end].to_string())
            }
            _ => self.err("expected a closing `\"` (escapes are not supported)"),
        }
    }

    /// `(a, b, ...)`: exactly `n` numbers.
    pub(crate) fn args(&mut self, n: usize) -> Result<Vec<f64>, String> {
        if !self.eat("(") {
            return self.err("expected `(`");
        }
        let mut out = Vec::new();
        if n > 0 {
            out.push(self.number()?);
            while out.len() < n {
                if !self.eat(",") {
                    return self.err("expected `,`");
                }
                out.push(self.number()?);
            }
        }
        if !self.eat(")") {
            return self.err("expected `)`");
        }
        Ok(out)
    }
}

/// Parse `s` whole, each term with `term`; `what` names the option in errors.
pub(crate) fn parse<T>(
    what: &'static str,
    s: &str,
    mut term: impl FnMut(&mut Parser<'_>) -> Result<T, String>,
) -> Result<Expr<T>, String> {
    if s.len() > MAX_EXPRESSION_BYTES {
        return Err(format!("{what}: longer than {MAX_EXPRESSION_BYTES} bytes"));
    }
    let mut p = Parser {
        what,
        s,
        pos: 0,
        depth: 0,
    };
    let e = p.or(&mut term)?;
    p.ws();
    if p.pos != s.len() {
        return p.err("unexpected text");
    }
    Ok(e)
}
