//! The `codec = ...` option of `#[event]`: a short form (`"json"`, `"msgpack"`, `"protobuf"`,
//! `"raw"`) or a type's path, and what each expands to beside the `Event` impl.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, LitStr, Path};

use crate::attr;
use crate::errors::Errors;

/// The short forms, as a user writes them.
const SHORT_FORMS: [&str; 4] = ["json", "msgpack", "protobuf", "raw"];

/// The value of `codec = ...` as written.
pub(crate) enum CodecOption {
    Short(LitStr),
    Path(Path),
}

impl Parse for CodecOption {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.peek(LitStr) {
            input.parse().map(CodecOption::Short)
        } else {
            input.parse().map(CodecOption::Path)
        }
    }
}

/// What the expansion needs for a codec: the `Event::Codec` type, and the items that go with it
/// (a feature check, a `RawPayload` impl).
pub(crate) struct Expansion {
    pub(crate) ty: TokenStream,
    pub(crate) items: TokenStream,
}

/// The expansion of `option` (the default JSON when absent); `None` after reporting a mistake.
pub(crate) fn expand(
    option: Option<&CodecOption>,
    input: &DeriveInput,
    rk: &TokenStream,
    errors: &Errors,
) -> Option<Expansion> {
    let short = match option {
        None => {
            return Some(Expansion {
                ty: quote!(#rk::Json),
                items: TokenStream::new(),
            })
        }
        Some(CodecOption::Path(path)) => {
            return Some(Expansion {
                ty: quote!(#path),
                items: TokenStream::new(),
            })
        }
        Some(CodecOption::Short(short)) => short,
    };
    // Spanned at the literal, so a codec that does not fit the type (`"protobuf"` on a serde
    // struct) or whose feature is off is reported there.
    let span = short.span();
    let name = short.value();
    let (ty, items) = match name.as_str() {
        "json" => (quote!(#rk::Json), TokenStream::new()),
        "msgpack" => feature_gated(rk, quote!(MsgPack), quote!(MsgPackFeature), span),
        "protobuf" => feature_gated(rk, quote!(Protobuf), quote!(ProtobufFeature), span),
        "raw" => (quote!(#rk::Raw), raw_payload(input, short, rk, errors)?),
        _ => {
            let message = match SHORT_FORMS.iter().find(|form| form.eq_ignore_ascii_case(&name)) {
                Some(form) => format!("unknown codec {name:?}: did you mean \"{form}\"?"),
                None => format!(
                    "unknown codec {name:?}: expected \"json\", \"msgpack\", \"protobuf\" or \"raw\", \
                     or the path of a type implementing `Codec`: `codec = my_codecs::Avro`"
                ),
            };
            errors.spanned(short, message);
            return None;
        }
    };
    Some(Expansion {
        ty: attr::respan(ty, span),
        items,
    })
}

/// A codec behind a cargo feature of retry-kafka, which the macro cannot see: the expansion
/// names the codec (a stand-in exists with the feature off) and asserts the feature's marker
/// trait, whose `on_unimplemented` message names the feature to enable.
fn feature_gated(
    rk: &TokenStream,
    codec: TokenStream,
    marker: TokenStream,
    span: proc_macro2::Span,
) -> (TokenStream, TokenStream) {
    // Every token at the user's `"msgpack"`, the crate path included, so rustc reports there.
    let codec = attr::respan(quote!(#rk::#codec), span);
    let marker = attr::respan(quote!(#rk::#marker), span);
    let check = quote_spanned! {span=>
        const _: fn() = || {
            fn __rk_codec_feature<__C: #marker>() {}
            __rk_codec_feature::<#codec>();
        };
    };
    (codec, check)
}

/// `codec = "raw"`: the event is a struct with one field, whose bytes are the payload; this
/// implements `RawPayload` for the struct through that field.
fn raw_payload(
    input: &DeriveInput,
    short: &LitStr,
    rk: &TokenStream,
    errors: &Errors,
) -> Option<TokenStream> {
    let fields = match &input.data {
        Data::Struct(data) if data.fields.len() == 1 => &data.fields,
        _ => {
            errors.spanned(
                short,
                "`codec = \"raw\"` needs a struct with one field, the payload: \
                 `struct LogLine(String);` (or `Bytes`, `Vec<u8>`)",
            );
            return None;
        }
    };
    let field = fields.iter().next().expect("one field");
    let member = match &field.ident {
        Some(ident) => syn::Member::Named(ident.clone()),
        None => syn::Member::Unnamed(syn::Index::from(0)),
    };
    let ident = &input.ident;
    let ty = &field.ty;
    // A generic newtype (`struct Blob<P>(P)`) is a raw payload when its field is.
    let mut generics = input.generics.clone();
    if !generics.params.is_empty() {
        let predicates = &mut generics.make_where_clause().predicates;
        predicates.push(syn::parse_quote!(#ty: #rk::RawPayload));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    // The calls are spanned at the field's type, so a field that is no raw payload (`u64`) is
    // reported there, with `RawPayload`'s message.
    let as_payload = quote_spanned! {ty.span()=>
        <#ty as #rk::RawPayload>::as_payload(&self.#member)
    };
    let from_payload = quote_spanned! {ty.span()=>
        <#ty as #rk::RawPayload>::from_payload(__rk_bytes)
    };
    Some(quote! {
        #[automatically_derived]
        impl #impl_generics #rk::RawPayload for #ident #ty_generics #where_clause {
            fn as_payload(&self) -> &[u8] {
                #as_payload
            }

            fn from_payload(
                __rk_bytes: &[u8],
            ) -> ::core::result::Result<Self, #rk::CodecError> {
                ::core::result::Result::map(#from_payload, |__rk_payload| Self {
                    #member: __rk_payload,
                })
            }
        }
    })
}
