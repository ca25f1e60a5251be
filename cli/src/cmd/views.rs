//! `strata views status` and `strata views rebuild`.

use std::sync::Arc;

use strata::projection::counter::CounterProjection;
use strata::projection::rusqlite::{self, Connection, OpenFlags};
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

/// Runs `f` on `views.sqlite` opened read-only (it works beside a running
/// application) inside one read transaction, so that everything `f` reads
/// comes from one state of the views. `None` when there are no views yet:
/// no file, or an application is creating it.
pub fn read_snapshot<T>(
    cli: &Cli,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> Result<Option<T>, Failure> {
    let path = cli.store.join(strata::projection::VIEWS_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let failure = |e: rusqlite::Error| views_failure(&path, e);
    let conn =
        Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(failure)?;
    conn.busy_timeout(VIEWS_BUSY_TIMEOUT).map_err(failure)?;
    conn.execute_batch("BEGIN").map_err(failure)?;
    let created: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'strata_projections'",
            [],
            |r| r.get(0),
        )
        .map_err(failure)?;
    if !created {
        return Ok(None);
    }
    let value = f(&conn).map_err(failure)?;
    conn.execute_batch("COMMIT").map_err(failure)?;
    Ok(Some(value))
}

/// How long a read of `views.sqlite` waits for an application's write.
const VIEWS_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A failed read of `views.sqlite`: damage only when SQLite says the file
/// is damaged (views are derived, so rebuilding them repairs it); a busy or
/// unreadable file is unavailable, not damaged.
pub fn views_failure(path: &std::path::Path, e: rusqlite::Error) -> Failure {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DatabaseCorrupt | C::NotADatabase) => Failure::damage(format!(
            "{}: {e}; views are derived from the log: `strata views rebuild` (or deleting the file while no process holds it) rebuilds them",
            path.display()
        )),
        Some(C::DatabaseBusy | C::DatabaseLocked | C::CannotOpen | C::PermissionDenied) => {
            Failure {
                code: Code::Unavailable,
                message: format!(
                    "{}: {e}; try again, or check its permissions",
                    path.display()
                ),
            }
        }
        _ => Failure::damage(format!("{}: {e}", path.display())),
    }
}

/// Reads the projections' checkpoints without opening the views for
/// writing (works beside a running application).
pub fn read_rows(cli: &Cli, head: u64) -> Result<Vec<ViewRow>, Failure> {
    let rows = read_snapshot(cli, |conn| {
        let mut stmt = conn.prepare(
            "SELECT name, version, position, failed_position, failed_event_id, failed_message FROM strata_projections ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
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
        })?;
        rows.collect::<Result<Vec<_>, _>>()
    })?;
    Ok(rows.unwrap_or_default())
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
