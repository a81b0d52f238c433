//! `retry-kafka held`: the keys a key-ordered handler (`ordering = "key"`) holds back now.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use retry_kafka::app::TopicNaming;
use retry_kafka::backend::Backend;
use retry_kafka::held_keys::{HeldKey, HoldSources};
use serde_json::json;

use crate::render::{self, Format};
use crate::Output;

/// Whose holds.
#[derive(Args)]
pub(crate) struct Held {
    /// The handler's main topic.
    #[arg(long)]
    topic: String,
    /// The handler's consumer group.
    #[arg(long)]
    group: String,
    #[command(flatten)]
    output: Output,
}

/// The columns of `held`.
const HEADER: [&str; 6] = [
    "PARTITION",
    "KEY",
    "WAITS ON",
    "FOLLOWERS",
    "HELD SINCE",
    "BEHIND",
];

impl Held {
    pub(crate) async fn run<B: Backend>(self, backend: &B) -> anyhow::Result<ExitCode> {
        let naming = TopicNaming::default();
        let held_topic = naming.held(&self.topic, &self.group);
        let sources = HoldSources::find(backend, &self.topic, &self.group, &naming)
            .await
            .with_context(|| format!("could not look up {held_topic}"))?
            .with_context(|| {
                format!(
                    "{held_topic} does not exist: is {} a key-ordered handler (ordering = \"key\") of {} that has run?",
                    self.group, self.topic
                )
            })?;
        let keys = sources
            .held_keys(backend)
            .await
            .with_context(|| format!("could not read the retry levels and {held_topic}"))?;
        let mut out = render::Out::stdout();
        match self.output.format {
            Format::Json => {
                for key in &keys {
                    out.line(key_json(key))?;
                }
            }
            Format::Table => {
                let mut rows = render::Rows::new(&HEADER);
                for key in &keys {
                    rows.add(row(key), &mut out)?;
                }
                rows.finish(&mut out)?;
                out.flush()?;
                eprintln!("{} keys held by {} on {}", keys.len(), self.group, self.topic);
            }
        }
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    }
}

fn key_json(key: &HeldKey) -> serde_json::Value {
    let (text, encoding) = render::bytes(&key.key);
    json!({
        "partition": key.partition,
        "key": text,
        "key_encoding": encoding,
        "heads": key.heads.iter().map(|h| json!({
            "level": h.level,
            "offset": h.offset,
            "main_offset": h.main_offset,
        })).collect::<Vec<_>>(),
        "followers": key.followers,
        "held_since": key.held_since_ms.map(render::time),
        "held_for_ms": key.held_since_ms.map(|at| render::now_ms() - at),
        "behind": key.behind,
    })
}

fn row(key: &HeldKey) -> Vec<String> {
    let waits_on = key
        .heads
        .iter()
        .map(|h| format!("level {}@{}", h.level, h.offset))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        key.partition.to_string(),
        render::cell(&render::bytes(&key.key).0, 24),
        // No head: its followers are being attempted now.
        if waits_on.is_empty() { "-".into() } else { waits_on },
        key.followers.to_string(),
        key.held_since_ms
            .map(|at| {
                format!(
                    "{} ({} ago)",
                    render::time(at),
                    render::age(render::now_ms() - at)
                )
            })
            .unwrap_or_default(),
        key.behind
            .map(|offset| format!("main@{offset}"))
            .unwrap_or_default(),
    ]
}
