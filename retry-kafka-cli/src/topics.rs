//! `retry-kafka topics plan | check`: a program's topology against the cluster.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use retry_kafka::app::TopologyPlan;
use retry_kafka::backend::{Backend, Topic, TopicRole};
use retry_kafka::settings::vars;
use serde::Serialize;

use crate::render::{self, Format};
use crate::Output;

/// How long a program may take to print its topology.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Subcommand)]
pub(crate) enum Topics {
    /// Prints each topic the program needs, its partitions, and what the cluster has.
    Plan {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        output: Output,
    },
    /// Like `plan`, and exits with 1 if a topic is missing or has too few partitions.
    Check {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        output: Output,
    },
}

/// Where the handlers come from.
#[derive(Args)]
pub(crate) struct Source {
    /// A program built with retry-kafka: it is run with RETRY_KAFKA_PRINT_TOPOLOGY=1, prints
    /// its handlers' topology and exits without connecting anywhere. Arguments after `--` are
    /// passed to it.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with = "topology",
        required_unless_present = "topology"
    )]
    program: Option<PathBuf>,
    /// The topology as such a program printed it, saved to a file.
    #[arg(long, value_name = "FILE")]
    topology: Option<PathBuf>,
    /// Arguments for the program.
    #[arg(last = true, requires = "program")]
    args: Vec<String>,
}

impl Source {
    async fn plan(&self) -> anyhow::Result<TopologyPlan> {
        let text = match (&self.program, &self.topology) {
            (Some(program), _) => {
                let run = tokio::process::Command::new(program)
                    .args(&self.args)
                    .env(vars::RETRY_KAFKA_PRINT_TOPOLOGY, "1")
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output();
                let output = tokio::time::timeout(PROGRAM_TIMEOUT, run)
                    .await
                    .with_context(|| {
                        format!(
                            "{} did not print its topology within {PROGRAM_TIMEOUT:?}",
                            program.display()
                        )
                    })?
                    .with_context(|| format!("could not run {}", program.display()))?;
                if !output.status.success() {
                    bail!(
                        "{} exited with {} instead of printing its topology: {}",
                        program.display(),
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    );
                }
                String::from_utf8_lossy(&output.stdout).into_owned()
            }
            (None, Some(file)) => {
                std::fs::read_to_string(file).with_context(|| format!("could not read {}", file.display()))?
            }
            (None, None) => bail!("pass --program or --topology"),
        };
        // The program may log to stdout too: the plan is the line that ends in one (a test
        // harness, say, prints it after the test's name).
        text.lines()
            .rev()
            .find_map(|line| serde_json::from_str(line.get(line.find('{')?..)?.trim()).ok())
            .context("no topology in the program's output: is it built with retry-kafka and does it call run(), or App::print_plan() when Settings::from_env()?.print_topology is set?")
    }
}

/// One topic: what the handlers need and what the cluster has.
#[derive(Serialize)]
struct Row {
    topic: String,
    role: String,
    handler: String,
    partitions: Option<u32>,
    needed: Option<u32>,
    status: &'static str,
}

impl Topics {
    pub(crate) async fn run<B: Backend>(self, backend: &B) -> anyhow::Result<ExitCode> {
        let (source, output, check) = match self {
            Topics::Plan { source, output } => (source, output, false),
            Topics::Check { source, output } => (source, output, true),
        };
        let plan = source.plan().await?;
        let mut rows = Vec::new();
        for handler in &plan.handlers {
            let main = backend
                .partitions(&Topic::main(handler.topic.as_str()))
                .await
                .with_context(|| format!("could not look up {}", handler.topic))?;
            for (topic, role) in handler.topics() {
                let partitions = match role {
                    TopicRole::Main => main,
                    role => backend
                        .partitions(&Topic::new(topic, role))
                        .await
                        .with_context(|| format!("could not look up {topic}"))?,
                };
                // A failed message keeps its partition number on every hop: each derived
                // topic needs at least the main topic's partitions.
                let needed = match role {
                    TopicRole::Main => Some(1),
                    _ => main,
                };
                let status = match (partitions, needed) {
                    (None, _) => "missing",
                    (Some(_), None) => "main topic missing",
                    (Some(have), Some(need)) if have < need => "too few partitions",
                    _ => "ok",
                };
                rows.push(Row {
                    topic: topic.to_owned(),
                    role: role_name(role),
                    handler: handler.handler.clone(),
                    partitions,
                    needed,
                    status,
                });
            }
        }
        match output.format {
            Format::Json => rows
                .iter()
                .for_each(|row| println!("{}", serde_json::to_string(row).expect("plain data"))),
            Format::Table => {
                let mut table =
                    render::table(&["TOPIC", "ROLE", "HANDLER", "PARTITIONS", "NEEDED", "STATUS"]);
                for row in &rows {
                    let count = |n: Option<u32>| n.map_or("-".to_owned(), |n| n.to_string());
                    table.add_row(vec![
                        row.topic.clone(),
                        row.role.clone(),
                        row.handler.clone(),
                        count(row.partitions),
                        count(row.needed),
                        row.status.to_owned(),
                    ]);
                }
                render::print_table(&table);
            }
        }
        // A row per handler and topic: handlers that share a main topic each have a row of it,
        // but it is one topic (named once, wrong if any of its rows is).
        let topics: BTreeSet<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
        let mut named = BTreeSet::new();
        let wrong: Vec<&Row> = rows
            .iter()
            .filter(|r| r.status != "ok" && named.insert(r.topic.as_str()))
            .collect();
        if check && !wrong.is_empty() {
            eprintln!(
                "{} of {} topics do not match: {}",
                wrong.len(),
                topics.len(),
                wrong
                    .iter()
                    .map(|r| format!("{} ({})", r.topic, r.status))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    }
}

fn role_name(role: TopicRole) -> String {
    match role {
        TopicRole::Main => "main".into(),
        TopicRole::Retry { level } => format!("retry {level}"),
        TopicRole::DeadLetter => "dead letters".into(),
        TopicRole::Parked => "parked".into(),
        _ => "other".into(),
    }
}
