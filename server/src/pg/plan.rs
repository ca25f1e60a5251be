//! Planning a group commit: the storage contract's per-push rules
//! (engine/src/sync/storage.rs), applied in memory to what the commit's
//! transaction read under the store's position lock. No I/O here: the
//! transaction reads, [`plan`] decides, the transaction writes what it
//! decided.
//!
//! The rules mirror the embedded store's `Store::append_batches` step for
//! step, so that both backends answer every push alike (the contract tests
//! in tests/tests/storage_contract.rs compare them):
//!
//! 1. A push that breaks the input limits is [`PushOutcome::Invalid`]
//!    ([`check_push`], the embedded store's own check).
//! 2. Every event whose id the log holds (or an earlier push of this call
//!    appended) must be that same event: aggregate, type, data and metadata
//!    equal. The first that is not refuses the push
//!    ([`PushOutcome::Refused`], with the embedded store's message).
//! 3. A push whose events are all held already is answered with their
//!    positions (an idempotent retry).
//! 4. Otherwise each new event, in order, needs its aggregate at
//!    `version - 1`, counting earlier pushes of this call and earlier
//!    events of this push; then its timestamp must pass the clock's
//!    receive rule (drift). The first failure ends the push: a conflict
//!    (answered with every aggregate of the push that is not where the push
//!    builds on, as the log stands after the whole call) or a refusal.
//! 5. A push that holds gets the next positions, in its order.

use std::collections::HashMap;
use std::sync::Arc;

use strata::hlc::Hlc;
use strata::sync::PushOutcome;
use strata::sync::proto::{Placed, Proposal};
use strata::sync::storage::{check_push, conflicts_of};
use strata::{Error, Limits, Uuid};

/// An event the log holds already, found by its id. Its payloads are
/// known by fingerprint only: a retry of a push (every replica retries its
/// pending push after a reconnection) need not bring its megabytes back
/// from the database to learn they are the same.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub position: u64,
    pub version: u64,
    pub aggregate_id: String,
    pub event_type: String,
    pub data: Fingerprint,
    pub metadata: Option<Fingerprint>,
}

/// The length and SHA-256 of a payload (PostgreSQL's `octet_length` and
/// `sha256`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    pub len: u64,
    pub sha256: [u8; 32],
}

impl Fingerprint {
    pub(crate) fn of(bytes: &[u8]) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        Fingerprint {
            len: bytes.len() as u64,
            sha256: digest.as_ref().try_into().expect("SHA-256 is 32 bytes"),
        }
    }

    /// Whether `bytes` are the bytes fingerprinted (the length first: a
    /// changed payload usually changes it, and costs no hashing).
    fn matches(&self, bytes: &[u8]) -> bool {
        self.len == bytes.len() as u64 && *self == Fingerprint::of(bytes)
    }
}

/// A row to insert into `strata_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row<'a> {
    pub position: u64,
    /// The last position of the push this row belongs to.
    pub batch_end: u64,
    pub event_id: Uuid,
    pub aggregate_id: &'a str,
    pub version: u64,
    pub event_type: &'a str,
    pub data: &'a [u8],
    pub metadata: Option<&'a [u8]>,
    /// The fixed-width text form of the event's timestamp.
    pub hlc: String,
}

/// What a group commit does: one outcome per push, the rows to insert (at
/// positions `head + 1 ..= head + rows.len()`, in order), and the head
/// after it.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    pub outcomes: Vec<PushOutcome>,
    pub rows: Vec<Row<'a>>,
    pub head: u64,
}

/// What the log holds, as the transaction read it under the lock.
#[derive(Debug)]
pub(crate) struct Holdings<'s> {
    /// The last committed position.
    pub head: u64,
    /// The events of the call's ids that the log holds.
    pub stored: &'s HashMap<Uuid, Stored>,
    /// The current version of the call's aggregates (absent: 0).
    pub versions: &'s HashMap<String, u64>,
}

/// The fields two events under one id must share to be the same event, and
/// those in which `attempt` differs from the held one (the names the
/// embedded store's `Error::EventIdReused` uses): `held` says whether each
/// payload is the attempt's.
fn differences(
    (aggregate_id, event_type): (&str, &str),
    (same_data, same_metadata): (bool, bool),
    attempt: &Proposal,
) -> Vec<&'static str> {
    let mut out = Vec::new();
    if aggregate_id != attempt.aggregate_id {
        out.push("aggregate_id");
    }
    if event_type != attempt.event_type {
        out.push("event_type");
    }
    if !same_data {
        out.push("event_data");
    }
    if !same_metadata {
        out.push("metadata");
    }
    out
}

/// A push's fate before the conflicts can be named (they are named as the
/// log stands after the whole call).
enum Decided {
    Done(PushOutcome),
    Conflict { aggregate_id: String },
}

/// Plans a group commit: see the module documentation.
pub(crate) fn plan<'a>(
    pushes: &'a [Arc<[Proposal]>],
    log: &Holdings<'_>,
    limits: &Limits,
    hlc: &Hlc,
) -> Plan<'a> {
    let mut rows: Vec<Row<'a>> = Vec::new();
    // Ids appended by earlier pushes of this call, to their row.
    let mut new_ids: HashMap<Uuid, usize> = HashMap::new();
    // Versions after the earlier pushes of this call.
    let mut versions: HashMap<&'a str, u64> = HashMap::new();
    let mut decided: Vec<Decided> = Vec::with_capacity(pushes.len());
    let stored_version = |agg: &str| log.versions.get(agg).copied().unwrap_or(0);

    for push in pushes {
        if let Err(e) = check_push(limits, push) {
            decided.push(Decided::Done(PushOutcome::Invalid {
                reason: e.to_string(),
            }));
            continue;
        }
        // 2. Ids the log holds must name the same event.
        let mut found: HashMap<Uuid, (u64, u64)> = HashMap::new();
        let mut refused = None;
        for e in push.iter() {
            let held = match new_ids.get(&e.event_id) {
                Some(&i) => {
                    let r = &rows[i];
                    let same = (
                        r.data == e.data.as_slice(),
                        r.metadata == e.metadata.as_deref(),
                    );
                    Some((
                        r.position,
                        r.version,
                        r.aggregate_id,
                        differences((r.aggregate_id, r.event_type), same, e),
                    ))
                }
                None => log.stored.get(&e.event_id).map(|s| {
                    let same_metadata = match (&s.metadata, &e.metadata) {
                        (None, None) => true,
                        (Some(f), Some(m)) => f.matches(m),
                        _ => false,
                    };
                    let same = (s.data.matches(&e.data), same_metadata);
                    (
                        s.position,
                        s.version,
                        s.aggregate_id.as_str(),
                        differences((&s.aggregate_id, &s.event_type), same, e),
                    )
                }),
            };
            let Some((position, version, existing_aggregate, differs)) = held else {
                continue;
            };
            if !differs.is_empty() {
                let reason = Error::EventIdReused {
                    event_id: e.event_id,
                    position,
                    existing_aggregate: existing_aggregate.to_owned(),
                    differs,
                }
                .to_string();
                refused = Some(PushOutcome::Refused {
                    event_id: e.event_id,
                    reason,
                });
                break;
            }
            found.insert(e.event_id, (position, version));
        }
        if let Some(r) = refused {
            decided.push(Decided::Done(r));
            continue;
        }
        // 3. A retry of a push that went through.
        if found.len() == push.len() {
            let placed = placed(push, |id| found[id]);
            decided.push(Decided::Done(PushOutcome::Appended(placed)));
            continue;
        }
        // 4. Versions, then the clock, event by event.
        let mut local: HashMap<&'a str, u64> = HashMap::new();
        let mut staged: Vec<(usize, u64)> = Vec::with_capacity(push.len());
        let mut failed = None;
        for (i, e) in push.iter().enumerate() {
            if found.contains_key(&e.event_id) {
                continue;
            }
            let agg = e.aggregate_id.as_str();
            let current = local
                .get(agg)
                .or_else(|| versions.get(agg))
                .copied()
                .unwrap_or_else(|| stored_version(agg));
            if current != e.version.saturating_sub(1) {
                failed = Some(Decided::Conflict {
                    aggregate_id: e.aggregate_id.clone(),
                });
                break;
            }
            if let Err(source) = hlc.observe(&e.timestamp) {
                failed = Some(Decided::Done(PushOutcome::Refused {
                    event_id: e.event_id,
                    reason: source.to_string(),
                }));
                break;
            }
            local.insert(agg, current + 1);
            staged.push((i, current + 1));
        }
        if let Some(f) = failed {
            decided.push(f);
            continue;
        }
        // 5. Accepted: the next positions, in the push's order.
        debug_assert!(!staged.is_empty(), "some event was not found");
        let first = log.head + rows.len() as u64 + 1;
        let batch_end = first + staged.len() as u64 - 1;
        let mut new_at: HashMap<Uuid, (u64, u64)> = HashMap::with_capacity(staged.len());
        for (k, &(i, version)) in staged.iter().enumerate() {
            let e = &push[i];
            let position = first + k as u64;
            new_ids.insert(e.event_id, rows.len());
            new_at.insert(e.event_id, (position, version));
            rows.push(Row {
                position,
                batch_end,
                event_id: e.event_id,
                aggregate_id: &e.aggregate_id,
                version,
                event_type: &e.event_type,
                data: &e.data,
                metadata: e.metadata.as_deref(),
                hlc: e.timestamp.to_text(),
            });
        }
        versions.extend(local);
        let placed = placed(push, |id| {
            new_at
                .get(id)
                .or_else(|| found.get(id))
                .copied()
                .expect("every event is new or found")
        });
        decided.push(Decided::Done(PushOutcome::Appended(placed)));
    }

    // Conflicts are named as the log stands after the whole call.
    let after = |agg: &str| -> u64 {
        versions
            .get(agg)
            .copied()
            .unwrap_or_else(|| stored_version(agg))
    };
    let outcomes = pushes
        .iter()
        .zip(decided)
        .map(|(push, d)| match d {
            Decided::Done(o) => o,
            Decided::Conflict { aggregate_id } => {
                let mut conflicts = conflicts_of(push, |agg| Ok(after(agg)))
                    .expect("in-memory versions do not fail");
                if conflicts.is_empty() {
                    // A gap in the push's own versions, or one a later push
                    // of this call filled: name the aggregate the check
                    // failed on, as it is now.
                    let now = after(&aggregate_id);
                    conflicts.push((aggregate_id, now));
                }
                PushOutcome::Conflict(conflicts)
            }
        })
        .collect();
    let head = log.head + rows.len() as u64;
    debug_assert!(
        rows.iter()
            .enumerate()
            .all(|(i, r)| r.position == log.head + 1 + i as u64)
    );
    Plan {
        outcomes,
        rows,
        head,
    }
}

/// Where each event of `push` is, in the push's order: `at` gives an
/// event's (position, version).
fn placed(push: &[Proposal], at: impl Fn(&Uuid) -> (u64, u64)) -> Vec<Placed> {
    push.iter()
        .map(|e| {
            let (position, version) = at(&e.event_id);
            Placed {
                event_id: e.event_id,
                position,
                version,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata::Timestamp;
    use strata::hlc::{DRIFT_MS_MAX_DEFAULT, NodeId, SystemClock};

    fn hlc() -> Hlc {
        Hlc::new(
            NodeId::new("test").unwrap(),
            Arc::new(SystemClock),
            DRIFT_MS_MAX_DEFAULT,
        )
    }

    fn event(agg: &str, version: u64) -> Proposal {
        Proposal {
            event_id: Uuid::now_v7(),
            aggregate_id: agg.into(),
            version,
            event_type: "T".into(),
            data: b"{}".to_vec(),
            timestamp: Timestamp::from_parts(1_700_000_000_000, 0, "r").unwrap(),
            metadata: None,
        }
    }

    #[test]
    fn a_fingerprint_matches_its_bytes_only() {
        let f = Fingerprint::of(b"abc");
        assert!(f.matches(b"abc"));
        assert!(!f.matches(b"abd"));
        assert!(!f.matches(b"abcd"));
        assert!(Fingerprint::of(b"").matches(b""));
    }

    #[test]
    fn later_pushes_see_earlier_ones_and_positions_follow_the_head() {
        let a1 = event("a", 1);
        let a2 = event("a", 2);
        let late = event("a", 1);
        let pushes: Vec<Arc<[Proposal]>> = vec![
            vec![a1.clone()].into(),
            vec![a2.clone()].into(),
            vec![late].into(),
        ];
        let (stored, versions) = (HashMap::new(), HashMap::new());
        let log = Holdings {
            head: 7,
            stored: &stored,
            versions: &versions,
        };
        let p = plan(&pushes, &log, &Limits::default(), &hlc());
        assert_eq!(p.head, 9);
        assert_eq!(p.rows.len(), 2);
        assert_eq!((p.rows[0].position, p.rows[0].batch_end), (8, 8));
        assert_eq!((p.rows[1].position, p.rows[1].version), (9, 2));
        assert_eq!(p.outcomes[2], PushOutcome::Conflict(vec![("a".into(), 2)]));
    }
}
