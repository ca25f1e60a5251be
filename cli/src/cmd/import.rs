//! `strata import`: JSON lines in the seed's event shape, appended in
//! batches; idempotent by event id.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

use strata::json::EventJson;
use strata::{AggregateEvents, ExpectedVersion};

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

/// Events per append.
const IMPORT_BATCH_EVENTS: usize = 1_000;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// File of JSON lines, or `-` for stdin.
    file: PathBuf,
}

struct Pending {
    lines: Vec<(usize, EventJson)>,
}

pub fn run(cli: &Cli, args: &Args) -> CmdResult {
    let (reader, total): (Box<dyn Read>, u64) = if args.file.as_os_str() == "-" {
        (Box::new(std::io::stdin()), 0)
    } else {
        let f = std::fs::File::open(&args.file)
            .map_err(|e| Failure::usage(format!("{}: {e}", args.file.display())))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        (Box::new(f), len)
    };
    let store = super::open_existing(&cli.store)?;
    let bar = crate::out::progress(total, "import", false);
    let mut reader = BufReader::new(reader);
    let (mut imported, mut skipped) = (0u64, 0u64);
    let mut pending = Pending { lines: Vec::new() };
    let mut line = String::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .map_err(|e| Failure::usage(format!("reading line {}: {e}", number + 1)))?;
        if read == 0 {
            break;
        }
        number += 1;
        bar.inc(read as u64);
        if line.trim().is_empty() {
            continue;
        }
        let event: EventJson = serde_json::from_str(&line).map_err(|e| {
            Failure::usage(format!(
                "line {number}: not an event object ({e}); nothing of its batch was written ({imported} imported before it)"
            ))
        })?;
        pending.lines.push((number, event));
        if pending.lines.len() == IMPORT_BATCH_EVENTS {
            let (i, s) = flush(&store, &mut pending, imported)?;
            imported += i;
            skipped += s;
        }
    }
    let (i, s) = flush(&store, &mut pending, imported)?;
    imported += i;
    skipped += s;
    bar.finish_and_clear();
    store.close()?;
    if cli.json {
        crate::out::json_line(&serde_json::json!({ "imported": imported, "skipped": skipped }));
    } else {
        println!("imported {imported} events, skipped {skipped} already present");
    }
    Ok(Code::Ok)
}

/// Appends one batch: per aggregate, the events in file order, expected to
/// follow the version before the first one.
fn flush(
    store: &strata::Store,
    pending: &mut Pending,
    imported_before: u64,
) -> Result<(u64, u64), Failure> {
    if pending.lines.is_empty() {
        return Ok((0, 0));
    }
    let lines = std::mem::take(&mut pending.lines);
    let first_line = lines[0].0;
    // Runs of consecutive lines of one aggregate become one group each, so
    // the log keeps the file's order.
    let mut groups: Vec<AggregateEvents> = Vec::new();
    let mut last_line: Vec<(usize, u64)> = Vec::new();
    for (number, e) in &lines {
        let continues = groups
            .last()
            .is_some_and(|g| g.aggregate_id == e.aggregate_id);
        if !continues {
            if e.version == 0 {
                return Err(Failure::usage(format!(
                    "line {number}: versions start at 1"
                )));
            }
            groups.push(AggregateEvents {
                aggregate_id: e.aggregate_id.clone(),
                expected: ExpectedVersion::Exact(e.version - 1),
                events: Vec::new(),
            });
            last_line.push((*number, e.version));
        } else {
            let (prev_line, prev_version) = *last_line.last().expect("a group per run");
            if e.version != prev_version + 1 {
                return Err(Failure::usage(format!(
                    "line {number}: version {} of {:?} does not follow version {prev_version} (line {prev_line}); nothing of lines {first_line}..{last_number} was written ({imported_before} imported before)",
                    e.version,
                    e.aggregate_id,
                    last_number = lines[lines.len() - 1].0
                )));
            }
            *last_line.last_mut().expect("a group per run") = (*number, e.version);
        }
        groups
            .last_mut()
            .expect("pushed above")
            .events
            .push(e.to_new_event());
    }
    let committed = store.append_batch(&groups).map_err(|e| {
        let failure = Failure::from(e);
        Failure {
            code: failure.code,
            message: format!(
                "lines {first_line}..{}: {}; nothing of these lines was written ({imported_before} imported before)",
                lines[lines.len() - 1].0,
                failure.message
            ),
        }
    })?;
    let skipped = committed.iter().filter(|c| c.existed).count() as u64;
    Ok((committed.len() as u64 - skipped, skipped))
}
