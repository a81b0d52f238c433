//! How a consumer tells the runtime its hand-offs finished: by the runtime's id, many at once.
//!
//! A hand-off is started with an id ([`Consumer::hand_off`](super::Consumer::hand_off)) and
//! its result is reported later into the consumer's [`HandOffReports`], which the runtime
//! drains once per round of its loop. No future, box, oneshot or wake-up per hand-off: a
//! report is a push under a lock, and only the first report after the runtime looked wakes it.
//!
//! [`HandOffTasks`] is for transports whose write is a future of its own (PostgreSQL's
//! statement, `Tiered`'s `Publish::send`): one task per consumer runs them and reports each.

use std::future::{poll_fn, Future};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{Delivered, Undelivered};

/// The runtime's number for one hand-off of one consumer, given back with its result. Unique
/// among the consumer's hand-offs not reported yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandOffId(pub u64);

/// A finished hand-off: its id, and whether its next hop is durable (the record given back if
/// not).
#[derive(Debug)]
pub struct HandedOff {
    /// The id the hand-off was started with.
    pub id: HandOffId,
    /// The broker's acknowledgement, or why there was none.
    pub result: Result<Delivered, Undelivered>,
}

/// Where a consumer reports its finished hand-offs, exactly once each, for the runtime to
/// take in batches. Cloning shares it.
///
/// ```
/// use retry_kafka::backend::{HandOffId, HandOffReports, Position};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let reports = HandOffReports::new();
/// reports.report(HandOffId(7), Ok(Position { partition: 0, offset: 41 }));
/// let mut finished = Vec::new();
/// reports.wait(&mut finished).await;
/// assert_eq!(finished.len(), 1);
/// assert_eq!(finished[0].id, HandOffId(7));
/// # }
/// ```
#[derive(Clone, Default)]
pub struct HandOffReports {
    shared: Arc<Mutex<Reported>>,
}

#[derive(Default)]
struct Reported {
    finished: Vec<HandedOff>,
    /// The runtime's task, when it found nothing and waits.
    waiting: Option<Waker>,
}

impl HandOffReports {
    /// An empty set of reports.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Reported> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reports the hand-off `id` finished with `result`.
    pub fn report(&self, id: HandOffId, result: Result<Delivered, Undelivered>) {
        let waiting = {
            let mut reported = self.lock();
            reported.finished.push(HandedOff { id, result });
            reported.waiting.take()
        };
        // Outside the lock; only the first report after the runtime looked wakes it.
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    /// Reports many hand-offs at once: one lock, at most one wake-up.
    pub fn report_all(&self, finished: impl IntoIterator<Item = HandedOff>) {
        let waiting = {
            let mut reported = self.lock();
            let before = reported.finished.len();
            reported.finished.extend(finished);
            if reported.finished.len() == before {
                return;
            }
            reported.waiting.take()
        };
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    /// Moves everything reported into `into` (empty: it is swapped, so neither side's buffer
    /// is copied or grown again); pending, the task's waker kept, while nothing is.
    pub fn poll_take(&self, cx: &mut Context<'_>, into: &mut Vec<HandedOff>) -> Poll<()> {
        if self.take(into) {
            return Poll::Ready(());
        }
        let mut reported = self.lock();
        if reported.finished.is_empty() {
            if !reported.waiting.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                reported.waiting = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        std::mem::swap(&mut reported.finished, into);
        Poll::Ready(())
    }

    /// Moves everything reported into `into`, without waiting; whether there was any.
    pub fn take(&self, into: &mut Vec<HandedOff>) -> bool {
        debug_assert!(into.is_empty(), "the runtime takes reports into an empty buffer");
        let mut reported = self.lock();
        if reported.finished.is_empty() {
            return false;
        }
        std::mem::swap(&mut reported.finished, into);
        true
    }

    /// Waits until something is reported and moves it into `into`. Cancel-safe.
    pub async fn wait(&self, into: &mut Vec<HandedOff>) {
        poll_fn(|cx| self.poll_take(cx, into)).await
    }
}

impl std::fmt::Debug for HandOffReports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandOffReports")
            .field("finished", &self.lock().finished.len())
            .finish()
    }
}

/// A task that runs a consumer's hand-off writes that are futures (a statement, a
/// `Publish::send`), many at once, and reports each by its id. Owned by the consumer: closed
/// (what was started finishes) by [`close`](HandOffTasks::close), aborted on drop.
pub(crate) struct HandOffTasks<J> {
    jobs: Option<mpsc::UnboundedSender<(HandOffId, J)>>,
    task: Option<JoinHandle<()>>,
}

impl<J: Send + 'static> HandOffTasks<J> {
    /// Starts the task: each job given to [`start`](HandOffTasks::start) is written by
    /// `write`, its result reported into `reports`.
    pub(crate) fn spawn<W, F>(reports: HandOffReports, write: W) -> Self
    where
        W: Fn(J) -> F + Send + 'static,
        F: Future<Output = Result<Delivered, Undelivered>> + Send + 'static,
    {
        let (jobs, mut received) = mpsc::unbounded_channel::<(HandOffId, J)>();
        let task = tokio::spawn(async move {
            let mut writing = FuturesUnordered::new();
            let mut open = true;
            while open || !writing.is_empty() {
                tokio::select! {
                    job = received.recv(), if open => match job {
                        Some((id, job)) => {
                            let write = write(job);
                            writing.push(async move { HandedOff { id, result: write.await } });
                        }
                        None => open = false,
                    },
                    Some(finished) = writing.next(), if !writing.is_empty() => {
                        reports.report(finished.id, finished.result);
                    }
                }
            }
        });
        Self {
            jobs: Some(jobs),
            task: Some(task),
        }
    }

    /// Starts writing `job`; its result is reported as hand-off `id`.
    pub(crate) fn start(&self, id: HandOffId, job: J) {
        if self
            .jobs
            .as_ref()
            .is_none_or(|jobs| jobs.send((id, job)).is_err())
        {
            // The task ended, which it does only when closed: the consumer is closing.
            tracing::debug!(?id, "hand-off started after its consumer closed; not written");
        }
    }

    /// Lets what was started finish, then ends the task.
    pub(crate) async fn close(&mut self) {
        self.jobs = None;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl<J> Drop for HandOffTasks<J> {
    fn drop(&mut self) {
        // Not closed: writes under way are cancelled; none of their sources was acknowledged.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_are_taken_in_batches_and_a_waiting_task_is_woken_once() {
        let reports = HandOffReports::new();
        let mut finished = Vec::new();
        assert!(!reports.take(&mut finished));
        let waiter = {
            let reports = reports.clone();
            tokio::spawn(async move {
                let mut finished = Vec::new();
                reports.wait(&mut finished).await;
                finished.iter().map(|f| f.id.0).collect::<Vec<_>>()
            })
        };
        tokio::task::yield_now().await;
        let at = |offset| Delivered { partition: 0, offset };
        reports.report_all((1..=3).map(|n| HandedOff {
            id: HandOffId(n),
            result: Ok(at(n)),
        }));
        let ids = waiter.await.unwrap();
        assert_eq!(ids, [1, 2, 3], "one batch, in report order");
        reports.report(HandOffId(4), Ok(at(4)));
        assert!(reports.take(&mut finished));
        assert_eq!(finished.len(), 1);
    }
}
