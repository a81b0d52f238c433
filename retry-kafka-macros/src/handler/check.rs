//! Checks that need more than one option, or the function itself: what happens after the
//! last retry, and the signature a handler (or a batch handler) must have.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, ReturnType, Type};

use super::parse::{Exhausted, HandlerArgs};
use crate::errors::Errors;

/// Reports `dlq` together with `on_exhausted`, and neither (failures would vanish).
pub(super) fn check_policy(args: &HandlerArgs, errors: &Errors) {
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
    if let Some(hold) = args.dead_letter_holds_key {
        if args.key_ordered.is_none() {
            errors.push(syn::Error::new(
                hold,
                "`on_dead_letter = \"hold_key\"` keeps a dead letter's key held, which needs `ordering = \"key\"`",
            ));
        } else if let Some((Exhausted::Drop, drop)) = args.on_exhausted {
            errors.push(syn::Error::new(
                hold,
                "`on_dead_letter = \"hold_key\"` holds a key until its dead letter is replayed or discarded, but this handler drops what exhausts its retries: use `dlq`",
            ));
            errors.push(syn::Error::new(drop, "drops it here"));
        }
    }
    if let (Some(ordering), Some((batch, _))) = (args.key_ordered, args.batch) {
        errors.push(syn::Error::new(
            ordering,
            "`ordering = \"key\"` is for handlers of one record at a time: a batch mixes keys and fails as one",
        ));
        errors.push(syn::Error::new(batch, "this makes it a batch handler"));
    }
}

/// What the expansion needs from the function's signature.
pub(super) struct Signature {
    /// The event type: the argument's, or `E` of a batch handler's `Vec<E>`.
    pub(super) event_ty: Type,
    /// Whether the function takes a `Context` (`BatchContext`) as its second argument.
    pub(super) has_context: bool,
    /// Where the error type is written, so a wrong one is reported there.
    pub(super) output_span: Span,
}

/// Checks the function against its options; `batch` is where `batch(...)` was written, if it
/// was: then the handler takes `Vec<E>` and optionally a `BatchContext`.
pub(super) fn check_signature(function: &ItemFn, batch: Option<Span>, errors: &Errors) -> Option<Signature> {
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
