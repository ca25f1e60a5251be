//! The server's canonical log, as sync needs it: the storage contract
//! behind [`super::ServerCore`]'s commits and the shells' reads. The
//! embedded [`Store`] implements it; any backend that keeps the same
//! promises can (a database shared by several server nodes).
//!
//! The contract, for every implementation:
//!
//! * Positions are gapless and assigned in commit order; a committed event
//!   never changes (S1, Y1).
//! * [`CanonicalLog::append_pushes`] takes the pushes of one group commit
//!   in order. Each push is all or nothing. Each event of a push is
//!   appended only if its aggregate is at `version - 1`, counting what the
//!   pushes before it in the same call appended (Y5). An event whose id the
//!   log holds already is the same event when aggregate, type, payload and
//!   metadata agree (it is answered with its position and not written
//!   again, Y4), and is refused otherwise. The pushes that hold are durable
//!   when the call returns, together (one `fdatasync`, one transaction).
//! * `event_data` and `metadata` are stored as the exact bytes given.
//! * Reads return committed events only, in position order, whole batches.
//!
//! A log shared by several server nodes also keeps the fairness *turn*
//! ([`super::ServerCore`]'s module documentation) across them, since no
//! node's core sees the others' clients: it says so with
//! [`CanonicalLog::keeps_turns`], and then answers a push that another
//! client's turn holds [`PushOutcome::Held`] (nothing appended). Each push
//! names its client ([`Push::client`]) for that; a log that keeps no turns
//! ignores it.

use std::sync::Arc;

use uuid::Uuid;

use super::proto::{Placed, Proposal};
use super::server::ClientId;
use crate::error::Error;
use crate::event::{AggregateEvents, Event, ExpectedVersion, InvalidInput, Limits};
use crate::log::{LogError, RawRun};
use crate::store::Store;

/// Why the canonical log could not do what was asked. Messages are safe to
/// show a client: they name no server file; the shells log the details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Temporarily unable (I/O error, a failed sync that needs a reopen,
    /// the database unreachable, shutting down): retry later.
    #[error("the server's log is unavailable ({reason}); retry later")]
    Unavailable { reason: String },
    /// The log is damaged: an operator must look at it.
    #[error("the server's log is damaged; its operator has to repair it")]
    Damaged { reason: String },
}

impl StorageError {
    /// The full reason, for the server's own log.
    pub fn detail(&self) -> &str {
        match self {
            StorageError::Unavailable { reason } | StorageError::Damaged { reason } => reason,
        }
    }
}

impl From<Error> for StorageError {
    fn from(e: Error) -> Self {
        let reason = e.to_string();
        match e {
            Error::Log(LogError::Corrupt { .. } | LogError::Inconsistent { .. }) => {
                StorageError::Damaged { reason }
            }
            _ => StorageError::Unavailable { reason },
        }
    }
}

/// One push of a group commit: its client (as the server core numbers
/// connections) and its events, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub client: ClientId,
    pub events: Arc<[Proposal]>,
}

/// What became of one push of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    /// Every event is in the log: appended now, or found there already.
    Appended(Vec<Placed>),
    /// Nothing appended: these aggregates are not at the versions the push
    /// builds on (name and current version, in the push's order).
    Conflict(Vec<(String, u64)>),
    /// Nothing appended: this event can never be (its id names another
    /// event, its clock is beyond the allowed drift). The rest of the push
    /// may be tried again without it.
    Refused { event_id: Uuid, reason: String },
    /// Nothing appended: the push as a whole breaks a limit of the log.
    Invalid { reason: String },
    /// Nothing appended, nothing checked: another client's turn holds an
    /// aggregate of the push (only from a log that
    /// [keeps turns](CanonicalLog::keeps_turns)). Offer it again when the
    /// head moves (the turn passes when its holder's push is appended) or
    /// after `wait_ms` (when the turn runs out).
    Held { wait_ms: u64 },
}

/// The answer to [`CanonicalLog::append_pushes`]: one outcome per push, in
/// order, and the log's head after the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitResult {
    pub outcomes: Vec<PushOutcome>,
    pub head: u64,
}

/// The canonical log of one hosted store. See the module documentation for
/// the contract.
pub trait CanonicalLog: Send + Sync {
    fn store_id(&self) -> Uuid;
    /// Last committed position.
    fn head(&self) -> Result<u64, StorageError>;
    /// Appends a group commit: see the module documentation.
    fn append_pushes(&self, pushes: &[Push]) -> Result<CommitResult, StorageError>;
    /// Whether this log keeps the fairness turn itself (a log shared by
    /// several nodes); the server core then keeps none of its own.
    fn keeps_turns(&self) -> bool {
        false
    }
    /// A client that took part in the turn (was held or refused for a
    /// conflict) disconnected from this node: a log that keeps turns lets
    /// it leave (its turn passes, its place in the queue goes).
    fn client_left(&self, _client: ClientId) -> Result<(), StorageError> {
        Ok(())
    }
    /// Committed events from `from` on, at most `max_events` and about
    /// `max_bytes` (whole batches; at least one event if any).
    fn read(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StorageError>;
    /// Raw records from `from` on, about `max_bytes`; `None` when there
    /// are none yet or this log cannot serve raw records.
    fn read_records(&self, _from: u64, _max_bytes: usize) -> Result<Option<RawRun>, StorageError> {
        Ok(None)
    }
}

/// The groups that append one push: one per event, each expecting its
/// aggregate at the version before the event's.
pub fn push_groups(events: &[Proposal]) -> Vec<AggregateEvents> {
    events
        .iter()
        .map(|e| AggregateEvents {
            aggregate_id: e.aggregate_id.clone(),
            expected: ExpectedVersion::Exact(e.version.saturating_sub(1)),
            events: vec![e.to_new_event()],
        })
        .collect()
}

/// The input checks [`Store`] makes on each push of
/// [`CanonicalLog::append_pushes`] before it looks at the log: at least one
/// event, at most `limits.batch_events_max` events and
/// `limits.batch_bytes_max` bytes, each field within its limit, no id twice.
/// A push that fails them is answered [`PushOutcome::Invalid`] with this
/// error's text. Other backends call it to refuse exactly what the
/// embedded store refuses.
pub fn check_push(limits: &Limits, events: &[Proposal]) -> Result<(), InvalidInput> {
    crate::store::check_batch(limits, &push_groups(events))
}

/// Every aggregate of `events` whose version in `current` is not the one
/// the push builds on (the version before its first event there), with
/// that version, in the push's order.
pub fn conflicts_of(
    events: &[Proposal],
    mut current: impl FnMut(&str) -> Result<u64, StorageError>,
) -> Result<Vec<(String, u64)>, StorageError> {
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for e in events {
        if seen.contains(&e.aggregate_id.as_str()) {
            continue;
        }
        seen.push(&e.aggregate_id);
        let now = current(&e.aggregate_id)?;
        if now != e.version.saturating_sub(1) {
            out.push((e.aggregate_id.clone(), now));
        }
    }
    Ok(out)
}

impl CanonicalLog for Store {
    fn store_id(&self) -> Uuid {
        Store::store_id(self)
    }

    fn head(&self) -> Result<u64, StorageError> {
        Ok(Store::head(self))
    }

    fn append_pushes(&self, pushes: &[Push]) -> Result<CommitResult, StorageError> {
        let groups: Vec<Vec<AggregateEvents>> =
            pushes.iter().map(|p| push_groups(&p.events)).collect();
        let batches: Vec<&[AggregateEvents]> = groups.iter().map(Vec::as_slice).collect();
        let results = self.append_batches(&batches)?;
        let mut outcomes = Vec::with_capacity(results.len());
        for (push, result) in pushes.iter().zip(results) {
            outcomes.push(match result {
                Ok(committed) => PushOutcome::Appended(
                    committed
                        .iter()
                        .map(|c| Placed {
                            event_id: c.event_id,
                            position: c.position,
                            version: c.version,
                        })
                        .collect(),
                ),
                Err(Error::Conflict { aggregate_id, .. }) => {
                    let version = |agg: &str| Ok(self.aggregate_version(agg)?);
                    let mut conflicts = conflicts_of(&push.events, version)?;
                    if conflicts.is_empty() {
                        // A gap in the push's own versions, or one a later
                        // push of this commit filled: name the aggregate
                        // the check failed on, as it is now.
                        let now = version(&aggregate_id)?;
                        conflicts.push((aggregate_id, now));
                    }
                    PushOutcome::Conflict(conflicts)
                }
                Err(e @ Error::EventIdReused { .. }) => {
                    let Error::EventIdReused { event_id, .. } = &e else {
                        unreachable!("matched above")
                    };
                    PushOutcome::Refused {
                        event_id: *event_id,
                        reason: e.to_string(),
                    }
                }
                Err(Error::Invalid(InvalidInput::EventTimestamp { event_id, source })) => {
                    PushOutcome::Refused {
                        event_id,
                        reason: source.to_string(),
                    }
                }
                Err(Error::Invalid(reason)) => PushOutcome::Invalid {
                    reason: reason.to_string(),
                },
                Err(e) => return Err(e.into()),
            });
        }
        Ok(CommitResult {
            outcomes,
            head: Store::head(self),
        })
    }

    fn read(
        &self,
        from: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<Event>, StorageError> {
        Ok(self.read_events(from, max_events, max_bytes)?)
    }

    fn read_records(&self, from: u64, max_bytes: usize) -> Result<Option<RawRun>, StorageError> {
        Ok(self.read_raw_records(from, max_bytes)?)
    }
}
