//! `strata tail`: the latest events, and with `--follow` new ones as
//! another process appends them.

use std::time::Duration;

use strata::json::EventJson;

use crate::Cli;
use crate::exit::{CmdResult, Code};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep printing events as they are appended (across segment rolls).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only this aggregate's events.
    #[arg(long)]
    aggregate: Option<String>,
    /// How many of the latest events to print first.
    #[arg(long, short = 'n', default_value_t = 10)]
    lines: u64,
}

fn print(cli: &Cli, e: &strata::Event) {
    if cli.json {
        crate::out::json_line(&EventJson::from(e));
    } else {
        println!(
            "{:>8}  {}  {} v{}  {}  {}",
            e.position,
            e.timestamp,
            e.aggregate_id,
            e.version,
            e.event_type,
            String::from_utf8_lossy(&e.data)
        );
    }
}

pub fn run(cli: &Cli, args: &Args) -> CmdResult {
    let store = super::open_read_only(&cli.store)?;
    let head = store.head();
    let from = match &args.aggregate {
        Some(agg) => {
            let mut latest = store.read_aggregate_backward(agg, args.lines as usize)?;
            latest.reverse();
            for e in &latest {
                print(cli, e);
            }
            head + 1
        }
        None => head.saturating_sub(args.lines) + 1,
    };
    let matches = |e: &strata::Event| {
        args.aggregate
            .as_deref()
            .is_none_or(|a| a == e.aggregate_id)
    };
    // A read-only store's subscription follows the log by itself while it
    // waits (every `strata::FOLLOW_POLL`), across segment rolls.
    let mut sub = store.subscribe(from);
    let wait = if args.follow {
        Duration::from_secs(3600)
    } else {
        Duration::ZERO
    };
    loop {
        match sub.next_timeout(wait)? {
            Some(e) if matches(&e) => print(cli, &e),
            Some(_) => {}
            None if args.follow => {}
            None => return Ok(Code::Ok),
        }
    }
}
