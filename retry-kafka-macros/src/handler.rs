//! `#[retry_handler(...)]`: parse the options, check the function, register a `HandlerSpec`.
//!
//! The function is re-emitted exactly as written, even when the options are wrong, so the rest
//! of the user's crate (and rust-analyzer) keeps working while the errors are shown.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Expr, ExprArray, ExprCall, ExprLit, FnArg, ItemFn, Lit, LitInt, LitStr, Path, ReturnType, Type};

use crate::attr;
use crate::duration::{parse_millis, parse_rate};
use crate::errors::Errors;
use crate::names;

/// At most this many retry levels: each is a topic (or stream) of its own.
const MAX_LEVELS: usize = 32;

/// What `retries = ...` accepts, said when it gets something else.
const RETRIES_FORMS: &str = "expected a list of delays such as `[\"10s\", \"1m\", \"5m\"]`, `[\"30s\"; 3]` or `exponential(first = \"1s\", factor = 2, levels = 5)`";

/// What `batch(...)` accepts, said when it gets something else.
const BATCH_FORM: &str = "expected `batch(max = 500, linger = \"50ms\")`";

/// The most records one batch may hold.
const MAX_BATCH: u32 = 100_000;

#[derive(Default)]
struct HandlerArgs {
    topic: Option<LitStr>,
    group: Option<LitStr>,
    /// Delays in milliseconds, one per retry level.
    retries: Option<Vec<u64>>,
    retries_span: Option<Span>,
    dlq: Option<Span>,
    on_exhausted: Option<(Exhausted, Span)>,
    timeout_ms: Option<u64>,
    concurrency: Option<u32>,
    /// `rate = "200/s"`: attempts and period in ms.
    rate: Option<(u32, u64)>,
    /// `batch(max = .., linger = ..)`: where it was written, and max and linger when both read.
    batch: Option<(Span, Option<(u32, u64)>)>,
    /// `on_exhausted` was given but unreadable; reported already, so not "missing" too.
    exhaustion_misspelled: bool,
    krate: Option<Path>,
    seen: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Exhausted {
    DeadLetter,
    Drop,
}

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            let error = syn::Error::new(
                Span::call_site(),
                "#[retry_handler] goes on an `async fn` that takes an event (and optionally a `Context`)",
            )
            .into_compile_error();
            return quote!(#error #item);
        }
    };
    let errors = Errors::default();
    let parsed = parse_args(args, &errors);
    let signature = check_signature(&function, parsed.batch.map(|(span, _)| span), &errors);
    check_policy(&parsed, &errors);
    if let Some(error) = errors.into_compile_error() {
        return quote!(#function #error);
    }
    let signature = signature.expect("no errors, so the signature was read");
    let registration = registration(&function, &parsed, &signature);
    quote!(#function #registration)
}

fn parse_args(args: TokenStream, errors: &Errors) -> HandlerArgs {
    let mut parsed = HandlerArgs::default();
    let parser = syn::meta::parser(|meta| {
        let Some(name) = meta.path.get_ident().map(ToString::to_string) else {
            errors.spanned(&meta.path, unknown_option_message(&meta));
            return attr::skip(&meta);
        };
        if parsed.seen.contains(&name) {
            errors.spanned(&meta.path, format!("duplicate option `{name}`"));
            return attr::skip(&meta);
        }
        parsed.seen.push(name.clone());
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
                    parsed.retries_span = Some(value.span());
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
                let expected =
                    "expected a string literal: `on_exhausted = \"dlq\"` or `on_exhausted = \"drop\"`";
                let Some(value) = attr::value::<LitStr>(&meta, errors, expected)? else {
                    parsed.exhaustion_misspelled = true;
                    return Ok(());
                };
                match value.value().as_str() {
                    "dlq" => parsed.on_exhausted = Some((Exhausted::DeadLetter, value.span())),
                    "drop" => parsed.on_exhausted = Some((Exhausted::Drop, value.span())),
                    other => {
                        errors.spanned(
                            &value,
                            format!("unknown on_exhausted value {other:?}; expected \"dlq\" or \"drop\""),
                        );
                        parsed.exhaustion_misspelled = true;
                    }
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
    format!(
        "unknown option `{}`; expected one of `topic`, `group`, `retries`, `dlq`, `on_exhausted`, `timeout`, `concurrency`, `batch`, `rate`",
        quote!(#path).to_string().replace(' ', "")
    )
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

/// `["10s", "1m"]`, `["30s"; 3]` or `exponential(first = "1s", factor = 2, levels = 5, max = "1m")`.
fn parse_retries(value: &Expr, errors: &Errors) -> Option<Vec<u64>> {
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

fn check_policy(args: &HandlerArgs, errors: &Errors) {
    match (args.dlq, args.on_exhausted) {
        (Some(_), Some((_, span))) => errors.push(syn::Error::new(
            span,
            "`dlq` and `on_exhausted` both say what happens after the last retry; keep one",
        )),
        (None, None) if !args.exhaustion_misspelled => errors.push(syn::Error::new(
            Span::call_site(),
            "this handler's failures would vanish: add `dlq` to keep messages that exhaust their retries in a dead-letter queue, or `on_exhausted = \"drop\"` to drop them on purpose",
        )),
        _ => {}
    }
}

struct Signature {
    /// The event type: the argument's, or `E` of a batch handler's `Vec<E>`.
    event_ty: Type,
    has_context: bool,
    output_span: Span,
}

/// Checks the function against its options; `batch` is where `batch(...)` was written, if it
/// was: then the handler takes `Vec<E>` and optionally a `BatchContext`.
fn check_signature(function: &ItemFn, batch: Option<Span>, errors: &Errors) -> Option<Signature> {
    let sig = &function.sig;
    let mut ok = true;
    if sig.asyncness.is_none() {
        errors.spanned(sig.fn_token, "a retry handler must be an `async fn`");
        ok = false;
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(
            &sig.generics,
            "a retry handler cannot be generic: the event type must be known to register it",
        );
        ok = false;
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(variadic, "a retry handler cannot be variadic");
        ok = false;
    }
    let mut inputs = sig.inputs.iter();
    let event_ty = match inputs.next() {
        Some(FnArg::Typed(arg)) => Some((*arg.ty).clone()),
        Some(FnArg::Receiver(receiver)) => {
            errors.spanned(
                receiver,
                "a retry handler is a free function; it cannot take `self`",
            );
            return None;
        }
        None => {
            errors.push(syn::Error::new(
                sig.paren_token.span.join(),
                "a retry handler takes the event as its first argument, e.g. `async fn charge(order: OrderPlaced)`",
            ));
            None
        }
    };
    if let Some(Type::Reference(reference)) = &event_ty {
        errors.spanned(
            reference,
            "take the event by value: the handler owns the decoded event",
        );
        ok = false;
    }
    let event_ty = match (event_ty, batch) {
        (Some(ty), Some(batch)) => match vec_element(&ty) {
            Some(element) => Some(element.clone()),
            None => {
                errors.spanned(
                    &ty,
                    "a batch handler takes its events as a `Vec`: `async fn store(events: Vec<Event>)`",
                );
                errors.push(syn::Error::new(batch, "this makes it a batch handler"));
                None
            }
        },
        (Some(ty), None) => {
            if vec_element(&ty).is_some() {
                errors.spanned(
                    &ty,
                    "a handler that takes a `Vec` of events is a batch handler: add `batch(max = 500, linger = \"50ms\")` to the attribute",
                );
                ok = false;
            }
            Some(ty)
        }
        (None, _) => None,
    };
    let (context, other) = match batch {
        Some(_) => ("BatchContext", "Context"),
        None => ("Context", "BatchContext"),
    };
    let has_context = match inputs.next() {
        None => false,
        Some(FnArg::Typed(arg)) => {
            if is_named(&arg.ty, other) {
                let message = match batch {
                    Some(_) => "a batch handler gets a `BatchContext`, one `Context` per event: take `ctx: BatchContext`",
                    None => "a `BatchContext` is for batch handlers: take `ctx: Context`, or add `batch(max = 500, linger = \"50ms\")` and take `Vec<Event>`",
                };
                errors.spanned(&arg.ty, message);
                ok = false;
            } else if !is_named(&arg.ty, context) {
                errors.spanned(
                    &arg.ty,
                    format!("the second argument of a retry handler must be `{context}`"),
                );
                ok = false;
            }
            true
        }
        Some(FnArg::Receiver(receiver)) => {
            errors.spanned(
                receiver,
                "a retry handler is a free function; it cannot take `self`",
            );
            false
        }
    };
    for extra in inputs {
        let message = match batch {
            Some(_) => "a batch handler takes at most two arguments: the events and a `BatchContext`",
            None => "a retry handler takes at most two arguments: the event and a `Context`",
        };
        errors.spanned(extra, message);
        ok = false;
    }
    let output_span = match &sig.output {
        ReturnType::Default => {
            let message = match batch {
                Some(_) => "a batch handler returns `Result<(), E>` so failures can be retried; add `-> Result<(), BatchError>`",
                None => "a retry handler returns `Result<(), E>` so failures can be retried; add `-> Result<(), HandlerError>`",
            };
            errors.spanned(&sig.ident, message);
            ok = false;
            Span::call_site()
        }
        ReturnType::Type(_, ty) => error_type(ty).unwrap_or(ty).span(),
    };
    let event_ty = event_ty?;
    ok.then_some(Signature {
        event_ty,
        has_context,
        output_span,
    })
}

/// `E` in `Result<(), E>`, where a wrong error type is best reported.
fn error_type(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.iter().nth(1)? {
        syn::GenericArgument::Type(error) if last.ident == "Result" => Some(error),
        _ => None,
    }
}

/// Whether `ty` is a path ending in `name` with no generic arguments (`Context`,
/// `retry_kafka::BatchContext`).
fn is_named(ty: &Type, name: &str) -> bool {
    match ty {
        Type::Path(path) => {
            path.qself.is_none()
                && path
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == name && s.arguments.is_none())
        }
        _ => false,
    }
}

/// `E` of `Vec<E>` (or `std::vec::Vec<E>`).
fn vec_element(ty: &Type) -> Option<&Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        syn::GenericArgument::Type(element) if last.ident == "Vec" && args.args.len() == 1 => Some(element),
        _ => None,
    }
}

fn registration(function: &ItemFn, args: &HandlerArgs, signature: &Signature) -> TokenStream {
    let ident = &function.sig.ident;
    let function_name = ident.to_string().trim_start_matches("r#").to_owned();
    let event_ty = &signature.event_ty;
    let rk = attr::support(args.krate.as_ref());
    let topic = match &args.topic {
        Some(topic) => quote!(#topic),
        None => quote!(<#event_ty as #rk::Event>::TOPIC),
    };
    let group = match &args.group {
        Some(group) => quote!(#group),
        None => quote!(#function_name),
    };
    let retries = args.retries.clone().unwrap_or_default();
    let on_exhausted = match args.on_exhausted.map(|(e, _)| e) {
        Some(Exhausted::Drop) => quote!(#rk::OnExhausted::Drop),
        _ => quote!(#rk::OnExhausted::DeadLetter),
    };
    let timeout = match args.timeout_ms {
        Some(ms) => quote!(::core::option::Option::Some(#ms)),
        None => quote!(::core::option::Option::None),
    };
    let concurrency = args.concurrency.unwrap_or(1);
    let rate = match args.rate {
        Some((attempts, per_ms)) => {
            quote!(::core::option::Option::Some(#rk::Rate::declared(#attempts, #per_ms)))
        }
        None => quote!(::core::option::Option::None),
    };
    // Every name the expansion introduces starts with `__rk_`, so a handler or a type named
    // `payload`, `event` or `context` is never shadowed by one of them.
    let (entry, call) = match args.batch {
        Some((_, Some((max, linger_ms)))) => (
            entry(ident, &rk, signature, true),
            quote!(#rk::Call::Batch { max: #max, linger_ms: #linger_ms, call: __rk_call }),
        ),
        _ => (
            entry(ident, &rk, signature, false),
            quote!(#rk::Call::Single(__rk_call)),
        ),
    };
    quote! {
        #[doc(hidden)]
        const _: () = {
            #entry

            #rk::inventory::submit! {
                #rk::handler_spec(#rk::Declaration {
                    name: ::core::concat!(::core::module_path!(), "::", #function_name),
                    topic: #topic,
                    group: #group,
                    event_type: <#event_ty as #rk::Event>::TYPE_NAME,
                    retries_ms: &[#(#retries),*],
                    on_exhausted: #on_exhausted,
                    timeout_ms: #timeout,
                    concurrency: #concurrency,
                    rate: #rate,
                    call: #call,
                    file: ::core::file!(),
                    line: ::core::line!(),
                })
            }
        };
    }
}

/// `__rk_call`, the entry point the runtime calls. For a one-record handler it decodes the
/// payload and starts the function; for a batch handler it has the runtime decode each record
/// as the event and start the function on those that decoded.
fn entry(ident: &syn::Ident, rk: &TokenStream, signature: &Signature, batch: bool) -> TokenStream {
    let event_ty = &signature.event_ty;
    // Spanned at the user's tokens so a type that is not an `Event`, or a return type that is
    // not `Result<(), impl Into<HandlerError>>` (`BatchError`), is reported where it was written.
    let at_event = attr::respan(rk.clone(), event_ty.span());
    let at_output = attr::respan(rk.clone(), signature.output_span);
    let (argument, convert) = match batch {
        false => (quote!(__rk_event), quote!(#at_output::into_outcome)),
        true => (quote!(__rk_events), quote!(#at_output::into_batch_outcome)),
    };
    let context_arg = signature.has_context.then(|| quote!(, __rk_context));
    let unused_context = (!signature.has_context).then(|| quote!(let _ = __rk_context;));
    let outcome = quote_spanned! {signature.output_span=>
        #convert(#ident(#argument #context_arg).await)
    };
    if batch {
        let start = quote_spanned! {event_ty.span()=> #at_event::BatchInput::start::<#event_ty, _, _> };
        // A handler future that is not `Send` is reported at the function's name.
        let handler = quote_spanned! {ident.span()=>
            |__rk_events, __rk_context: #rk::BatchContext| {
                #unused_context
                async move { #outcome }
            }
        };
        return quote! {
            fn __rk_call(__rk_input: #rk::BatchInput) -> #rk::BatchStart {
                #start(__rk_input, #handler)
            }
        };
    }
    let decode = quote_spanned! {event_ty.span()=> <#event_ty as #at_event::Event>::decode(__rk_payload) };
    let boxed = quote_spanned! {ident.span()=>
        ::core::result::Result::Ok(::std::boxed::Box::pin(async move { #outcome }))
    };
    quote! {
        fn __rk_call(
            __rk_payload: &[u8],
            __rk_context: #rk::Context,
        ) -> ::core::result::Result<#rk::HandlerFuture, #rk::CodecError> {
            #unused_context
            let __rk_event = #decode?;
            #boxed
        }
    }
}

#[cfg(test)]
mod tests {
    use quote::quote;

    #[test]
    fn a_renamed_crate_is_the_only_path_to_the_runtime() {
        let expanded = super::expand(
            quote!(crate = "rk", dlq),
            quote!(
                async fn charge(order: Order, ctx: Context) -> Result<(), HandlerError> {
                    Ok(())
                }
            ),
        )
        .to_string();
        assert!(expanded.contains("rk :: __private :: v"), "{expanded}");
        assert!(!expanded.contains("retry_kafka"), "{expanded}");
    }

    #[test]
    fn by_default_the_runtime_is_reached_from_the_root() {
        let expanded = super::expand(
            quote!(dlq),
            quote!(
                async fn charge(order: Order) -> Result<(), HandlerError> {
                    Ok(())
                }
            ),
        )
        .to_string();
        let version = env!("CARGO_PKG_VERSION").replace('.', "_");
        assert!(
            expanded.contains(&format!(
                ":: retry_kafka :: __private :: v{version} :: handler_spec"
            )),
            "{expanded}"
        );
    }
}
