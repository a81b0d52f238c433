//! Attempts of a handler of one record at a time (`async fn(E)`), up to `concurrency` at once.

use std::panic::AssertUnwindSafe;
use std::task::Poll;
use std::time::Instant as StdInstant;

use tokio::time::Instant;
use tracing::Instrument;

use super::attempt::{guarded, settled, Attempts, Done, Failure, InFlight};
use super::outputs::{self, OutputRoute};
use super::partitions::Partitions;
use super::Level;
use crate::backend::Record;
use crate::handlers::{HandlerCall, HandlerFuture, HandlerSlot};
use crate::outbox::{Emitted, Outbox};
use crate::trace::{self, AttemptSpan};

/// Calls of a one-record handler.
pub(super) struct OneRecord {
    call: HandlerCall,
    /// Where each call puts its handler's future; its box serves the next call when the
    /// attempt finished without waiting.
    slot: HandlerSlot,
    in_flight: InFlight<[Done; 1]>,
    concurrency: usize,
    /// Where successful attempts' outputs go.
    route: OutputRoute,
    /// The last inline attempt's outbox, for the next: no allocation per attempt.
    spare: Option<Outbox>,
}

impl OneRecord {
    pub(super) fn new(call: HandlerCall, concurrency: usize, route: OutputRoute) -> Self {
        Self {
            call,
            slot: HandlerSlot::default(),
            in_flight: InFlight::new(concurrency),
            concurrency: concurrency.max(1),
            route,
            spare: None,
        }
    }

    /// Starts an attempt. With `poll_now` (one attempt at a time, run inline) the handler is
    /// polled once here, in its slot: one that finishes without waiting (most do, or decode
    /// errors) is done without an allocation; one that waits is boxed with its state and
    /// polled again by the loop with a real waker, before anything else is started.
    fn attempt(&mut self, level: &Level, record: Record, generation: u32, poll_now: bool) -> Started {
        let began = StdInstant::now();
        let outbox = self.spare.take().unwrap_or_default();
        let context = level.context(&record, outbox.clone());
        let span = tracing::info_span!(
            "message",
            topic = %level.topic,
            partition = record.partition,
            offset = record.offset,
            group = level.spec.group(),
            attempt = level.level + 1,
        );
        trace::adopt(&span, &record.headers);
        let payload = record.payload.as_deref().unwrap_or_default();
        let (call, slot) = (self.call, &mut self.slot);
        let started = {
            let _entered = span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| call(payload, context, slot)))
        };
        let result = match started {
            Err(panic) => {
                slot.discard();
                Err(Failure::panic(&*panic))
            }
            Ok(Err(decode)) => Err(Failure::decode(decode)),
            Ok(Ok(())) if poll_now => {
                let polled = {
                    let _entered = span.enter();
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    std::panic::catch_unwind(AssertUnwindSafe(|| slot.poll(&mut cx)))
                };
                match polled {
                    Ok(Poll::Pending) => {
                        let handler = slot.take().expect("the call put its future");
                        let attempt = Attempt::new(record, generation, began, outbox, self.route.clone());
                        return Started::Running(running(level, attempt, handler, span));
                    }
                    Ok(Poll::Ready(outcome)) => outcome.map_err(Failure::from),
                    Err(panic) => {
                        slot.discard();
                        Err(Failure::panic(&*panic))
                    }
                }
            }
            Ok(Ok(())) => {
                let handler = slot.take().expect("the call put its future");
                let attempt = Attempt::new(record, generation, began, outbox, self.route.clone());
                return Started::Running(running(level, attempt, handler, span));
            }
        };
        let emitted = outbox.close();
        let outputs = match &self.route {
            _ if result.is_err() || emitted.is_empty() => Vec::new(),
            OutputRoute::Consumer => outputs::outputs(emitted),
            OutputRoute::Publish(_) => {
                // Finished without waiting, but its outputs are written before it counts.
                let attempt = Attempt::new(record, generation, began, outbox, self.route.clone());
                return Started::Running(publishing(attempt, emitted, span));
            }
        };
        self.spare = outbox.reused();
        Started::Done(Done {
            record,
            generation,
            result,
            span: AttemptSpan::of(&span),
            started: began,
            outputs,
        })
    }
}

/// What an attempt that goes on after its start carries to its end.
struct Attempt {
    record: Record,
    generation: u32,
    started: StdInstant,
    outbox: Outbox,
    route: OutputRoute,
}

impl Attempt {
    fn new(record: Record, generation: u32, started: StdInstant, outbox: Outbox, route: OutputRoute) -> Self {
        Self {
            record,
            generation,
            started,
            outbox,
            route,
        }
    }

    /// The attempt's end: `result`, with what it emitted written or kept (`settled`).
    async fn done(self, result: Result<(), Failure>, emitted: Vec<Emitted>, span: AttemptSpan) -> Done {
        let (result, outputs) = settled(result, emitted, &self.route).await;
        Done {
            record: self.record,
            generation: self.generation,
            result,
            span,
            started: self.started,
            outputs,
        }
    }
}

/// A started attempt: finished at once, or under way.
// `Done` is returned and taken apart at once; boxing it would add the allocation this saves.
#[allow(clippy::large_enum_variant)]
enum Started {
    Done(Done),
    Running(Running),
}

/// An attempt whose handler is waiting.
type Running = super::attempt::AttemptFuture<[Done; 1]>;

/// An attempt whose handler is waiting: boxed, to run in the loop or on its own task.
fn running(level: &Level, attempt: Attempt, handler: HandlerFuture, span: tracing::Span) -> Running {
    let timeout = level.spec.timeout();
    let attempt_span = AttemptSpan::of(&span);
    Box::pin(
        async move {
            let result = match guarded(handler, timeout).await {
                Ok(outcome) => outcome.map_err(Failure::from),
                Err(failure) => Err(failure),
            };
            let emitted = attempt.outbox.close();
            [attempt.done(result, emitted, attempt_span).await]
        }
        .instrument(span),
    )
}

/// A successful attempt that finished without waiting, its outputs being published.
fn publishing(attempt: Attempt, emitted: Vec<Emitted>, span: tracing::Span) -> Running {
    let attempt_span = AttemptSpan::of(&span);
    Box::pin(async move { [attempt.done(Ok(()), emitted, attempt_span).await] }.instrument(span))
}

impl Attempts for OneRecord {
    type Finished = [Done; 1];

    fn room(&self) -> bool {
        self.in_flight.len() < self.concurrency
    }

    fn start(
        &mut self,
        level: &Level,
        record: Record,
        generation: u32,
        due: Option<i64>,
    ) -> Option<[Done; 1]> {
        level.metrics.started(due);
        // One at a time, an attempt that finishes without waiting (a handler that never
        // awaits) is concluded at once, not in another round of the loop.
        match self.attempt(level, record, generation, self.in_flight.is_inline()) {
            Started::Done(done) => Some([done]),
            Started::Running(running) => {
                self.in_flight.push(running);
                None
            }
        }
    }

    fn launch(&mut self, _: &Level, _: bool, _: &Partitions) {}

    fn wake_at(&self) -> Option<Instant> {
        None
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn idle(&self) -> bool {
        self.in_flight.len() == 0
    }

    fn next(&mut self) -> impl std::future::Future<Output = [Done; 1]> + Send {
        self.in_flight.next()
    }
}
