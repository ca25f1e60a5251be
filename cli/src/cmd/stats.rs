//! `strata stats`: the store at a glance.

use crate::Cli;
use crate::exit::{CmdResult, Code};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(cli: &Cli, _args: &Args) -> CmdResult {
    let store = super::open_read_only(&cli.store)?;
    let head = store.head();
    let segments = store.log().segments();
    let bytes: u64 = segments.iter().map(|s| s.readable_len()).sum();
    let indexed = store.indexed_position();
    let (aggregates, _) = store.index_counts()?;
    let views = super::views::read_rows(cli, head)?;
    if cli.json {
        crate::out::json_line(&serde_json::json!({
            "store_id": store.store_id().to_string(), "events": head, "aggregates_indexed": aggregates,
            "segments": segments.len(), "log_bytes": bytes, "indexed_position": indexed,
            "index_lag": head - indexed, "views": views,
        }));
    } else {
        println!("store      {}", store.store_id());
        println!("events     {head}");
        println!("aggregates {aggregates} (in the index)");
        println!("segments   {} ({bytes} bytes)", segments.len());
        println!(
            "index      up to position {indexed} (lag {})",
            head - indexed
        );
        if views.is_empty() {
            println!("views      none");
        }
        for v in &views {
            let state = v.failed.clone().unwrap_or_else(|| "ok".into());
            println!(
                "view       {} v{} at position {} (lag {}) {state}",
                v.name, v.version, v.position, v.lag
            );
        }
    }
    Ok(Code::Ok)
}
