//! Reading option values, for both macros. A value of the wrong type is reported at the value
//! and skipped, so the options after it are still read: three mistakes, three errors.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::format_ident;
use quote::quote;
use syn::meta::ParseNestedMeta;
use syn::parse::discouraged::Speculative;
use syn::parse::{Parse, ParseStream};
use syn::{LitStr, Path, Token};

use crate::errors::Errors;

/// Reads `= value` as a `T`. Anything else is reported with `expected` (which shows the right
/// form) and skipped, and `None` returned.
pub(crate) fn value<T: Parse>(
    meta: &ParseNestedMeta,
    errors: &Errors,
    expected: &str,
) -> syn::Result<Option<T>> {
    if !meta.input.peek(Token![=]) {
        errors.spanned(&meta.path, expected);
        skip(meta)?;
        return Ok(None);
    }
    let input = meta.value()?;
    let fork = input.fork();
    if let Ok(value) = fork.parse::<T>() {
        if fork.is_empty() || fork.peek(Token![,]) {
            input.advance_to(&fork);
            return Ok(Some(value));
        }
    }
    let rest = rest_of_value(input)?;
    if rest.is_empty() {
        errors.spanned(&meta.path, expected);
    } else {
        errors.spanned(rest, expected);
    }
    Ok(None)
}

/// One of the string values an option takes: how it is written, what it reads as, and what it
/// means (shown beside it when the value written is none of the choices; empty for nothing).
pub(crate) struct Choice<'a, T> {
    pub(crate) written: &'a str,
    pub(crate) value: T,
    pub(crate) meaning: &'a str,
}

/// Reads `= "choice"` for the option `meta` names: the value of the choice written and where
/// it was written. A value that is not a string literal, or none of `choices`, is reported
/// (naming every choice) and `Err(())` returned, so the caller can tell it from a right one.
pub(crate) fn choice<T: Copy>(
    meta: &ParseNestedMeta,
    errors: &Errors,
    choices: &[Choice<'_, T>],
) -> syn::Result<Result<(T, Span), ()>> {
    let option = meta.path.get_ident().map(ToString::to_string).unwrap_or_default();
    let forms: Vec<String> = choices
        .iter()
        .map(|c| format!("`{option} = \"{}\"`", c.written))
        .collect();
    let expected = format!("expected a string literal: {}", forms.join(" or "));
    let Some(value) = self::value::<LitStr>(meta, errors, &expected)? else {
        return Ok(Err(()));
    };
    let written = value.value();
    if let Some(choice) = choices.iter().find(|c| c.written == written) {
        return Ok(Ok((choice.value, value.span())));
    }
    let known: Vec<String> = choices
        .iter()
        .map(|c| match c.meaning {
            "" => format!("{:?}", c.written),
            meaning => format!("{:?} ({meaning})", c.written),
        })
        .collect();
    errors.spanned(
        &value,
        format!(
            "unknown {option} value {written:?}; expected {}",
            known.join(" or ")
        ),
    );
    Ok(Err(()))
}

/// Skips what follows an option that was already reported (`= value` or `(...)`).
pub(crate) fn skip(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        rest_of_value(meta.value()?)?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<TokenTree>()?;
    }
    Ok(())
}

/// The tokens up to the next option.
fn rest_of_value(input: ParseStream) -> syn::Result<TokenStream> {
    let mut tokens = TokenStream::new();
    while !input.is_empty() && !input.peek(Token![,]) {
        tokens.extend([input.parse::<TokenTree>()?]);
    }
    Ok(tokens)
}

/// The message for an option that is none of `options` (every option the macro accepts, in
/// the order listed); `written` is the option as the user wrote it.
pub(crate) fn unknown_option(written: &str, options: &[&str]) -> String {
    let options: Vec<String> = options.iter().map(|option| format!("`{option}`")).collect();
    format!(
        "unknown option `{written}`; expected one of {}",
        options.join(", ")
    )
}

/// `crate = "rk"`: the path the expansion reaches the runtime by, for a user who renamed the
/// dependency or re-exports it.
pub(crate) fn crate_path(meta: &ParseNestedMeta, errors: &Errors) -> syn::Result<Option<Path>> {
    let Some(text) = value::<LitStr>(
        meta,
        errors,
        "expected the crate's path as a string literal: `crate = \"retry_kafka\"`",
    )?
    else {
        return Ok(None);
    };
    match text.parse::<Path>() {
        Ok(path) => Ok(Some(path)),
        Err(_) => {
            errors.spanned(
                &text,
                format!(
                    "{:?} is not a path; write e.g. `crate = \"rk\"` or `crate = \"::my_app::retry_kafka\"`",
                    text.value()
                ),
            );
            Ok(None)
        }
    }
}

/// `<crate>::__private::v<version>`, the one module expansions refer to. It is named after this
/// release so an expansion only compiles against the runtime of the same release (see
/// `retry_kafka::__private`).
pub(crate) fn support(krate: Option<&Path>) -> TokenStream {
    let version = env!("CARGO_PKG_VERSION").replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let module = format_ident!("v{version}");
    match krate {
        Some(path) => quote!(#path::__private::#module),
        None => quote!(::retry_kafka::__private::#module),
    }
}

/// `tokens` with every span set to `span`, so a diagnostic about an expression built from them
/// points at the user's tokens rather than at the attribute.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            token.set_span(span);
            token
        })
        .collect()
}
