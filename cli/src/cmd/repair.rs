//! `strata repair`: cut a torn tail; truncate after a position only when
//! asked; removed bytes go to quarantine first.

use strata::lock::LockFile;
use strata::log::repair::{self, Action, RepairError};

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Report what would change, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Remove every event after this position (`strata verify` prints it),
    /// moving the removed bytes to <store>/quarantine/ first.
    #[arg(long)]
    truncate_after: Option<u64>,
}

pub fn run(cli: &Cli, args: &Args) -> CmdResult {
    // The writer lock: nothing may append while the log is cut.
    let _lock = LockFile::acquire(&cli.store)?;
    let (_, plan) = match repair::plan(&cli.store, args.truncate_after) {
        Ok(p) => p,
        Err(e @ RepairError::Damaged { .. }) => return Err(Failure::damage(e.to_string())),
        Err(RepairError::Log(e)) => {
            return Err(Failure {
                code: Code::Unavailable,
                message: e.to_string(),
            });
        }
        Err(e) => return Err(Failure::usage(e.to_string())),
    };
    let verb = if args.dry_run { "would" } else { "will" };
    let mut described = Vec::new();
    for a in &plan.actions {
        described.push(match a {
            Action::Cut { path, offset, bytes, torn_tail: true, .. } => {
                format!("{}: {verb} cut {bytes} bytes from offset {offset} (a torn tail, no acknowledged event)", path.display())
            }
            Action::Cut { path, offset, bytes, events, .. } => {
                format!(
                    "{}: {verb} cut {bytes} bytes from offset {offset}, removing {events} readable events and any damaged ones",
                    path.display()
                )
            }
            Action::Remove { path, bytes, events } => {
                format!("{}: {verb} move the whole segment ({bytes} bytes, {events} events) to quarantine", path.display())
            }
        });
    }
    let quarantine = if args.dry_run {
        None
    } else {
        repair::apply(&cli.store, &plan)?
    };
    if cli.json {
        crate::out::json_line(&serde_json::json!({
            "dry_run": args.dry_run, "actions": described, "head_after": plan.head_after,
            "quarantine": quarantine.as_ref().map(|q| q.display().to_string()),
        }));
    } else if described.is_empty() {
        println!("nothing to repair");
    } else {
        for d in &described {
            println!("{d}");
        }
        match &quarantine {
            Some(q) => println!(
                "removed bytes are kept in {}; the log now ends at position {}",
                q.display(),
                plan.head_after
            ),
            None => println!("dry run: nothing changed"),
        }
    }
    Ok(Code::Ok)
}
