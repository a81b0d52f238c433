//! Reading `#[event(...)]` into [`EventAttrs`]. A value is checked here when it can be on its
//! own (a topic name); what needs the type is left to `check`.

use quote::quote;
use syn::{DeriveInput, LitStr, Path};

use crate::attr;
use crate::codec::CodecOption;
use crate::errors::Errors;
use crate::names;

/// Every option `parse_attrs` accepts, as the "unknown option" message lists them.
const OPTIONS: [&str; 5] = ["topic", "key", "codec", "name", "crate"];

/// The options as read, from every `#[event(...)]` on the type: each `None` when absent or
/// already reported.
#[derive(Default)]
pub(super) struct EventAttrs {
    pub(super) topic: Option<LitStr>,
    /// The name of the field that is the partition key.
    pub(super) key: Option<LitStr>,
    pub(super) codec: Option<CodecOption>,
    /// The stable type name (`Event::TYPE_NAME`); the type's own name by default.
    pub(super) name: Option<LitStr>,
    /// `crate = "..."`: the path to the runtime, when the user renamed it.
    pub(super) krate: Option<Path>,
    /// `topic` was given but unreadable; reported already, so not "missing" too.
    pub(super) topic_unreadable: bool,
}

/// Reads every option, reporting each mistake at its token and going on to the next.
pub(super) fn parse_attrs(input: &DeriveInput, errors: &Errors) -> EventAttrs {
    let mut attrs = EventAttrs::default();
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
                    errors.spanned(path, attr::unknown_option(&quote!(#path).to_string(), &OPTIONS));
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

#[cfg(test)]
mod tests {
    use proc_macro2::TokenStream;

    use crate::errors::Errors;

    /// The "unknown option" message lists every option: none it lists is unknown.
    #[test]
    fn every_listed_option_is_accepted() {
        for option in super::OPTIONS {
            let option = option.parse::<TokenStream>().unwrap();
            let input = syn::parse_quote!(
                #[event(#option)]
                struct Order;
            );
            let errors = Errors::default();
            super::parse_attrs(&input, &errors);
            for error in errors.finish().err().into_iter().flatten() {
                assert!(
                    !error.to_string().starts_with("unknown option"),
                    "{option}: {error}"
                );
            }
        }
    }
}
