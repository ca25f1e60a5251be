//! `strata restore --from URL`: rebuilds the store directory (`--store`)
//! from a continuous archive (see `strata_archive`).

use std::sync::Arc;

use strata::ProgressHook;
use strata_archive::{ArchiveError, RestoreOptions, restore};

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The archive of one store: a server's --archive URL followed by
    /// /<store name> (a directory path, file:///dir, or s3://bucket/prefix
    /// with the archive-s3 feature).
    #[arg(long = "from", value_name = "URL")]
    pub from: String,
}

pub fn run(cli: &Cli, args: &Args) -> CmdResult {
    let target = strata_archive::target::open(&args.from).map_err(failure)?;
    let bar = crate::out::progress(0, "restore", false);
    let hook_bar = bar.clone();
    let report = restore(
        &*target,
        &cli.store,
        &RestoreOptions {
            progress: Some(ProgressHook(Arc::new(move |done, total| {
                hook_bar.set_length(total);
                hook_bar.set_position(done);
            }))),
        },
    )
    .map_err(failure)?;
    bar.finish_and_clear();
    if cli.json {
        crate::out::json_line(&serde_json::json!({
            "from": args.from,
            "store": cli.store.display().to_string(),
            "head": report.head,
            "archived_head": report.archived_head,
            "store_id": report.store_id,
            "generation": report.generation,
            "segments": report.segments,
            "objects": report.objects,
            "bytes": report.bytes,
        }));
    } else {
        println!(
            "restored {} from {}: positions 1..={} ({} segments, {} objects, {} bytes); \
             the index and views are rebuilt when the store first opens",
            cli.store.display(),
            args.from,
            report.head,
            report.segments,
            report.objects,
            report.bytes
        );
    }
    Ok(Code::Ok)
}

/// What went wrong, with the exit code of its kind.
fn failure(e: ArchiveError) -> Failure {
    let code = match &e {
        ArchiveError::Store(_) => {
            let ArchiveError::Store(inner) = e else {
                unreachable!()
            };
            return Failure::from(inner);
        }
        ArchiveError::Url { .. }
        | ArchiveError::DestNotEmpty { .. }
        | ArchiveError::OtherStore { .. }
        | ArchiveError::Format { .. }
        | ArchiveError::Contended { .. } => Code::Usage,
        ArchiveError::Target { .. } | ArchiveError::NoArchive { .. } | ArchiveError::Io { .. } => {
            Code::Unavailable
        }
        ArchiveError::Corrupt { .. }
        | ArchiveError::Manifest { .. }
        | ArchiveError::Diverged { .. } => Code::Damage,
    };
    Failure {
        code,
        message: e.to_string(),
    }
}
