//! `#[derive(Event)]`: parse `#[event(...)]`, validate, generate the `Event` impl.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitStr, Path};

use crate::attr;
use crate::codec::{self, CodecOption};
use crate::errors::Errors;
use crate::names;

struct EventAttrs {
    topic: Option<LitStr>,
    key: Option<LitStr>,
    codec: Option<CodecOption>,
    name: Option<LitStr>,
    krate: Option<Path>,
    /// `topic` was given but unreadable; reported already, so not "missing" too.
    topic_unreadable: bool,
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let errors = Errors::default();
    let attrs = parse_attrs(input, &errors);

    let topic = match &attrs.topic {
        Some(topic) => Some(topic),
        None if attrs.topic_unreadable => None,
        None => {
            errors.push(syn::Error::new(
                input.ident.span(),
                "missing topic: add `#[event(topic = \"...\")]` to say which topic this event is published to",
            ));
            None
        }
    };
    let key = attrs.key.as_ref().and_then(|key| key_expr(input, key, &errors));
    if let Some(name) = &attrs.name {
        if name.value().is_empty() {
            errors.spanned(name, "event name must not be empty");
        }
    }
    let rk = attr::support(attrs.krate.as_ref());
    let codec = codec::expand(attrs.codec.as_ref(), input, &rk, &errors);
    errors.finish()?;

    let ident = &input.ident;
    let codec::Expansion {
        ty: codec,
        items: codec_items,
    } = codec.expect("reported above");
    // A generic event is an `Event` for the parameters its codec can handle.
    let mut generics = input.generics.clone();
    if !generics.params.is_empty() {
        let (_, ty_generics, _) = input.generics.split_for_impl();
        let predicates = &mut generics.make_where_clause().predicates;
        predicates.push(syn::parse_quote!(#ident #ty_generics: ::core::marker::Send + 'static));
        predicates.push(syn::parse_quote!(#codec: #rk::Codec<#ident #ty_generics>));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let topic = topic.expect("checked above");
    let type_name = match &attrs.name {
        Some(name) => quote!(#name),
        None => {
            let name = ident.to_string();
            quote!(#name)
        }
    };
    let key_fn = key.map(|expr| {
        quote! {
            fn key(&self) -> ::core::option::Option<#rk::Bytes> {
                ::core::option::Option::Some(#rk::EventKey::key_bytes(#expr))
            }
        }
    });

    Ok(quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #rk::Event for #ident #ty_generics #where_clause {
                const TOPIC: &'static str = #topic;
                const TYPE_NAME: &'static str = #type_name;
                type Codec = #codec;
                #key_fn
            }
            #codec_items
        };
    })
}

fn parse_attrs(input: &DeriveInput, errors: &Errors) -> EventAttrs {
    let mut attrs = EventAttrs {
        topic: None,
        key: None,
        codec: None,
        name: None,
        krate: None,
        topic_unreadable: false,
    };
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        let result = attr.parse_nested_meta(|meta| {
            let path = &meta.path;
            let slot_name = path.get_ident().map(|i| i.to_string()).unwrap_or_default();
            let taken = match slot_name.as_str() {
                "topic" => attrs.topic.is_some(),
                "key" => attrs.key.is_some(),
                "name" => attrs.name.is_some(),
                "codec" => attrs.codec.is_some(),
                "crate" => attrs.krate.is_some(),
                _ => {
                    errors.spanned(
                        path,
                        format!(
                            "unknown option `{}`; expected one of `topic`, `key`, `codec`, `name`",
                            quote!(#path)
                        ),
                    );
                    return attr::skip(&meta);
                }
            };
            if taken {
                errors.spanned(path, format!("duplicate option `{slot_name}`"));
                return attr::skip(&meta);
            }
            match slot_name.as_str() {
                "topic" => {
                    attrs.topic =
                        attr::value(&meta, errors, "expected a string literal: `topic = \"orders\"`")?;
                    attrs.topic_unreadable = attrs.topic.is_none();
                    if let Some(topic) = &attrs.topic {
                        if let Err(error) = names::check("topic", &topic.value()) {
                            errors.spanned(topic, error);
                        }
                    }
                }
                "key" => {
                    attrs.key = attr::value(
                        &meta,
                        errors,
                        "expected a field name as a string literal: `key = \"order_id\"`",
                    )?;
                }
                "name" => {
                    attrs.name = attr::value(
                        &meta,
                        errors,
                        "expected a string literal: `name = \"OrderPlaced.v1\"`",
                    )?;
                }
                "codec" => {
                    attrs.codec = attr::value(
                        &meta,
                        errors,
                        "expected a codec: `codec = \"msgpack\"` (\"json\", \"msgpack\", \"protobuf\", \"raw\") or a type's path: `codec = my_codecs::Avro`",
                    )?;
                }
                _ => attrs.krate = attr::crate_path(&meta, errors)?,
            }
            Ok(())
        });
        if let Err(error) = result {
            errors.push(error);
        }
    }
    attrs
}

/// The expression that borrows the key field, with the `EventKey` check spanned at the field's
/// type so a key that cannot become bytes is reported there.
fn key_expr(input: &DeriveInput, key: &LitStr, errors: &Errors) -> Option<TokenStream> {
    let fields = match &input.data {
        Data::Struct(data) => &data.fields,
        _ => {
            errors.spanned(
                key,
                "`key` names a field, so it needs a struct; an enum or union has no common field",
            );
            return None;
        }
    };
    let wanted = key.value();
    let found = match fields {
        Fields::Named(named) => named
            .named
            .iter()
            .find(|f| f.ident.as_ref().is_some_and(|i| i == &wanted)),
        Fields::Unnamed(unnamed) => wanted
            .parse::<usize>()
            .ok()
            .and_then(|index| unnamed.unnamed.iter().nth(index)),
        Fields::Unit => None,
    };
    let Some(field) = found else {
        let known: Vec<String> = fields
            .iter()
            .enumerate()
            .map(|(i, f)| {
                f.ident
                    .as_ref()
                    .map_or_else(|| i.to_string(), |id| id.to_string())
            })
            .collect();
        let hint = if known.is_empty() {
            "the type has no fields".to_owned()
        } else {
            format!("fields are: {}", known.join(", "))
        };
        errors.spanned(key, format!("no field named `{wanted}` for the key; {hint}"));
        return None;
    };
    let access = match &field.ident {
        Some(ident) => quote!(&self.#ident),
        None => {
            let index = syn::Index {
                index: wanted.parse().expect("matched above"),
                span: Span::call_site(),
            };
            quote!(&self.#index)
        }
    };
    let ty = &field.ty;
    Some(quote_spanned! {ty.span()=>
        {
            let __rk_field: &#ty = #access;
            __rk_field
        }
    })
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
