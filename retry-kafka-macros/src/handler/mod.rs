//! `#[retry_handler(...)]`: parse the options, check the function, register a `HandlerSpec`.
//!
//! The function is re-emitted exactly as written, even when the options are wrong, so the rest
//! of the user's crate (and rust-analyzer) keeps working while the errors are shown.

mod check;
mod expand;
mod parse;
mod retries;

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::ItemFn;

use crate::errors::Errors;

/// Expands `#[retry_handler(args)]` on `item`: the function as written, then its registration
/// or every error found.
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
    let parsed = parse::parse_args(args, &errors);
    let signature = check::check_signature(&function, parsed.batch.map(|(span, _)| span), &errors);
    check::check_policy(&parsed, &errors);
    if let Some(error) = errors.into_compile_error() {
        return quote!(#function #error);
    }
    let signature = signature.expect("no errors, so the signature was read");
    let registration = expand::registration(&function, &parsed, &signature);
    quote!(#function #registration)
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
