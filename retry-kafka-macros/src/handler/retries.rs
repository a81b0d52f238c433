//! `retries = ...` of `#[retry_handler(...)]`: a list of delays, a repeated one, or an
//! `exponential(...)` schedule, read into one delay per retry level, in milliseconds.

use syn::{Expr, ExprArray, ExprCall, ExprLit, Lit};

use crate::duration::parse_millis;
use crate::errors::Errors;

/// At most this many retry levels: each is a topic (or stream) of its own.
const MAX_LEVELS: usize = 32;

/// What `retries = ...` accepts, said when it gets something else.
pub(super) const RETRIES_FORMS: &str = "expected a list of delays such as `[\"10s\", \"1m\", \"5m\"]`, `[\"30s\"; 3]` or `exponential(first = \"1s\", factor = 2, levels = 5)`";

/// `["10s", "1m"]`, `["30s"; 3]` or `exponential(first = "1s", factor = 2, levels = 5, max = "1m")`.
pub(super) fn parse_retries(value: &Expr, errors: &Errors) -> Option<Vec<u64>> {
    let delays = match value {
        Expr::Array(ExprArray { elems, .. }) => {
            let mut delays = Vec::new();
            for elem in elems {
                delays.push(duration_lit(elem, errors)?);
            }
            delays
        }
        Expr::Repeat(repeat) => {
            let delay = duration_lit(&repeat.expr, errors)?;
            let count = match &*repeat.len {
                Expr::Lit(ExprLit { lit: Lit::Int(n), .. }) => match n.base10_parse::<usize>() {
                    Ok(n) => n,
                    Err(error) => {
                        errors.push(error);
                        return None;
                    }
                },
                other => {
                    errors.spanned(other, "expected the number of retry levels, e.g. `[\"30s\"; 3]`");
                    return None;
                }
            };
            vec![delay; count]
        }
        Expr::Call(call) => exponential(call, errors)?,
        other => {
            errors.spanned(other, RETRIES_FORMS);
            return None;
        }
    };
    if delays.len() > MAX_LEVELS {
        errors.spanned(
            value,
            format!("{} retry levels; at most {MAX_LEVELS} are allowed", delays.len()),
        );
        return None;
    }
    Some(delays)
}

fn duration_lit(expr: &Expr, errors: &Errors) -> Option<u64> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(text), ..
        }) => match parse_millis(&text.value()) {
            Ok(ms) => Some(ms),
            Err(message) => {
                errors.spanned(text, message);
                None
            }
        },
        other => {
            errors.spanned(
                other,
                "expected a delay as a string literal, such as \"10s\" or \"250ms\"",
            );
            None
        }
    }
}

fn exponential(call: &ExprCall, errors: &Errors) -> Option<Vec<u64>> {
    let is_exponential = matches!(&*call.func, Expr::Path(p) if p.path.is_ident("exponential"));
    if !is_exponential {
        errors.spanned(
            &call.func,
            "unknown retry schedule; expected `exponential(...)` or a list of delays",
        );
        return None;
    }
    let (mut first, mut factor, mut levels, mut max) = (None, None, None, None);
    for arg in &call.args {
        let Expr::Assign(assign) = arg else {
            errors.spanned(
                arg,
                "expected `name = value`; the options are `first`, `factor`, `levels`, `max`",
            );
            continue;
        };
        let name = match &*assign.left {
            Expr::Path(p) => p.path.get_ident().map(ToString::to_string).unwrap_or_default(),
            _ => String::new(),
        };
        match name.as_str() {
            "first" => first = duration_lit(&assign.right, errors),
            "max" => max = duration_lit(&assign.right, errors),
            "factor" => {
                let value = match &*assign.right {
                    Expr::Lit(ExprLit { lit: Lit::Int(n), .. }) => n.base10_parse::<f64>().ok(),
                    Expr::Lit(ExprLit {
                        lit: Lit::Float(n), ..
                    }) => n.base10_parse::<f64>().ok(),
                    _ => None,
                };
                match value {
                    Some(f) if f >= 1.0 => factor = Some(f),
                    Some(_) => errors.spanned(&assign.right, "exponential factor must be at least 1"),
                    None => errors.spanned(&assign.right, "expected a number such as `2` or `1.5`"),
                }
            }
            "levels" => match &*assign.right {
                Expr::Lit(ExprLit { lit: Lit::Int(n), .. }) => levels = n.base10_parse::<usize>().ok(),
                other => errors.spanned(other, "expected the number of retry levels, e.g. `5`"),
            },
            _ => errors.spanned(
                &assign.left,
                "unknown exponential option; expected `first`, `factor`, `levels` or `max`",
            ),
        }
    }
    let (Some(first), Some(levels)) = (first, levels) else {
        errors.spanned(call, "exponential(...) needs `first = \"...\"` and `levels = N`");
        return None;
    };
    let factor = factor.unwrap_or(2.0);
    let cap = max.unwrap_or(u64::MAX);
    let mut delays = Vec::with_capacity(levels.min(MAX_LEVELS + 1));
    let mut delay = first as f64;
    for _ in 0..levels.min(MAX_LEVELS + 1) {
        delays.push((delay.min(cap as f64)) as u64);
        delay *= factor;
    }
    Some(delays)
}
