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
    ///
    /// Each target is observed on its own: one whose query fails keeps its last values, is
    /// logged and counted in `es_observe_errors_total{target}`, and the others are still set,
    /// so a scrape during an outage still carries every counter. Returns how many failed.
    pub async fn observe(&self) -> usize {
        let mut failed = 0;
        let mut failure = |target: &str, error: &dyn std::fmt::Display| {
            failed += 1;
            tracing::warn!(target_name = target, %error, "observing for metrics failed");
            metrics::counter!(es_core::telemetry::OBSERVE_ERRORS, "target" => target.to_owned())
                .increment(1);
        };
        if let Err(error) = self.store.observe().await {
            failure("store", &error);
        }
        for projection in &self.projections {
            if let Err(error) = projection.observe().await {
                failure(projection.name(), &error);
            }
        }
        for saga in &self.sagas {
            if let Err(error) = saga.observe().await {
                failure(saga.name(), &error);
            }
        }
        failed
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
    use std::sync::Mutex;
    static HANDLE: Mutex<Option<metrics_exporter_prometheus::PrometheusHandle>> = Mutex::new(None);
    let mut installed = HANDLE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".to_owned()),
            &SECONDS_BUCKETS,
        )
        .map_err(|e| AdminError::Config(format!("the metrics exporter: {e}")))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| {
        AdminError::Config(
            "another metrics recorder is installed in this process; render its metrics instead"
                .to_owned(),
        )
    })?;
    es_core::telemetry::describe();
    // Histogram samples are drained at each render; without scrapes they would pile up.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .map_err(AdminError::Output)?;
    *installed = Some(handle.clone());
    Ok(handle)
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
