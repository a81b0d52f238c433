//! `#[derive(Event)]`: parse `#[event(...)]`, validate, generate the `Event` impl.

mod check;
mod expand;
mod parse;

use proc_macro2::TokenStream;
use syn::DeriveInput;

use crate::attr;
use crate::codec;
use crate::errors::Errors;

/// Expands `#[derive(Event)]` on `input`: the `Event` impl and its codec's items, or every error
/// found.
pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let errors = Errors::default();
    let attrs = parse::parse_attrs(input, &errors);
    let key = check::check_attrs(input, &attrs, &errors);
    let rk = attr::support(attrs.krate.as_ref());
    let codec = codec::expand(attrs.codec.as_ref(), input, &rk, &errors);
    errors.finish()?;
    let codec = codec.expect("reported above");
    Ok(expand::event_impl(input, &attrs, key.as_ref(), codec, &rk))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_renamed_crate_is_the_only_path_to_the_runtime() {
        let input = syn::parse_quote! {
            #[event(crate = "rk", topic = "orders", key = "id")]
            struct Order<T> { id: u64, extra: T }
        };
        let expanded = super::expand(&input).unwrap().to_string();
        assert!(expanded.contains("rk :: __private :: v"), "{expanded}");
        assert!(!expanded.contains("retry_kafka"), "{expanded}");
    }

    #[test]
    fn a_short_codec_reaches_its_codec_and_feature_check_through_the_renamed_crate() {
        for (codec, item) in [("msgpack", "MsgPackFeature"), ("protobuf", "ProtobufFeature")] {
            let input = syn::parse_quote! {
                #[event(crate = "rk", topic = "orders", codec = #codec)]
                struct Order { id: u64 }
            };
            let expanded = super::expand(&input).unwrap().to_string();
            assert!(expanded.contains(item), "{expanded}");
            assert!(!expanded.contains("retry_kafka"), "{expanded}");
        }
        let input = syn::parse_quote! {
            #[event(crate = "rk", topic = "lines", codec = "raw")]
            struct Line(String);
        };
        let expanded = super::expand(&input).unwrap().to_string();
        assert!(expanded.contains("RawPayload for Line"), "{expanded}");
    }
}
