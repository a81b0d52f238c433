//! W3C trace context across hops (the `opentelemetry` feature).
//!
//! The consumer loop calls two hooks: [`adopt`] when it creates an attempt's `message` span
//! (the message's `traceparent` becomes the span's OpenTelemetry parent; a message without one
//! starts a trace), and [`AttemptSpan::hand_on`] when a failure goes to a retry level or the
//! dead-letter queue (the outgoing `traceparent` / `tracestate` become the attempt span's, so
//! the next hop's span is its child in the same trace).
//!
//! Headers are rewritten only when the span has a valid OpenTelemetry context, that is when
//! the user installed a `tracing-opentelemetry` layer; otherwise they travel unchanged. Without
//! the feature the hooks are empty and [`AttemptSpan`] has no size: nothing is compiled in.

#[cfg(feature = "opentelemetry")]
pub(crate) use enabled::{adopt, AttemptSpan};

#[cfg(not(feature = "opentelemetry"))]
pub(crate) use disabled::{adopt, AttemptSpan};

#[cfg(feature = "opentelemetry")]
mod enabled {
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry::Context;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::headers::{names, Headers};

    /// Makes the message's trace context the OpenTelemetry parent of its `message` span, before
    /// the span is first entered.
    pub(crate) fn adopt(span: &tracing::Span, headers: &Headers) {
        // An empty parent first: a message without a valid `traceparent` starts a trace of its
        // own rather than joining whatever span the consumer runs in. It also says whether an
        // OpenTelemetry layer sees the span at all; without one there is nothing to extract.
        // A disabled span (no subscriber wants it) has no OpenTelemetry layer to tell.
        if span.is_disabled()
            || span.set_parent(Context::new()).is_err()
            || headers.get(names::TRACEPARENT).is_none()
        {
            return;
        }
        let parent = TraceContextPropagator::new().extract_with_context(&Context::new(), &Reader(headers));
        if parent.has_active_span() {
            // Cannot fail: the span was not started, and the layer saw the first call.
            let _ = span.set_parent(parent);
        }
    }

    /// The OpenTelemetry context of an attempt's `message` span, kept until the attempt
    /// concludes so that a failure hands its trace on. Reference counts, no allocation; the
    /// span itself still closes when the handler is done.
    pub(crate) struct AttemptSpan(Context);

    impl AttemptSpan {
        /// Call after [`adopt`]: this starts the OpenTelemetry span, which fixes its parent.
        pub(crate) fn of(span: &tracing::Span) -> Self {
            AttemptSpan(span.context())
        }

        /// Writes the attempt span's context into the headers of the next hop, replacing the
        /// incoming `traceparent` / `tracestate`. Without an OpenTelemetry layer (no valid
        /// context) the headers stay as they came.
        pub(crate) fn hand_on(self, headers: &mut Headers) {
            if !self.0.span().span_context().is_valid() {
                return;
            }
            TraceContextPropagator::new().inject_context(&self.0, &mut Writer(headers));
        }
    }

    /// The propagator's view of a message's headers.
    struct Reader<'h>(&'h Headers);

    impl Extractor for Reader<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get_str(key)
        }

        fn keys(&self) -> Vec<&str> {
            self.0.iter().map(|(name, _)| name).collect()
        }
    }

    /// The propagator's pen on the next hop's headers: one header per name, in place.
    struct Writer<'h>(&'h mut Headers);

    impl Injector for Writer<'_> {
        fn set(&mut self, key: &str, value: String) {
            if value.is_empty() {
                // An empty `tracestate` is no state: none rather than a stale one.
                self.0.retain(|name| name != key);
            } else {
                self.0.replace(key, value);
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_writer_replaces_in_place_and_drops_an_empty_state() {
            let mut headers: Headers = [
                (names::TRACEPARENT, "00-old-01"),
                ("tenant", "acme"),
                (names::TRACESTATE, "vendor=1"),
                (names::TRACEPARENT, "00-duplicate-01"),
            ]
            .into_iter()
            .collect();
            let mut writer = Writer(&mut headers);
            writer.set(names::TRACEPARENT, "00-new-01".into());
            writer.set(names::TRACESTATE, String::new());
            let all: Vec<(&str, &[u8])> = headers.iter().collect();
            assert_eq!(
                all,
                [(names::TRACEPARENT, &b"00-new-01"[..]), ("tenant", &b"acme"[..])]
            );
            Writer(&mut headers).set(names::TRACESTATE, "vendor=2".into());
            assert_eq!(headers.get_str(names::TRACESTATE), Some("vendor=2"));
            assert_eq!(
                Reader(&headers).keys(),
                [names::TRACEPARENT, "tenant", names::TRACESTATE]
            );
        }
    }
}

#[cfg(not(feature = "opentelemetry"))]
mod disabled {
    use crate::headers::Headers;

    /// Nothing to keep: headers travel unchanged.
    #[inline(always)]
    pub(crate) fn adopt(_span: &tracing::Span, _headers: &Headers) {}

    /// Zero-sized: `Done` is as large as without it.
    pub(crate) struct AttemptSpan;

    impl AttemptSpan {
        #[inline(always)]
        pub(crate) fn of(_span: &tracing::Span) -> Self {
            AttemptSpan
        }

        #[inline(always)]
        pub(crate) fn hand_on(self, _headers: &mut Headers) {}
    }
}
