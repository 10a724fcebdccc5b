//! `#[derive(Aggregate)]`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{Data, DeriveInput, Ident, LitInt, LitStr, Type};

#[derive(Default)]
struct Options {
    category: Option<LitStr>,
    command: Option<Type>,
    event: Option<Type>,
    error: Option<Type>,
    snapshot_version: Option<u32>,
    snapshot_every: Option<u64>,
    decide: Option<Ident>,
    apply: Option<Ident>,
}

pub(crate) fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    match &input.data {
        Data::Struct(_) => {}
        Data::Enum(data) => {
            return Err(syn::Error::new(
                data.enum_token.span,
                "Aggregate is derived for the aggregate's state struct; events and commands are \
                 separate enums",
            ));
        }
        Data::Union(data) => {
            return Err(syn::Error::new(
                data.union_token.span,
                "Aggregate is derived for the aggregate's state struct, not a union",
            ));
        }
    }
    let mut options = Options::default();
    let mut found = false;
    for attr in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("aggregate"))
    {
        found = true;
        attr.parse_nested_meta(|meta| {
            let key = meta
                .path
                .get_ident()
                .map(ToString::to_string)
                .unwrap_or_default();
            let value = meta
                .value()
                .map_err(|_| meta.error(format!("expected `{key} = ...`")))?;
            match key.as_str() {
                "category" => {
                    let lit: LitStr = value.parse()?;
                    if lit.value().is_empty() || lit.value().contains('-') {
                        return Err(syn::Error::new(
                            lit.span(),
                            "a category is a non-empty name without `-` (stream ids are `{category}-{id}`)",
                        ));
                    }
                    options.category = Some(lit);
                }
                "command" => options.command = Some(value.parse()?),
                "event" => options.event = Some(value.parse()?),
                "error" => options.error = Some(value.parse()?),
                "snapshot_version" => {
                    let lit: LitInt = value.parse()?;
                    let version: u32 = lit.base10_parse()?;
                    if version == 0 {
                        return Err(syn::Error::new(lit.span(), "snapshot versions start at 1"));
                    }
                    options.snapshot_version = Some(version);
                }
                "snapshot_every" => {
                    let lit: LitInt = value.parse()?;
                    let every: u64 = lit.base10_parse()?;
                    if every == 0 {
                        return Err(syn::Error::new(
                            lit.span(),
                            "snapshot_every counts events and must be at least 1",
                        ));
                    }
                    options.snapshot_every = Some(every);
                }
                "decide" => options.decide = Some(value.parse()?),
                "apply" => options.apply = Some(value.parse()?),
                _ => {
                    return Err(syn::Error::new_spanned(
                        &meta.path,
                        "unknown aggregate attribute; expected one of category, command, event, \
                         error, snapshot_version, snapshot_every, decide, apply",
                    ));
                }
            }
            Ok(())
        })?;
    }
    let ident = &input.ident;
    let missing = |what: &str| {
        syn::Error::new(
            if found {
                ident.span()
            } else {
                Span::call_site()
            },
            format!("#[derive(Aggregate)] needs `{what}` in #[aggregate(...)]"),
        )
    };
    let category = options
        .category
        .ok_or_else(|| missing("category = \"...\""))?;
    let command = options
        .command
        .ok_or_else(|| missing("command = CommandType"))?;
    let event = options.event.ok_or_else(|| missing("event = EventType"))?;
    let error = options.error.ok_or_else(|| missing("error = ErrorType"))?;
    let snapshot_version = options.snapshot_version.unwrap_or(1);
    let decide = options
        .decide
        .unwrap_or_else(|| Ident::new("decide", Span::call_site()));
    let apply = match options.apply {
        Some(method) => quote!(Self::#method(self, event)),
        None => quote!(event.apply_to(self)),
    };
    let policy = options.snapshot_every.map(|every| {
        quote! {
            fn snapshot_policy() -> ::es_core::SnapshotPolicy {
                ::es_core::SnapshotPolicy::EveryNEvents(#every)
            }
        }
    });
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        impl #impl_generics ::es_core::Aggregate for #ident #ty_generics #where_clause {
            const CATEGORY: &'static str = #category;
            const SNAPSHOT_VERSION: u32 = #snapshot_version;
            type Command = #command;
            type Event = #event;
            type Error = #error;

            #policy

            fn decide(
                &self,
                command: &Self::Command,
            ) -> ::core::result::Result<::std::vec::Vec<Self::Event>, Self::Error> {
                Self::#decide(self, command)
            }

            fn apply(&mut self, event: &Self::Event) {
                #apply
            }
        }
    })
}
