//! `retry-kafka dlq export | import`: a queue's entries as JSON lines, every byte kept (key,
//! payload and header values in base64, headers in order, duplicates too), and written back
//! into a queue on another deployment: moving dead letters between backends or key layouts
//! (one Redis server to a Redis Cluster), or keeping a copy.

use anyhow::{bail, Context as _};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use retry_kafka::backend::{Backend, Browse, OutboundRecord, Topic};
use retry_kafka::headers::Headers;
use retry_kafka::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt as _;

use crate::dlq::{Exporting, Queue};
use crate::render;

/// One entry, as `export` writes it and `import` reads it.
#[derive(Serialize, Deserialize)]
struct Line {
    partition: u32,
    /// Where it was in the exported queue (informational: the target gives it a new one).
    offset: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    /// (name, base64 value), in order.
    headers: Vec<(String, String)>,
}

impl Exporting {
    /// Writes the selected entries to stdout, one JSON line each.
    pub(crate) async fn export<B: Browse>(&self, backend: &B) -> anyhow::Result<()> {
        let mut out = render::Out::stdout();
        let exported = self
            .each(backend, |_, entry| {
                let record = &entry.record;
                let line = Line {
                    partition: record.partition,
                    offset: record.offset,
                    key: record.key.as_deref().map(|key| STANDARD.encode(key)),
                    payload: record.payload.as_deref().map(|payload| STANDARD.encode(payload)),
                    headers: record
                        .headers
                        .iter()
                        .map(|(name, value)| (name.to_owned(), STANDARD.encode(value)))
                        .collect(),
                };
                out.line(serde_json::to_string(&line)?)
            })
            .await?;
        out.flush()?;
        eprintln!("{exported} entries exported from {}", self.queue_name());
        Ok(())
    }
}

/// Reads JSON lines (as `export` writes them) from stdin and writes each entry to `queue` on
/// `backend`, in the partition it had, in order. The queue is created with `partitions` when
/// the target does not have it yet.
pub(crate) async fn import<B: Backend>(
    backend: &B,
    queue: &Queue,
    partitions: Option<u32>,
) -> anyhow::Result<()> {
    let name = queue.name();
    let topic = Topic::new(name.as_str(), queue.role());
    let count = match backend
        .partitions(&topic)
        .await
        .with_context(|| format!("could not look up {name}"))?
    {
        Some(count) => count,
        None => {
            let Some(count) = partitions else {
                bail!(
                    "{name} does not exist here: start the handler's app on this deployment once (it creates \
                     its topics), or give --partitions N to create it"
                );
            };
            backend
                .create_topic(&topic, count)
                .await
                .with_context(|| format!("could not create {name}"))?;
            count
        }
    };
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let (mut number, mut imported) = (0u64, 0u64);
    while let Some(text) = lines.next_line().await.context("could not read stdin")? {
        number += 1;
        if text.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(&text)
            .with_context(|| format!("line {number} is not an entry as `dlq export` writes it"))?;
        if line.partition >= count {
            bail!(
                "line {number}: partition {} does not exist in {name}, which has {count}: create the queue \
                 with as many partitions as the exported one had",
                line.partition
            );
        }
        let record = line
            .record()
            .with_context(|| format!("line {number} is not an entry as `dlq export` writes it"))?;
        backend.send(&topic, record).await.with_context(|| {
            format!("could not write line {number} to {name} ({imported} written before it)")
        })?;
        imported += 1;
    }
    eprintln!("{imported} entries imported into {name}");
    Ok(())
}

impl Line {
    fn record(self) -> anyhow::Result<OutboundRecord> {
        let bytes = |text: String, what: &str| {
            STANDARD
                .decode(text)
                .map(Bytes::from)
                .with_context(|| format!("its {what} is not base64"))
        };
        let mut headers = Headers::with_capacity(self.headers.len());
        for (name, value) in self.headers {
            let value = bytes(value, &format!("header {name}"))?;
            headers.insert(name, value);
        }
        Ok(OutboundRecord {
            partition: Some(self.partition),
            key: self.key.map(|key| bytes(key, "key")).transpose()?,
            payload: self
                .payload
                .map(|payload| bytes(payload, "payload"))
                .transpose()?,
            headers,
        })
    }
}
