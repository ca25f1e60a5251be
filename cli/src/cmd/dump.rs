//! `strata dump`: decoded records of segment files, with byte offsets and
//! CRC status; works on a segment file outside any store.

use std::path::PathBuf;

use strata::log::format;
use strata::log::inspect::{self, FrameVisit};

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A segment file (default: every segment of --store).
    segment: Option<PathBuf>,
    /// Skip records before this position.
    #[arg(long, default_value_t = 1)]
    from_position: u64,
    /// Stop after this many records.
    #[arg(long)]
    limit: Option<u64>,
}

/// Longest payload shown in text output.
const DATA_SHOWN_MAX: usize = 120;

pub fn run(cli: &Cli, args: &Args) -> CmdResult {
    let files: Vec<PathBuf> = match &args.segment {
        Some(p) => vec![p.clone()],
        None => inspect::segment_paths(&cli.store)
            .map_err(|e| Failure {
                code: Code::Unavailable,
                message: e.to_string(),
            })?
            .into_iter()
            .map(|(_, p)| p)
            .collect(),
    };
    let mut shown = 0u64;
    let mut damaged = false;
    let limit = args.limit.unwrap_or(u64::MAX);
    'files: for path in files {
        let bytes =
            std::fs::read(&path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
        let name = path.display().to_string();
        match format::SegmentHeader::decode(&bytes) {
            Ok(h) if !cli.json => println!(
                "{name}: store {}, first position {}",
                h.store_id, h.first_position
            ),
            Ok(_) => {}
            Err(e) => {
                damaged = true;
                report_bad(cli.json, &name, 0, &e.to_string());
            }
        }
        let mut visits = Vec::new();
        inspect::walk_frames(&bytes, |v| visits.push(v));
        for visit in visits {
            match visit {
                FrameVisit::Batch {
                    offset,
                    batch,
                    records_offset,
                    ..
                } => {
                    if batch.last_position() < args.from_position {
                        continue;
                    }
                    for r in batch.iter_with_crc() {
                        let Ok((rel, rec, crc_ok)) = r else { continue };
                        if rec.position < args.from_position {
                            continue;
                        }
                        if shown == limit {
                            break 'files;
                        }
                        shown += 1;
                        let at = records_offset + rel as u64;
                        damaged |= !crc_ok;
                        let e = rec;
                        if cli.json {
                            crate::out::json_line(&serde_json::json!({
                                "file": name, "frame_offset": offset, "batch_first_position": batch.first_position,
                                "record_offset": at, "position": e.position, "crc_ok": crc_ok,
                                "event_id": e.event_id.to_string(), "aggregate_id": e.aggregate_id, "version": e.version,
                                "event_type": e.event_type, "timestamp": e.timestamp_text(),
                                "event_data": strata::json::bytes_to_raw(e.data),
                                "metadata": e.metadata.map(strata::json::bytes_to_raw),
                            }));
                        } else {
                            let data = String::from_utf8_lossy(e.data);
                            let data: String = data.chars().take(DATA_SHOWN_MAX).collect();
                            println!(
                                "  @{at:<10} batch {:<8} pos {:<8} crc {}  {} v{} {} {} {}",
                                batch.first_position,
                                e.position,
                                if crc_ok {
                                    crate::out::green("ok ")
                                } else {
                                    crate::out::red("BAD")
                                },
                                e.aggregate_id,
                                e.version,
                                e.event_type,
                                e.timestamp_text(),
                                data
                            );
                        }
                    }
                }
                FrameVisit::Seal {
                    offset,
                    seal,
                    body_crc_ok,
                } => {
                    damaged |= !body_crc_ok;
                    if cli.json {
                        crate::out::json_line(&serde_json::json!({
                            "file": name, "seal_offset": offset, "last_position": seal.last_position, "body_crc_ok": body_crc_ok,
                        }));
                    } else {
                        let crc = if body_crc_ok {
                            crate::out::green("ok")
                        } else {
                            crate::out::red("BAD")
                        };
                        println!(
                            "  @{offset:<10} seal: last position {}, body crc {crc}",
                            seal.last_position
                        );
                    }
                }
                FrameVisit::Bad { offset, end, error } => {
                    damaged = true;
                    report_bad(
                        cli.json,
                        &name,
                        offset,
                        &format!("{error} ({} bytes up to offset {end})", end - offset),
                    );
                }
            }
        }
    }
    Ok(if damaged { Code::Damage } else { Code::Ok })
}

fn report_bad(json: bool, file: &str, offset: u64, error: &str) {
    if json {
        crate::out::json_line(
            &serde_json::json!({ "file": file, "bad_offset": offset, "error": error }),
        );
    } else {
        println!(
            "  @{offset:<10} {}",
            crate::out::red(&format!("BAD: {error}"))
        );
    }
}
