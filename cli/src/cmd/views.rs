//! `strata views status` and `strata views rebuild`.

use std::sync::Arc;

use strata::projection::counter::CounterProjection;
use strata::projection::rusqlite::{Connection, OpenFlags};
use strata::projection::todo::TodoProjection;
use strata::projection::{Projection, ViewOptions, Views};

use crate::Cli;
use crate::exit::{CmdResult, Code, Failure};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Each projection's version, checkpoint, lag behind the log, and state.
    #[command(
        long_about = "Each projection's version, checkpoint (a log position), lag behind the log, and state \
        (a failed projection names the position, event and error). Reads only.\n\n\
        Examples:\n  strata views status\n  strata views status --json"
    )]
    Status,
    /// Rebuild views by replaying the whole log (readers keep the old view
    /// until the swap). Without NAME, every projection this command knows.
    #[command(
        long_about = "Rebuild views by replaying the whole log into a shadow database, then swap it in: \
        readers keep the old view until the swap, and a crash leaves the old view. Without NAME, every \
        projection this command knows (counter, todo). Shows a progress bar on a terminal.\n\n\
        Examples:\n  strata views rebuild\n  strata views rebuild counter"
    )]
    Rebuild {
        /// Projection to rebuild (`counter` or `todo`).
        name: Option<String>,
    },
}

/// The projections this command can run; an application's own are run by
/// the application.
pub fn known_projections() -> Vec<Arc<dyn Projection>> {
    vec![Arc::new(CounterProjection), Arc::new(TodoProjection)]
}

pub fn run(cli: &Cli, command: &Command) -> CmdResult {
    match command {
        Command::Status => status(cli),
        Command::Rebuild { name } => rebuild(cli, name.as_deref()),
    }
}

/// A projection's row in views.sqlite.
#[derive(Debug, serde::Serialize)]
pub struct ViewRow {
    pub name: String,
    pub version: u32,
    pub position: u64,
    pub lag: u64,
    pub failed: Option<String>,
}

/// Reads the projections' checkpoints without opening the views for
/// writing (works beside a running application).
pub fn read_rows(cli: &Cli, head: u64) -> Result<Vec<ViewRow>, Failure> {
    let path = cli.store.join(strata::projection::VIEWS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| Failure::damage(format!("{}: {e}", path.display())))?;
    let mut stmt = conn
        .prepare("SELECT name, version, position, failed_position, failed_event_id, failed_message FROM strata_projections ORDER BY name")
        .map_err(|e| Failure::damage(format!("{}: {e}", path.display())))?;
    let rows = stmt
        .query_map([], |r| {
            let position: u64 = r.get(2)?;
            let failed_position: Option<u64> = r.get(3)?;
            let failed = match failed_position {
                Some(p) => Some(format!(
                    "failed at position {p} (event {}): {}",
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?
                )),
                None => None,
            };
            Ok(ViewRow {
                name: r.get(0)?,
                version: r.get(1)?,
                position,
                lag: head.saturating_sub(position),
                failed,
            })
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Failure::damage(format!("{}: {e}", path.display())))?;
    Ok(rows)
}

fn status(cli: &Cli) -> CmdResult {
    let store = super::open_read_only(&cli.store)?;
    let rows = read_rows(cli, store.head())?;
    if cli.json {
        for r in &rows {
            crate::out::json_line(r);
        }
    } else if rows.is_empty() {
        println!(
            "no views yet (they are built when an application or `strata views rebuild` opens them)"
        );
    } else {
        for r in &rows {
            let state = r
                .failed
                .clone()
                .map(|f| crate::out::red(&f))
                .unwrap_or_else(|| "ok".into());
            println!(
                "{:<12} v{:<3} position {:<10} lag {:<8} {state}",
                r.name, r.version, r.position, r.lag
            );
        }
    }
    Ok(if rows.iter().any(|r| r.failed.is_some()) {
        Code::Damage
    } else {
        Code::Ok
    })
}

fn rebuild(cli: &Cli, name: Option<&str>) -> CmdResult {
    let known = known_projections();
    let names: Vec<String> = match name {
        Some(n) if known.iter().any(|p| p.name() == n) => vec![n.to_owned()],
        Some(n) => {
            return Err(Failure::usage(format!(
                "unknown projection {n:?}; this command knows counter and todo"
            )));
        }
        None => known.iter().map(|p| p.name().to_owned()).collect(),
    };
    let store = super::open_existing(&cli.store)?;
    let views = Views::open(
        &store,
        known,
        ViewOptions {
            background: false,
            ..ViewOptions::default()
        },
    )
    .map_err(|e| Failure::damage(e.to_string()))?;
    for n in &names {
        let bar = crate::out::progress(store.head(), n, false);
        let progress = |p: &strata::projection::RebuildProgress| {
            bar.set_length(p.total);
            bar.set_position(p.done);
        };
        views
            .rebuild(n, Some(&progress))
            .map_err(|e| Failure::damage(e.to_string()))?;
        bar.finish_and_clear();
        let status = views
            .status()
            .into_iter()
            .find(|s| &s.name == n)
            .expect("known");
        if cli.json {
            crate::out::json_line(
                &serde_json::json!({ "rebuilt": n, "position": status.position, "version": status.version }),
            );
        } else {
            println!(
                "rebuilt {n} (v{}) up to position {}",
                status.version, status.position
            );
        }
    }
    views.close();
    store.close()?;
    Ok(Code::Ok)
}
