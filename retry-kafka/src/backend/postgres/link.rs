//! One connection, made on first use and again after it broke, and the notification listener.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio_postgres::{AsyncMessage, Client, Config, NoTls};

use super::error::transport;
use crate::error::BackendError;

/// The channel every write of a waiting row notifies, with the topic as payload.
pub(crate) const CHANNEL: &str = "retry_kafka";

/// A connection shared by whoever holds the link: tokio-postgres pipelines the queries issued
/// on it, in the order they are first polled, so concurrent writes need no pool and keep
/// their order.
pub(crate) struct Link {
    config: Config,
    client: Mutex<Option<Arc<Client>>>,
}

impl Link {
    pub(crate) fn new(config: Config) -> Self {
        Link {
            config,
            client: Mutex::new(None),
        }
    }

    /// The connection; a new one when there was none or it broke. Returns without yielding
    /// while the connection lives, so callers keep the order they call in.
    pub(crate) async fn client(&self) -> Result<Arc<Client>, BackendError> {
        if let Some(client) = self.client.lock().unwrap().as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let (client, connection) = self.config.connect(NoTls).await.map_err(transport)?;
        // The connection's task ends when its client is dropped (or the connection breaks):
        // the client is its owner.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "postgres connection closed");
            }
        });
        let client = Arc::new(client);
        *self.client.lock().unwrap() = Some(client.clone());
        Ok(client)
    }
}

/// Wakes the workers of a topic when a row is written to it: one `LISTEN` connection per
/// backend handle, a watch channel per topic.
pub(crate) struct Listener {
    topics: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Listener {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Listener {
            topics: Mutex::new(HashMap::new()),
        })
    }

    /// A receiver that changes whenever a row is written to `topic`.
    pub(crate) fn watch(&self, topic: &str) -> watch::Receiver<u64> {
        let mut topics = self.topics.lock().unwrap();
        topics
            .entry(topic.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    fn wake(&self, topic: Option<&str>) {
        let topics = self.topics.lock().unwrap();
        match topic {
            Some(topic) => {
                if let Some(sender) = topics.get(topic) {
                    sender.send_modify(|n| *n += 1);
                }
            }
            None => topics.values().for_each(|s| s.send_modify(|n| *n += 1)),
        }
    }

    /// Listens until the task is aborted, connecting again after a failure; after each
    /// (re)connection every topic is woken, since notifications may have been missed.
    pub(crate) async fn run(self: Arc<Self>, config: Config) {
        let mut pause = Duration::from_millis(100);
        loop {
            if let Err(error) = self.listen(&config).await {
                tracing::debug!(%error, "postgres listener failed; connecting again");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    async fn listen(&self, config: &Config) -> Result<(), tokio_postgres::Error> {
        let (client, mut connection) = config.connect(NoTls).await?;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let statement = format!("LISTEN {CHANNEL}");
        let listen = client.batch_execute(&statement);
        tokio::pin!(listen);
        let mut listening = false;
        loop {
            tokio::select! {
                done = &mut listen, if !listening => {
                    done?;
                    listening = true;
                    self.wake(None);
                }
                message = messages.next() => match message {
                    Some(Ok(AsyncMessage::Notification(n))) => self.wake(Some(n.payload())),
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(error),
                    None => return Ok(()),
                },
            }
        }
    }
}
