//! `strata export`: JSON lines in position order.

use std::io::Write;

use strata::json::EventJson;

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// First position to export.
    #[arg(long, default_value_t = 1)]
    from_position: u64,
    /// Only this aggregate's events.
    #[arg(long)]
    aggregate: Option<String>,
}

/// Writes one event as a JSON line.
fn write_line(out: &mut impl Write, e: &strata::Event) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, &EventJson::from(e))?;
    out.write_all(b"\n")
}

pub fn run(cli: &Cli, args: &Args) -> CmdResult {
    let store = super::open_read_only(&cli.store)?;
    let head = store.head();
    let bar = crate::out::progress(head.saturating_sub(args.from_position) + 1, "export", true);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let written = (|| -> Result<std::io::Result<()>, Failure> {
        match &args.aggregate {
            Some(agg) => {
                for e in store.read_aggregate(agg, 1, usize::MAX)? {
                    if e.position >= args.from_position
                        && let Err(err) = write_line(&mut out, &e)
                    {
                        return Ok(Err(err));
                    }
                }
            }
            None => {
                for e in store.read_all(args.from_position) {
                    if let Err(err) = write_line(&mut out, &e?) {
                        return Ok(Err(err));
                    }
                    bar.inc(1);
                }
            }
        }
        Ok(out.flush())
    })()?;
    bar.finish_and_clear();
    match written {
        Ok(()) => Ok(Code::Ok),
        // `strata export | head`: the reader has all it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Code::Ok),
        Err(e) => Err(Failure::usage(format!("writing the export: {e}"))),
    }
}
