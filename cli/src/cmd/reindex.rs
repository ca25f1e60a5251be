//! `strata reindex`: rebuild index.sqlite from the log.

use std::sync::Arc;

use strata::{Options, ProgressHook, Store};

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(cli: &Cli, _args: &Args) -> CmdResult {
    // Take the lock before deleting anything: a running writer would be
    // left with an index file that vanished.
    let lock = strata::lock::LockFile::acquire(&cli.store)?;
    if !cli.store.join(strata::log::LOG_DIR).exists() {
        return Err(Failure {
            code: Code::Unavailable,
            message: format!("{}: no store here", cli.store.display()),
        });
    }
    strata::index::remove_index_files(&cli.store)
        .map_err(|e| Failure::usage(format!("removing the old index: {e}")))?;
    drop(lock);
    let bar = crate::out::progress(0, "reindex", false);
    let hook_bar = bar.clone();
    let store = Store::open(
        &cli.store,
        Options {
            create_if_missing: false,
            index_progress: Some(ProgressHook(Arc::new(move |done, total| {
                hook_bar.set_length(total);
                hook_bar.set_position(done);
            }))),
            ..Options::default()
        },
    )?;
    bar.finish_and_clear();
    let (aggregates, events) = store.index_counts()?;
    store.close()?;
    if cli.json {
        crate::out::json_line(&serde_json::json!({ "events": events, "aggregates": aggregates }));
    } else {
        println!("rebuilt index.sqlite: {events} events in {aggregates} aggregates");
    }
    Ok(Code::Ok)
}
