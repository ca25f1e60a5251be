//! The database schema and its migrations: SQL files in `migrations/`,
//! compiled into the binary, applied in order at start and recorded in
//! `strata_schema`, one row per applied version.
//!
//! Every node runs [`migrate`] when it connects. It takes a transaction-
//! level advisory lock first, so that nodes starting together apply each
//! migration once, and does everything in that one transaction: DDL is
//! transactional in PostgreSQL, so a migration is applied whole or not at
//! all. A database whose schema is newer than this binary knows is refused
//! before anything is changed: an older binary must not write into tables
//! whose rules it does not know.

use tokio_postgres::Client;

use super::PgError;

/// The schema version this binary writes and reads.
///
/// History: 1 — `strata_stores`, `strata_events`; 2 — `strata_stores.turn`
/// (the fairness turn across nodes).
pub const SCHEMA_VERSION: i32 = 2;

/// The migrations, in order: version, name, SQL. Version `n` is at index
/// `n - 1`.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "0001_init", include_str!("migrations/0001_init.sql")),
    (2, "0002_turns", include_str!("migrations/0002_turns.sql")),
];

const _: () = assert!(MIGRATIONS.len() == SCHEMA_VERSION as usize);

/// Key of the advisory lock that serialises migrations of one database
/// ("STRATA" in ASCII, then 1).
const MIGRATION_LOCK_KEY: i64 = 0x5354_5241_5441_0001;

/// The table that records which migrations were applied. It is created
/// outside the numbered migrations because it says which of them to run.
const SCHEMA_TABLE: &str = "CREATE TABLE IF NOT EXISTS strata_schema (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Brings the database's schema to [`SCHEMA_VERSION`]; returns the version
/// it found. Refuses a newer schema ([`PgError::SchemaNewer`]) without
/// changing anything.
pub(crate) async fn migrate(client: &mut Client, target: &str) -> Result<i32, PgError> {
    let err = |action| super::query_error(target, action);
    let tx = client
        .transaction()
        .await
        .map_err(err("starting the schema migration"))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(err("taking the migration lock"))?;
    tx.batch_execute(SCHEMA_TABLE)
        .await
        .map_err(err("creating the strata_schema table"))?;
    let found: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM strata_schema", &[])
        .await
        .map_err(err("reading the schema version"))?
        .get(0);
    if found > SCHEMA_VERSION {
        return Err(PgError::SchemaNewer {
            target: target.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for &(version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > found) {
        tx.batch_execute(sql)
            .await
            .map_err(err("applying a schema migration"))?;
        tx.execute(
            "INSERT INTO strata_schema (version, name) VALUES ($1, $2)",
            &[&version, &name],
        )
        .await
        .map_err(err("recording a schema migration"))?;
        tracing::info!(version, name, "applied a schema migration");
    }
    tx.commit()
        .await
        .map_err(err("committing the schema migration"))?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order_from_one() {
        for (i, (version, name, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*version as usize, i + 1, "{name}");
            assert!(
                name.starts_with(&format!("{version:04}_")),
                "{name} should start with its version"
            );
            assert!(!sql.trim().is_empty(), "{name} is empty");
        }
    }
}
