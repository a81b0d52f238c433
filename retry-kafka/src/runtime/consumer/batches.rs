//! Attempts of a batch handler (`async fn(Vec<E>)`, `batch(max, linger)`): due records are
//! gathered, up to `max` for at most `linger` after the first, then started in one call; up to
//! `concurrency` batches at once. Each record of a batch finishes on its own (`Done` each).

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant as StdInstant};

use tokio::time::Instant;
use tracing::Instrument;

use super::attempt::{guarded, Attempts, Done, Failure, InFlight};
use super::outputs::{self, OutputRoute};
use super::partitions::Partitions;
use super::Level;
use crate::backend::Output;
use crate::backend::Record;
use crate::batch::{BatchInput, BatchStart};
use crate::handlers::BatchCall;
use crate::outbox::Outbox;
use crate::trace::AttemptSpan;

/// A record gathered for the next batch.
struct Gathered {
    record: Record,
    /// Its partition's generation when it was gathered.
    generation: u32,
    /// Its `rk-due-at`, for the lateness metric.
    due: Option<i64>,
}

/// Calls of a batch handler, and the batch being gathered.
pub(super) struct Batches {
    call: BatchCall,
    max: usize,
    linger: Duration,
    concurrency: usize,
    in_flight: InFlight<Vec<Done>>,
    /// In the order started.
    gathered: Vec<Gathered>,
    /// When the batch starts even if not full.
    deadline: Option<Instant>,
    /// Where successful records' outputs go.
    route: OutputRoute,
}

impl Batches {
    pub(super) fn new(
        call: BatchCall,
        max: u32,
        linger: Duration,
        concurrency: usize,
        route: OutputRoute,
    ) -> Self {
        let max = max.max(1) as usize;
        Self {
            call,
            max,
            linger,
            concurrency: concurrency.max(1),
            in_flight: InFlight::new(concurrency),
            gathered: Vec::with_capacity(max),
            deadline: None,
            route,
        }
    }

    fn full(&self) -> bool {
        self.gathered.len() >= self.max
    }

    fn slot_free(&self) -> bool {
        self.in_flight.len() < self.concurrency
    }

    /// Starts the gathered batch: its records of partitions still assigned, decoded, in one
    /// call of the handler. What does not decode fails on its own (to the dead letters).
    fn launch_now(&mut self, level: &Level, partitions: &Partitions) {
        self.deadline = None;
        let mut gathered = std::mem::replace(&mut self.gathered, Vec::with_capacity(self.max));
        gathered.retain(|g| partitions.is_current(g.record.partition, g.generation));
        if gathered.is_empty() {
            return;
        }
        let began = StdInstant::now();
        let span = tracing::info_span!(
            "batch",
            topic = %level.topic,
            group = level.spec.group(),
            attempt = level.level + 1,
            records = gathered.len(),
        );
        let mut input = Vec::with_capacity(gathered.len());
        let mut members = Vec::with_capacity(gathered.len());
        // One per record: each record's outputs are written if that record succeeds.
        let mut outboxes = Vec::with_capacity(gathered.len());
        for Gathered {
            record,
            generation,
            due,
        } in gathered
        {
            level.metrics.started(due);
            let outbox = Outbox::default();
            let context = level.context(&record, outbox.clone());
            outboxes.push(outbox);
            input.push((record.payload.clone().unwrap_or_default(), context));
            members.push((record, generation));
        }
        let call = self.call;
        let started = {
            let _entered = span.enter();
            std::panic::catch_unwind(AssertUnwindSafe(|| call(BatchInput { records: input })))
        };
        let len = members.len();
        let BatchStart {
            undecodable,
            positions,
            future,
        } = match started {
            Ok(started) => started,
            Err(panic) => {
                let failure = Failure::panic(&*panic);
                let outcomes = (0..len).map(|_| Err(failure.clone())).collect();
                let batch = Batch {
                    members,
                    outboxes,
                    started: began,
                };
                let route = self.route.clone();
                let settled = async move { batch.settle(outcomes, &route, &tracing::Span::current()).await };
                return self.in_flight.push(Box::pin(settled.instrument(span)));
            }
        };
        let mut outcomes: Vec<Result<(), Failure>> = (0..len).map(|_| Ok(())).collect();
        for (position, error) in undecodable {
            outcomes[position] = Err(Failure::decode(error));
        }
        let timeout = level.spec.timeout();
        let (route, batch) = (
            self.route.clone(),
            Batch {
                members,
                outboxes,
                started: began,
            },
        );
        let batch = async move {
            if let Some(future) = future {
                match guarded(future, timeout).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        let failed = error.into_outcomes(positions.len());
                        for (&position, error) in positions.iter().zip(failed) {
                            if let Some(error) = error {
                                outcomes[position] = Err(Failure::from(error));
                            }
                        }
                    }
                    Err(failure) => {
                        for &position in &positions {
                            outcomes[position] = Err(failure.clone());
                        }
                    }
                }
            }
            batch.settle(outcomes, &route, &tracing::Span::current()).await
        };
        self.in_flight.push(Box::pin(batch.instrument(span)));
    }
}

/// A started batch's records, with what each one's context emits.
struct Batch {
    members: Vec<(Record, u32)>,
    outboxes: Vec<Outbox>,
    started: StdInstant,
}

impl Batch {
    /// Each record of the batch with its outcome, as a finished attempt of its own: a
    /// successful record's outputs kept for the consumer's transaction, or published first
    /// (all the batch's at once; a record whose output failed fails).
    async fn settle(
        self,
        mut outcomes: Vec<Result<(), Failure>>,
        route: &OutputRoute,
        span: &tracing::Span,
    ) -> Vec<Done> {
        let Batch {
            members,
            outboxes,
            started,
        } = self;
        let mut outputs: Vec<Vec<Output>> = outcomes
            .iter()
            .zip(&outboxes)
            .map(|(outcome, outbox)| {
                let emitted = outbox.close();
                match outcome {
                    Ok(()) if !emitted.is_empty() => outputs::outputs(emitted),
                    _ => Vec::new(),
                }
            })
            .collect();
        if let OutputRoute::Publish(publisher) = route {
            if outputs.iter().any(|each| !each.is_empty()) {
                let failed = outputs::publish_each(&**publisher, &mut outputs).await;
                for (outcome, failure) in outcomes.iter_mut().zip(failed) {
                    if let Some(message) = failure {
                        *outcome = Err(Failure::transient(message));
                    }
                }
            }
        }
        members
            .into_iter()
            .zip(outcomes)
            .zip(outputs)
            .map(|(((record, generation), result), outputs)| Done {
                record,
                generation,
                result,
                span: AttemptSpan::of(span),
                started,
                outputs,
            })
            .collect()
    }
}

impl Attempts for Batches {
    type Finished = Vec<Done>;

    /// Room in the batch being gathered: batches in flight are bounded when one starts.
    fn room(&self) -> bool {
        !self.full()
    }

    fn start(&mut self, _: &Level, record: Record, generation: u32, due: Option<i64>) -> Option<Vec<Done>> {
        if self.gathered.is_empty() {
            self.deadline = Some(Instant::now() + self.linger);
        }
        self.gathered.push(Gathered {
            record,
            generation,
            due,
        });
        None
    }

    /// A batch starts when full, when its linger is over, or at shutdown (what was gathered
    /// runs, like any attempt in flight), once a slot is free.
    fn launch(&mut self, level: &Level, stopping: bool, partitions: &Partitions) {
        let due = !self.gathered.is_empty()
            && (stopping || self.full() || self.deadline.is_some_and(|at| at <= Instant::now()));
        if due && self.slot_free() {
            self.launch_now(level, partitions);
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        self.deadline.filter(|_| self.slot_free())
    }

    fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn idle(&self) -> bool {
        self.in_flight.len() == 0 && self.gathered.is_empty()
    }

    fn next(&mut self) -> impl std::future::Future<Output = Vec<Done>> + Send {
        self.in_flight.next()
    }
}
