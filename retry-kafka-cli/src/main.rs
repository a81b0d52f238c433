//! `retry-kafka`: dead letters and topics of retry-kafka programs, for operators.
//!
//! Connects the way `retry_kafka::run()` does (`RETRY_KAFKA_BACKEND`, `KAFKA_BROKERS`,
//! `REDIS_URL` and the `KAFKA_CLIENT_*` settings), or with the flags that set those.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod connect;
mod dlq;
mod render;
mod topics;

/// Dead letters and topics of retry-kafka programs.
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
    // Before any thread exists: the backends read their settings from the environment.
    cli.connection.export();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let backend = connect::connect().await?;
    connect::with_backend!(backend, |b| match command {
        Command::Dlq(command) => command.run(&b).await,
        Command::Topics(command) => command.run(&b).await,
    })
}
