//! Attempts of a batch handler (`async fn(Vec<E>)`, `batch(max, linger)`): due records are
//! gathered, up to `max` for at most `linger` after the first, then started in one call; up to
//! `concurrency` batches at once. Each record of a batch finishes on its own (`Done` each).

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant as StdInstant};

use tokio::time::Instant;
use tracing::Instrument;

use super::attempt::{guarded, Attempts, Done, Failure, InFlight};
use super::partitions::Partitions;
use super::Level;
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
    /// The outbox every context of a batch shares: it refuses emits.
    outbox: Outbox,
}

impl Batches {
    pub(super) fn new(call: BatchCall, max: u32, linger: Duration, concurrency: usize) -> Self {
        let max = max.max(1) as usize;
        Self {
            call,
            max,
            linger,
            concurrency: concurrency.max(1),
            in_flight: InFlight::new(concurrency),
            gathered: Vec::with_capacity(max),
            deadline: None,
            outbox: Outbox::of_batch(),
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
        for Gathered {
            record,
            generation,
            due,
        } in gathered
        {
            level.metrics.started(due);
            let context = level.context(&record, self.outbox.clone());
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
                let dones = settle(members, outcomes, &span, began);
                return self.in_flight.push(Box::pin(std::future::ready(dones)));
            }
        };
        let mut outcomes: Vec<Result<(), Failure>> = (0..len).map(|_| Ok(())).collect();
        for (position, error) in undecodable {
            outcomes[position] = Err(Failure::decode(error));
        }
        let timeout = level.spec.timeout();
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
            settle(members, outcomes, &tracing::Span::current(), began)
        };
        self.in_flight.push(Box::pin(batch.instrument(span)));
    }
}

/// Each record of a batch with its outcome, as a finished attempt of its own.
fn settle(
    members: Vec<(Record, u32)>,
    outcomes: Vec<Result<(), Failure>>,
    span: &tracing::Span,
    started: StdInstant,
) -> Vec<Done> {
    members
        .into_iter()
        .zip(outcomes)
        .map(|((record, generation), result)| Done {
            record,
            generation,
            result,
            span: AttemptSpan::of(span),
            started,
            outputs: Vec::new(),
        })
        .collect()
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
