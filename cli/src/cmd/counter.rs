//! `strata counter`: the seed's example app from the command line.

use std::sync::Arc;

use strata::projection::counter::{self, CounterProjection};
use strata::projection::rusqlite::OptionalExtension;
use strata::projection::{Projection, ViewOptions, Views};
use strata::{ExpectedVersion, Options, Store};

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Add N (default 1) to a counter; prints the new value.
    #[command(
        long_about = "Append CounterIncremented {\"value\": N} (default 1) to a counter and print its new value. \
        On a sync replica the event waits in the outbox until `strata sync` pushes it, and the value \
        printed includes it.\n\n\
        Examples:\n  strata counter incr counter-1\n  strata counter incr counter-1 --by 5 --json"
    )]
    Incr(Change),
    /// Subtract N (default 1) from a counter; prints the new value.
    #[command(
        long_about = "Append CounterDecremented {\"value\": N} (default 1) to a counter and print its new value \
        (on a replica, with pending events on top).\n\n\
        Examples:\n  strata counter decr counter-1\n  strata counter decr counter-1 --by 2"
    )]
    Decr(Change),
    /// Print a counter's value (0 if it has no events). Reads only: works
    /// beside a server or application that holds the store. On a sync
    /// replica, pending local events count, as in `incr`/`decr`.
    #[command(
        long_about = "Print a counter's value alone on stdout (0 if it has no events); --json prints \
        {\"id\": ..., \"value\": ...}. Reads only: works beside a server or application that holds the \
        store. On a sync replica, pending local events (not yet pushed) count, as in `incr`/`decr`.\n\n\
        Examples:\n  strata counter show counter-1\n  strata --store ./strata-server-data/default counter show counter --json"
    )]
    Show {
        /// Counter (aggregate id).
        id: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct Change {
    /// Counter (aggregate id).
    id: String,
    #[arg(long, default_value_t = 1)]
    by: i64,
}

fn print(cli: &Cli, id: &str, value: i64) {
    if cli.json {
        crate::out::json_line(&serde_json::json!({ "id": id, "value": value }));
    } else {
        println!("{value}");
    }
}

pub fn run(cli: &Cli, command: &Command) -> CmdResult {
    match command {
        Command::Incr(c) => change(cli, &c.id, counter::increment(c.by)),
        Command::Decr(c) => change(cli, &c.id, counter::decrement(c.by)),
        Command::Show { id } => {
            let value = show(cli, id)?;
            print(cli, id, value);
            Ok(Code::Ok)
        }
    }
}

fn change(cli: &Cli, id: &str, event: strata::NewEvent) -> CmdResult {
    if super::is_replica(&cli.store) {
        // Into the outbox, visible at once with the pending events on top.
        let replica = super::open_replica(&cli.store)?;
        replica.append(id, ExpectedVersion::Any, vec![event])?;
        let value = replica
            .read_views(|c| counter::value(c, id))
            .map_err(|e| Failure::damage(e.to_string()))?
            .unwrap_or(0);
        replica.close()?;
        print(cli, id, value);
        return Ok(Code::Ok);
    }
    let store = Store::open(&cli.store, Options::default())?;
    let views = Views::open(
        &store,
        vec![Arc::new(CounterProjection)],
        ViewOptions::default(),
    )
    .map_err(|e| Failure::damage(e.to_string()))?;
    store.append(id, ExpectedVersion::Any, vec![event])?;
    let value = views
        .read(|c| counter::value(c, id))
        .map_err(|e| Failure::damage(e.to_string()))?
        .unwrap_or(0);
    views.check().map_err(|e| Failure::damage(e.to_string()))?;
    views.close();
    store.close()?;
    print(cli, id, value);
    Ok(Code::Ok)
}

/// The value from the view as it is on disk, plus the counter's events the
/// view has not applied yet: exact, without writing anything.
fn show(cli: &Cli, id: &str) -> Result<i64, Failure> {
    let store = super::open_read_only(&cli.store)?;
    // The view's value and its checkpoint from one state of views.sqlite:
    // an application may commit a batch between two separate reads.
    let view = super::views::read_snapshot(cli, |conn| {
        let checkpoint: Option<u64> = conn
            .query_row(
                "SELECT position FROM strata_projections WHERE name = 'counter' AND version = ?1",
                [CounterProjection.version()],
                |r| r.get(0),
            )
            .optional()?;
        match checkpoint {
            Some(p) => Ok(Some((counter::value(conn, id)?.unwrap_or(0), p))),
            None => Ok(None),
        }
    })?;
    let (mut value, checkpoint) = view.flatten().unwrap_or((0, 0));
    for e in store.read_aggregate(id, 1, usize::MAX)? {
        if e.position > checkpoint {
            value += counter::delta(&e.as_ref())
                .map_err(|err| Failure::damage(format!("event {}: {err}", e.event_id)))?
                .unwrap_or(0);
        }
    }
    if super::is_replica(&cli.store) {
        // Pending local events on top, as `incr`/`decr` print it.
        let head = store.head();
        let pending = strata::sync::local::read_pending(&cli.store)?;
        for (i, p) in pending.iter().enumerate() {
            if p.aggregate_id == id {
                let e = p.as_event_ref(head + 1 + i as u64);
                value += counter::delta(&e)
                    .map_err(|err| Failure::damage(format!("event {}: {err}", p.event_id)))?
                    .unwrap_or(0);
            }
        }
    }
    Ok(value)
}
