//! How connections are made (the URL's settings and TLS), one connection made on first use
//! and again after it broke, and the notification listener.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::watch;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, Client, Config, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::error::transport;
use super::tls::TlsSettings;
use crate::error::BackendError;

/// A connection's stream: TLS or plain, as the server and the mode agree.
type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// What a connection is made with: the URL's settings, and TLS's.
pub(crate) struct Connector {
    pub(crate) config: Config,
    pub(crate) tls: TlsSettings,
}

impl Connector {
    /// A new connection; a TLS refusal is a [`TlsError`](super::TlsError) naming the setting,
    /// which the start reports at once (no retry mends it).
    pub(crate) async fn connect(&self) -> Result<(Client, Connection<Socket, Stream>), BackendError> {
        let tls = MakeRustlsConnect::new(self.tls.client_config()?);
        match self.config.connect(tls).await {
            Ok(connected) => Ok(connected),
            Err(error) => Err(match self.tls.explain(error) {
                Ok(refused) => refused.into(),
                Err(other) => transport(other),
            }),
        }
    }
}

/// The channel every write of a waiting row notifies, with the topic as payload.
pub(crate) const CHANNEL: &str = "retry_kafka";

/// A connection shared by whoever holds the link: tokio-postgres pipelines the queries issued
/// on it, in the order they are first polled, so concurrent writes need no pool and keep
/// their order.
pub(crate) struct Link {
    connector: Arc<Connector>,
    client: Mutex<Option<Arc<Client>>>,
}

impl Link {
    pub(crate) fn new(connector: Arc<Connector>) -> Self {
        Link {
            connector,
            client: Mutex::new(None),
        }
    }

    /// The connection; a new one when there was none or it broke. Returns without yielding
    /// while the connection lives, so callers keep the order they call in.
    pub(crate) async fn client(&self) -> Result<Arc<Client>, BackendError> {
        if let Some(client) = self.client.lock().unwrap().as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let (client, connection) = self.connector.connect().await?;
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
    pub(crate) async fn run(self: Arc<Self>, connector: Arc<Connector>) {
        let mut pause = Duration::from_millis(100);
        loop {
            if let Err(error) = self.listen(&connector).await {
                tracing::debug!(%error, "postgres listener failed; connecting again");
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    async fn listen(&self, connector: &Connector) -> Result<(), BackendError> {
        let (client, mut connection) = connector.connect().await?;
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let statement = format!("LISTEN {CHANNEL}");
        let listen = client.batch_execute(&statement);
        tokio::pin!(listen);
        let mut listening = false;
        loop {
            tokio::select! {
                done = &mut listen, if !listening => {
                    done.map_err(transport)?;
                    listening = true;
                    self.wake(None);
                }
                message = messages.next() => match message {
                    Some(Ok(AsyncMessage::Notification(n))) => self.wake(Some(n.payload())),
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Err(transport(error)),
                    None => return Ok(()),
                },
            }
        }
    }
}
