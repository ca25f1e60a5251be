//! `strata bench`: the engine's benchmark workloads, then the sync
//! workloads (`strata_server::bench`), as a table or JSON.

use std::path::PathBuf;

use comfy_table::{Cell, Table, presets::UTF8_FULL_CONDENSED};
use strata::bench::{BenchConfig, WorkloadResult};

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events in the main workloads.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Size of the store `open_clean` opens, in MiB.
    #[arg(long, default_value_t = 1024)]
    open_mib: u64,
    /// Comma-separated workloads to run (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Scratch directory (on the disk you want to measure; emptied first).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A scratch PostgreSQL database for sync_scale_out (skipped without
    /// one); each run adds a store of its own there.
    #[arg(long, env = "STRATA_BENCH_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
}

fn fmt_rate(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v >= 1e6 => format!("{:.2}M", v / 1e6),
        Some(v) if v >= 1e3 => format!("{:.1}k", v / 1e3),
        Some(v) => format!("{v:.0}"),
    }
}

fn fmt_x(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}"))
}

pub fn run(cli: &Cli, args: &Args) -> CmdResult {
    let known: Vec<&str> = strata::bench::WORKLOADS
        .iter()
        .chain(strata_server::bench::WORKLOADS)
        .copied()
        .collect();
    if let Some(bad) = args.only.iter().find(|w| !known.contains(&w.as_str())) {
        return Err(Failure::usage(format!(
            "unknown workload {bad:?}; known: {}",
            known.join(", ")
        )));
    }
    // Only sync workloads asked for: the engine runs none.
    let engine_wanted = args.only.is_empty()
        || args
            .only
            .iter()
            .any(|w| strata::bench::WORKLOADS.contains(&w.as_str()));
    let mut config = BenchConfig {
        events: args.events,
        open_bytes: args.open_mib << 20,
        only: args.only.clone(),
        ..BenchConfig::default()
    };
    if let Some(dir) = &args.dir {
        config.dir = dir.clone();
    }
    if !cli.json {
        eprintln!(
            "running in {} ({} events; this takes a while at the default size)",
            config.dir.display(),
            config.events
        );
    }
    let json = cli.json;
    let report = |r: &WorkloadResult| {
        if json {
            println!("{}", serde_json::to_string(r).expect("results serialise"));
        } else {
            eprintln!("  done: {} ({} events)", r.workload, r.events);
        }
    };
    let mut results = if engine_wanted {
        strata::bench::run(&config, report)
            .map_err(|e| Failure::damage(format!("benchmark failed: {e}")))?
    } else {
        Vec::new()
    };
    // The sync workloads need a server: they live in strata-server.
    let sync = strata_server::bench::SyncBenchConfig {
        events: config.events,
        dir: config.dir.join("sync"),
        only: args.only.clone(),
        database_url: args.database_url.clone(),
    };
    results.extend(
        strata_server::bench::run(&sync, report)
            .map_err(|e| Failure::damage(format!("sync benchmark failed: {e}")))?,
    );
    if !json {
        print_table(&results);
    }
    Ok(Code::Ok)
}

fn print_table(results: &[WorkloadResult]) {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header([
        "workload",
        "events",
        "strata ev/s",
        "seed ev/s",
        "ratio",
        "limit ev/s",
        "of limit",
        "notes",
    ]);
    for r in results {
        let notes: Vec<String> = r
            .extra
            .iter()
            .map(|(k, v)| match v.as_f64() {
                Some(f) if f.fract() != 0.0 => format!("{k}={f:.3}"),
                _ => format!("{k}={v}"),
            })
            .collect();
        t.add_row([
            Cell::new(&r.workload),
            Cell::new(r.events),
            Cell::new(fmt_rate(Some(r.strata_eps))),
            Cell::new(fmt_rate(r.baseline_eps)),
            Cell::new(fmt_x(r.ratio)),
            Cell::new(fmt_rate(r.limit_eps)),
            Cell::new(fmt_x(r.of_limit)),
            Cell::new(notes.join(" ")),
        ]);
    }
    println!("{t}");
}
