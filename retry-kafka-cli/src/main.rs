//! `retry-kafka`: dead letters, topics and held keys of retry-kafka programs, for operators.
//!
//! Connects the way `retry_kafka::run()` does, with the library's own `Settings` (read from
//! `RETRY_KAFKA_BACKEND`, `KAFKA_BROKERS`, `REDIS_URL`, `KAFKA_CLIENT_*`, ...) and the flags
//! in place of their variables.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use retry_kafka::backend::{Backend, Browse};
use retry_kafka::settings::WithBackend;

mod connect;
mod dlq;
mod held;
mod render;
mod topics;
mod transfer;

/// Dead letters, topics and held keys of retry-kafka programs.
#[derive(Parser)]
#[command(name = "retry-kafka", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    connection: connect::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dead letters and parked entries: list, show, replay.
    #[command(subcommand)]
    Dlq(dlq::Dlq),
    /// The topics a program's handlers need, against what the cluster has.
    #[command(subcommand)]
    Topics(topics::Topics),
    /// The keys a key-ordered handler (`ordering = "key"`) holds back: each key with a record
    /// on a retry level, and its records waiting behind it on the held topic.
    Held(held::Held),
}

/// How to print.
#[derive(Args, Clone, Copy)]
struct Output {
    /// `table` for people, `json` for scripts (one JSON object per line).
    #[arg(long, value_enum, default_value_t = render::Format::Table)]
    format: render::Format,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = cli.connection.settings()?;
    settings.with_backend(cli.command).await?
}

/// A command runs on whichever backend the settings choose.
impl WithBackend for Command {
    type Output = anyhow::Result<ExitCode>;

    async fn run<B: Backend + Browse>(self, backend: B) -> anyhow::Result<ExitCode> {
        match self {
            Command::Dlq(command) => command.run(&backend).await,
            Command::Topics(command) => command.run(&backend).await,
            Command::Held(command) => command.run(&backend).await,
        }
    }
}
