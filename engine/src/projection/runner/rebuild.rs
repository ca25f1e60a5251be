//! Rebuilding a view by replay into a shadow database, then swapping it in,
//! while the old view keeps serving reads.

use super::*;

impl Inner {
    /// Rebuilds slot `index` in a shadow database, then swaps it in.
    pub(super) fn rebuild(
        &self,
        index: usize,
        progress: Option<&(dyn Fn(&RebuildProgress) + Sync)>,
    ) -> Result<(), ProjectionError> {
        let projection = {
            let mut state = lock(&self.state);
            let slot = &mut state.slots[index];
            let total = self.log.visible_position();
            slot.rebuilding = Some(RebuildProgress {
                projection: slot.name().into(),
                done: 0,
                total,
            });
            slot.projection.clone()
        };
        let result = self.rebuild_inner(index, &*projection, progress);
        let mut state = lock(&self.state);
        state.slots[index].rebuilding = None;
        match &result {
            Ok(()) => {}
            // Closing mid-rebuild is not the projection's failure.
            Err(ProjectionError::Closed) => {}
            Err(ProjectionError::Handler {
                position,
                event_id,
                message,
                ..
            }) => {
                state.slots[index].failed = Some(Failure {
                    at: Some((*position, *event_id)),
                    message: message.clone(),
                });
            }
            Err(ProjectionError::Invalid { reason, .. }) => {
                state.slots[index].failed = Some(Failure {
                    at: None,
                    message: reason.clone(),
                });
            }
            Err(e) => {
                state.slots[index].failed = Some(Failure {
                    at: None,
                    message: e.to_string(),
                });
            }
        }
        self.changed.notify_all();
        result
    }

    pub(super) fn rebuild_inner(
        &self,
        index: usize,
        projection: &dyn Projection,
        progress: Option<&(dyn Fn(&RebuildProgress) + Sync)>,
    ) -> Result<(), ProjectionError> {
        let name = projection.name().to_owned();
        let shadow = shadow_path(&self.path, &name);
        remove_db_files(&shadow)?;
        let conn = open_connection(&shadow, &self.hlc, false)?;
        conn.execute_batch(projection.schema())
            .map_err(|source| ProjectionError::Invalid {
                name: name.clone(),
                reason: format!("its schema failed: {source}"),
            })?;
        let total = self.log.visible_position();
        let report = |done: u64, total: u64, state: Option<&mut State>| {
            let p = RebuildProgress {
                projection: name.clone(),
                done,
                total,
            };
            if let Some(cb) = progress {
                cb(&p);
            }
            if let Some(state) = state {
                state.slots[index].rebuilding = Some(p);
            }
        };
        report(0, total, None);
        // Replay the log up to the head as it was when the rebuild began,
        // without holding the views lock: readers and the other projections
        // carry on.
        let mut cursor = self.log.cursor(1);
        let mut replay = |from, upto, progress: &mut dyn FnMut(u64)| {
            self.replay_into(
                &conn,
                &shadow,
                projection,
                &mut cursor,
                from,
                upto,
                progress,
            )
        };
        let mut position = replay(0, total, &mut |done| {
            let mut state = lock(&self.state);
            report(done, total, Some(&mut state));
        })?;
        // Swap under the lock, after replaying what arrived meanwhile.
        let mut state = lock(&self.state);
        let head = self.log.visible_position();
        position = replay(position, head, &mut |_| {})?;
        drop(conn);
        let objects = self.swap_in(&mut state, index, projection, &shadow, position)?;
        let slot = &mut state.slots[index];
        slot.view = Some((projection.version(), position));
        slot.objects = objects;
        report(position, position, Some(&mut state));
        state.slots[index].rebuilding = None;
        drop(state);
        remove_db_files(&shadow)?;
        tracing::info!(projection = %name, position, "view rebuilt");
        Ok(())
    }

    /// Applies events after `position` up to `upto` to the shadow database,
    /// a batch per transaction. Returns the new position.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn replay_into(
        &self,
        conn: &Connection,
        shadow: &Path,
        projection: &dyn Projection,
        cursor: &mut crate::log::Cursor,
        mut position: u64,
        upto: u64,
        mut on_batch: impl FnMut(u64),
    ) -> Result<u64, ProjectionError> {
        while position < upto {
            if self.stop.load(Ordering::Acquire) {
                return Err(ProjectionError::Closed);
            }
            let frames = Frames::read(cursor, upto, self.options.batch_events_max)?;
            if frames.payloads.is_empty() {
                break;
            }
            let last = frames.last.min(upto);
            conn.execute_batch("BEGIN")
                .map_err(ProjectionError::sqlite(shadow, "starting a batch"))?;
            if let Some(f) = apply_frames(conn, shadow, projection, &frames, position, last)? {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(f.to_error(projection.name()));
            }
            conn.execute_batch("COMMIT")
                .map_err(ProjectionError::sqlite(shadow, "committing a batch"))?;
            position = last;
            on_batch(position);
        }
        Ok(position)
    }

    /// Replaces the projection's objects in `views.sqlite` with the shadow's,
    /// and its checkpoint, in one transaction.
    pub(super) fn swap_in(
        &self,
        state: &mut State,
        index: usize,
        projection: &dyn Projection,
        shadow: &Path,
        position: u64,
    ) -> Result<Vec<(String, String)>, ProjectionError> {
        let path = &self.path;
        let conn = &state.conn;
        let sql_err = |what: &'static str| ProjectionError::sqlite(path, what);
        conn.execute("ATTACH DATABASE ?1 AS rebuild", [shadow.to_string_lossy()])
            .map_err(sql_err("attaching the shadow database"))?;
        let result = (|| -> Result<Vec<(String, String)>, ProjectionError> {
            let new_objects =
                user_objects(conn, "rebuild").map_err(sql_err("listing the shadow's tables"))?;
            conn.execute_batch("BEGIN IMMEDIATE")
                .map_err(sql_err("starting the swap"))?;
            let swap = (|| -> rusqlite::Result<()> {
                for (kind, name) in state.slots[index].objects.iter().rev() {
                    conn.execute_batch(&format!(
                        "DROP {} IF EXISTS main.{}",
                        kind.to_uppercase(),
                        quote(name)
                    ))?;
                }
                for (kind, name, sql) in &new_objects {
                    if kind == "table" {
                        conn.execute_batch(sql)?;
                        conn.execute_batch(&format!(
                            "INSERT INTO main.{0} SELECT * FROM rebuild.{0}",
                            quote(name)
                        ))?;
                    }
                }
                for (kind, _, sql) in &new_objects {
                    if kind != "table" {
                        conn.execute_batch(sql)?;
                    }
                }
                let objects: Vec<(&str, &str)> = new_objects
                    .iter()
                    .map(|(k, n, _)| (k.as_str(), n.as_str()))
                    .collect();
                conn.execute(
                    "INSERT OR REPLACE INTO strata_projections (name, version, position, objects) VALUES (?1, ?2, ?3, ?4)",
                    params![
                        projection.name(),
                        projection.version(),
                        position,
                        serde_json::to_string(&objects).expect("strings serialise")
                    ],
                )?;
                Ok(())
            })();
            match swap {
                Ok(()) => conn
                    .execute_batch("COMMIT")
                    .map_err(sql_err("committing the swap"))?,
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    return Err(ProjectionError::Invalid {
                        name: projection.name().into(),
                        reason: format!(
                            "swapping the rebuilt view in failed: {e}; do two projections create the same table?"
                        ),
                    });
                }
            }
            Ok(new_objects.into_iter().map(|(k, n, _)| (k, n)).collect())
        })();
        let _ = conn.execute_batch("DETACH DATABASE rebuild");
        result
    }
}

pub(super) fn remove_db_files(path: &Path) -> Result<(), ProjectionError> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let p = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ProjectionError::Io {
                    path: p,
                    action: "removing a database file",
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Tables, indexes, views and triggers in `schema` of `conn` other than
/// SQLite's and Strata's own, tables first.
pub(super) fn user_objects(
    conn: &Connection,
    schema: &str,
) -> rusqlite::Result<Vec<(String, String, String)>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT type, name, sql FROM {schema}.sqlite_master
         WHERE name NOT GLOB 'sqlite_*' AND name NOT GLOB 'strata_*' AND sql IS NOT NULL
         ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END, rowid"
    ))?;
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect()
}

pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub(super) fn shadow_path(views: &Path, name: &str) -> PathBuf {
    PathBuf::from(format!("{}.{SHADOW_INFIX}{name}", views.display()))
}
