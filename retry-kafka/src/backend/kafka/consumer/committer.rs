//! Exactly-once's commits on a thread of their own: a transaction's commit waits for the broker
//! (the offsets sent, the markers written: tens of milliseconds), and a poll thread that waited
//! with it fetched nothing meanwhile: measured, the success path fell to 0.03× the
//! at-least-once rate. The poll thread prepares a commit (the gate closed, the offsets taken),
//! hands it here and goes on polling and storing acknowledgements for the next one; it takes
//! the outcome in a later round. One commit at a time: the next starts once this one is done.
//! A commit that must be done before the thread goes on (a revoke, a close) waits for the one
//! under way, then runs on the thread that asked.

use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::transaction::{Committed, Ready, Transaction};

/// The thread that runs a consumer's transaction commits, and the transaction.
pub(super) struct Committer {
    transaction: Arc<Transaction>,
    jobs: Option<std_mpsc::Sender<Ready>>,
    outcome: Arc<Outcome>,
    thread: Option<JoinHandle<()>>,
}

/// The commit under way, or how the last one went until the poll thread takes it.
#[derive(Default)]
struct Outcome {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
enum State {
    #[default]
    Idle,
    Running,
    Done(Committed),
}

impl Outcome {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Committer {
    /// Starts the thread for `transaction`, the consumer of `topic`'s.
    pub(super) fn start(transaction: Arc<Transaction>, topic: &str) -> std::io::Result<Self> {
        let (jobs, received) = std_mpsc::channel::<Ready>();
        let outcome = Arc::new(Outcome::default());
        let thread = {
            let (transaction, outcome) = (transaction.clone(), outcome.clone());
            std::thread::Builder::new()
                .name(format!("rk-txn-{topic}"))
                .spawn(move || {
                    // Ends when the committer is dropped (the consumer closed).
                    while let Ok(ready) = received.recv() {
                        let committed = transaction.finish(ready);
                        *outcome.state() = State::Done(committed);
                        outcome.changed.notify_all();
                    }
                })?
        };
        Ok(Self {
            transaction,
            jobs: Some(jobs),
            outcome,
            thread: Some(thread),
        })
    }

    pub(super) fn transaction(&self) -> &Transaction {
        &self.transaction
    }

    /// Whether a commit is under way here.
    pub(super) fn busy(&self) -> bool {
        matches!(*self.outcome.state(), State::Running)
    }

    /// Runs `ready` on the thread; the caller made sure none is under way ([`busy`](Self::busy)).
    pub(super) fn submit(&self, ready: Ready) {
        *self.outcome.state() = State::Running;
        let sent = self.jobs.as_ref().is_some_and(|jobs| jobs.send(ready).is_ok());
        if !sent {
            // Only after drop; never while the consumer runs.
            *self.outcome.state() = State::Idle;
        }
    }

    /// How the last commit went, once (none while one is under way or none finished).
    pub(super) fn take(&self) -> Option<Committed> {
        let mut state = self.outcome.state();
        match std::mem::take(&mut *state) {
            State::Done(committed) => Some(committed),
            other => {
                *state = other;
                None
            }
        }
    }

    /// Waits until no commit is under way; how the last one went, if not taken yet.
    pub(super) fn wait(&self) -> Option<Committed> {
        let mut state = self.outcome.state();
        while matches!(*state, State::Running) {
            state = self
                .outcome
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        match std::mem::take(&mut *state) {
            State::Done(committed) => Some(committed),
            _ => None,
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        // The thread finishes the commit it has, then sees the channel closed.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
