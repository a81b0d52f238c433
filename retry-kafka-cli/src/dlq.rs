//! `retry-kafka dlq list | show | replay`.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use retry_kafka::app::TopicNaming;
use retry_kafka::backend::{Backend, Browse, Topic, TopicRole};
use retry_kafka::dead_letters::{self, Action, DeadLetter, Filter, Replay, DEFAULT_MAX_REPLAYS};
use retry_kafka::handler::ErrorKind;

use crate::render::{self, Format};
use crate::Output;

#[derive(Subcommand)]
pub(crate) enum Dlq {
    /// Lists the entries of a handler's dead-letter (or parking) queue.
    List(Listing),
    /// Shows entries in full: failure context, headers, payload.
    Show(Listing),
    /// Sends the selected entries back to the main topic (or a retry level).
    ///
    /// Exits with 3 when entries were selected but the loop guard held back every one of them
    /// (nothing was sent), so a script can tell that from a replay that sent them.
    Replay {
        #[command(flatten)]
        queue: Queue,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        replay: ReplayArgs,
    },
}

/// Which entries of whose queue, printed how.
#[derive(Args)]
pub(crate) struct Listing {
    #[command(flatten)]
    queue: Queue,
    #[command(flatten)]
    select: Select,
    #[command(flatten)]
    output: Output,
}

/// Whose queue.
#[derive(Args)]
pub(crate) struct Queue {
    /// The handler's main topic.
    #[arg(long)]
    topic: String,
    /// The handler's consumer group.
    #[arg(long)]
    group: String,
    /// The parking queue (replayed entries that failed again) instead of the dead letters.
    #[arg(long)]
    parked: bool,
    /// The queue's name, if the program names its topics otherwise than by default.
    #[arg(long, value_name = "TOPIC")]
    queue: Option<String>,
}

impl Queue {
    fn role(&self) -> TopicRole {
        if self.parked {
            TopicRole::Parked
        } else {
            TopicRole::DeadLetter
        }
    }

    fn name(&self) -> String {
        let naming = TopicNaming::default();
        match (&self.queue, self.parked) {
            (Some(queue), _) => queue.clone(),
            (None, true) => naming.parked(&self.topic, &self.group),
            (None, false) => naming.dead_letter(&self.topic, &self.group),
        }
    }
}

/// Which entries; every filter given must hold.
#[derive(Args)]
pub(crate) struct Select {
    /// Last failure at or after: an RFC 3339 time (`2026-11-29T10:00:00Z`) or an age (`2h`).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Last failure before: an RFC 3339 time or an age.
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Error kind: transient, permanent, decode, panic or timeout (repeatable).
    #[arg(long, value_name = "KIND")]
    kind: Vec<String>,
    /// Exact message key.
    #[arg(long)]
    key: Option<String>,
    /// Text in the error message or the payload.
    #[arg(long, value_name = "TEXT")]
    grep: Option<String>,
    /// An entry by position, `PARTITION:OFFSET` as `list` shows it (repeatable).
    #[arg(long, value_name = "PARTITION:OFFSET")]
    entry: Vec<String>,
}

impl Select {
    fn filter(&self) -> anyhow::Result<Filter> {
        let mut filter = Filter::default().failed_between(
            self.since.as_deref().map(|w| when("--since", w)).transpose()?,
            self.until.as_deref().map(|w| when("--until", w)).transpose()?,
        );
        for kind in &self.kind {
            filter = filter.kind(ErrorKind::parse(kind).with_context(|| {
                format!("--kind {kind:?} is not an error kind; use transient, permanent, decode, panic or timeout")
            })?);
        }
        if let Some(key) = &self.key {
            filter = filter.key(key.clone().into_bytes());
        }
        if let Some(text) = &self.grep {
            filter = filter.text(text.clone());
        }
        for entry in &self.entry {
            let (partition, offset) = entry
                .split_once(':')
                .and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)))
                .with_context(|| format!("--entry {entry:?} is not PARTITION:OFFSET, e.g. 0:42"))?;
            filter = filter.position(partition, offset);
        }
        Ok(filter)
    }

    /// The selection as given, to tell one replay's checkpoint from another's.
    fn fingerprint(&self) -> String {
        format!(
            "since={:?} until={:?} kind={:?} key={:?} grep={:?} entry={:?}",
            self.since, self.until, self.kind, self.key, self.grep, self.entry
        )
    }
}

/// An RFC 3339 time, or an age before now (`90s`, `2h`, `3days`), as epoch ms.
fn when(flag: &str, text: &str) -> anyhow::Result<i64> {
    if let Ok(ago) = humantime::parse_duration(text) {
        return Ok(render::now_ms() - ago.as_millis() as i64);
    }
    let at = humantime::parse_rfc3339_weak(text).with_context(|| {
        format!("{flag} {text:?} is neither an RFC 3339 time (2026-11-29T10:00:00Z) nor an age (2h)")
    })?;
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64))
}

#[derive(Args)]
pub(crate) struct ReplayArgs {
    /// Sends to retry level N instead of the main topic (due at once).
    #[arg(long, value_name = "N")]
    to_level: Option<u32>,
    /// Prints what would be sent, and sends nothing.
    #[arg(long)]
    dry_run: bool,
    /// The loop guard: entries replayed this many times already are held back (counted by the
    /// copies of their failed replays in the parking queue, or an entry's own `rk-replays`).
    #[arg(long, default_value_t = DEFAULT_MAX_REPLAYS)]
    max_replays: u32,
    /// Replays entries the loop guard holds back, too.
    #[arg(long)]
    force: bool,
    /// Progress file; the same command run again resumes from it. Default:
    /// `.retry-kafka/replay-<queue>-<selection>.json` in the current directory.
    #[arg(long, value_name = "FILE")]
    checkpoint: Option<PathBuf>,
    /// Entries sent between two checkpoint writes.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Output of the dry run.
    #[command(flatten)]
    output: Output,
}

impl Dlq {
    pub(crate) async fn run<B: Backend + Browse>(self, backend: &B) -> anyhow::Result<ExitCode> {
        match self {
            Dlq::List(Listing {
                queue,
                select,
                output,
            }) => {
                let (name, entries) = selected(backend, &queue, &select).await?;
                match output.format {
                    Format::Json => entries
                        .iter()
                        .for_each(|e| println!("{}", render::entry_json(&name, e))),
                    Format::Table => {
                        let mut table = render::table(&render::LIST_HEADER);
                        for entry in &entries {
                            table.add_row(render::list_row(entry));
                        }
                        render::print_table(&table);
                        eprintln!("{} entries in {name}", entries.len());
                    }
                }
            }
            Dlq::Show(Listing {
                queue,
                select,
                output,
            }) => {
                let (name, entries) = selected(backend, &queue, &select).await?;
                if entries.is_empty() {
                    bail!("no entry of {name} matches");
                }
                for entry in &entries {
                    let json = render::entry_json(&name, entry);
                    match output.format {
                        Format::Json => println!("{json}"),
                        Format::Table => println!("{}\n", serde_json::to_string_pretty(&json)?),
                    }
                }
            }
            Dlq::Replay {
                queue,
                select,
                replay,
            } => return replay.run(backend, &queue, &select).await,
        }
        Ok(ExitCode::SUCCESS)
    }
}

async fn selected<B: Browse>(
    backend: &B,
    queue: &Queue,
    select: &Select,
) -> anyhow::Result<(String, Vec<DeadLetter>)> {
    let filter = select.filter()?;
    let name = queue.name();
    let entries = dead_letters::read(backend, &Topic::new(name.as_str(), queue.role()))
        .await
        .with_context(|| format!("could not read {name}"))?;
    Ok((name, filter.apply(entries)))
}

impl ReplayArgs {
    async fn run<B: Backend + Browse>(
        self,
        backend: &B,
        queue: &Queue,
        select: &Select,
    ) -> anyhow::Result<ExitCode> {
        let (source, entries) = selected(backend, queue, select).await?;
        let (target, role) = match self.to_level {
            Some(0) => bail!("--to-level counts from 1; leave it out to replay onto the main topic"),
            Some(level) => (
                TopicNaming::default().retry(&queue.topic, &queue.group, level),
                TopicRole::Retry { level },
            ),
            None => (queue.topic.clone(), TopicRole::Main),
        };
        let checkpoint = self.checkpoint.clone().unwrap_or_else(|| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (select.fingerprint(), &target).hash(&mut hasher);
            PathBuf::from(".retry-kafka").join(format!("replay-{source}-{:08x}.json", hasher.finish() as u32))
        });
        let replay = Replay::new(backend, source.clone(), Topic::new(target.as_str(), role))
            .parking(Topic::new(
                TopicNaming::default().parked(&queue.topic, &queue.group),
                TopicRole::Parked,
            ))
            .selection(select.fingerprint())
            .max_replays(self.max_replays)
            .force(self.force)
            .batch(self.batch)
            .checkpoint(checkpoint.clone());
        if self.dry_run {
            let plan = replay.plan(&entries).await?;
            match self.output.format {
                Format::Json => {
                    for (entry, action) in &plan {
                        let mut json = render::entry_json(&source, entry);
                        json["action"] = action_name(*action).into();
                        json["target"] = target.clone().into();
                        println!("{json}");
                    }
                }
                Format::Table => {
                    let mut table = render::table(&["ENTRY", "ACTION", "KEY", "KIND", "REPLAYS"]);
                    for (entry, action) in &plan {
                        let row = render::list_row(entry);
                        let action = match action {
                            Action::Send => format!("send to {target}"),
                            other => action_name(*other).replace('_', " "),
                        };
                        table.add_row(vec![
                            row[0].clone(),
                            action,
                            row[1].clone(),
                            row[2].clone(),
                            row[4].clone(),
                        ]);
                    }
                    render::print_table(&table);
                }
            }
            let sending = plan.iter().filter(|(_, a)| *a == Action::Send).count();
            eprintln!(
                "dry run: {sending} of {} entries would be sent to {target}; nothing was sent",
                plan.len()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(dir) = checkpoint.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
        }
        eprintln!(
            "replaying {} entries of {source} onto {target}; progress in {} (run the same command again to resume)",
            entries.len(),
            checkpoint.display()
        );
        let bar = ProgressBar::new(entries.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} entries, {per_sec}, {eta} left")
                .expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        let report = replay
            .run(&entries, |progress| {
                bar.set_length(progress.total);
                bar.set_position(progress.done);
            })
            .await;
        bar.finish_and_clear();
        let report = report?;
        println!(
            "replayed {} entries of {source} onto {target}{}",
            report.sent,
            if report.already_sent > 0 {
                format!(
                    " ({} more were sent by an earlier, interrupted run)",
                    report.already_sent
                )
            } else {
                String::new()
            }
        );
        if !report.guarded.is_empty() {
            println!(
                "held back by the loop guard (replayed {} times already; --force sends them): {}",
                self.max_replays,
                report.guarded.join(" ")
            );
            if report.sent == 0 && report.already_sent == 0 {
                return Ok(ExitCode::from(HELD_BACK));
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The exit code of a replay whose every selected entry the loop guard held back.
const HELD_BACK: u8 = 3;

fn action_name(action: Action) -> &'static str {
    match action {
        Action::Send => "send",
        Action::Guarded => "held_back_by_loop_guard",
        Action::AlreadySent => "already_sent",
        _ => "unknown",
    }
}
