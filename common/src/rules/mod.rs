//! The Traefik v3 rule language: `Host(`a`) && (PathPrefix(`/api`) || !Method(`GET`))`,
//! and Traefik's v2 syntax for the routers that ask for it ([`Syntax`]).
//!
//! One module owns rules for the whole project: [`parse`] turns text into an AST with
//! column-precise errors, [`matcher`] compiles the AST into something cheap to evaluate
//! per request and tells the router index which hosts a rule requires.

pub mod matcher;
pub mod parse;
pub mod regex;
pub mod tcp;
mod v2;

pub use matcher::{CompileError, RequestView, Rule};
pub use parse::{Expr, MatcherCall, MatcherKind, ParseError};
pub use v2::{NAMES as V2_MATCHERS, Syntax};

/// Parse and compile a rule (Traefik v3 syntax) in one step; the error names the column
/// and the reason.
pub fn compile(rule: &str) -> Result<Rule, RuleError> {
    compile_with(rule, Syntax::V3)
}

/// Parse and compile a rule written in `syntax` ([`Syntax::V2`]: Traefik v2's matchers,
/// translated to the same compiled rule).
pub fn compile_with(rule: &str, syntax: Syntax) -> Result<Rule, RuleError> {
    let expr = parse::parse_with(rule, syntax)?;
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
