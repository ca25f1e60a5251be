//! `strata`: operate, inspect and repair Strata stores.
//!
//! Every command is a thin shell over the engine; output goes to stdout
//! (`--json` for scripts), errors to stderr with what to do next, and the
//! exit code says what happened (see `EXIT CODES` in `strata --help`).

mod cmd;
mod exit;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
EXIT CODES:
    0  success
    1  damage or verification failure found, or an append conflict
    2  usage or input error
    3  store locked or unavailable

ENVIRONMENT:
    STRATA_STORE  store directory (same as --store)";

/// Operate, inspect and repair Strata event stores.
#[derive(Debug, Parser)]
#[command(name = "strata", version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// Store directory.
    #[arg(
        long,
        global = true,
        env = "STRATA_STORE",
        default_value = "./strata-data"
    )]
    store: PathBuf,

    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a store in a fresh directory, append events, read them back,
    /// and show what happened on disk.
    #[command(
        long_about = "Create a store, append a few events, read them back and print what it did.\n\n\
        Without --dir the store lives in a temporary directory that is removed afterwards.\n\n\
        Examples:\n  strata demo\n  strata demo --dir /tmp/strata-demo --keep"
    )]
    Demo(cmd::demo::Args),
    /// Create a store.
    #[command(
        long_about = "Create an empty store at --store.\n\nExamples:\n  strata --store ./data init\n  strata --store ./data init --durability periodic:100ms"
    )]
    Init(cmd::init::Args),
    /// Append one event to an aggregate.
    #[command(
        long_about = "Append one event and print its position and version.\n\n\
        A stale --expect-version fails with exit code 1 and names the current version.\n\n\
        Examples:\n  strata append counter-1 CounterIncremented '{\"value\":1}'\n  \
        strata append counter-1 CounterIncremented '{\"value\":1}' --expect-version 3 --metadata '{\"user\":\"ann\"}'"
    )]
    Append(cmd::append::Args),
    /// Measure Strata against the seed's SQLite table and the raw disk.
    #[command(
        long_about = "Run the benchmark workloads and print events/s, the ratio to the seed design's SQLite \
        table and the fraction of the raw limit (plain framed I/O with the same sync pattern), all measured in this run.\n\n\
        Examples:\n  strata bench\n  strata bench --events 100000 --json\n  strata bench --only scan_all,read_aggregate"
    )]
    Bench(cmd::bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(args) => cmd::demo::run(&cli, args),
        Command::Init(args) => cmd::init::run(&cli, args),
        Command::Append(args) => cmd::append::run(&cli, args),
        Command::Bench(args) => cmd::bench::run(&cli, args),
    };
    match result {
        Ok(code) => code.into(),
        Err(failure) => {
            eprintln!("strata: {failure}");
            failure.code.into()
        }
    }
}
