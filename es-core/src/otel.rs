//! OpenTelemetry context across the log (feature `otel`): a command's events carry the W3C
//! `traceparent` of the span that wrote them in their metadata, and whoever acts on an event
//! later (a saga's command, a relay's consumer in another service) continues that trace. With
//! a `tracing-opentelemetry` layer installed, one request is then one trace however many
//! processes, brokers and hops it crosses.
//!
//! Only the trace context format is implemented here (no SDK): exporting is the service's
//! choice (`es_admin::otel_layer` gives an OTLP one).

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Metadata;

/// The metadata key (and relay header) holding the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The W3C `traceparent` of the current span, when an OpenTelemetry layer gives it a valid
/// context.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let span = context.span();
    let span = span.span_context();
    span.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        )
    })
}

/// Reads a W3C `traceparent` (version 00); `None` when malformed.
pub fn parse_traceparent(text: &str) -> Option<SpanContext> {
    if !text
        .bytes()
        .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut parts = text.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(trace, span, TraceFlags::new(flags), true, TraceState::NONE);
    context.is_valid().then_some(context)
}

/// Makes `span` a child of the remote span `traceparent` names; does nothing when it is
/// malformed (a hostile or broken header must not break the work).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    if let Some(remote) = parse_traceparent(traceparent) {
        let parent = opentelemetry::Context::new().with_remote_span_context(remote);
        let _ = span.set_parent(parent);
    }
}

/// The `traceparent` an event's metadata carries.
pub fn traceparent_of(metadata: &Metadata) -> Option<String> {
    if !metadata.as_json().contains(TRACEPARENT) {
        return None;
    }
    metadata
        .get(TRACEPARENT)
        .and_then(|value| value.as_str().map(str::to_owned))
}

/// `metadata` with the current span's `traceparent` added, unless it holds one already (a
/// caller's own trace context wins) or no OpenTelemetry context is current. The caller's
/// metadata text is kept as written: the key is spliced in, not re-serialized.
pub(crate) fn stamped(metadata: &Metadata) -> std::borrow::Cow<'_, Metadata> {
    use std::borrow::Cow;
    if metadata.as_json().contains(TRACEPARENT) {
        return Cow::Borrowed(metadata);
    }
    let Some(traceparent) = current_traceparent() else {
        return Cow::Borrowed(metadata);
    };
    let text = metadata.as_json().trim();
    let Some(rest) = text.strip_prefix('{') else {
        return Cow::Borrowed(metadata);
    };
    let rest = rest.trim_start();
    let spliced = if rest.starts_with('}') {
        format!("{{\"{TRACEPARENT}\":\"{traceparent}\"}}")
    } else {
        format!("{{\"{TRACEPARENT}\":\"{traceparent}\",{rest}")
    };
    match Metadata::from_json(spliced) {
        Ok(stamped) => Cow::Owned(stamped),
        Err(_) => Cow::Borrowed(metadata),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_read_strictly() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parse_traceparent(good).expect("valid");
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(context.is_remote());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "<script>",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad:?}");
        }
    }
}
