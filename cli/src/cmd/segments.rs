//! `strata segments`: one row per segment file.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use strata::log::inspect;

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(cli: &Cli, _args: &Args) -> CmdResult {
    // Straight from the files, so it also works on a store that no longer
    // opens.
    let paths = inspect::segment_paths(&cli.store).map_err(|e| Failure {
        code: crate::exit::Code::Unavailable,
        message: e.to_string(),
    })?;
    let count = paths.len();
    let mut rows = Vec::new();
    let mut damaged = false;
    for (i, (first, path)) in paths.into_iter().enumerate() {
        let s = inspect::segment_summary(first, &path)?;
        damaged |= s.problem.is_some();
        let state = if s.sealed {
            "sealed"
        } else if i + 1 == count {
            "active"
        } else {
            "unsealed"
        };
        rows.push((s, state));
    }
    if cli.json {
        for (s, state) in &rows {
            crate::out::json_line(&serde_json::json!({
                "name": s.path.file_name().map(|n| n.to_string_lossy()),
                "first_position": s.first_position,
                "last_position": s.last_position,
                "events": s.last_position + 1 - s.first_position,
                "bytes": s.bytes,
                "state": state,
                "problem": s.problem,
            }));
        }
    } else {
        let mut t = Table::new();
        t.load_style(UTF8_FULL_CONDENSED);
        t.set_header(["segment", "first", "last", "events", "bytes", "state"]);
        for (s, state) in &rows {
            let state = match &s.problem {
                Some(p) => crate::out::red(&format!("{state}: {p}")),
                None => state.to_string(),
            };
            t.add_row([
                s.path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                s.first_position.to_string(),
                s.last_position.to_string(),
                (s.last_position + 1 - s.first_position).to_string(),
                s.bytes.to_string(),
                state,
            ]);
        }
        println!("{t}");
    }
    Ok(if damaged { Code::Damage } else { Code::Ok })
}
