//! Metrics: [`Admin::observe`] sets every registered runner's gauges and the store's, and,
//! with the `prometheus` feature, [`prometheus_recorder`] installs the exporter whose
//! rendering a `/metrics` endpoint returns.

use crate::{Admin, AdminError};

impl Admin {
    /// Sets the gauges of the store (log head, transaction horizon), of every registered
    /// projection (lag in events and seconds, parked events, checkpoint, state) and of every
    /// saga (its feed's, outbox pending and dead-lettered, deadlines waiting, due and failing).
    /// Call it before rendering a scrape, or on a timer; the names are listed in
    /// [`es_core::telemetry`]. Counters and histograms need no call: they are recorded as the
    /// work happens, in whichever process does it.
    pub async fn observe(&self) -> Result<(), AdminError> {
        self.store.observe().await?;
        for projection in &self.projections {
            projection.observe().await?;
        }
        for saga in &self.sagas {
            saga.observe().await?;
        }
        Ok(())
    }
}

/// Upper bounds of the histogram buckets of every `_seconds` histogram: from a fast append
/// (a millisecond) to a slow saga command (ten seconds).
#[cfg(feature = "prometheus")]
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs a Prometheus recorder as the process's global metrics recorder (once: later
/// calls return a handle to the same one) and returns the handle whose
/// [`render`](metrics_exporter_prometheus::PrometheusHandle::render) is the text a
/// `/metrics` endpoint serves. Histograms ending in `_seconds` get
/// [`SECONDS_BUCKETS`]. Nothing listens on a port: the service's HTTP server (the console,
/// say) serves the text.
///
/// Fails when another recorder was installed first.
#[cfg(feature = "prometheus")]
pub fn prometheus_recorder() -> Result<metrics_exporter_prometheus::PrometheusHandle, AdminError> {
    use std::sync::OnceLock;
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    // Two threads may race here: the loser's install fails (a recorder is set) and it
    // returns the winner's handle once published.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".to_owned()),
            &SECONDS_BUCKETS,
        )
        .map_err(|e| AdminError::Config(format!("the metrics exporter: {e}")))?
        .build_recorder();
    let handle = recorder.handle();
    match metrics::set_global_recorder(recorder) {
        Ok(()) => {
            es_core::telemetry::describe();
            let _ = HANDLE.set(handle.clone());
            Ok(handle)
        }
        Err(_) => {
            for _ in 0..100 {
                if let Some(handle) = HANDLE.get() {
                    return Ok(handle.clone());
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(AdminError::Config(
                "another metrics recorder is installed in this process; render its metrics \
                 instead"
                    .to_owned(),
            ))
        }
    }
}

/// What [`otel_layer`] returns: the `tracing` layer to add to the service's subscriber, and
/// the tracer provider to shut down (flushing what is buffered) when the service stops.
#[cfg(feature = "otel")]
pub type OtelExport<S> = (
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    opentelemetry_sdk::trace::SdkTracerProvider,
);

/// An OpenTelemetry export of the service's spans over OTLP/HTTP (protobuf), batched on a
/// background thread, to the collector `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) names, `http://localhost:4318` by default, under the
/// service name `service`. Add the layer to the subscriber; with es-core's `otel` feature the
/// framework's spans then carry one trace from a command through the log to saga commands and,
/// through the relay's `traceparent` header, to consumers in other services.
///
/// ```no_run
/// use tracing_subscriber::layer::SubscriberExt;
/// # fn main() -> Result<(), es_admin::AdminError> {
/// let (layer, provider) = es_admin::otel_layer("bank")?;
/// let subscriber = tracing_subscriber::registry().with(layer);
/// tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
/// // ... run the service ...
/// provider.shutdown().ok();
/// # Ok(()) }
/// ```
#[cfg(feature = "otel")]
pub fn otel_layer<S>(service: &str) -> Result<OtelExport<S>, AdminError>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
        && std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
    {
        exporter = exporter.with_endpoint("http://localhost:4318/v1/traces");
    }
    let exporter = exporter
        .build()
        .map_err(|e| AdminError::Config(format!("the OTLP exporter: {e}")))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("es");
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
}
