//! OpenTelemetry (feature `otel`): each step attempt's span joins the trace that the
//! `traceparent` header of its input names, and the `traceparent` the attempt sends on is
//! that span's own, so a run is one trace across every runner it touches.
//!
//! [`init_otlp`] installs a `tracing` subscriber that logs to stderr and exports spans over
//! OTLP/HTTP. Applications with their own subscriber add a `tracing_opentelemetry` layer
//! instead; the spans join their traces either way.

use std::collections::HashMap;

use inqubo_core::protocol::header;
use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt};

/// Why [`init_otlp`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtelError {
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP exporter")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The process already has a global `tracing` subscriber.
    #[error("a tracing subscriber is already installed")]
    Subscriber(#[from] tracing::subscriber::SetGlobalDefaultError),
}

/// Keeps the exporter running; dropping it flushes the spans not yet sent.
#[derive(Debug)]
#[must_use = "dropping the guard stops exporting"]
pub struct OtelGuard {
    provider: SdkTracerProvider,
}

impl OtelGuard {
    /// Sends every finished span now.
    pub fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "flushing spans failed");
        }
    }
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            tracing::warn!(%error, "shutting the span exporter down failed");
        }
    }
}

/// Installs a global `tracing` subscriber that logs to stderr (filtered by `RUST_LOG`,
/// default `inqubo=info`) and exports spans to the OTLP/HTTP collector at `endpoint` (such as
/// `http://127.0.0.1:4318`), naming this process `service_name`.
///
/// ```no_run
/// # fn demo() -> Result<(), inqubo_amqp::otel::OtelError> {
/// let _otel = inqubo_amqp::otel::init_otlp("billing-runner", "http://127.0.0.1:4318")?;
/// // ... build and run the runner; spans are flushed when `_otel` drops.
/// # Ok(()) }
/// ```
pub fn init_otlp(service_name: &str, endpoint: &str) -> Result<OtelGuard, OtelError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("inqubo");
    let subscriber = tracing_subscriber::registry()
        .with(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("inqubo=info")))
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(tracing_opentelemetry::layer().with_tracer(tracer));
    tracing::subscriber::set_global_default(subscriber)?;
    Ok(OtelGuard { provider })
}

/// Makes `span` a child of the span `incoming` names, and returns the `traceparent` of
/// `span` itself; `None` when no OpenTelemetry layer records spans.
pub(crate) fn adopt(span: &tracing::Span, incoming: Option<&str>) -> Option<String> {
    if let Some(parent) = incoming {
        // Our header is W3C's `traceparent`, the field the propagator reads.
        let carrier = HashMap::from([(header::TRACEPARENT.to_owned(), parent.to_owned())]);
        let parent = TraceContextPropagator::new().extract(&carrier);
        let _ = span.set_parent(parent);
    }
    traceparent_of(span)
}

/// The `traceparent` of `span`, if an OpenTelemetry layer records it.
pub(crate) fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_ref = context.span();
    let span_context = span_ref.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}
