//! `strata backup DEST`: a consistent copy of the store, taken beside a
//! running application (see `strata::backup`).

use std::path::PathBuf;
use std::sync::Arc;

use strata::ProgressHook;
use strata::backup::{BackupOptions, backup};

use crate::Cli;
use crate::exit::{CmdResult, Code};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the copy goes: a new directory, or an earlier backup to bring
    /// up to date (only what it lacks is copied).
    pub dest: PathBuf,
    /// Hard-link sealed segments instead of copying them (DEST on the same
    /// file system; sealed segments never change).
    #[arg(long)]
    pub link: bool,
}

pub fn run(cli: &Cli, args: &Args) -> CmdResult {
    let bar = crate::out::progress(0, "backup", false);
    let hook_bar = bar.clone();
    let report = backup(
        &cli.store,
        &args.dest,
        &BackupOptions {
            link: args.link,
            progress: Some(ProgressHook(Arc::new(move |done, total| {
                hook_bar.set_length(total);
                hook_bar.set_position(done);
            }))),
        },
    )?;
    bar.finish_and_clear();
    if cli.json {
        crate::out::json_line(&serde_json::json!({
            "dest": args.dest.display().to_string(),
            "head": report.head,
            "segments_copied": report.segments_copied,
            "segments_linked": report.segments_linked,
            "segments_kept": report.segments_kept,
            "log_bytes_copied": report.log_bytes_copied,
            "snapshots": report.snapshots,
        }));
    } else {
        println!(
            "backed up to {}: positions 1..={}; segments: {} copied, {} linked, {} already there; {} log bytes written; snapshots: {}",
            args.dest.display(),
            report.head,
            report.segments_copied,
            report.segments_linked,
            report.segments_kept,
            report.log_bytes_copied,
            if report.snapshots.is_empty() {
                "none".to_owned()
            } else {
                report.snapshots.join(", ")
            }
        );
    }
    Ok(Code::Ok)
}
