//! `strata append`

use strata::{Error, ExpectedVersion, NewEvent};

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Aggregate (stream) to append to.
    aggregate: String,
    /// Event type, e.g. CounterIncremented.
    event_type: String,
    /// Event data, as JSON.
    data: String,
    /// Fail unless the aggregate's current version is this (0: no events).
    #[arg(long)]
    expect_version: Option<u64>,
    /// Metadata, as JSON.
    #[arg(long)]
    metadata: Option<String>,
}

fn json_bytes(what: &str, text: &str) -> Result<Vec<u8>, Failure> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Failure::usage(format!("{what} is not valid JSON: {e}")))?;
    Ok(serde_json::to_vec(&value).expect("a Value serialises"))
}

pub fn run(cli: &Cli, args: &Args) -> CmdResult {
    let mut event = NewEvent::new(&args.event_type, json_bytes("DATA_JSON", &args.data)?);
    if let Some(m) = &args.metadata {
        event = event.with_metadata(json_bytes("--metadata", m)?);
    }
    let expected = args
        .expect_version
        .map_or(ExpectedVersion::Any, ExpectedVersion::Exact);
    let conflict = |current| {
        println!(
            "{}",
            serde_json::json!({ "conflict": true, "current_version": current })
        );
        Ok(Code::Conflict)
    };
    if super::is_replica(&cli.store) {
        // Into the outbox: pushed by the next `strata sync`.
        let replica = super::open_replica(&cli.store)?;
        let placed = match replica.append(&args.aggregate, expected, vec![event]) {
            Ok(p) => p,
            Err(Error::Conflict { current, .. }) if cli.json => return conflict(current),
            Err(e) => return Err(e.into()),
        };
        replica.close()?;
        let p = placed[0];
        if cli.json {
            println!(
                "{}",
                serde_json::json!({ "event_id": p.event_id.to_string(), "pending": true, "version": p.version })
            );
        } else {
            println!(
                "pending, version {} (pushed by the next `strata sync`)",
                p.version
            );
        }
        return Ok(Code::Ok);
    }
    let store = super::open_existing(&cli.store)?;
    let committed = match store.append(&args.aggregate, expected, vec![event]) {
        Ok(c) => c,
        Err(Error::Conflict { current, .. }) if cli.json => return conflict(current),
        Err(e) => return Err(e.into()),
    };
    store.close()?;
    let c = committed[0];
    if cli.json {
        println!(
            "{}",
            serde_json::json!({ "event_id": c.event_id.to_string(), "position": c.position, "version": c.version })
        );
    } else {
        println!("position {} version {}", c.position, c.version);
    }
    Ok(Code::Ok)
}
