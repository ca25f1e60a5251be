//! `strata tail`: the latest events, and with `--follow` new ones as
//! another process appends them.

use std::time::Duration;

use strata::json::EventJson;

use crate::Cli;
use crate::exit::{CmdResult, Code};

/// How often `--follow` looks for new events.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

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
    let mut sub = store.subscribe(from);
    loop {
        while let Some(e) = sub.next_timeout(Duration::ZERO)? {
            if matches(&e) {
                print(cli, &e);
            }
        }
        if !args.follow {
            return Ok(Code::Ok);
        }
        std::thread::sleep(FOLLOW_POLL);
        store.log().refresh()?;
    }
}
