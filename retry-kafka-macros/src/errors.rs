//! Collects every error of one expansion, so a user with three mistakes sees three messages.

use std::cell::RefCell;

use proc_macro2::TokenStream;
use quote::ToTokens;

#[derive(Default)]
pub(crate) struct Errors {
    errors: RefCell<Vec<syn::Error>>,
}

impl Errors {
    pub(crate) fn push(&self, error: syn::Error) {
        self.errors.borrow_mut().push(error);
    }

    pub(crate) fn spanned<T: ToTokens, D: std::fmt::Display>(&self, tokens: T, message: D) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// All errors combined into one, or `Ok` when there were none.
    pub(crate) fn finish(self) -> syn::Result<()> {
        let mut all = self.errors.into_inner().into_iter();
        match all.next() {
            None => Ok(()),
            Some(mut first) => {
                first.extend(all);
                Err(first)
            }
        }
    }

    pub(crate) fn into_compile_error(self) -> Option<TokenStream> {
        self.finish().err().map(syn::Error::into_compile_error)
    }
}
