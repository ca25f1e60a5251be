//! `strata`: operate, inspect and repair Strata stores.
//!
//! Every command is a thin shell over the engine; output goes to stdout
//! (`--json` for scripts), errors to stderr with what to do next, and the
//! exit code says what happened (see `EXIT CODES` in `strata --help`).

mod cmd;
mod exit;
mod out;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
EXIT CODES:
    0  success
    1  damage or verification failure found
    2  usage or input error
    3  store locked or unavailable, or the sync server cannot be reached
    4  append conflict: the aggregate is not at --expect-version (nothing is damaged)

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
        A stale --expect-version fails with exit code 4 and names the current version.\n\n\
        Examples:\n  strata append counter-1 CounterIncremented '{\"value\":1}'\n  \
        strata append counter-1 CounterIncremented '{\"value\":1}' --expect-version 3 --metadata '{\"user\":\"ann\"}'"
    )]
    Append(cmd::append::Args),
    /// Import events from JSON lines (the seed's event objects).
    #[command(
        long_about = "Append events from a file of JSON lines, one event object per line in the seed's shape \
        (event_id, aggregate_id, version, event_type, event_data, timestamp, metadata), in batches. \
        Events whose event_id is already in the store are skipped, so importing a file twice is harmless. \
        A bad line stops the import with its line number; nothing of its batch is written.\n\n\
        Examples:\n  strata import events.jsonl\n  strata export --store old | strata --store new import -"
    )]
    Import(cmd::import::Args),
    /// Export events as JSON lines, in position order.
    #[command(
        long_about = "Print events as JSON lines (the seed's event objects), in position order.\n\n\
        Examples:\n  strata export > all.jsonl\n  strata export --from-position 1000 --aggregate counter-1"
    )]
    Export(cmd::export::Args),
    /// One row per segment file: positions, events, bytes, sealed/active.
    #[command(
        long_about = "List the segment files with their first and last position, event count, size, and whether \
        they are sealed. Reads the files directly, so it works on a damaged store.\n\nExamples:\n  strata segments\n  strata segments --json"
    )]
    Segments(cmd::segments::Args),
    /// Decoded records with byte offsets and CRC status.
    #[command(
        long_about = "Print every record of the store's segments, or of one segment file (also outside any store), \
        with its byte offset, batch, position and CRC status; bad bytes are shown where they are.\n\n\
        Examples:\n  strata dump\n  strata dump log/00000000000000000001.seg --from-position 100 --limit 10"
    )]
    Dump(cmd::dump::Args),
    /// Check every frame, seal and position, and the index against the log.
    #[command(
        long_about = "Check every byte of the log (headers, frame CRCs, seals, positions without gaps) and that \
        index.sqlite agrees with the log. Exit 0 when clean; exit 1 with one line per problem naming file and byte offset, \
        and the position to give `strata repair --truncate-after` when there is damage.\n\nExamples:\n  strata verify\n  strata verify --json"
    )]
    Verify(cmd::verify::Args),
    /// Cut a torn tail; truncate after a position only when asked.
    #[command(
        long_about = "Cut a torn tail of the last segment (what opening the store does), reporting exactly what is removed. \
        Damage elsewhere is reported and nothing is removed, unless --truncate-after POSITION (printed by `strata verify`) \
        asks to drop everything after that position. Removed bytes are moved to <store>/quarantine/ first.\n\n\
        Examples:\n  strata repair --dry-run\n  strata repair\n  strata repair --truncate-after 41999"
    )]
    Repair(cmd::repair::Args),
    /// Copy the store, consistently, beside a running application.
    #[command(
        long_about = "Copy the store into DEST while applications keep using it: SQLite files as snapshots first, then the log up to a batch boundary at or after the durable head. DEST opens as a store; a second backup into it copies only what it lacks; --link hard-links sealed segments. A backup cut short leaves DEST marked BACKUP-INCOMPLETE, which stores refuse to open until a backup into it completes.\n\nExamples:\n  strata --store ./data backup /backups/data\n  strata --store ./data backup /backups/data --link --json"
    )]
    Backup(cmd::backup::Args),
    /// Rebuild a store directory from a server's continuous archive.
    #[command(
        long_about = "Rebuild the --store directory (new or empty) from the archive of one store that `strata serve --archive URL` \
        keeps at URL/<store name>: every archived segment, each object's CRC-32 checked against the archive's record (ARCHIVE.json), \
        then the store opened to check its id and head. The index and the views are rebuilt from the log when the store first opens. \
        A restore cut short leaves the directory marked BACKUP-INCOMPLETE; run it again.\n\n\
        Examples:\n  strata --store /srv/strata/default restore --from /mnt/archive/default\n  \
        strata --store ./data restore --from s3://bucket/strata/default --json"
    )]
    Restore(cmd::restore::Args),
    /// Rebuild index.sqlite from the log.
    #[command(
        long_about = "Delete index.sqlite and rebuild it from the log.\n\nExamples:\n  strata reindex"
    )]
    Reindex(cmd::reindex::Args),
    /// Projections: status, rebuild.
    #[command(
        subcommand,
        long_about = "Show the views' checkpoints and state, or rebuild them by replay.\n\n\
        Examples:\n  strata views status\n  strata views rebuild counter"
    )]
    Views(cmd::views::Command),
    /// Events, aggregates, segments, bytes, index lag, views.
    #[command(
        long_about = "Summarise the store (read-only).\n\nExamples:\n  strata stats\n  strata stats --json"
    )]
    Stats(cmd::stats::Args),
    /// Print the latest events; --follow prints new ones as they come.
    #[command(
        long_about = "Print the latest events, and with --follow keep printing new ones as they are appended \
        (by this or another process, across segment rolls).\n\nExamples:\n  strata tail -n 20\n  strata tail --follow --aggregate counter-1"
    )]
    Tail(cmd::tail::Args),
    /// The seed's counter app: incr, decr, show.
    #[command(
        subcommand,
        long_about = "Increment, decrement or show a counter of the seed's example app \
        (CounterIncremented / CounterDecremented events, the current_count view).\n\n\
        Examples:\n  strata counter incr counter-1\n  strata counter decr counter-1 --by 2\n  strata counter show counter-1 --json"
    )]
    Counter(cmd::counter::Command),
    /// Run the sync server (QUIC, WebSocket /ws, the web demo at /).
    #[command(
        long_about = "Serve stores to replicas: QUIC sync, the seed's JSON protocol over WebSocket at /ws, \
        and the counter web demo at /. Same as the strata-server binary. Without --token it listens on loopback only.\n\n\
        Examples:\n  strata serve\n  strata serve --data /srv/strata --http 0.0.0.0:8080 --quic 0.0.0.0:8443 --token $TOKEN"
    )]
    Serve(strata_server::ServeArgs),
    /// Sync the store, as a replica, with a server over QUIC.
    #[command(
        long_about = "Sync the --store directory (created if missing) as a replica of a server's store over QUIC: \
        pull what the server has, push what is pending, until nothing is left; --watch stays connected and pushes \
        local changes as they happen until Ctrl-C. The server's certificate is pinned with --fingerprint (printed by \
        `strata serve`) or trusted through --ca. Prints committed position, server head, pending events, the age of the \
        oldest, and rejections. Exit 3 when the server cannot be reached.\n\n\
        Examples:\n  strata --store ./replica sync --server 127.0.0.1:8443 --fingerprint 3f9a...\n  \
        strata --store ./replica sync --server sync.example.com:8443 --ca ca.pem --server-name sync.example.com --token $TOKEN --watch\n  \
        strata --store ./replica sync --status --json"
    )]
    Sync(cmd::sync::Args),
    /// Measure Strata against the seed's SQLite table and the raw disk.
    #[command(
        long_about = "Run the benchmark workloads and print events/s, the ratio to the seed design's SQLite \
        table and the fraction of the raw limit (plain framed I/O with the same sync pattern), all measured in this run.\n\n\
        Examples:\n  strata bench\n  strata bench --events 100000 --json\n  strata bench --only scan_all,read_aggregate"
    )]
    #[cfg(feature = "bench")]
    Bench(cmd::bench::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Demo(args) => cmd::demo::run(&cli, args),
        Command::Init(args) => cmd::init::run(&cli, args),
        Command::Append(args) => cmd::append::run(&cli, args),
        #[cfg(feature = "bench")]
        Command::Bench(args) => cmd::bench::run(&cli, args),
        Command::Serve(args) => cmd::serve::run(&cli, args),
        Command::Sync(args) => cmd::sync::run(&cli, args),
        Command::Import(args) => cmd::import::run(&cli, args),
        Command::Export(args) => cmd::export::run(&cli, args),
        Command::Segments(args) => cmd::segments::run(&cli, args),
        Command::Dump(args) => cmd::dump::run(&cli, args),
        Command::Verify(args) => cmd::verify::run(&cli, args),
        Command::Repair(args) => cmd::repair::run(&cli, args),
        Command::Backup(args) => cmd::backup::run(&cli, args),
        Command::Restore(args) => cmd::restore::run(&cli, args),
        Command::Reindex(args) => cmd::reindex::run(&cli, args),
        Command::Views(command) => cmd::views::run(&cli, command),
        Command::Stats(args) => cmd::stats::run(&cli, args),
        Command::Tail(args) => cmd::tail::run(&cli, args),
        Command::Counter(command) => cmd::counter::run(&cli, command),
    };
    match result {
        Ok(code) => code.into(),
        Err(failure) => {
            eprintln!("strata: {failure}");
            failure.code.into()
        }
    }
}
