//! A handler's output: the events it emits through its [`Context`](crate::Context)
//! ([`Context::emit`](crate::Context::emit)), kept in the attempt's [`Outbox`] and written only
//! when the attempt succeeds. Where they are written is the runtime's choice, not the
//! handler's (`runtime/consumer/outputs.rs`). Nothing here knows a backend: a handler's
//! context is below the seam.

use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::event::CodecError;
use crate::headers::Headers;

/// Why [`Context::emit`](crate::Context::emit) refused an event.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmitError {
    /// The event did not encode.
    #[error("the emitted event did not encode: {0}")]
    Codec(#[from] CodecError),
    /// The attempt the context belongs to has finished: what it emits now would belong to no
    /// attempt (a context kept past its handler's return, in a spawned task say).
    #[error("the attempt this context belongs to has finished: an event emitted after it is not written")]
    AttemptOver,
}

/// One attempt's emitted events, shared by its [`Context`](crate::Context) (and its clones)
/// and the runtime, which closes it when the handler returns.
#[derive(Clone, Default)]
pub(crate) struct Outbox {
    shared: Arc<Mutex<Kept>>,
}

/// An event a handler emitted, encoded, for a main topic.
#[derive(Debug)]
pub(crate) struct Emitted {
    pub(crate) topic: Arc<str>,
    pub(crate) key: Option<Bytes>,
    pub(crate) payload: Bytes,
    pub(crate) headers: Headers,
}

#[derive(Default)]
struct Kept {
    outputs: Vec<Emitted>,
    closed: bool,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("emitted", &self.lock().outputs.len())
            .finish()
    }
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Kept> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Keeps `output` for the attempt's end; refused once the attempt is over.
    pub(crate) fn push(&self, output: Emitted) -> Result<(), EmitError> {
        let mut kept = self.lock();
        if kept.closed {
            return Err(EmitError::AttemptOver);
        }
        kept.outputs.push(output);
        Ok(())
    }

    /// Closes the outbox (later emits are refused) and takes what was kept.
    pub(crate) fn close(&self) -> Vec<Emitted> {
        let mut kept = self.lock();
        kept.closed = true;
        std::mem::take(&mut kept.outputs)
    }

    /// This outbox again, open and empty, for the next attempt: only when nothing else holds
    /// it (a context kept past its attempt keeps its outbox closed). No allocation per attempt
    /// on the inline path.
    pub(crate) fn reused(self) -> Option<Self> {
        if Arc::strong_count(&self.shared) != 1 {
            return None;
        }
        {
            let mut kept = self.lock();
            kept.closed = false;
            kept.outputs.clear();
        }
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emitted(text: &'static str) -> Emitted {
        Emitted {
            topic: "out".into(),
            key: None,
            payload: Bytes::from_static(text.as_bytes()),
            headers: Headers::new(),
        }
    }

    #[test]
    fn an_outbox_refuses_emits_once_closed_and_is_reused_only_when_unshared() {
        let outbox = Outbox::default();
        outbox.push(emitted("a")).unwrap();
        let kept = outbox.clone();
        let taken = outbox.close();
        assert_eq!(taken.len(), 1);
        assert!(matches!(kept.push(emitted("b")), Err(EmitError::AttemptOver)));
        assert!(outbox.reused().is_none(), "a clone still holds it");
        drop(kept);
        let outbox = Outbox::default();
        outbox.push(emitted("c")).unwrap();
        outbox.close();
        let again = outbox.reused().expect("nothing else holds it");
        again.push(emitted("d")).unwrap();
        let taken = again.close();
        assert_eq!(taken.len(), 1, "open and empty again");
        assert_eq!(taken[0].payload, "d");
    }
}
