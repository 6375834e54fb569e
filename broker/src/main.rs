//! `sluice`: the broker and its command-line client.
//!
//! - `sluice serve` starts a broker (one pinned glommio executor per core).
//! - `sluice topic ...`, `sluice produce`, `sluice consume` talk to a broker
//!   over the native protocol.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod alloc;
mod cli;
mod config;
mod handlers;
mod kafka;
mod memory;
mod metrics;
mod native;
mod preflight;
mod router;
mod server;
mod shard;
mod topics;

#[global_allocator]
static GLOBAL: alloc::Allocator = alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A Kafka-compatible streaming broker, thread per core"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker (the default when no command is given).
    Serve(ServeArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(cli::TopicCommand),
    /// Produce one record per line of stdin.
    Produce(cli::ProduceArgs),
    /// Consume records and print one value per line.
    Consume(cli::ConsumeArgs),
}

#[derive(clap::Args, Default)]
struct ServeArgs {
    /// A sluice.toml; keys it leaves out keep their documented defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the logs live (default ./sluice-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Shards, one per core (default: every available core).
    #[arg(long)]
    shards: Option<u32>,
    /// Native protocol listener (default 127.0.0.1:9192).
    #[arg(long)]
    native_addr: Option<String>,
    /// Kafka protocol listener (default 127.0.0.1:9092).
    #[arg(long)]
    kafka_addr: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => serve(args),
        Command::Topic(c) => cli::exit(c.run()),
        Command::Produce(a) => cli::exit(a.run()),
        Command::Consume(a) => cli::exit(a.run()),
    }
}

/// The log's writer: stderr, except that a line that cannot be written (the
/// log's disk is full, its pipe closed) is dropped. A broker must keep
/// serving when its log cannot be written: with `std::io::stderr` as the
/// writer, tracing-subscriber reports the failed write with `eprintln!`,
/// which panics when stderr fails, and a panic aborts the process.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        .log_internal_errors(false)
        .init();
    let overrides = config::Overrides {
        data_dir: args.data_dir,
        shards: args.shards,
        native_addr: args.native_addr,
        kafka_addr: args.kafka_addr,
    };
    let result = config::Config::load(args.config.as_deref(), &overrides).and_then(server::serve);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            // Not eprintln!: it panics (and so aborts) when stderr cannot
            // be written, and the exit code must still say what happened.
            let _ = writeln!(std::io::stderr(), "sluice: {e}");
            ExitCode::FAILURE
        }
    }
}
