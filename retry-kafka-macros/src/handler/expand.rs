//! Generating the registration: the `__rk_call` entry the runtime calls, and the
//! `HandlerSpec` submitted to the inventory, inside one `const _: () = { ... };`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::ItemFn;

use super::check::Signature;
use super::parse::{Exhausted, HandlerArgs};
use crate::attr;

/// The items registering `function` with the options `args`; checked already, so it cannot fail.
pub(super) fn registration(function: &ItemFn, args: &HandlerArgs, signature: &Signature) -> TokenStream {
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
    let breaker = match args.breaker {
        Some(b) => {
            let (rate, attempts, window_ms) = (b.failure_rate, b.window_attempts, b.window_ms);
            let (min, cool_down, max_cool_down, probes) =
                (b.min_attempts, b.cool_down_ms, b.max_cool_down_ms, b.probes);
            quote!(::core::option::Option::Some(#rk::Breaker::declared(
                #rate, #attempts, #window_ms, #min, #cool_down, #max_cool_down, #probes
            )))
        }
        None => quote!(::core::option::Option::None),
    };
    let ordering = match (args.key_ordered, args.dead_letter_holds_key) {
        (Some(_), Some(_)) => quote!(#rk::RetryOrdering::KeyUntilResolved),
        (Some(_), None) => quote!(#rk::RetryOrdering::Key),
        (None, _) => quote!(#rk::RetryOrdering::None),
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
                    breaker: #breaker,
                    ordering: #ordering,
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
    // A handler future that is not `Send` is reported at the function's name.
    let put = quote_spanned! {ident.span()=>
        __rk_slot.put(async move { #outcome })
    };
    quote! {
        fn __rk_call(
            __rk_payload: &[u8],
            __rk_context: #rk::Context,
            __rk_slot: &mut #rk::HandlerSlot,
        ) -> ::core::result::Result<(), #rk::CodecError> {
            #unused_context
            let __rk_event = #decode?;
            #put;
            ::core::result::Result::Ok(())
        }
    }
}
