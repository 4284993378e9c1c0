//! Optional OTLP trace export (`[telemetry.otlp]`): each HTTP request is a
//! server span (`GET /api/v1/conversations/{id}`, with its method, route
//! template, status and request id) sent in batches to a collector over
//! OTLP/HTTP (protobuf). The exporter uses the node's own reqwest client,
//! run on the node's tokio runtime.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};

use crate::config::Otlp;

/// The exporter's HTTP client: reqwest on the node's runtime (the batch
/// processor calls it from its own thread).
#[derive(Debug)]
struct Client {
    http: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: hyper::http::Request<bytes::Bytes>,
    ) -> Result<hyper::http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let work = async move {
            let (parts, body) = request.into_parts();
            let mut req = http.request(parts.method, parts.uri.to_string()).body(body);
            for (k, v) in parts.headers.iter() {
                req = req.header(k, v);
            }
            let resp = req.send().await?;
            let mut out = hyper::http::Response::builder().status(resp.status());
            for (k, v) in resp.headers() {
                out = out.header(k, v);
            }
            let body = resp.bytes().await?;
            Ok::<_, opentelemetry_http::HttpError>(out.body(body)?)
        };
        self.runtime.spawn(work).await?
    }
}

/// The tracer provider for `[telemetry.otlp]`; spans reach it through the
/// `tracing` layer `layer` builds. Shut it down at exit to send the last
/// batch.
pub fn provider(cfg: &Otlp, runtime: tokio::runtime::Handle) -> anyhow::Result<SdkTracerProvider> {
    crate::tls::install_default_provider();
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        runtime,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(format!("{}/v1/traces", cfg.endpoint.trim_end_matches('/')))
        .with_headers(cfg.headers.clone().into_iter().collect())
        .with_timeout(Duration::from_secs(10))
        .build()?;
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(8192)
                .with_scheduled_delay(Duration::from_millis(cfg.batch_delay_ms))
                .build(),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            cfg.sample_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(cfg.service_name.clone())
                .build(),
        )
        .build())
}

/// The `tracing` layer that turns spans into OTLP spans.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("threadline"))
}
