//! `#[event(personal)]` and `#[event(subject)]` on the fields of an event: which fields the
//! store seals with the data subject's key (see `es_core::personal`).

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Fields, Ident};

/// What one event's fields declare: the payload keys of its personal fields, and the field
/// naming its data subject (the stream when none).
pub(crate) struct PersonalFields {
    pub(crate) keys: Vec<String>,
    pub(crate) subject: Option<Ident>,
}

/// Reads the field attributes of one event. `Ok(None)`: nothing personal.
pub(crate) fn parse(
    fields: &Fields,
    container_attrs: &[syn::Attribute],
) -> syn::Result<Option<PersonalFields>> {
    let mut keys = Vec::new();
    let mut subject: Option<Ident> = None;
    let mut first_span = None;
    for field in fields {
        let mut personal = false;
        let mut is_subject = false;
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("event")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("personal") {
                    personal = true;
                    Ok(())
                } else if meta.path.is_ident("subject") {
                    is_subject = true;
                    Ok(())
                } else {
                    Err(meta.error(
                        "unknown field attribute; expected `#[event(personal)]` or \
                         `#[event(subject)]`",
                    ))
                }
            })?;
        }
        if !personal && !is_subject {
            if mentions_personal(&field.ty) {
                return Err(syn::Error::new(
                    field.ty.span(),
                    "a field holding `Personal` values must be marked #[event(personal)] (and be \
                     `Personal<T>` itself: nested personal values are not sealed), or its data \
                     is stored in plaintext",
                ));
            }
            continue;
        }
        first_span.get_or_insert(field.span());
        let Some(ident) = &field.ident else {
            return Err(syn::Error::new(
                field.span(),
                "personal data needs named fields: the store seals them by their key in the payload",
            ));
        };
        if personal && is_subject {
            return Err(syn::Error::new(
                field.span(),
                "a field cannot be both `personal` and the `subject`: the subject names whose key \
                 seals the personal fields, and must stay readable (use an opaque id)",
            ));
        }
        if is_subject {
            if subject.is_some() {
                return Err(syn::Error::new(
                    field.span(),
                    "only one field can be the `subject`",
                ));
            }
            subject = Some(ident.clone());
            continue;
        }
        if !is_personal_type(&field.ty) {
            return Err(syn::Error::new(
                field.ty.span(),
                "a personal field must be `es_core::Personal<T>`, so it reads as \
                 `Personal::Redacted` once its subject is forgotten",
            ));
        }
        refuse_serde(
            &field.attrs,
            &["rename", "flatten", "alias"],
            "a personal field",
        )?;
        keys.push(ident.to_string().trim_start_matches("r#").to_owned());
    }
    if keys.is_empty() {
        if let (Some(ident), Some(_)) = (&subject, first_span) {
            return Err(syn::Error::new(
                ident.span(),
                "a `subject` without `personal` fields: mark the fields to seal with \
                 #[event(personal)]",
            ));
        }
        return Ok(None);
    }
    refuse_serde(
        container_attrs,
        &[
            "rename_all",
            "rename_all_fields",
            "transparent",
            "into",
            "from",
            "try_from",
        ],
        "an event with personal fields",
    )?;
    Ok(Some(PersonalFields { keys, subject }))
}

/// Refuses serde options on an enum holding personal fields that rename them.
pub(crate) fn parse_container(attrs: &[syn::Attribute]) -> syn::Result<()> {
    refuse_serde(
        attrs,
        &["rename_all_fields"],
        "an enum with personal fields",
    )
}

/// The `PersonalData` expression of an event whose fields are bound by name.
pub(crate) fn data(fields: &PersonalFields) -> TokenStream {
    let keys = &fields.keys;
    let subject = match &fields.subject {
        Some(ident) => {
            quote!(::core::option::Option::Some(::std::string::ToString::to_string(#ident)))
        }
        None => quote!(::core::option::Option::None),
    };
    quote!(::core::option::Option::Some(::es_core::PersonalData {
        subject: #subject,
        fields: &[#(#keys),*],
    }))
}

/// Whether `Personal` appears anywhere in the type (`Vec<Personal<String>>`, say).
fn mentions_personal(ty: &syn::Type) -> bool {
    let syn::Type::Path(path) = ty else {
        return false;
    };
    path.path.segments.iter().any(|segment| {
        segment.ident == "Personal"
            || matches!(&segment.arguments, syn::PathArguments::AngleBracketed(args)
                if args.args.iter().any(|arg| matches!(arg, syn::GenericArgument::Type(t) if mentions_personal(t))))
    })
}

fn is_personal_type(ty: &syn::Type) -> bool {
    let syn::Type::Path(path) = ty else {
        return false;
    };
    path.path
        .segments
        .last()
        .is_some_and(|segment| segment.ident == "Personal")
}

fn refuse_serde(attrs: &[syn::Attribute], forbidden: &[&str], what: &str) -> syn::Result<()> {
    use syn::punctuated::Punctuated;
    use syn::{Meta, Token};
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let Ok(metas) = attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
        else {
            continue;
        };
        for meta in metas {
            if let Some(key) = forbidden.iter().find(|key| meta.path().is_ident(key)) {
                return Err(syn::Error::new(
                    meta.span(),
                    format!(
                        "#[serde({key})] on {what}: the store finds personal fields by their \
                         Rust name in the payload"
                    ),
                ));
            }
        }
    }
    Ok(())
}
