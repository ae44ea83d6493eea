//! Traefik's provider constraints (`providers.ecs.constraints`): an expression over a
//! container's labels that decides whether the provider looks at it at all, with
//! `Label(key, value)`, `LabelRegex(key, regexp)`, `&&`, `||`, `!` and parentheses.
//! Strings are in backticks or double quotes, as in rules. `LabelRegex` matches as Go's
//! `regexp.MatchString` does (anywhere in the value unless anchored).
//!
//! Bounded: at most [`MAX_BYTES`] of text and [`MAX_DEPTH`] levels of nesting; a bad
//! expression is an error at startup, never a crash.

use std::collections::BTreeMap;

use crate::rules::parse::{Tok, lex};

const MAX_BYTES: usize = 16 * 1024;
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone)]
pub enum Constraint {
    Label(String, String),
    LabelRegex(String, regex::Regex),
    Not(Box<Constraint>),
    And(Box<Constraint>, Box<Constraint>),
    Or(Box<Constraint>, Box<Constraint>),
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos.min(self.toks.len() - 1)].0
    }

    fn bump(&mut self) -> (Tok, usize) {
        let t = self.toks[self.pos.min(self.toks.len() - 1)].clone();
        self.pos += 1;
        t
    }

    fn descend(&mut self, col: usize) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("column {col}: nested deeper than {MAX_DEPTH}"));
        }
        Ok(())
    }

    fn or(&mut self) -> Result<Constraint, String> {
        let mut left = self.and()?;
        while *self.peek() == Tok::Or {
            self.bump();
            left = Constraint::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Constraint, String> {
        let mut left = self.unary()?;
        while *self.peek() == Tok::And {
            self.bump();
            left = Constraint::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Constraint, String> {
        let (tok, col) = self.bump();
        match tok {
            Tok::Not => {
                self.descend(col)?;
                let inner = self.unary()?;
                self.depth -= 1;
                Ok(Constraint::Not(Box::new(inner)))
            }
            Tok::LParen => {
                self.descend(col)?;
                let inner = self.or()?;
                self.depth -= 1;
                match self.bump() {
                    (Tok::RParen, _) => Ok(inner),
                    (_, c) => Err(format!("column {c}: expected `)`")),
                }
            }
            Tok::Ident(name) => {
                if self.bump().0 != Tok::LParen {
                    return Err(format!("column {col}: expected `(` after {name}"));
                }
                let mut args = Vec::new();
                loop {
                    match self.bump() {
                        (Tok::Str(s), _) => args.push(s),
                        (_, c) => return Err(format!("column {c}: expected a quoted or backtick string")),
                    }
                    match self.bump() {
                        (Tok::Comma, _) => continue,
                        (Tok::RParen, _) => break,
                        (_, c) => return Err(format!("column {c}: expected `,` or `)`")),
                    }
                }
                let [key, value] = <[String; 2]>::try_from(args)
                    .map_err(|a| format!("column {col}: {name} takes 2 arguments, not {}", a.len()))?;
                match name.as_str() {
                    "Label" => Ok(Constraint::Label(key, value)),
                    "LabelRegex" => {
                        let re = regex::RegexBuilder::new(&value)
                            .size_limit(1 << 20)
                            .build()
                            .map_err(|e| format!("column {col}: LabelRegex `{value}`: {e}"))?;
                        Ok(Constraint::LabelRegex(key, re))
                    }
                    other => Err(format!(
                        "column {col}: unknown function `{other}` (Label or LabelRegex)"
                    )),
                }
            }
            _ => Err(format!("column {col}: expected Label, LabelRegex, `!` or `(`")),
        }
    }
}

impl Constraint {
    pub fn parse(text: &str) -> Result<Constraint, String> {
        if text.len() > MAX_BYTES {
            return Err(format!("longer than {MAX_BYTES} bytes"));
        }
        let mut p = Parser {
            toks: lex(text).map_err(|e| e.to_string())?,
            pos: 0,
            depth: 0,
        };
        let c = p.or()?;
        match p.bump() {
            (Tok::End, _) => Ok(c),
            (_, col) => Err(format!("column {col}: expected `&&`, `||` or the end")),
        }
    }

    /// Whether a container with these labels is looked at.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Constraint::Label(k, v) => labels.get(k) == Some(v),
            Constraint::LabelRegex(k, re) => labels.get(k).is_some_and(|v| re.is_match(v)),
            Constraint::Not(c) => !c.matches(labels),
            Constraint::And(a, b) => a.matches(labels) && b.matches(labels),
            Constraint::Or(a, b) => a.matches(labels) || b.matches(labels),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn traefiks_documented_examples_evaluate() {
        let l = labels(&[("a.label.name", "foo"), ("team", "payments-eu")]);
        let c = |s: &str| Constraint::parse(s).unwrap().matches(&l);
        assert!(c("Label(`a.label.name`, `foo`)"));
        assert!(!c("Label(`a.label.name`, `bar`)"));
        assert!(c("!Label(`a.label.name`, `bar`)"));
        assert!(c("LabelRegex(`team`, `payments`)"), "unanchored, as Go's MatchString");
        assert!(!c("LabelRegex(`team`, `^eu`)"));
        assert!(c("Label(`a.label.name`, `bar`) || LabelRegex(\"team\", \"eu$\")"));
        assert!(!c("Label(`a.label.name`, `foo`) && !(LabelRegex(`team`, `eu`))"));
        assert!(!c("Label(`missing`, ``)"), "an absent label equals nothing");
        // && binds tighter than ||.
        assert!(c("Label(`x`, `y`) && Label(`x`, `y`) || Label(`team`, `payments-eu`)"));
    }

    #[test]
    fn bad_expressions_are_errors_not_crashes() {
        for bad in [
            "",
            "Label(`a`)",
            "Label(`a`, `b`, `c`)",
            "Tag(`a`)",
            "Label(`a`, `b`) &",
            "Label(`a`, `b`",
            "LabelRegex(`a`, `(`)",
            "Label(`a`, `b`) Label(`c`, `d`)",
            "`unterminated",
            "Label(a, b)",
            "é",
        ] {
            assert!(Constraint::parse(bad).is_err(), "{bad}");
        }
        let deep = format!("{}Label(`a`, `b`){}", "(".repeat(10_000), ")".repeat(10_000));
        assert!(Constraint::parse(&deep).is_err());
        let nots = format!("{}Label(`a`, `b`)", "!".repeat(10_000));
        assert!(Constraint::parse(&nots).unwrap_err().contains("nested deeper"));
    }
}
