//! `#[derive(Event)]`: parse `#[event(...)]`, validate, generate the `Event` impl.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitStr, Path};

use crate::errors::Errors;
use crate::names;

struct EventAttrs {
    topic: Option<LitStr>,
    key: Option<LitStr>,
    codec: Option<Path>,
    name: Option<LitStr>,
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let errors = Errors::default();
    let attrs = parse_attrs(input, &errors);

    let topic = match &attrs.topic {
        Some(topic) => {
            if let Err(message) = names::check("topic", &topic.value()) {
                errors.spanned(topic, message);
            }
            Some(topic)
        }
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
    errors.finish()?;

    let ident = &input.ident;
    let codec = match &attrs.codec {
        Some(path) => quote!(#path),
        None => quote!(::retry_kafka::codec::Json),
    };
    // A generic event is an `Event` for the parameters its codec can handle.
    let mut generics = input.generics.clone();
    if !generics.params.is_empty() {
        let (_, ty_generics, _) = input.generics.split_for_impl();
        let predicates = &mut generics.make_where_clause().predicates;
        predicates.push(syn::parse_quote!(#ident #ty_generics: ::core::marker::Send + 'static));
        predicates.push(syn::parse_quote!(#codec: ::retry_kafka::Codec<#ident #ty_generics>));
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
            fn key(&self) -> ::core::option::Option<::retry_kafka::__private::Bytes> {
                ::core::option::Option::Some(::retry_kafka::EventKey::key_bytes(#expr))
            }
        }
    });

    Ok(quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics ::retry_kafka::Event for #ident #ty_generics #where_clause {
                const TOPIC: &'static str = #topic;
                const TYPE_NAME: &'static str = #type_name;
                type Codec = #codec;
                #key_fn
            }
        };
    })
}

fn parse_attrs(input: &DeriveInput, errors: &Errors) -> EventAttrs {
    let mut attrs = EventAttrs {
        topic: None,
        key: None,
        codec: None,
        name: None,
    };
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("event")) {
        let result = attr.parse_nested_meta(|meta| {
            let path = &meta.path;
            let slot_name = path.get_ident().map(|i| i.to_string()).unwrap_or_default();
            match slot_name.as_str() {
                "topic" | "key" | "name" => {
                    let value: LitStr = meta.value()?.parse()?;
                    let slot = match slot_name.as_str() {
                        "topic" => &mut attrs.topic,
                        "key" => &mut attrs.key,
                        _ => &mut attrs.name,
                    };
                    if slot.is_some() {
                        errors.spanned(path, format!("duplicate option `{slot_name}`"));
                    } else {
                        *slot = Some(value);
                    }
                }
                "codec" => {
                    let value: Path = meta.value()?.parse()?;
                    if attrs.codec.is_some() {
                        errors.spanned(path, "duplicate option `codec`");
                    } else {
                        attrs.codec = Some(value);
                    }
                }
                _ => {
                    errors.spanned(
                        path,
                        format!(
                            "unknown option `{}`; expected one of `topic`, `key`, `codec`, `name`",
                            quote!(#path)
                        ),
                    );
                    // Skip the value so parsing can go on and report later mistakes too.
                    if meta.input.peek(syn::Token![=]) {
                        let _: syn::Expr = meta.value()?.parse()?;
                    }
                }
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
            let field: &#ty = #access;
            field
        }
    })
}
