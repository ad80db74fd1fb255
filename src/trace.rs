//! Trace context from a dispatch to its job: the W3C `traceparent` of the span that
//! dispatched it is stored with the job, and the job's `job` span links to it, so a trace
//! shows the request and the job it caused, across processes.
//!
//! With the `opentelemetry` feature the context is taken from the current `tracing` span
//! (through `tracing-opentelemetry`) at dispatch, and the link is an OpenTelemetry span
//! link. Without it, a dispatch stores a `traceparent` given with
//! [`Dispatch::trace_parent`](crate::Dispatch::trace_parent), and the job's span records
//! it as a field.

use crate::error::{Error, Result};

/// The parts of a `traceparent`: version `00`, a trace id of 32 hex digits, a parent span
/// id of 16, flags of 2; neither id all zeros (the W3C format's invalid value).
fn parts(value: &str) -> Option<(&str, &str, u8)> {
    let mut it = value.split('-');
    let (version, trace, span, flags) = (it.next()?, it.next()?, it.next()?, it.next()?);
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let ok = it.next().is_none()
        && version == "00"
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0')
        && span.bytes().any(|b| b != b'0');
    ok.then(|| (trace, span, u8::from_str_radix(flags, 16).unwrap_or(0)))
}

/// Refuses a value that is not a `traceparent` (what the column and the link expect).
pub(crate) fn check(value: &str) -> Result<()> {
    match parts(value) {
        Some(_) => Ok(()),
        None => Err(Error::invalid(
            "trace_parent",
            format!("`{value}` is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, lowercase)"),
        )),
    }
}

/// The current span's context as a `traceparent`, when there is one to carry.
#[cfg(feature = "opentelemetry")]
pub(crate) fn current() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn current() -> Option<String> {
    None
}

/// Links the job's `span` to the dispatch's context.
#[cfg(feature = "opentelemetry")]
pub(crate) fn link(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let Some((trace, parent, flags)) = parts(traceparent) else {
        return;
    };
    let (Ok(trace), Ok(parent)) = (TraceId::from_hex(trace), SpanId::from_hex(parent)) else {
        return;
    };
    span.add_link(SpanContext::new(
        trace,
        parent,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    ));
}

#[cfg(not(feature = "opentelemetry"))]
pub(crate) fn link(_span: &tracing::Span, _traceparent: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_w3c_traceparent_passes() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parts(good),
            Some(("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1))
        );
        assert!(check(good).is_ok());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
