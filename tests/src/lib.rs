//! Helpers shared by the end-to-end tests: where the workspace and the
//! `strata` binary are, the "pairs" workload of the readers tests,
//! ([`net`]) a real server with raw HTTP, WebSocket and QUIC clients, a
//! client of the seed's JSON protocol ([`seed::SeedClient`]), a temporary
//! PostgreSQL ([`pg::PgCluster`]), and server and replica child processes
//! that the crash tests kill ([`procs`]).

pub mod net;
pub mod pg;
pub mod procs;
pub mod seed;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use std::sync::Arc;

use strata::projection::counter::{self, CounterProjection};
use strata::sync::{Replica, ReplicaOptions};
use strata::{AggregateEvents, ExpectedVersion, NewEvent, Options, Store, Uuid};

/// The workspace's root directory.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The `strata` binary of this build (built if needed): the tests of this
/// crate run from `target/<profile>/deps/`, beside which cargo puts it.
pub fn strata_cli() -> PathBuf {
    let target = std::env::current_exe()
        .expect("the test's own path")
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf();
    let bin = target.join("strata");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "strata-cli"])
            .current_dir(workspace())
            .status()
            .expect("running cargo");
        assert!(status.success(), "building the strata CLI failed");
    }
    bin
}

/// Events per aggregate in each batch of [`append_pairs`].
pub const PAIR_EVENTS: u64 = 3;
/// The aggregates every batch of [`append_pairs`] writes, in this order:
/// two plain ones and a counter that each batch raises by `PAIR_EVENTS`.
pub const PAIR_AGGREGATES: [&str; 3] = ["pair-a", "pair-b", "pair-counter"];

/// A writer's options for the pairs workload: small segments, so that
/// segments roll under the readers, and a small index batch, so that the
/// index trails the log in many steps.
pub fn pairs_writer_options() -> Options {
    Options {
        segment_bytes_max: 64 << 10,
        index_batch_events_max: 64,
        ..Options::default()
    }
}

/// Appends batches until `stop` is set: each batch is one atomic append of
/// `PAIR_EVENTS` events to each of `PAIR_AGGREGATES` (the counter's are
/// `CounterIncremented` by 1). A reader that sees whole batches only sees
/// the three aggregates at the same version, a multiple of
/// `PAIR_EVENTS`, and the counter at that value. Returns the batches
/// written.
pub fn append_pairs(store: &Store, stop: &AtomicBool) -> u64 {
    let mut batches = 0;
    while !stop.load(Ordering::Relaxed) {
        let groups: Vec<AggregateEvents> = PAIR_AGGREGATES
            .iter()
            .map(|agg| AggregateEvents {
                aggregate_id: (*agg).to_owned(),
                expected: ExpectedVersion::Exact(batches * PAIR_EVENTS),
                events: (0..PAIR_EVENTS)
                    .map(|i| {
                        if agg.ends_with("counter") {
                            counter::increment(1)
                        } else {
                            NewEvent::new("Paired", format!("{{\"batch\":{batches},\"i\":{i}}}"))
                        }
                    })
                    .collect(),
            })
            .collect();
        store.append_batch(&groups).expect("appending a batch");
        batches += 1;
    }
    batches
}

/// What one check of a read-only handle saw.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub head: u64,
    pub version: u64,
}

/// Reads the pairs workload through `store` as an embedder would, every
/// read from the same view, and panics (naming what) unless each read
/// succeeds and sees whole batches only: every aggregate at the same
/// version, a multiple of `PAIR_EVENTS`, events contiguous from version 1,
/// no position past the head, ids found by `get`.
pub fn check_pairs_view(store: &Store) -> Seen {
    let head = store.head();
    let version = store.aggregate_version(PAIR_AGGREGATES[0]).unwrap();
    assert_eq!(version % PAIR_EVENTS, 0, "head {head}: partial batch");
    for agg in PAIR_AGGREGATES {
        let v = store.aggregate_version(agg).unwrap();
        assert_eq!(v, version, "head {head}: {agg} is at {v}, not {version}");
        let events = store.read_aggregate(agg, 1, usize::MAX).unwrap();
        assert_eq!(events.len() as u64, version, "head {head}: {agg}");
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.version, i as u64 + 1, "head {head}: {agg}");
            assert!(e.position <= head, "head {head}: {agg} v{}", e.version);
        }
        let latest = store.read_aggregate_backward(agg, 2).unwrap();
        let versions: Vec<u64> = latest.iter().map(|e| e.version).collect();
        let want: Vec<u64> = (version.saturating_sub(1)..=version)
            .rev()
            .filter(|v| *v > 0)
            .collect();
        assert_eq!(versions, want, "head {head}: {agg} backward");
        if let Some(last) = events.last() {
            let got = store.get(last.event_id).unwrap();
            assert_eq!(got.map(|e| e.position), Some(last.position), "head {head}");
        }
    }
    Seen { head, version }
}

/// A replica in `dir` with the counter view, as the sync tests use it.
pub fn counter_replica(dir: &Path) -> Arc<Replica> {
    Arc::new(
        Replica::open(
            dir,
            ReplicaOptions {
                projections: vec![Arc::new(CounterProjection)],
                ..ReplicaOptions::default()
            },
        )
        .unwrap(),
    )
}

/// Appends one `CounterIncremented` to `aggregate` of `r`; returns its id.
pub fn increment_counter(r: &Replica, aggregate: &str) -> Uuid {
    let e = counter::increment(1);
    let id = e.event_id;
    r.append(aggregate, ExpectedVersion::Any, vec![e]).unwrap();
    id
}
