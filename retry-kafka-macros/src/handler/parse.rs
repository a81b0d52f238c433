//! Reading `#[retry_handler(...)]`'s options into [`HandlerArgs`]. A value is checked here when
//! it can be on its own (a topic name, a duration, a range); what needs the whole attribute or
//! the function is left to `check`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Expr, Lit, LitInt, LitStr, Path};

use super::retries::{parse_retries, RETRIES_FORMS};
use crate::attr::{self, Choice};
use crate::breaker_rules::{self as rules, OutOfRange};
use crate::duration::{parse_millis, parse_rate};
use crate::errors::Errors;
use crate::names;

/// What `batch(...)` accepts, said when it gets something else.
const BATCH_FORM: &str = "expected `batch(max = 500, linger = \"50ms\")`";

/// The most records one batch may hold.
const MAX_BATCH: u32 = 100_000;

/// Every option `parse_args` accepts, as the "unknown option" message lists them.
const OPTIONS: [&str; 13] = [
    "topic",
    "group",
    "retries",
    "dlq",
    "on_exhausted",
    "timeout",
    "concurrency",
    "batch",
    "rate",
    "breaker",
    "ordering",
    "on_dead_letter",
    "crate",
];

/// What `breaker(...)` accepts, said when it gets something else.
const BREAKER_FORM: &str = "expected `breaker` alone or with options: `breaker(failure_rate = 50, window = 100, min_attempts = 20, cool_down = \"30s\", max_cool_down = \"5m\", probes = 1)` (`window` a number of attempts or a duration, `\"10s\"`)";

/// A circuit breaker's settings as declared, every option filled in (defaults where absent).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct BreakerArgs {
    pub(super) failure_rate: u8,
    /// The last so many attempts; 0 for a time window.
    pub(super) window_attempts: u32,
    pub(super) window_ms: u64,
    pub(super) min_attempts: u32,
    pub(super) cool_down_ms: u64,
    pub(super) max_cool_down_ms: u64,
    pub(super) probes: u32,
}

impl Default for BreakerArgs {
    /// The runtime's `Breaker::default()`, which `breaker` alone declares.
    fn default() -> Self {
        BreakerArgs {
            failure_rate: 50,
            window_attempts: 100,
            window_ms: 30_000,
            min_attempts: 20,
            cool_down_ms: 30_000,
            max_cool_down_ms: 300_000,
            probes: 1,
        }
    }
}

/// The options as read: each `None` when absent or already reported.
#[derive(Default)]
pub(super) struct HandlerArgs {
    pub(super) topic: Option<LitStr>,
    pub(super) group: Option<LitStr>,
    /// Delays in milliseconds, one per retry level.
    pub(super) retries: Option<Vec<u64>>,
    /// Where `dlq` was written.
    pub(super) dlq: Option<Span>,
    pub(super) on_exhausted: Option<(Exhausted, Span)>,
    pub(super) timeout_ms: Option<u64>,
    pub(super) concurrency: Option<u32>,
    /// `rate = "200/s"`: attempts and period in ms.
    pub(super) rate: Option<(u32, u64)>,
    /// `breaker` or `breaker(...)`: its settings, when every option given was readable.
    pub(super) breaker: Option<BreakerArgs>,
    /// `batch(max = .., linger = ..)`: where it was written, and max and linger when both read.
    pub(super) batch: Option<(Span, Option<(u32, u64)>)>,
    /// `on_exhausted` was given but unreadable; reported already, so not "missing" too.
    pub(super) exhaustion_misspelled: bool,
    /// `crate = "..."`: the path to the runtime, when the user renamed it.
    pub(super) krate: Option<Path>,
    /// `ordering = "key"`: where it was written, so a batch handler's is reported there.
    pub(super) key_ordered: Option<Span>,
    /// `on_dead_letter = "hold_key"`: where it was written, so it is reported there when the
    /// handler keeps no key order or no dead letters. (`"release_key"`, the default, is `None`.)
    pub(super) dead_letter_holds_key: Option<Span>,
}

/// What happens to a message after its last retry (`on_exhausted = "..."`).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Exhausted {
    DeadLetter,
    Drop,
}

/// Reads every option, reporting each mistake at its token and going on to the next.
pub(super) fn parse_args(args: TokenStream, errors: &Errors) -> HandlerArgs {
    let mut parsed = HandlerArgs::default();
    // The options read so far, to report one given twice.
    let mut seen: Vec<String> = Vec::new();
    let parser = syn::meta::parser(|meta| {
        let Some(name) = meta.path.get_ident().map(ToString::to_string) else {
            errors.spanned(&meta.path, unknown_option_message(&meta));
            return attr::skip(&meta);
        };
        if seen.contains(&name) {
            errors.spanned(&meta.path, format!("duplicate option `{name}`"));
            return attr::skip(&meta);
        }
        seen.push(name.clone());
        match name.as_str() {
            "topic" | "group" => {
                let expected = format!("expected a string literal: `{name} = \"...\"`");
                let Some(value) = attr::value::<LitStr>(&meta, errors, &expected)? else {
                    return Ok(());
                };
                let (kind, slot) = if name == "topic" {
                    ("topic", &mut parsed.topic)
                } else {
                    ("group", &mut parsed.group)
                };
                if let Err(error) = names::check(kind, &value.value()) {
                    errors.spanned(&value, error);
                }
                *slot = Some(value);
            }
            "retries" => {
                if let Some(value) = attr::value::<Expr>(&meta, errors, RETRIES_FORMS)? {
                    parsed.retries = parse_retries(&value, errors);
                }
            }
            "dlq" => {
                parsed.dlq = Some(meta.path.span());
                if meta.input.peek(syn::Token![=]) {
                    errors.spanned(&meta.path, "`dlq` is a flag: write `dlq`, without a value");
                    return attr::skip(&meta);
                }
            }
            "on_exhausted" => {
                let choices = [
                    Choice {
                        written: "dlq",
                        value: Exhausted::DeadLetter,
                        meaning: "",
                    },
                    Choice {
                        written: "drop",
                        value: Exhausted::Drop,
                        meaning: "",
                    },
                ];
                match attr::choice(&meta, errors, &choices)? {
                    Ok(chosen) => parsed.on_exhausted = Some(chosen),
                    Err(()) => parsed.exhaustion_misspelled = true,
                }
            }
            "timeout" => {
                let expected = "expected a duration as a string literal: `timeout = \"30s\"`";
                if let Some(value) = attr::value::<LitStr>(&meta, errors, expected)? {
                    match parse_millis(&value.value()) {
                        Ok(0) => errors.spanned(&value, "timeout must be longer than zero"),
                        Ok(ms) => parsed.timeout_ms = Some(ms),
                        Err(message) => errors.spanned(&value, message),
                    }
                }
            }
            "concurrency" => {
                let expected = "expected an integer: `concurrency = 4`";
                if let Some(value) = attr::value::<LitInt>(&meta, errors, expected)? {
                    match value.base10_parse::<u32>() {
                        Ok(0) => errors.spanned(&value, "concurrency must be at least 1"),
                        Ok(n) if n > 10_000 => errors.spanned(&value, "concurrency must be at most 10000"),
                        Ok(n) => parsed.concurrency = Some(n),
                        Err(error) => errors.push(error),
                    }
                }
            }
            "rate" => {
                let expected = "expected a rate as a string literal: `rate = \"200/s\"`";
                if let Some(value) = attr::value::<LitStr>(&meta, errors, expected)? {
                    match parse_rate(&value.value()) {
                        Ok(rate) => parsed.rate = Some(rate),
                        Err(message) => errors.spanned(&value, message),
                    }
                }
            }
            "batch" => parsed.batch = Some((meta.path.span(), parse_batch(&meta, errors)?)),
            "breaker" => parsed.breaker = parse_breaker(&meta, errors)?,
            "ordering" => {
                let choices = [
                    Choice {
                        written: "key",
                        value: true,
                        meaning: "a failing record holds back later records of its key",
                    },
                    Choice {
                        written: "none",
                        value: false,
                        meaning: "",
                    },
                ];
                if let Ok((true, span)) = attr::choice(&meta, errors, &choices)? {
                    parsed.key_ordered = Some(span);
                }
            }
            "on_dead_letter" => {
                let choices = [
                    Choice {
                        written: "hold_key",
                        value: true,
                        meaning: "a record that fails for the last time holds its key's later records until it is replayed or discarded with the tool",
                    },
                    Choice { written: "release_key", value: false, meaning: "" },
                ];
                if let Ok((true, span)) = attr::choice(&meta, errors, &choices)? {
                    parsed.dead_letter_holds_key = Some(span);
                }
            }
            "crate" => parsed.krate = attr::crate_path(&meta, errors)?,
            _ => {
                errors.spanned(&meta.path, unknown_option_message(&meta));
                return attr::skip(&meta);
            }
        }
        Ok(())
    });
    if let Err(error) = syn::parse::Parser::parse2(parser, args) {
        errors.push(error);
    }
    parsed
}

fn unknown_option_message(meta: &ParseNestedMeta) -> String {
    let path = &meta.path;
    attr::unknown_option(&quote!(#path).to_string().replace(' ', ""), &OPTIONS)
}

/// `batch(max = 500, linger = "50ms")`: both required. `None` when either is missing or wrong
/// (reported already).
fn parse_batch(meta: &ParseNestedMeta, errors: &Errors) -> syn::Result<Option<(u32, u64)>> {
    if !meta.input.peek(syn::token::Paren) {
        errors.spanned(&meta.path, BATCH_FORM);
        attr::skip(meta)?;
        return Ok(None);
    }
    let (mut max, mut linger, mut ok) = (None, None, true);
    meta.parse_nested_meta(|inner| {
        let name = inner.path.get_ident().map(ToString::to_string).unwrap_or_default();
        match name.as_str() {
            "max" => {
                let expected = "expected an integer: `max = 500`";
                match attr::value::<LitInt>(&inner, errors, expected)? {
                    Some(value) => match value.base10_parse::<u32>() {
                        Ok(n) if (1..=MAX_BATCH).contains(&n) => max = Some(n),
                        Ok(_) => {
                            let message = format!("`max` is the most records per call: from 1 to {MAX_BATCH}");
                            errors.spanned(&value, message);
                            ok = false;
                        }
                        Err(error) => {
                            errors.push(error);
                            ok = false;
                        }
                    },
                    None => ok = false,
                }
            }
            "linger" => {
                let expected = "expected a duration as a string literal: `linger = \"50ms\"`";
                match attr::value::<LitStr>(&inner, errors, expected)? {
                    Some(value) => match parse_millis(&value.value()) {
                        Ok(ms) if ms <= 600_000 => linger = Some(ms),
                        Ok(_) => {
                            let message = "`linger` must be at most \"10m\": records wait that long before their batch starts";
                            errors.spanned(&value, message);
                            ok = false;
                        }
                        Err(message) => {
                            errors.spanned(&value, message);
                            ok = false;
                        }
                    },
                    None => ok = false,
                }
            }
            _ => {
                errors.spanned(&inner.path, "unknown batch option; expected `max` and `linger`");
                ok = false;
                attr::skip(&inner)?;
            }
        }
        Ok(())
    })?;
    match (max, linger) {
        (Some(max), Some(linger)) => Ok(Some((max, linger))),
        _ if !ok => Ok(None),
        (None, _) => {
            errors.spanned(
                &meta.path,
                "`batch` needs `max`, the most records per call: `batch(max = 500, linger = \"50ms\")`",
            );
            Ok(None)
        }
        (_, None) => {
            errors.spanned(&meta.path, "`batch` needs `linger`, how long the first record waits for more: `batch(max = 500, linger = \"50ms\")`");
            Ok(None)
        }
    }
}

/// `breaker` alone (the defaults) or `breaker(failure_rate = 50, window = "30s", ...)`, any
/// option left out at its default. `None` when an option is wrong (reported already).
fn parse_breaker(meta: &ParseNestedMeta, errors: &Errors) -> syn::Result<Option<BreakerArgs>> {
    let mut args = BreakerArgs::default();
    if meta.input.peek(syn::Token![=]) {
        errors.spanned(&meta.path, BREAKER_FORM);
        attr::skip(meta)?;
        return Ok(None);
    }
    if !meta.input.peek(syn::token::Paren) {
        return Ok(Some(args));
    }
    let mut ok = true;
    let mut cool_down_span = None;
    meta.parse_nested_meta(|inner| {
        let name = inner
            .path
            .get_ident()
            .map(ToString::to_string)
            .unwrap_or_default();
        // A value read, held to its range (`breaker_rules`, shared with the runtime).
        let mut checked =
            |span: &dyn quote::ToTokens, value: u64, rule: fn(u64) -> Result<(), OutOfRange>| {
                let held =
                    rule(value).map_err(|(setting, why)| errors.spanned(span, format!("`{setting}` {why}")));
                ok &= held.is_ok();
                held.is_ok()
            };
        match name.as_str() {
            "failure_rate" | "min_attempts" | "probes" => {
                let expected = format!(
                    "expected an integer: `{name} = {}`",
                    match name.as_str() {
                        "failure_rate" => 50,
                        "min_attempts" => 20,
                        _ => 1,
                    }
                );
                let Some(value) = attr::value::<LitInt>(&inner, errors, &expected)? else {
                    ok = false;
                    return Ok(());
                };
                let Ok(n) = value.base10_parse::<u64>() else {
                    errors.spanned(&value, expected);
                    ok = false;
                    return Ok(());
                };
                match name.as_str() {
                    "failure_rate" if checked(&value, n, rules::failure_rate) => args.failure_rate = n as u8,
                    "min_attempts" if checked(&value, n, rules::min_attempts) => args.min_attempts = n as u32,
                    "probes" if checked(&value, n, rules::probes) => args.probes = n as u32,
                    _ => {}
                }
            }
            "window" => {
                let expected =
                    "expected a duration or a number of attempts: `window = \"30s\"` or `window = 100`";
                match attr::value::<Lit>(&inner, errors, expected)? {
                    Some(Lit::Str(value)) => match parse_millis(&value.value()) {
                        Ok(ms) if checked(&value, ms, rules::window_ms) => {
                            (args.window_attempts, args.window_ms) = (0, ms)
                        }
                        Ok(_) => {}
                        Err(message) => {
                            errors.spanned(&value, message);
                            ok = false;
                        }
                    },
                    Some(Lit::Int(value)) => match value.base10_parse::<u64>() {
                        Ok(n) if checked(&value, n, rules::window_attempts) => {
                            args.window_attempts = n as u32
                        }
                        Ok(_) => {}
                        Err(_) => {
                            errors.spanned(&value, expected);
                            ok = false;
                        }
                    },
                    Some(other) => {
                        errors.spanned(&other, expected);
                        ok = false;
                    }
                    None => ok = false,
                }
            }
            "cool_down" | "max_cool_down" => {
                let expected = format!("expected a duration as a string literal: `{name} = \"30s\"`");
                match attr::value::<LitStr>(&inner, errors, &expected)? {
                    Some(value) => match parse_millis(&value.value()) {
                        Ok(ms) if name == "cool_down" && checked(&value, ms, rules::cool_down_ms) => {
                            args.cool_down_ms = ms;
                            cool_down_span = Some(value.span());
                        }
                        Ok(ms) if name == "max_cool_down" && checked(&value, ms, rules::cool_down_ms) => {
                            args.max_cool_down_ms = ms
                        }
                        Ok(_) => {}
                        Err(message) => {
                            errors.spanned(&value, message);
                            ok = false;
                        }
                    },
                    None => ok = false,
                }
            }
            _ => {
                errors.spanned(&inner.path, format!("unknown breaker option; {BREAKER_FORM}"));
                ok = false;
                attr::skip(&inner)?;
            }
        }
        Ok(())
    })?;
    if ok {
        if let Err((setting, why)) = rules::max_cool_down_ms(args.max_cool_down_ms, args.cool_down_ms) {
            // Reported at `cool_down` when it was written (the default cap is "5m").
            let span = cool_down_span.unwrap_or_else(|| meta.path.span());
            let message = format!("`{setting}` {why}; it defaults to \"5m\"");
            errors.push(syn::Error::new(span, message));
            ok = false;
        }
    }
    Ok(ok.then_some(args))
}

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;

    use crate::errors::Errors;

    /// The "unknown option" message lists every option: none it lists is unknown.
    #[test]
    fn every_listed_option_is_accepted() {
        for option in super::OPTIONS {
            let errors = Errors::default();
            super::parse_args(option.parse::<TokenStream>().unwrap(), &errors);
            for error in errors.finish().err().into_iter().flatten() {
                assert!(
                    !error.to_string().starts_with("unknown option"),
                    "{option}: {error}"
                );
            }
        }
    }
}
