//! The trace link from a request to the job it dispatched, through OpenTelemetry: the
//! dispatch stores the request span's `traceparent`, and the `job` span, run by workers
//! on another runtime, carries a link to that span. A binary of its own: it installs a
//! global subscriber with the OpenTelemetry layer and an in-memory exporter.

#[path = "it/common/mod.rs"]
mod common;

use std::time::Duration;

use common::{Drain, Record, TestDb};
use lightjobs::Workers;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[actix_rt::test]
async fn the_job_span_links_to_the_request_that_dispatched_it() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("otel-test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let db = TestDb::new("otel_link").await;
    let queue = db.migrated().await;
    let request = tracing::info_span!("POST /signup");
    let (trace_id, span_id) = {
        let cx = request.context();
        let sc = cx.span().span_context().clone();
        (sc.trace_id(), sc.span_id())
    };
    // As in a handler that runs inside its request's span.
    let id = async {
        queue
            .dispatch(Record {
                tag: "traced".into(),
            })
            .await
    }
    .instrument(request.clone())
    .await
    .unwrap();
    drop(request);
    // An untraced dispatch stores nothing.
    let plain = queue
        .dispatch(Record {
            tag: "plain".into(),
        })
        .await
        .unwrap();

    let stored: Option<String> = db
        .scalar(&format!("SELECT trace_parent FROM jobs WHERE id = {id}"))
        .await;
    assert_eq!(
        stored,
        Some(format!("00-{trace_id:032x}-{span_id:016x}-01")),
        "the request span's context, as a W3C traceparent"
    );
    let none: Option<String> = db
        .scalar(&format!("SELECT trace_parent FROM jobs WHERE id = {plain}"))
        .await;
    assert_eq!(none, None);

    Workers::new(queue.clone())
        .register::<Record>()
        .data(db.pool.clone())
        .poll_interval(Duration::from_millis(10), Duration::from_millis(50))
        .drain()
        .await;
    let _ = provider.force_flush();

    let spans = exporter.get_finished_spans().unwrap();
    let jobs: Vec<_> = spans.iter().filter(|s| s.name == "job").collect();
    assert_eq!(jobs.len(), 2, "{spans:#?}");
    let linked: Vec<_> = jobs
        .iter()
        .filter(|s| {
            s.links.iter().any(|l| {
                l.span_context.trace_id() == trace_id && l.span_context.span_id() == span_id
            })
        })
        .collect();
    assert_eq!(
        linked.len(),
        1,
        "one job span links to the request: {jobs:#?}"
    );
    assert!(
        linked[0]
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "id" && kv.value.as_str() == id.to_string()),
        "and it is the traced job's: {:#?}",
        linked[0]
    );
    assert_ne!(
        linked[0].span_context.trace_id(),
        trace_id,
        "a link, not a child: the job is a trace of its own"
    );
    db.drop_db().await;
}
