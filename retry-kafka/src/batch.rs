//! Batch handlers: `#[retry_handler(batch(max = 500, linger = "50ms"), ..)]` on an
//! `async fn(Vec<E>)` or `async fn(Vec<E>, BatchContext)`.
//!
//! The runtime gathers due records of one level into a batch, decodes each (a record that does
//! not decode goes to the dead-letter queue on its own, without failing the batch), calls the
//! handler once, and settles each record by what the handler said of it: succeeded records are
//! acknowledged, each failed one walks the retry levels on its own.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::context::Context;
use crate::event::{CodecError, Event};
use crate::failure::HandlerError;

/// The future a batch handler returns, boxed like [`HandlerFuture`](crate::handlers::HandlerFuture).
#[doc(hidden)]
pub type BatchFuture = Pin<Box<dyn Future<Output = Result<(), BatchError>> + Send + 'static>>;

/// What the runtime gathered: each record's payload and context, in the batch's order.
#[doc(hidden)]
pub struct BatchInput {
    pub(crate) records: Vec<(Bytes, Context)>,
}

/// A started batch: the records that did not decode, and the handler's future over the rest.
#[doc(hidden)]
pub struct BatchStart {
    /// Positions in the input of the records that did not decode, with why.
    pub(crate) undecodable: Vec<(usize, CodecError)>,
    /// The input position of each event the handler got, in its order.
    pub(crate) positions: Vec<usize>,
    /// The handler's future; `None` when no record decoded.
    pub(crate) future: Option<BatchFuture>,
}

impl BatchInput {
    /// Decodes each record as an `E` and starts `handler` on those that decoded; what a
    /// `#[retry_handler(batch(..))]` expansion calls.
    pub fn start<E, F, Fut>(self, handler: F) -> BatchStart
    where
        E: Event,
        F: FnOnce(Vec<E>, BatchContext) -> Fut,
        Fut: Future<Output = Result<(), BatchError>> + Send + 'static,
    {
        let len = self.records.len();
        let mut events = Vec::with_capacity(len);
        let mut contexts = Vec::with_capacity(len);
        let mut positions = Vec::with_capacity(len);
        let mut undecodable = Vec::new();
        for (position, (payload, context)) in self.records.into_iter().enumerate() {
            match E::decode(&payload) {
                Ok(event) => {
                    events.push(event);
                    contexts.push(context);
                    positions.push(position);
                }
                Err(error) => undecodable.push((position, error)),
            }
        }
        let future =
            (!events.is_empty()).then(|| Box::pin(handler(events, BatchContext { contexts })) as BatchFuture);
        BatchStart {
            undecodable,
            positions,
            future,
        }
    }
}

/// What a batch handler knows about its records: one [`Context`] per event, in the order of
/// the `Vec` it got.
///
/// Every record of a batch comes from the same level, so they share the attempt number.
///
/// ```
/// use retry_kafka::prelude::*;
/// use retry_kafka::handler::{BatchContext, BatchError};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Event, Serialize, Deserialize)]
/// # #[event(topic = "clicks")]
/// # struct Click { page: String }
///
/// #[retry_handler(batch(max = 500, linger = "50ms"), retries = ["10s"], dlq)]
/// async fn store(clicks: Vec<Click>, ctx: BatchContext) -> Result<(), BatchError> {
///     for (click, record) in clicks.iter().zip(ctx.iter()) {
///         tracing::debug!(page = %click.page, partition = record.partition(), offset = record.offset());
///     }
///     if ctx.is_last_attempt() {
///         tracing::warn!(records = ctx.len(), "last attempt for this batch");
///     }
///     Ok(())
/// }
/// ```
#[derive(Debug, Clone)]
pub struct BatchContext {
    contexts: Vec<Context>,
}

impl BatchContext {
    /// How many events the batch has.
    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    /// Whether the batch is empty (it never is: a batch starts with at least one event).
    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }

    /// The context of the event at `index`.
    pub fn get(&self, index: usize) -> Option<&Context> {
        self.contexts.get(index)
    }

    /// Each event's context, in order.
    pub fn iter(&self) -> std::slice::Iter<'_, Context> {
        self.contexts.iter()
    }

    /// This attempt's number, shared by the batch: 1 on the main topic, `n + 1` on retry
    /// level `n`.
    pub fn attempt(&self) -> u32 {
        self.contexts.first().map_or(1, Context::attempt)
    }

    /// Whether a failure now is final for every record of the batch.
    pub fn is_last_attempt(&self) -> bool {
        self.contexts.first().is_some_and(Context::is_last_attempt)
    }
}

impl<'a> IntoIterator for &'a BatchContext {
    type Item = &'a Context;
    type IntoIter = std::slice::Iter<'a, Context>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// A failed batch: the whole batch failed, or some of its records did.
///
/// `?` on any error (or a [`HandlerError`]) fails the whole batch: every record is retried (or
/// dead-lettered) with that error. [`BatchFailures`] names the records that failed, each with
/// its own error; the others succeeded.
///
/// ```
/// use retry_kafka::handler::{BatchError, BatchFailures, ErrorKind, HandlerError};
///
/// // Record 2 is bad data, record 5 met a timeout: only those two fail.
/// let mut failures = BatchFailures::new();
/// failures.fail(2, HandlerError::permanent("amount is negative"));
/// failures.fail(5, std::io::Error::other("bank timed out"));
/// let error: BatchError = failures.into_result().unwrap_err();
/// assert_eq!(error.failures().map(|(i, e)| (i, e.kind())).collect::<Vec<_>>(),
///            [(2, ErrorKind::Permanent), (5, ErrorKind::Transient)]);
///
/// // The whole batch: the database is down.
/// let error = BatchError::from(std::io::Error::other("connection refused"));
/// assert_eq!(error.whole().map(HandlerError::kind), Some(ErrorKind::Transient));
/// ```
pub struct BatchError {
    repr: Repr,
}

enum Repr {
    Whole(HandlerError),
    Records(Vec<(usize, HandlerError)>),
}

impl BatchError {
    /// The whole batch failed with `error`.
    pub fn whole_batch(error: impl Into<HandlerError>) -> Self {
        BatchError {
            repr: Repr::Whole(error.into()),
        }
    }

    /// The error of the whole batch, when it failed as a whole.
    pub fn whole(&self) -> Option<&HandlerError> {
        match &self.repr {
            Repr::Whole(error) => Some(error),
            Repr::Records(_) => None,
        }
    }

    /// The records that failed (their index in the batch) with their errors; empty when the
    /// whole batch failed.
    pub fn failures(&self) -> impl Iterator<Item = (usize, &HandlerError)> {
        let records: &[(usize, HandlerError)] = match &self.repr {
            Repr::Whole(_) => &[],
            Repr::Records(records) => records,
        };
        records.iter().map(|(index, error)| (*index, error))
    }

    /// Each record's outcome, `len` records: the whole batch's error for each, or a record's
    /// own. An index out of range is reported and ignored; the first error for an index wins.
    pub(crate) fn into_outcomes(self, len: usize) -> Vec<Option<HandlerError>> {
        match self.repr {
            Repr::Whole(error) => {
                // Every record fails alike: the same kind and message.
                let (kind, message) = (error.kind(), error.to_string());
                let mut outcomes: Vec<_> = (1..len)
                    .map(|_| Some(HandlerError::new(kind, message.clone())))
                    .collect();
                outcomes.push(Some(error));
                outcomes
            }
            Repr::Records(records) => {
                let mut outcomes: Vec<Option<HandlerError>> = (0..len).map(|_| None).collect();
                for (index, error) in records {
                    match outcomes.get_mut(index) {
                        Some(slot @ None) => *slot = Some(error),
                        Some(Some(_)) => {}
                        None => tracing::error!(
                            index, len, %error,
                            "a batch handler failed a record that is not in its batch; ignored"
                        ),
                    }
                }
                outcomes
            }
        }
    }
}

impl From<HandlerError> for BatchError {
    fn from(error: HandlerError) -> Self {
        BatchError::whole_batch(error)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for BatchError {
    fn from(error: E) -> Self {
        BatchError::whole_batch(HandlerError::from(error))
    }
}

impl From<BatchFailures> for BatchError {
    fn from(failures: BatchFailures) -> Self {
        BatchError {
            repr: Repr::Records(failures.records),
        }
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Whole(error) => write!(f, "the batch failed: {error}"),
            Repr::Records(records) => write!(f, "{} records of the batch failed", records.len()),
        }
    }
}

impl fmt::Debug for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.repr {
            Repr::Whole(error) => f.debug_tuple("Whole").field(error).finish(),
            Repr::Records(records) => f.debug_tuple("Records").field(records).finish(),
        }
    }
}

/// The records of a batch that failed, gathered while the handler works through it.
///
/// ```
/// use retry_kafka::handler::{BatchFailures, HandlerError};
///
/// let mut failures = BatchFailures::new();
/// assert!(failures.into_result().is_ok()); // nothing failed: the batch succeeded
///
/// let mut failures = BatchFailures::new();
/// failures.fail(0, HandlerError::permanent("unknown customer"));
/// assert_eq!(failures.len(), 1);
/// assert!(failures.into_result().is_err());
/// ```
#[derive(Debug, Default)]
pub struct BatchFailures {
    records: Vec<(usize, HandlerError)>,
}

impl BatchFailures {
    /// No failures yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record `index` of the batch (its position in the `Vec` the handler got) failed with
    /// `error`: `?`-style errors are transient, [`HandlerError::permanent`] skips the retries.
    pub fn fail(&mut self, index: usize, error: impl Into<HandlerError>) {
        self.records.push((index, error.into()));
    }

    /// How many records failed.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether no record failed.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// `Ok(())` when no record failed, else the failures as a [`BatchError`].
    pub fn into_result(self) -> Result<(), BatchError> {
        if self.records.is_empty() {
            Ok(())
        } else {
            Err(self.into())
        }
    }
}

/// Converts what a batch handler returned; used by `#[retry_handler(batch(..))]` expansions.
#[doc(hidden)]
pub fn into_batch_outcome<E: Into<BatchError>>(result: Result<(), E>) -> Result<(), BatchError> {
    result.map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::ErrorKind;

    #[test]
    fn a_whole_batch_failure_fails_every_record_alike() {
        let outcomes = BatchError::whole_batch(HandlerError::permanent("schema rejected")).into_outcomes(3);
        assert_eq!(outcomes.len(), 3);
        for outcome in outcomes {
            let error = outcome.expect("failed");
            assert_eq!(
                (error.kind(), error.to_string()),
                (ErrorKind::Permanent, "schema rejected".into())
            );
        }
    }

    #[test]
    fn record_failures_fail_only_those_records_and_out_of_range_is_ignored() {
        let mut failures = BatchFailures::new();
        failures.fail(1, HandlerError::transient("first"));
        failures.fail(1, HandlerError::permanent("second"));
        failures.fail(7, HandlerError::transient("not in the batch"));
        let outcomes = BatchError::from(failures).into_outcomes(3);
        assert!(outcomes[0].is_none() && outcomes[2].is_none());
        let error = outcomes[1].as_ref().expect("record 1 failed");
        assert_eq!(
            (error.kind(), error.to_string()),
            (ErrorKind::Transient, "first".into())
        );
    }
}
