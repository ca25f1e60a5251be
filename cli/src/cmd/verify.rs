//! `strata verify`: every byte of the log, and the index against the log.

use strata::log::inspect;

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

/// Most index disagreements listed one by one.
const INDEX_PROBLEMS_SHOWN_MAX: usize = 50;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(cli: &Cli, _args: &Args) -> CmdResult {
    let bar = crate::out::progress(0, "verify", false);
    bar.set_message("log");
    let report = inspect::verify_log(&cli.store).map_err(|e| Failure {
        code: Code::Unavailable,
        message: e.to_string(),
    })?;
    let mut lines: Vec<serde_json::Value> = report
        .problems
        .iter()
        .map(|p| {
            serde_json::json!({
                "file": p.path.display().to_string(), "offset": p.offset,
                "problem": p.message, "torn_tail": p.torn_tail,
            })
        })
        .collect();
    // The index can only be compared with a log that opens.
    bar.set_message("index");
    let mut index_note = None;
    let mut index_position = None;
    let (index_checked, index_total) = if report.has_damage() {
        (false, 0)
    } else {
        match strata::Store::open_read_only(&cli.store) {
            Ok(store) => {
                let (problems, total) = store.verify_index(INDEX_PROBLEMS_SHOWN_MAX)?;
                // A derived index that is missing or behind is not damage
                // (a read-write open brings it up to date), but it is not
                // "agreeing" with what it does not hold either.
                let (indexed, head) = (store.indexed_position(), store.head());
                index_position = Some(indexed);
                if !store.index_present() {
                    index_note = Some(
                        "index.sqlite is missing; it is rebuilt when the store is next opened read-write (or run `strata reindex`)".to_owned(),
                    );
                } else if indexed < head {
                    index_note = Some(format!(
                        "the index holds positions 1 to {indexed} of {head}; the rest is indexed when the store is next opened read-write"
                    ));
                }
                let file = cli
                    .store
                    .join(strata::index::INDEX_FILE)
                    .display()
                    .to_string();
                for p in problems {
                    lines.push(
                        serde_json::json!({ "file": file, "problem": p, "torn_tail": false }),
                    );
                }
                if total > INDEX_PROBLEMS_SHOWN_MAX as u64 {
                    lines.push(serde_json::json!({
                        "file": file,
                        "problem": format!("… and {} more index disagreements", total - INDEX_PROBLEMS_SHOWN_MAX as u64),
                        "torn_tail": false,
                    }));
                }
                (true, total)
            }
            Err(e) => return Err(e.into()),
        }
    };
    bar.finish_and_clear();
    let clean = report.is_clean() && index_total == 0;
    if cli.json {
        for l in &lines {
            crate::out::json_line(l);
        }
        crate::out::json_line(&serde_json::json!({
            "clean": clean, "segments": report.segments, "frames": report.frames, "events": report.events,
            "bytes": report.bytes, "index_checked": index_checked,
            "index_position": index_position, "index_note": index_note,
            "truncate_after": report.last_good_position,
        }));
    } else {
        for l in &lines {
            let offset = l["offset"]
                .as_u64()
                .map(|o| format!(": offset {o}"))
                .unwrap_or_default();
            println!(
                "{}{offset}: {}",
                l["file"].as_str().unwrap_or(""),
                crate::out::red(l["problem"].as_str().unwrap_or(""))
            );
        }
        if clean {
            let index = match &index_note {
                None => "index agrees with the log".to_owned(),
                Some(note) if index_position == Some(0) => note.clone(),
                Some(note) => format!("index agrees with the log as far as it goes: {note}"),
            };
            println!(
                "{}: {} segments, {} batches, {} events, {} bytes; {index}",
                crate::out::green("clean"),
                report.segments,
                report.frames,
                report.events,
                report.bytes
            );
        } else if let Some(good) = report.last_good_position {
            println!(
                "damage found. To drop it and everything after it: strata repair --truncate-after {good}"
            );
        } else if !report.is_clean() {
            println!(
                "a torn tail: `strata repair` cuts it (opening the store read-write does too)"
            );
        } else {
            println!("the index disagrees with the log: `strata reindex` rebuilds it");
        }
    }
    Ok(if clean { Code::Ok } else { Code::Damage })
}
