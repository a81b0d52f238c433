//! Checks that need the type as well as the options: a topic is given, the key names a field,
//! a given name is not empty.

use proc_macro2::Span;
use syn::{Data, DeriveInput, Fields, LitStr, Member, Type};

use super::parse::EventAttrs;
use crate::errors::Errors;

/// The field `key = "..."` names: how to reach it from `self`, and its type.
pub(super) struct KeyField<'a> {
    pub(super) member: Member,
    pub(super) ty: &'a Type,
}

/// Reports what is wrong with `attrs` on `input`; returns the key field when `key` was given
/// and names one.
pub(super) fn check_attrs<'a>(
    input: &'a DeriveInput,
    attrs: &EventAttrs,
    errors: &Errors,
) -> Option<KeyField<'a>> {
    if attrs.topic.is_none() && !attrs.topic_unreadable {
        errors.push(syn::Error::new(
            input.ident.span(),
            "missing topic: add `#[event(topic = \"...\")]` to say which topic this event is published to",
        ));
    }
    let key = attrs.key.as_ref().and_then(|key| key_field(input, key, errors));
    if let Some(name) = &attrs.name {
        if name.value().is_empty() {
            errors.spanned(name, "event name must not be empty");
        }
    }
    key
}

/// The field `key` names, or `None` after reporting that there is none.
fn key_field<'a>(input: &'a DeriveInput, key: &LitStr, errors: &Errors) -> Option<KeyField<'a>> {
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
    let member = match &field.ident {
        Some(ident) => Member::Named(ident.clone()),
        None => Member::Unnamed(syn::Index {
            index: wanted.parse().expect("matched above"),
            span: Span::call_site(),
        }),
    };
    Some(KeyField {
        member,
        ty: &field.ty,
    })
}
