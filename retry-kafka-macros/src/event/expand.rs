//! Generating the `Event` impl, with the items its codec needs, inside one
//! `const _: () = { ... };`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::DeriveInput;

use super::check::KeyField;
use super::parse::EventAttrs;
use crate::codec;

/// The `Event` impl for `input`; checked already, so it cannot fail.
pub(super) fn event_impl(
    input: &DeriveInput,
    attrs: &EventAttrs,
    key: Option<&KeyField>,
    codec: codec::Expansion,
    rk: &TokenStream,
) -> TokenStream {
    let ident = &input.ident;
    let codec::Expansion {
        ty: codec,
        items: codec_items,
    } = codec;
    // A generic event is an `Event` for the parameters its codec can handle.
    let mut generics = input.generics.clone();
    if !generics.params.is_empty() {
        let (_, ty_generics, _) = input.generics.split_for_impl();
        let predicates = &mut generics.make_where_clause().predicates;
        predicates.push(syn::parse_quote!(#ident #ty_generics: ::core::marker::Send + 'static));
        predicates.push(syn::parse_quote!(#codec: #rk::Codec<#ident #ty_generics>));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let topic = attrs.topic.as_ref().expect("checked");
    let type_name = match &attrs.name {
        Some(name) => quote!(#name),
        None => {
            let name = ident.to_string();
            quote!(#name)
        }
    };
    let key_fn = key.map(|key| {
        let expr = key_expr(key);
        quote! {
            fn key(&self) -> ::core::option::Option<#rk::Bytes> {
                ::core::option::Option::Some(#rk::EventKey::key_bytes(#expr))
            }
        }
    });

    quote! {
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
    }
}

/// The expression that borrows the key field, spanned at the field's type so a key that cannot
/// become bytes (no `EventKey`) is reported there.
fn key_expr(key: &KeyField) -> TokenStream {
    let member = &key.member;
    let access = quote!(&self.#member);
    let ty = key.ty;
    quote_spanned! {ty.span()=>
        {
            let __rk_field: &#ty = #access;
            __rk_field
        }
    }
}
