//! Reading a topic as the tool does (the dead letters, the parking queue): from offsets, by
//! pages of one partition, and its end offsets, through the backend's reader client.

use std::time::Duration;

use rdkafka::consumer::Consumer as _;
use rdkafka::error::KafkaError;
use rdkafka::{Message as _, Offset, TopicPartitionList};

use super::{consumer, partition_count, transport, until_settled, Kafka};
use crate::backend::TopicRole;
use crate::backend::{Browse, Page, Record, Topic};
use crate::error::BackendError;

impl Browse for Kafka {
    async fn read(&self, topic: &Topic, from: &[u64]) -> Result<Vec<Record>, BackendError> {
        self.read_from(&topic.name, topic.role, from.to_vec()).await
    }

    async fn end_offsets_of(&self, topic: &Topic) -> Result<Vec<u64>, BackendError> {
        let (name, role) = (topic.name.to_string(), topic.role);
        self.with_reader(role, move |reader| {
            let topic = name;
            let client = &reader.client;
            (0..partition_count(client, &topic)?)
                .map(|partition| {
                    let (_, high) = until_settled(client.context(), Duration::from_secs(10), |left| {
                        client.fetch_watermarks(&topic, partition, left)
                    })?;
                    Ok(high.max(0) as u64)
                })
                .collect()
        })
        .await
    }

    async fn read_page(&self, topic: &Topic, page: Page) -> Result<Vec<Record>, BackendError> {
        let name = topic.name.to_string();
        self.with_reader(topic.role, move |reader| {
            let partition = page.partition() as i32;
            let timeout = Duration::from_secs(10);
            let (low, high) = until_settled(reader.client.context(), timeout, |left| {
                reader.client.fetch_watermarks(&name, partition, left)
            })?;
            let start = low.max(page.from().min(i64::MAX as u64) as i64);
            let end = high.min(page.until().min(i64::MAX as u64) as i64);
            let limit = page.limit();
            if end <= start {
                return Ok(Vec::new());
            }
            let here = (name.clone(), partition, start);
            if reader.next.take().as_ref() != Some(&here) {
                let mut list = TopicPartitionList::new();
                list.add_partition_offset(&name, partition, Offset::Offset(start))
                    .map_err(transport)?;
                reader.client.assign(&list).map_err(transport)?;
            }
            let mut records = Vec::with_capacity(limit.min((end - start) as usize));
            let mut arena = consumer::Arena::default();
            // From the last record received: a page of a big topic takes as long as it takes.
            let mut deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if std::time::Instant::now() > deadline {
                    return Err(BackendError::Transport {
                        backend: "kafka",
                        source: format!("reading {name}[{partition}] up to offset {end} timed out").into(),
                    });
                }
                let Some(message) = reader.client.poll(Duration::from_millis(100)) else {
                    continue;
                };
                deadline = std::time::Instant::now() + Duration::from_secs(30);
                let message = match message {
                    Ok(message) => message,
                    // Transaction markers (and aborted records) take offsets no record has: the
                    // end is an event (read_committed: the last stable offset). One of an earlier
                    // assignment is outdated, and librdkafka drops it.
                    Err(KafkaError::PartitionEOF(eof)) => {
                        if eof == partition {
                            return Ok(records);
                        }
                        continue;
                    }
                    Err(error) => return Err(reader.client.context().explain(error)),
                };
                // One fetched for an earlier assignment, still queued when this one was made.
                if message.partition() != partition || message.topic() != name || message.offset() < start {
                    continue;
                }
                let record = consumer::record_of(&message, &mut arena);
                let next = record.offset as i64 + 1;
                if next > end {
                    // Past the page (offsets may skip): the assignment is not where a next
                    // page would start.
                    return Ok(records);
                }
                records.push(record);
                if next == end {
                    return Ok(records);
                }
                if records.len() == limit {
                    reader.next = Some((name, partition, next));
                    return Ok(records);
                }
            }
        })
        .await
    }
}

impl Kafka {
    /// What [`Browse::read`] reads, `from[p]` onward on partition `p`, from the low watermark
    /// where `from` has no entry: with the reader client, outside any group.
    pub(super) async fn read_from(
        &self,
        topic: &str,
        role: TopicRole,
        from: Vec<u64>,
    ) -> Result<Vec<Record>, BackendError> {
        let topic = topic.to_owned();
        self.with_reader(role, move |reader| {
            reader.next = None;
            let client = &reader.client;
            let timeout = Duration::from_secs(10);
            let partitions = partition_count(client, &topic)?;
            let mut records = Vec::new();
            let mut arena = consumer::Arena::default();
            for partition in 0..partitions {
                let (low, high) = until_settled(client.context(), timeout, |left| {
                    client.fetch_watermarks(&topic, partition, left)
                })?;
                let start = from
                    .get(partition as usize)
                    .map_or(low, |&from| low.max(from.min(i64::MAX as u64) as i64));
                if high <= start {
                    continue;
                }
                let mut list = TopicPartitionList::new();
                list.add_partition_offset(&topic, partition, Offset::Offset(start))
                    .map_err(transport)?;
                client.assign(&list).map_err(transport)?;
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                loop {
                    if std::time::Instant::now() > deadline {
                        return Err(BackendError::Transport {
                            backend: "kafka",
                            source: format!("reading {topic}[{partition}] up to offset {high} timed out")
                                .into(),
                        });
                    }
                    let Some(message) = client.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let message = match message {
                        Ok(message) => message,
                        // As in `read_page`.
                        Err(KafkaError::PartitionEOF(eof)) => {
                            if eof == partition {
                                break;
                            }
                            continue;
                        }
                        Err(error) => return Err(client.context().explain(error)),
                    };
                    let record = consumer::record_of(&message, &mut arena);
                    let done = record.offset + 1 >= high as u64;
                    records.push(record);
                    if done {
                        break;
                    }
                }
            }
            Ok(records)
        })
        .await
    }
}
