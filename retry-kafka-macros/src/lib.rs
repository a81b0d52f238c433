//! Procedural macros for [retry-kafka](https://docs.rs/retry-kafka).
//!
//! Use them through the `retry_kafka` crate (`use retry_kafka::prelude::*;`), which re-exports
//! them and provides every path the expansions refer to. The macros only parse, validate and
//! expand; what happens to a failed message is decided by the runtime.

use proc_macro::TokenStream;

mod attr;
// The ranges of `breaker(...)`'s settings, shared with the runtime (a symlink there).
mod breaker_rules;
mod codec;
mod duration;
mod errors;
mod event;
mod handler;
mod names;

/// Declares a type as an event: its topic, partition key and codec.
///
/// See `retry_kafka::Event` for the full documentation and examples.
#[proc_macro_derive(Event, attributes(event))]
pub fn derive_event(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    event::expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Registers an async function as a resilient handler with retries and a dead-letter queue.
///
/// See `retry_kafka::retry_handler` for the full documentation and examples.
#[proc_macro_attribute]
pub fn retry_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    handler::expand(args.into(), item.into()).into()
}
