//! `retry-kafka held`: the keys a key-ordered handler (`ordering = "key"`) holds back now;
//! `held replay` and `held discard`: what to do with a record that holds its key after its
//! last failure (`on_dead_letter = "hold_key"`).

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use retry_kafka::app::TopicNaming;
use retry_kafka::backend::{Backend, TopicRole};
use retry_kafka::held_keys::{DeadHead, HeldKey, HoldSources, Resolution};
use serde_json::json;

use crate::render::{self, Format};
use crate::Output;

/// Whose holds; or a resolution of dead-held records.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct Held {
    #[command(subcommand)]
    resolve: Option<Resolve>,
    /// The handler's main topic.
    #[arg(long, required = true)]
    topic: Option<String>,
    /// The handler's consumer group.
    #[arg(long, required = true)]
    group: Option<String>,
    #[command(flatten)]
    output: Output,
}

/// What to do with records that hold their key after their last failure
/// (`on_dead_letter = "hold_key"`).
#[derive(Subcommand)]
enum Resolve {
    /// Attempts dead-held records again, each before its key's later records (as a replay:
    /// `rk-replays` one higher; failing again after its retries, it is parked and holds again).
    Replay(Selection),
    /// Sends dead-held records to their queue (the dead letters, or the parking queue) and lets
    /// their keys go on.
    Discard(Selection),
}

/// Which dead-held records (at least one of `--key`, `--entry`, `--all`).
#[derive(Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["key", "entry", "all"])))]
struct Selection {
    /// The handler's main topic.
    #[arg(long)]
    topic: String,
    /// The handler's consumer group.
    #[arg(long)]
    group: String,
    /// The dead-held records of this key (exact; repeatable).
    #[arg(long)]
    key: Vec<String>,
    /// A dead-held record by its position on the held topic, `PARTITION:OFFSET` as `held`
    /// shows it (repeatable).
    #[arg(long, value_name = "PARTITION:OFFSET")]
    entry: Vec<String>,
    /// Every dead-held record of the handler.
    #[arg(long)]
    all: bool,
    /// Prints what would be resolved, and writes nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replay's loop guard: records replayed this many times already (`rk-replays`) are held
    /// back.
    #[arg(long, default_value_t = 3)]
    max_replays: u32,
    /// Replays records the loop guard holds back, too.
    #[arg(long)]
    force: bool,
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

/// The sources of the handler reading `topic` as `group` and what it holds now.
async fn held_keys<B: Backend>(
    backend: &B,
    topic: &str,
    group: &str,
) -> anyhow::Result<(HoldSources, Vec<HeldKey>)> {
    let naming = TopicNaming::default();
    let held_topic = naming.held(topic, group);
    let sources = HoldSources::find(backend, topic, group, &naming)
        .await
        .with_context(|| format!("could not look up {held_topic}"))?
        .with_context(|| {
            format!(
                "{held_topic} does not exist: is {group} a key-ordered handler (ordering = \"key\") of {topic} that has run?"
            )
        })?;
    let keys = sources
        .held_keys(backend)
        .await
        .with_context(|| format!("could not read the retry levels and {held_topic}"))?;
    Ok((sources, keys))
}

impl Held {
    pub(crate) async fn run<B: Backend>(self, backend: &B) -> anyhow::Result<ExitCode> {
        let (topic, group) = match (self.resolve, self.topic, self.group) {
            (Some(Resolve::Replay(selection)), ..) => {
                return selection.resolve(backend, Resolution::Replay).await
            }
            (Some(Resolve::Discard(selection)), ..) => {
                return selection.resolve(backend, Resolution::Discard).await
            }
            (None, Some(topic), Some(group)) => (topic, group),
            // clap requires both without a subcommand.
            (None, ..) => anyhow::bail!("held needs --topic and --group"),
        };
        let (_, keys) = held_keys(backend, &topic, &group).await?;
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
                eprintln!("{} keys held by {group} on {topic}", keys.len());
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
        "dead": key.dead.iter().map(|d| json!({
            "offset": d.offset,
            "main_offset": d.main_offset,
            "queue": queue_name(d.queue),
            "attempts": d.attempts,
            "replays": d.replays,
            "error_kind": d.error_kind,
            "error_message": d.error_message,
            "resolution": d.resolution.map(Resolution::as_str),
        })).collect::<Vec<_>>(),
    })
}

/// Where a discard sends a dead-held record, as `held` says it.
fn queue_name(queue: TopicRole) -> &'static str {
    match queue {
        TopicRole::Parked => "parked",
        _ => "dlq",
    }
}

/// The columns of `held replay` and `held discard`.
const RESOLVED_HEADER: [&str; 6] = ["ENTRY", "KEY", "ACTION", "REPLAYS", "KIND", "ERROR"];

impl Selection {
    /// Writes `how` for every dead-held record selected (see [`HoldSources::resolve`]).
    async fn resolve<B: Backend>(self, backend: &B, how: Resolution) -> anyhow::Result<ExitCode> {
        let (sources, keys) = held_keys(backend, &self.topic, &self.group).await?;
        let entries = self
            .entry
            .iter()
            .map(|entry| {
                entry
                    .split_once(':')
                    .and_then(|(p, o)| Some((p.parse::<u32>().ok()?, o.parse::<u64>().ok()?)))
                    .with_context(|| format!("--entry {entry:?} is not PARTITION:OFFSET, e.g. 0:42"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let selected: Vec<(&HeldKey, &DeadHead)> = keys
            .iter()
            .flat_map(|key| key.dead.iter().map(move |dead| (key, dead)))
            .filter(|(key, dead)| {
                self.all
                    || self.key.iter().any(|k| k.as_bytes() == key.key.as_ref())
                    || entries.contains(&(key.partition, dead.offset))
            })
            .collect();
        if selected.is_empty() {
            anyhow::bail!(
                "no record of {} on {} that holds its key matches; `retry-kafka held --topic {} --group {}` lists them",
                self.group, self.topic, self.topic, self.group
            );
        }
        let mut out = render::Out::stdout();
        let mut rows = render::Rows::new(&RESOLVED_HEADER);
        let (mut written, mut guarded, mut pending) = (0, 0, 0);
        for (key, dead) in selected {
            let action = if dead.resolution.is_some() {
                pending += 1;
                format!(
                    "{} already written",
                    dead.resolution.map_or("", Resolution::as_str)
                )
            } else if how == Resolution::Replay && dead.replays >= self.max_replays && !self.force {
                guarded += 1;
                "held back by the loop guard".to_owned()
            } else {
                if !self.dry_run {
                    sources
                        .resolve(backend, key.partition, &key.key, dead.offset, how)
                        .await
                        .with_context(|| {
                            format!(
                                "could not write the resolution of {}:{}",
                                key.partition, dead.offset
                            )
                        })?;
                }
                written += 1;
                match how {
                    Resolution::Replay => "replay".to_owned(),
                    Resolution::Discard => format!("discard to {}", queue_name(dead.queue)),
                }
            };
            rows.add(
                vec![
                    format!("{}:{}", key.partition, dead.offset),
                    render::cell(&render::bytes(&key.key).0, 24),
                    action,
                    dead.replays.to_string(),
                    dead.error_kind.clone().unwrap_or_default(),
                    render::cell(dead.error_message.as_deref().unwrap_or_default(), 60),
                ],
                &mut out,
            )?;
        }
        rows.finish(&mut out)?;
        out.flush()?;
        let verb = how.as_str();
        match self.dry_run {
            true => eprintln!("dry run: {written} records would be resolved ({verb}); nothing was written"),
            false => eprintln!(
                "wrote {written} resolutions ({verb}) on {}; the handler applies them as its held level reads them",
                TopicNaming::default().held(&self.topic, &self.group)
            ),
        }
        if pending > 0 {
            eprintln!("{pending} already had a resolution the handler has not applied yet; nothing written for them");
        }
        if guarded > 0 {
            eprintln!(
                "{guarded} held back by the loop guard (replayed {} times already; --force replays them)",
                self.max_replays
            );
            if written == 0 {
                return Ok(ExitCode::from(3));
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn row(key: &HeldKey) -> Vec<String> {
    let waits_on = key
        .heads
        .iter()
        .map(|h| format!("level {}@{}", h.level, h.offset))
        .chain(key.dead.iter().map(|d| match d.resolution {
            Some(how) => format!("dead@{} ({} pending)", d.offset, how.as_str()),
            None => format!(
                "dead@{} ({})",
                d.offset,
                d.error_kind.as_deref().unwrap_or("failed")
            ),
        }))
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
