//! `#[derive(DomainEvent)]`.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Fields, Ident, LitInt, LitStr, Meta, Token};

/// One variant: the Rust name, and either the one event type it is (stored name and version)
/// or, with `#[event(flatten)]`, the event enum whose every type it holds.
struct EventDef {
    ident: Ident,
    fields: Fields,
    name: String,
    version: u32,
    flatten: Option<syn::Type>,
    personal: Option<crate::personal::PersonalFields>,
}

/// What `#[event(...)]` says of a variant or struct.
struct EventAttrs {
    name: (String, Span),
    version: u32,
    flatten: Option<Span>,
    /// Whether `name` or `version` was given (they do not combine with `flatten`).
    named_or_versioned: Option<Span>,
}

pub(crate) fn expand(input: DeriveInput) -> syn::Result<TokenStream> {
    if matches!(input.data, Data::Enum(_)) {
        refuse_serde_renames(
            &input.attrs,
            &["rename_all", "tag", "content", "untagged"],
            "the enum",
        )?;
    }
    match &input.data {
        Data::Enum(data) => {
            if data.variants.is_empty() {
                return Err(syn::Error::new(
                    input.ident.span(),
                    "DomainEvent needs at least one variant: each variant is an event type",
                ));
            }
            let apply_trait = parse_enum_attrs(&input.attrs)?;
            let mut defs: Vec<EventDef> = Vec::new();
            for variant in &data.variants {
                refuse_serde_renames(&variant.attrs, &["rename", "untagged"], "a variant")?;
                let attrs = parse_event_attrs(&variant.attrs, &variant.ident)?;
                let flatten = match attrs.flatten {
                    Some(span) => Some(flattened_type(&input, variant, &attrs, span)?),
                    None => None,
                };
                let name = attrs.name;
                if flatten.is_none()
                    && let Some(first) = defs
                        .iter()
                        .find(|d| d.flatten.is_none() && d.name == name.0)
                {
                    return Err(syn::Error::new(
                        name.1,
                        format!(
                            "duplicate event type name {:?}: variant `{}` already uses it",
                            name.0, first.ident
                        ),
                    ));
                }
                let personal = crate::personal::parse(&variant.fields, &variant.attrs)?;
                if personal.is_some() {
                    // serde applies the enum's `rename_all_fields` to every variant's fields.
                    crate::personal::parse_container(&input.attrs)?;
                }
                defs.push(EventDef {
                    ident: variant.ident.clone(),
                    fields: variant.fields.clone(),
                    name: name.0,
                    version: attrs.version,
                    flatten,
                    personal,
                });
            }
            let mut tokens = expand_enum(&input, &defs);
            if let Some(apply_trait) = apply_trait {
                tokens.extend(expand_apply_trait(&input, &defs, &apply_trait));
            }
            Ok(tokens)
        }
        Data::Struct(data) => {
            let attrs = parse_event_attrs(&input.attrs, &input.ident)?;
            if let Some(span) = attrs.flatten {
                return Err(syn::Error::new(
                    span,
                    "`flatten` goes on a variant of an event enum, not on a struct",
                ));
            }
            let personal = crate::personal::parse(&data.fields, &input.attrs)?;
            Ok(expand_struct(
                &input,
                &attrs.name.0,
                attrs.version,
                personal.as_ref(),
            ))
        }
        Data::Union(data) => Err(syn::Error::new(
            data.union_token.span,
            "DomainEvent can be derived for enums and structs, not unions",
        )),
    }
}

/// Serde options that would make serde's variant name differ from the one this derive decodes
/// by, or leave serde's externally tagged representation.
fn refuse_serde_renames(attrs: &[Attribute], forbidden: &[&str], what: &str) -> syn::Result<()> {
    use syn::punctuated::Punctuated;
    for attr in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        let Ok(metas) = attr.parse_args_with(Punctuated::<Meta, Token![,]>::parse_terminated)
        else {
            continue; // serde itself reports malformed serde attributes
        };
        for meta in metas {
            if let Some(key) = forbidden.iter().find(|key| meta.path().is_ident(key)) {
                return Err(syn::Error::new(
                    meta.span(),
                    format!(
                        "#[serde({key})] on {what} changes how events are named or tagged; \
                         DomainEvent needs serde's default representation: use \
                         #[event(name = \"...\")] to choose the stored type name"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// On an enum, `#[event(...)]` only names the per-event apply trait to generate.
fn parse_enum_attrs(attrs: &[Attribute]) -> syn::Result<Option<Ident>> {
    let mut apply_trait = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("apply_trait") {
                let ident: Ident = meta
                    .value()
                    .map_err(|_| meta.error("expected `apply_trait = TraitName`"))?
                    .parse()?;
                apply_trait = Some(ident);
                Ok(())
            } else {
                Err(meta.error(
                    "on an enum, #[event(...)] takes only `apply_trait = TraitName`; \
                     put `name` and `version` on each variant",
                ))
            }
        })?;
    }
    Ok(apply_trait)
}

/// The inner event type of a `#[event(flatten)]` variant, which must be a one-field tuple
/// variant of a non-generic enum, with no name or version of its own.
fn flattened_type(
    input: &DeriveInput,
    variant: &syn::Variant,
    attrs: &EventAttrs,
    span: Span,
) -> syn::Result<syn::Type> {
    if let Some(span) = attrs.named_or_versioned {
        return Err(syn::Error::new(
            span,
            "a `flatten` variant takes its type names and versions from the event type it \
             holds; `name` and `version` do not apply",
        ));
    }
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(
            span,
            "`flatten` needs an enum without generic parameters",
        ));
    }
    match &variant.fields {
        Fields::Unnamed(fields) if fields.unnamed.len() == 1 => Ok(fields.unnamed[0].ty.clone()),
        _ => Err(syn::Error::new(
            variant.ident.span(),
            "a `flatten` variant holds one event type, as in `Account(AccountEvent)`",
        )),
    }
}

fn parse_event_attrs(attrs: &[Attribute], ident: &Ident) -> syn::Result<EventAttrs> {
    let mut name = (ident.to_string(), ident.span());
    let mut version = 1;
    let mut seen_name = false;
    let mut seen_version = false;
    let mut flatten = None;
    let mut named_or_versioned = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("flatten") {
                if flatten.is_some() {
                    return Err(meta.error("`flatten` is given twice"));
                }
                flatten = Some(meta.path.span());
                Ok(())
            } else if meta.path.is_ident("name") {
                named_or_versioned.get_or_insert(meta.path.span());
                if seen_name {
                    return Err(meta.error("`name` is given twice"));
                }
                seen_name = true;
                let lit: LitStr = meta
                    .value()
                    .map_err(|_| meta.error("expected `name = \"TypeName\"`"))?
                    .parse()?;
                let value = lit.value();
                if value.is_empty() {
                    return Err(syn::Error::new(
                        lit.span(),
                        "an event type name cannot be empty",
                    ));
                }
                name = (value, lit.span());
                Ok(())
            } else if meta.path.is_ident("version") {
                named_or_versioned.get_or_insert(meta.path.span());
                if seen_version {
                    return Err(meta.error("`version` is given twice"));
                }
                seen_version = true;
                let lit: LitInt = meta
                    .value()
                    .map_err(|_| meta.error("expected `version = N`, a schema version from 1"))?
                    .parse()?;
                let value: u32 = lit.base10_parse()?;
                if value == 0 {
                    return Err(syn::Error::new(lit.span(), "schema versions start at 1"));
                }
                version = value;
                Ok(())
            } else {
                Err(meta.error(
                    "unknown event attribute; expected `name = \"...\"`, `version = N` or \
                     `flatten`",
                ))
            }
        })?;
    }
    Ok(EventAttrs {
        name,
        version,
        flatten,
        named_or_versioned,
    })
}

fn expand_enum(input: &DeriveInput, defs: &[EventDef]) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let event_type = |d: &EventDef| {
        let (name, version) = (&d.name, d.version);
        quote!(::es_core::EventType { name: #name, version: #version })
    };
    let types = if defs.iter().any(|d| d.flatten.is_some()) {
        // Joined at compile time; two types sharing a name fail the build there.
        let parts = defs.iter().map(|d| match &d.flatten {
            Some(inner) => quote!(<#inner as ::es_core::DomainEvent>::TYPES),
            None => {
                let one = event_type(d);
                quote!(&[#one])
            }
        });
        quote! {{
            const PARTS: &[&[::es_core::EventType]] = &[#(#parts),*];
            const ALL: [::es_core::EventType; ::es_core::__private::count_event_types(PARTS)] =
                ::es_core::__private::join_event_types(PARTS);
            &ALL
        }}
    } else {
        let types = defs.iter().map(event_type);
        quote!(&[#(#types),*])
    };
    let type_arms = defs.iter().map(|d| {
        let (variant, name) = (&d.ident, &d.name);
        if d.flatten.is_some() {
            return quote!(Self::#variant(inner) => ::es_core::DomainEvent::event_type(inner));
        }
        let pattern = match d.fields {
            Fields::Named(_) => quote!(Self::#variant { .. }),
            Fields::Unnamed(_) => quote!(Self::#variant(..)),
            Fields::Unit => quote!(Self::#variant),
        };
        quote!(#pattern => #name)
    });
    let flattened = defs.iter().filter(|d| d.flatten.is_some());
    let encode_arms = flattened.clone().map(|d| {
        let variant = &d.ident;
        quote!(Self::#variant(inner) => ::es_core::DomainEvent::encode(inner))
    });
    // The variants that are one event type each encode through serde's tagging; without any,
    // the enum needs no `Serialize`.
    let encode_rest = defs
        .iter()
        .any(|d| d.flatten.is_none())
        .then(|| quote!(_ => ::es_core::encode_tagged(self)));
    let decode_arms = defs.iter().filter(|d| d.flatten.is_none()).map(|d| {
        let name = &d.name;
        let serde_name = d.ident.to_string();
        quote!(#name => ::es_core::decode_tagged(#serde_name, payload)
            .map_err(::es_core::DecodeError::Payload))
    });
    let decode_flattened = flattened.map(|d| {
        let variant = &d.ident;
        let inner = d.flatten.as_ref().map(|t| quote!(#t)).unwrap_or_default();
        quote! {
            other if ::es_core::current_version::<#inner>(other).is_some() =>
                <#inner as ::es_core::DomainEvent>::decode(other, payload).map(Self::#variant)
        }
    });
    let personal = personal_method_of_enum(defs);
    quote! {
        impl #impl_generics ::es_core::DomainEvent for #ident #ty_generics #where_clause {
            const TYPES: &'static [::es_core::EventType] = #types;

            #personal

            fn event_type(&self) -> &'static str {
                match self { #(#type_arms,)* }
            }

            fn encode(&self) -> ::core::result::Result<
                ::std::boxed::Box<::es_core::__private::serde_json::value::RawValue>,
                ::es_core::__private::serde_json::Error,
            > {
                match self {
                    #(#encode_arms,)*
                    #encode_rest
                }
            }

            fn decode(
                event_type: &str,
                payload: &str,
            ) -> ::core::result::Result<Self, ::es_core::DecodeError> {
                match event_type {
                    #(#decode_arms,)*
                    #(#decode_flattened,)*
                    other => ::core::result::Result::Err(
                        ::es_core::DecodeError::UnknownType(other.to_owned()),
                    ),
                }
            }
        }
    }
}

/// `personal_data` of an enum: each variant's declared fields, a flattened variant's inner
/// event's; nothing generated when no variant has either.
fn personal_method_of_enum(defs: &[EventDef]) -> TokenStream {
    if defs
        .iter()
        .all(|d| d.personal.is_none() && d.flatten.is_none())
    {
        return TokenStream::new();
    }
    let arms = defs.iter().filter_map(|d| {
        let variant = &d.ident;
        if d.flatten.is_some() {
            return Some(
                quote!(Self::#variant(inner) => ::es_core::DomainEvent::personal_data(inner)),
            );
        }
        let fields = d.personal.as_ref()?;
        let data = crate::personal::data(fields);
        let pattern = match &fields.subject {
            Some(subject) => quote!(Self::#variant { #subject, .. }),
            None => quote!(Self::#variant { .. }),
        };
        Some(quote!(#pattern => #data))
    });
    quote! {
        fn personal_data(&self) -> ::core::option::Option<::es_core::PersonalData> {
            #[allow(unreachable_patterns)]
            match self {
                #(#arms,)*
                _ => ::core::option::Option::None,
            }
        }
    }
}

fn expand_struct(
    input: &DeriveInput,
    name: &str,
    version: u32,
    personal: Option<&crate::personal::PersonalFields>,
) -> TokenStream {
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let personal = personal.map(|fields| {
        let data = crate::personal::data(fields);
        let bind = match &fields.subject {
            Some(subject) => quote!(let Self { #subject, .. } = self;),
            None => TokenStream::new(),
        };
        quote! {
            fn personal_data(&self) -> ::core::option::Option<::es_core::PersonalData> {
                #bind
                #data
            }
        }
    });
    quote! {
        impl #impl_generics ::es_core::DomainEvent for #ident #ty_generics #where_clause {
            const TYPES: &'static [::es_core::EventType] =
                &[::es_core::EventType { name: #name, version: #version }];

            #personal

            fn event_type(&self) -> &'static str {
                #name
            }

            fn encode(&self) -> ::core::result::Result<
                ::std::boxed::Box<::es_core::__private::serde_json::value::RawValue>,
                ::es_core::__private::serde_json::Error,
            > {
                ::es_core::__private::serde_json::value::to_raw_value(self)
            }

            fn decode(
                event_type: &str,
                payload: &str,
            ) -> ::core::result::Result<Self, ::es_core::DecodeError> {
                if event_type != #name {
                    return ::core::result::Result::Err(
                        ::es_core::DecodeError::UnknownType(event_type.to_owned()),
                    );
                }
                ::es_core::__private::serde_json::from_str(payload).map_err(::es_core::DecodeError::Payload)
            }
        }
    }
}

/// `#[event(apply_trait = T)]`: a trait with one method per event (`on_<snake_case name>`, taking
/// the variant's fields by reference) and `apply_to`, which calls the method of the event.
fn expand_apply_trait(input: &DeriveInput, defs: &[EventDef], trait_ident: &Ident) -> TokenStream {
    let ident = &input.ident;
    let vis = &input.vis;
    let mut methods = Vec::new();
    let mut arms = Vec::new();
    for def in defs {
        let variant = &def.ident;
        let method = Ident::new(
            &format!("on_{}", snake_case(&variant.to_string())),
            variant.span(),
        );
        let doc = format!("Applies a `{}` event.", def.name);
        match &def.fields {
            Fields::Named(fields) => {
                let names: Vec<_> = fields
                    .named
                    .iter()
                    .filter_map(|f| f.ident.clone())
                    .collect();
                let types = fields.named.iter().map(|f| borrowed(&f.ty));
                methods.push(quote!(#[doc = #doc] fn #method(&mut self, #(#names: &#types),*);));
                arms.push(quote!(Self::#variant { #(#names),* } => target.#method(#(#names),*)));
            }
            Fields::Unnamed(fields) => {
                let names: Vec<_> = (0..fields.unnamed.len())
                    .map(|i| Ident::new(&format!("field{i}"), variant.span()))
                    .collect();
                let types = fields.unnamed.iter().map(|f| borrowed(&f.ty));
                methods.push(quote!(#[doc = #doc] fn #method(&mut self, #(#names: &#types),*);));
                arms.push(quote!(Self::#variant(#(#names),*) => target.#method(#(#names),*)));
            }
            Fields::Unit => {
                methods.push(quote!(#[doc = #doc] fn #method(&mut self);));
                arms.push(quote!(Self::#variant => target.#method()));
            }
        }
    }
    let trait_doc =
        format!("One method per `{ident}` event, for aggregates that apply them one by one.");
    quote! {
        #[doc = #trait_doc]
        // Parameters borrow the variants' fields: `&str` for a `String`, `&[T]` for a
        // `Vec<T>`, `&T` otherwise.
        #[allow(clippy::too_many_arguments)]
        #vis trait #trait_ident {
            #(#methods)*
        }

        impl #ident {
            /// Calls the method of `target` that applies this event.
            #vis fn apply_to<T: #trait_ident + ?::core::marker::Sized>(&self, target: &mut T) {
                match self { #(#arms,)* }
            }
        }
    }
}

/// What a field of type `ty` is lent as: `str` for `String`, `[T]` for `Vec<T>` (the usual
/// borrowed forms, which the `&String` and `&Vec<T>` bound in the match coerce to), `ty`
/// otherwise.
fn borrowed(ty: &syn::Type) -> TokenStream {
    if let syn::Type::Path(path) = ty
        && path.qself.is_none()
        && let Some(last) = path.path.segments.last()
    {
        match (&last.ident.to_string()[..], &last.arguments) {
            ("String", syn::PathArguments::None) => return quote!(str),
            ("Vec", syn::PathArguments::AngleBracketed(args)) if args.args.len() == 1 => {
                if let Some(syn::GenericArgument::Type(item)) = args.args.first() {
                    return quote!([#item]);
                }
            }
            _ => {}
        }
    }
    quote!(#ty)
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}
