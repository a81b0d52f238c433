//! `retry-kafka dlq list | show | export | import | replay`.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use retry_kafka::app::TopicNaming;
use retry_kafka::backend::{Backend, Browse, Topic, TopicRole};
use retry_kafka::dead_letters::{
    Action, DeadLetter, Filter, Replay, Scan, DEFAULT_BATCH, DEFAULT_MAX_REPLAYS,
};
use retry_kafka::handler::ErrorKind;

use crate::render::{self, Format};
use crate::Output;

#[derive(Subcommand)]
pub(crate) enum Dlq {
    /// Lists the entries of a handler's dead-letter (or parking) queue.
    List(Listing),
    /// Shows entries in full: failure context, headers, payload.
    Show(Listing),
    /// Writes the selected entries to stdout as JSON lines, every byte kept, for `import`
    /// (moving a queue to another deployment or key layout, or keeping a copy).
    Export(Exporting),
    /// Writes the entries `export` wrote (JSON lines on stdin) into the queue, each in the
    /// partition it had; run it once per export (a second run writes them again).
    Import {
        #[command(flatten)]
        queue: Queue,
        /// Creates the queue with this many partitions when it does not exist yet (as many as
        /// the exported one had).
        #[arg(long)]
        partitions: Option<u32>,
    },
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
    /// Shows progress on stderr even when it is not a terminal (a line a second); on a
    /// terminal it shows anyway.
    #[arg(long)]
    progress: bool,
}

/// Which entries of whose queue, for `export`.
#[derive(Args)]
pub(crate) struct Exporting {
    #[command(flatten)]
    queue: Queue,
    #[command(flatten)]
    select: Select,
    /// Shows progress on stderr even when it is not a terminal (a line a second); on a
    /// terminal it shows anyway.
    #[arg(long)]
    progress: bool,
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
    pub(crate) fn role(&self) -> TopicRole {
        if self.parked {
            TopicRole::Parked
        } else {
            TopicRole::DeadLetter
        }
    }

    pub(crate) fn name(&self) -> String {
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
    /// Entries sent at once (all in flight together), between two checkpoint writes.
    #[arg(long, default_value_t = DEFAULT_BATCH)]
    batch: usize,
    /// Shows progress on stderr even when it is not a terminal (a line a second); on a
    /// terminal it shows anyway.
    #[arg(long)]
    progress: bool,
    /// Output of the dry run.
    #[command(flatten)]
    output: Output,
}

impl Dlq {
    pub(crate) async fn run<B: Backend + Browse>(self, backend: &B) -> anyhow::Result<ExitCode> {
        match self {
            Dlq::List(listing) => listing.list(backend).await?,
            Dlq::Show(listing) => listing.show(backend).await?,
            Dlq::Export(exporting) => exporting.export(backend).await?,
            Dlq::Import { queue, partitions } => crate::transfer::import(backend, &queue, partitions).await?,
            Dlq::Replay {
                queue,
                select,
                replay,
            } => return replay.run(backend, &queue, &select).await,
        }
        Ok(ExitCode::SUCCESS)
    }
}

impl Exporting {
    /// Calls `each` with every selected entry, reading the queue a page at a time.
    pub(crate) async fn each<B: Browse>(
        &self,
        backend: &B,
        each: impl FnMut(&str, &DeadLetter) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        selected(backend, &self.queue, &self.select, self.progress, each).await
    }

    pub(crate) fn queue_name(&self) -> String {
        self.queue.name()
    }
}

/// Calls `each` with every entry of `queue` that `select` selects, reading the queue a page at
/// a time; how many there were.
async fn selected<B: Browse>(
    backend: &B,
    queue: &Queue,
    select: &Select,
    progress: bool,
    mut each: impl FnMut(&str, &DeadLetter) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let filter = select.filter()?;
    let name = queue.name();
    let could_not_read = || format!("could not read {name}");
    let mut scan = Scan::new(backend, Topic::new(name.as_str(), queue.role()))
        .await
        .with_context(could_not_read)?;
    let bar = render::progress_bar(progress);
    let mut matched = 0;
    while let Some(entry) = scan.next().await.with_context(could_not_read)? {
        if filter.matches(&entry) {
            matched += 1;
            each(&name, &entry)?;
        }
        if scan.read().is_multiple_of(1000) {
            bar.set_message(format!("{} entries read, {matched} selected", scan.read()));
        }
    }
    bar.finish_and_clear();
    Ok(matched)
}

impl Listing {
    /// Calls `each` with every selected entry, reading the queue a page at a time.
    async fn each<B: Browse>(
        &self,
        backend: &B,
        each: impl FnMut(&str, &DeadLetter) -> anyhow::Result<()>,
    ) -> anyhow::Result<u64> {
        selected(backend, &self.queue, &self.select, self.progress, each).await
    }

    async fn list<B: Browse>(&self, backend: &B) -> anyhow::Result<()> {
        let mut out = render::Out::stdout();
        let mut rows = render::Rows::new(&render::LIST_HEADER);
        let format = self.output.format;
        let listed = self
            .each(backend, |name, entry| {
                match format {
                    Format::Json => out.line(render::entry_json(name, entry))?,
                    Format::Table => rows.add(render::list_row(entry), &mut out)?,
                }
                Ok(())
            })
            .await?;
        if format == Format::Table {
            rows.finish(&mut out)?;
            out.flush()?;
            eprintln!("{listed} entries in {}", self.queue.name());
        }
        out.flush()?;
        Ok(())
    }

    async fn show<B: Browse>(&self, backend: &B) -> anyhow::Result<()> {
        let mut out = render::Out::stdout();
        let format = self.output.format;
        let shown = self
            .each(backend, |name, entry| {
                let json = render::entry_json(name, entry);
                match format {
                    Format::Json => out.line(json)?,
                    Format::Table => out.line(format!("{}\n", serde_json::to_string_pretty(&json)?))?,
                }
                Ok(())
            })
            .await?;
        out.flush()?;
        if shown == 0 {
            bail!("no entry of {} matches", self.queue.name());
        }
        Ok(())
    }
}

impl ReplayArgs {
    async fn run<B: Backend + Browse>(
        self,
        backend: &B,
        queue: &Queue,
        select: &Select,
    ) -> anyhow::Result<ExitCode> {
        let filter = select.filter()?;
        let source = queue.name();
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
        let replay = Replay::new(
            backend,
            Topic::new(source.as_str(), queue.role()),
            Topic::new(target.as_str(), role),
        )
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
            return self.dry_run(&replay, &filter, &source, &target).await;
        }
        if let Some(dir) = checkpoint.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
        }
        eprintln!(
            "replaying the selected entries of {source} onto {target}; progress in {} (run the same command again to resume)",
            checkpoint.display()
        );
        let bar = render::progress_bar(self.progress);
        let report = replay
            .run(&filter, |p| {
                bar.set_message(format!(
                    "{} entries read, {} sent, {} held back",
                    p.read, p.sent, p.guarded
                ))
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
        if report.guarded > 0 {
            let more = report.guarded - report.held_back.len() as u64;
            println!(
                "held back by the loop guard (replayed {} times already; --force sends them): {}{}",
                self.max_replays,
                report.held_back.join(" "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
            if report.sent == 0 && report.already_sent == 0 {
                return Ok(ExitCode::from(HELD_BACK));
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn dry_run<B: Backend + Browse>(
        &self,
        replay: &Replay<'_, B>,
        filter: &Filter,
        source: &str,
        target: &str,
    ) -> anyhow::Result<ExitCode> {
        let mut out = render::Out::stdout();
        let mut rows = render::Rows::new(&["ENTRY", "ACTION", "KEY", "KIND", "REPLAYS"]);
        let (mut selected, mut sending) = (0u64, 0u64);
        let mut result = Ok(());
        replay
            .plan(filter, |entry, action| {
                selected += 1;
                sending += u64::from(action == Action::Send);
                if result.is_err() {
                    return;
                }
                result = match self.output.format {
                    Format::Json => {
                        let mut json = render::entry_json(source, entry);
                        json["action"] = action_name(action).into();
                        json["target"] = target.into();
                        out.line(json)
                    }
                    Format::Table => {
                        let row = render::list_row(entry);
                        let action = match action {
                            Action::Send => format!("send to {target}"),
                            other => action_name(other).replace('_', " "),
                        };
                        let row = vec![
                            row[0].clone(),
                            action,
                            row[1].clone(),
                            row[2].clone(),
                            row[4].clone(),
                        ];
                        rows.add(row, &mut out)
                    }
                };
            })
            .await?;
        result?;
        if self.output.format == Format::Table {
            rows.finish(&mut out)?;
        }
        out.flush()?;
        eprintln!("dry run: {sending} of {selected} entries would be sent to {target}; nothing was sent");
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
