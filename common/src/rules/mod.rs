//! The Traefik v3 rule language: `Host(`a`) && (PathPrefix(`/api`) || !Method(`GET`))`.
//!
//! One module owns rules for the whole project: [`parse`] turns text into an AST with
//! column-precise errors, [`matcher`] compiles the AST into something cheap to evaluate
//! per request and tells the router index which hosts a rule requires.

pub mod matcher;
pub mod parse;
pub mod regex;
pub mod tcp;

pub use matcher::{CompileError, RequestView, Rule};
pub use parse::{Expr, MatcherCall, MatcherKind, ParseError};

/// Parse and compile a rule in one step; the error names the column and the reason.
pub fn compile(rule: &str) -> Result<Rule, RuleError> {
    let expr = parse::parse(rule)?;
    Ok(Rule::compile(rule, &expr)?)
}

/// Either half of [`compile`] failing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(transparent)]
    Compile(#[from] CompileError),
}

/// Traefik's default priority: the length of the rule text.
pub fn default_priority(rule: &str) -> i64 {
    i64::try_from(rule.len()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
