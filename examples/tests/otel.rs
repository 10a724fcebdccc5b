//! With the `otel` feature, one transfer is one OpenTelemetry trace: the request's spans, and
//! every saga command's, which continues the trace context its causing event carries in its
//! metadata (written there by the command that stored the event).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;

mod common;

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

#[test]
fn one_transfer_is_one_trace_across_the_log() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
    let _guard = tracing::subscriber::set_default(Registry::default().with(layer));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (correlation, stored) = runtime.block_on(common::one_transfer());
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let correlation = correlation.to_string();
    let ours: Vec<&SpanData> = spans
        .iter()
        .filter(|s| attribute(s, "correlation_id").as_deref() == Some(correlation.as_str()))
        .collect();
    let names: Vec<&str> = ours.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "saga_command").count(),
        3,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "execute").count(),
        4,
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| **n == "append").count(),
        4,
        "{names:?}"
    );

    // One trace.
    let trace = ours[0].span_context.trace_id();
    assert!(
        ours.iter().all(|s| s.span_context.trace_id() == trace),
        "{:?}",
        ours.iter()
            .map(|s| (s.name.as_ref(), s.span_context.trace_id().to_string()))
            .collect::<Vec<_>>()
    );

    // Every stored event names the span that wrote it; each saga command is that span's child.
    let traceparents: HashMap<String, String> = stored
        .iter()
        .map(|e| {
            let traceparent = es_core::otel::traceparent_of(&e.metadata)
                .unwrap_or_else(|| panic!("{} carries no traceparent", e.event_type));
            (e.event_id.to_string(), traceparent)
        })
        .collect();
    for command in ours.iter().filter(|s| s.name == "saga_command") {
        let cause = attribute(command, "causation_id").unwrap();
        let parent = es_core::otel::parse_traceparent(&traceparents[&cause]).unwrap();
        assert_eq!(parent.trace_id(), trace);
        assert_eq!(
            command.parent_span_id,
            parent.span_id(),
            "the command continues its cause"
        );
        let writer = spans
            .iter()
            .find(|s| s.span_context.span_id() == parent.span_id())
            .expect("the span that wrote the cause was exported");
        assert_eq!(writer.name, "execute");
    }
}
