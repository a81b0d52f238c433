//! SIGINT and SIGTERM for [`App::run`](crate::App::run).

use crate::error::{ConfigError, Error};

/// SIGINT and SIGTERM (Ctrl-C elsewhere), listened to from creation on.
pub(super) struct TerminationSignals {
    #[cfg(unix)]
    streams: [tokio::signal::unix::Signal; 2],
}

impl TerminationSignals {
    pub(super) fn install() -> Result<Self, Error> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let listen = |kind| {
                signal(kind).map_err(|error| {
                    Error::Config(ConfigError::Invalid {
                        field: "signal handlers",
                        reason: error.to_string(),
                    })
                })
            };
            Ok(Self {
                streams: [listen(SignalKind::interrupt())?, listen(SignalKind::terminate())?],
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    pub(super) async fn recv(&mut self) {
        #[cfg(unix)]
        {
            let [interrupt, terminate] = &mut self.streams;
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
