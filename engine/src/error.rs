//! The engine's error type: one enum per area, wrapped here.

use std::path::PathBuf;

use uuid::Uuid;

use crate::event::{ExpectedVersion, InvalidInput};
use crate::index::IndexError;
use crate::log::LogError;

/// Everything a store operation can fail with. Messages say what is wrong
/// and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("invalid input: {0}")]
    Invalid(#[from] InvalidInput),
    #[error(
        "conflict on aggregate {aggregate_id:?}: expected {expected}, but its current version is {current}; read the aggregate again and retry"
    )]
    Conflict {
        aggregate_id: String,
        expected: ExpectedVersion,
        current: u64,
    },
    #[error(
        "event {event_id} already exists (position {position}, aggregate {existing_aggregate:?}) with another {}; an event id names one event: retry with the same content, or give a new event a new id",
        differs.join(" and ")
    )]
    EventIdReused {
        event_id: Uuid,
        position: u64,
        existing_aggregate: String,
        /// What the attempt changes: `aggregate_id`, `event_type`,
        /// `event_data`, `metadata`.
        differs: Vec<&'static str>,
    },
    #[error(
        "{path}: the store is locked by {holder}; close that process or open the store read-only"
    )]
    Locked { path: PathBuf, holder: String },
    #[error("{path}: I/O error while {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no store here; create one first (e.g. `strata init --store {path}`)")]
    NotFound { path: PathBuf },
    #[error("the store is open read-only; open it read-write to append")]
    ReadOnly,
    #[error("the store is closed")]
    Closed,
    #[error(
        "{path} is a sync replica: its log holds only the server's events; append through the replica (`strata::sync::Replica::append`, or `strata counter`/`strata append`, which do)"
    )]
    ReplicaLog { path: PathBuf },
    #[error(
        "{path} is a backup that did not finish (it holds BACKUP-INCOMPLETE): run the backup again to complete it, or delete the directory"
    )]
    BackupIncomplete { path: PathBuf },
    #[error(
        "this replica refused what its server sent, and wrote none of it: {reason}; if the server was restored from an older backup or replaced, start a new replica from it, otherwise the server is broken"
    )]
    Replica { reason: String },
    #[error(
        "{path}: SQLite error while {action}: {source}; the outbox holds this replica's local events that the server has not accepted yet, so do not delete it: fix the cause (disk space, permissions) and reopen the replica"
    )]
    Outbox {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "{path}: {reason}; the outbox holds this replica's local events that the server has not accepted yet: keep a copy of the file before changing anything"
    )]
    OutboxDamaged { path: PathBuf, reason: String },
    #[error(transparent)]
    Views(Box<crate::projection::ProjectionError>),
    #[error(
        "{path} is a store with {events} events of its own, not a sync replica: a replica's log holds only its server's events; sync into an empty directory instead (or serve this store with `strata serve`)"
    )]
    NotAReplica { path: PathBuf, events: u64 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
