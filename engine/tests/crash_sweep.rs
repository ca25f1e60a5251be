//! S1–S4 at every crash point of a recorded run.
//!
//! A seeded workload (batches of varying size over several aggregates,
//! small segments so that rolls happen) runs once through [`FaultVfs`],
//! which records every mutating file-system operation. Then, for every
//! operation N of that run, the state a crash right after N may leave is
//! written to a new directory and opened with the real file system, in
//! three crash modes: power loss with nothing unsynced surviving (`Lost`),
//! power loss with a seeded torn prefix of the unsynced writes (`Torn`),
//! and a killed process whose writes all survive (`Process`).
//!
//! From the record, each batch has three moments: its frame was written,
//! a sync covered it, its append was acknowledged. After a crash at N the
//! log must hold whole batches only (S3), unchanged and at their positions
//! (S1), without gaps, and exactly: every written batch after a `Process`
//! crash, every synced one after a `Lost` crash, something in between after
//! a `Torn` one (S4). In `Durability::Sync`, every acknowledged batch must
//! have been synced first (S2). The open must neither fail nor panic: a
//! crash state is never damage.
//!
//! Every crash state is opened read-write at the log level (`Log::open` on
//! `OsVfs`: the recovery `Store::open` runs, without the SQLite index),
//! which is cheap enough for thousands of states; every few crash points
//! one is also opened as a whole `Store`, which rebuilds its index.
//!
//! `STRATA_SWEEP_SEED` picks the workload and the torn prefixes (default
//! below), `STRATA_SWEEP_BATCHES` the length of the `Sync` workload (the
//! `None` one is a third of it).

use std::collections::HashMap;
use std::ops::RangeInclusive;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata::log::fault::{CrashMode, FaultVfs, Op, OpKind};
use strata::log::vfs::{OsVfs, Vfs};
use strata::log::{Log, LogConfig};
use strata::{
    AggregateEvents, Durability, Event, EventRef, ExpectedVersion, NewEvent, Options, Store,
    Timestamp, Uuid,
};

const SEED_DEFAULT: u64 = 0x5EED_5EED_C0FF_EE00;
/// About 1,000 operations and 50 segment rolls: 3,000 crash states, which a
/// debug build checks in about half a minute on two cores.
const BATCHES_DEFAULT: usize = 300;
const SEGMENT_BYTES_MAX: u64 = 4096;
const AGGREGATES: usize = 5;
/// Threads checking crash states; the checks mostly wait on fsyncs.
const WORKERS: u64 = 4;
/// Every this many crash points, one state is also opened as a `Store`.
const STORE_CHECK_EVERY: u64 = 40;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid value")),
        Err(_) => default,
    }
}

/// One event as the workload appended it.
#[derive(Debug, Clone)]
struct Expected {
    position: u64,
    event_id: Uuid,
    aggregate_id: String,
    version: u64,
    event_type: String,
    data: Vec<u8>,
    metadata: Option<Vec<u8>>,
}

/// One appended batch: its events, and when (by operation index) its frame
/// was written, synced and acknowledged.
#[derive(Debug)]
struct Batch {
    events: Vec<Expected>,
    written_op: u64,
    synced_op: u64,
    acked_op: u64,
}

/// The recorded run.
#[derive(Debug)]
struct Run {
    batches: Vec<Batch>,
    ops: Vec<Op>,
    /// The HLC timestamp of every position, as the store chose it.
    timestamps: HashMap<u64, Timestamp>,
}

impl Run {
    /// How many whole batches a crash right after operation `n` leaves in
    /// `mode`.
    fn allowed(&self, n: u64, mode: CrashMode) -> RangeInclusive<usize> {
        let count = |f: &dyn Fn(&Batch) -> bool| self.batches.iter().filter(|b| f(b)).count();
        let written = count(&|b| b.written_op <= n);
        let synced = count(&|b| b.synced_op <= n);
        match mode {
            CrashMode::Process => written..=written,
            CrashMode::Lost => synced..=synced,
            _ => synced..=written,
        }
    }

    fn events_in(&self, batches: usize) -> u64 {
        self.batches[..batches]
            .iter()
            .map(|b| b.events.len() as u64)
            .sum()
    }
}

fn options(durability: Durability, vfs: Arc<dyn Vfs>) -> Options {
    Options {
        durability,
        segment_bytes_max: SEGMENT_BYTES_MAX,
        vfs,
        ..Options::default()
    }
}

/// Runs the workload through `vfs` on `dir` and records it.
fn run_workload(
    vfs: &FaultVfs,
    dir: &Path,
    durability: Durability,
    seed: u64,
    batch_count: usize,
) -> Run {
    let mut rng = StdRng::seed_from_u64(seed);
    let store = Store::open(dir, options(durability, Arc::new(vfs.clone()))).unwrap();
    let mut versions = [0u64; AGGREGATES];
    let mut position = 0;
    let mut batches = Vec::with_capacity(batch_count);
    for b in 0..batch_count {
        let aggregates = rng.random_range(1..=3);
        let first = rng.random_range(0..AGGREGATES);
        let groups: Vec<AggregateEvents> = (0..aggregates)
            .map(|i| {
                let a = (first + i) % AGGREGATES;
                let n = rng.random_range(1..=3);
                let events = (0..n)
                    .map(|_| {
                        // Mostly small events; now and then one big enough
                        // that its batch gets a segment of its own.
                        let len = if rng.random_ratio(1, 150) {
                            rng.random_range(2500..5000)
                        } else {
                            rng.random_range(1..80)
                        };
                        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                        let mut e = NewEvent::new(format!("Type{}", rng.random_range(0..3)), data);
                        if rng.random_ratio(1, 3) {
                            e.metadata = Some(format!("{{\"batch\":{b}}}").into_bytes());
                        }
                        e
                    })
                    .collect();
                AggregateEvents {
                    aggregate_id: format!("agg-{a}"),
                    expected: ExpectedVersion::Exact(versions[a]),
                    events,
                }
            })
            .collect();
        let ops_before = vfs.op_count();
        let committed = store.append_batch(&groups).unwrap();
        let acked_op = vfs.op_count();
        let mut events = Vec::new();
        let mut c = committed.iter();
        for g in &groups {
            let a: usize = g.aggregate_id[4..].parse().unwrap();
            for e in &g.events {
                let c = c.next().unwrap();
                position += 1;
                versions[a] += 1;
                assert_eq!((c.position, c.version), (position, versions[a]));
                events.push(Expected {
                    position,
                    event_id: e.event_id,
                    aggregate_id: g.aggregate_id.clone(),
                    version: versions[a],
                    event_type: e.event_type.clone(),
                    data: e.data.clone(),
                    metadata: e.metadata.clone(),
                });
            }
        }
        // The frame is the append's last write (a roll writes a seal and
        // a header before it).
        let written_op = vfs.ops()[ops_before as usize..acked_op as usize]
            .iter()
            .rfind(|o| o.kind == OpKind::Write)
            .expect("an append writes its frame")
            .index;
        batches.push(Batch {
            events,
            written_op,
            synced_op: u64::MAX,
            acked_op,
        });
    }
    store.close().unwrap();
    vfs.check_live_model().unwrap();

    let ops = vfs.ops();
    assert!(ops.iter().all(|o| o.error.is_none()));
    for b in &mut batches {
        // The first sync of the frame's file after the frame was written.
        let path = &ops[b.written_op as usize - 1].path;
        b.synced_op = ops[b.written_op as usize..]
            .iter()
            .find(|o| o.kind == OpKind::SyncData && &o.path == path)
            .expect("closing the store syncs everything")
            .index;
    }

    // The timestamps the store chose, from what it wrote.
    let full = dir.with_extension("full");
    vfs.materialize_after(ops.len() as u64, &full, CrashMode::Process)
        .unwrap();
    let timestamps: HashMap<u64, Timestamp> = {
        let store = Store::open(&full, options(durability, Arc::new(OsVfs))).unwrap();
        store
            .read_all(1)
            .map(|e| e.map(|e| (e.position, e.timestamp)))
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(timestamps.len() as u64, position);
    std::fs::remove_dir_all(&full).unwrap();
    Run {
        batches,
        ops,
        timestamps,
    }
}

fn leftover_temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".seg.tmp"))
        .collect()
}

/// Checks one crash state in `dir` at the log level: a read-write recovery
/// with the real file system, then every batch compared with what was
/// appended, batch by batch. Returns whether a torn tail was cut.
fn check_log(
    dir: &Path,
    what: &str,
    run: &Run,
    allowed: RangeInclusive<usize>,
    append_after: bool,
) -> bool {
    let config = LogConfig {
        vfs: Arc::new(OsVfs),
        segment_bytes_max: SEGMENT_BYTES_MAX,
        durability: Durability::Sync,
        read_only: false,
        create_if_missing: true,
    };
    let (log, writer, report) = match catch_unwind(AssertUnwindSafe(|| Log::open(dir, config))) {
        Ok(Ok(opened)) => opened,
        // A crash state is never damage: an error here is a false alarm
        // that would make a user's store unusable.
        Ok(Err(e)) => panic!("{what}: open failed: {e}"),
        Err(_) => panic!("{what}: open panicked"),
    };
    let mut cursor = log.cursor(1);
    let mut held = 0;
    while let Some(view) = cursor
        .next_batch(u64::MAX)
        .unwrap_or_else(|e| panic!("{what}: reading batch {held} failed: {e}"))
    {
        // S3: each batch in the log is one whole appended batch.
        let expected = run
            .batches
            .get(held)
            .unwrap_or_else(|| panic!("{what}: holds more batches than were appended"));
        let records: Vec<_> = view
            .records()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| panic!("{what}: batch {held}: {e}"));
        assert_eq!(
            records.len(),
            expected.events.len(),
            "{what}: batch {held} is not whole"
        );
        for ((_, r), x) in records.into_iter().zip(&expected.events) {
            // S1: unchanged and at its position (so positions are gapless).
            assert_eq!(r.position, x.position, "{what}: positions must be gapless");
            assert_eq!(
                (
                    r.event_id,
                    r.aggregate_id,
                    r.version,
                    r.event_type,
                    r.data,
                    r.metadata
                ),
                (
                    x.event_id,
                    x.aggregate_id.as_str(),
                    x.version,
                    x.event_type.as_str(),
                    &x.data[..],
                    x.metadata.as_deref()
                ),
                "{what}: event at position {} changed",
                x.position
            );
            assert_eq!(
                r.timestamp().ok().as_ref(),
                run.timestamps.get(&x.position),
                "{what}: timestamp at {}",
                x.position
            );
        }
        held += 1;
    }
    // S4: exactly what the crash mode keeps.
    assert!(
        allowed.contains(&held),
        "{what}: holds {held} batches, must hold {allowed:?}"
    );
    let position = run.events_in(held);
    assert_eq!(log.visible_position(), position, "{what}");
    let leftovers = leftover_temp_files(dir);
    assert!(leftovers.is_empty(), "{what}: left behind {leftovers:?}");
    if append_after {
        // The log goes on from where recovery left it.
        let mut writer = writer.expect("read-write");
        let record = EventRef {
            position: 0,
            event_id: Uuid::now_v7(),
            version: 1,
            hlc_physical_ms: 1,
            hlc_counter: 0,
            hlc_node: "0123456789abcdef",
            aggregate_id: "after",
            event_type: "X",
            data: b"{}",
            metadata: None,
        };
        let appended = writer
            .append(&log, &[record])
            .unwrap_or_else(|e| panic!("{what}: append after recovery failed: {e}"));
        log.wait_durable(appended.last_position).unwrap();
        assert_eq!(appended.first_position, position + 1, "{what}");
    }
    report.torn_tail.is_some()
}

/// Checks one crash state in `dir` as a whole store: opens it with the
/// real file system (rebuilding the index), reads every event, appends.
fn check_store(dir: &Path, what: &str, run: &Run, allowed: RangeInclusive<usize>) {
    let store = match catch_unwind(AssertUnwindSafe(|| {
        Store::open(dir, options(Durability::Sync, Arc::new(OsVfs)))
    })) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => panic!("{what}: open failed: {e}"),
        Err(_) => panic!("{what}: open panicked"),
    };
    let events: Vec<Event> = store
        .read_all(1)
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{what}: reading failed: {e}"));
    let held = (0..=run.batches.len())
        .find(|&b| run.events_in(b) == events.len() as u64)
        .unwrap_or_else(|| panic!("{what}: {} events is not whole batches", events.len()));
    assert!(
        allowed.contains(&held),
        "{what}: holds {held} batches, must hold {allowed:?}"
    );
    let expected = run.batches[..held].iter().flat_map(|b| &b.events);
    for (e, x) in events.iter().zip(expected) {
        assert_eq!(e.position, x.position, "{what}: positions must be gapless");
        assert_eq!(
            (
                e.event_id,
                &e.aggregate_id,
                e.version,
                &e.event_type,
                &e.data,
                &e.metadata,
                Some(&e.timestamp)
            ),
            (
                x.event_id,
                &x.aggregate_id,
                x.version,
                &x.event_type,
                &x.data,
                &x.metadata,
                run.timestamps.get(&x.position)
            ),
            "{what}: event at position {} changed",
            x.position
        );
    }
    let leftovers = leftover_temp_files(dir);
    assert!(leftovers.is_empty(), "{what}: left behind {leftovers:?}");
    let c = store
        .append(
            "after",
            ExpectedVersion::Any,
            vec![NewEvent::new("X", vec![1])],
        )
        .unwrap_or_else(|e| panic!("{what}: append after recovery failed: {e}"));
    assert_eq!(c[0].position, events.len() as u64 + 1, "{what}");
    assert!(store.verify_index(5).unwrap().0.is_empty(), "{what}");
    store.close().unwrap();
}

/// Records a run in `durability` and checks every crash point of it.
fn sweep(durability: Durability, seed: u64, batch_count: usize) {
    eprintln!("crash sweep ({durability:?}): STRATA_SWEEP_SEED={seed}, {batch_count} batches");
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let live = tmp.path().join("live");
    let vfs = FaultVfs::new(&live);
    let run = run_workload(&vfs, &live, durability, seed, batch_count);
    let total = run.ops.len() as u64;
    let rolls = run
        .ops
        .iter()
        .filter(|o| o.kind == OpKind::Rename)
        .count()
        .saturating_sub(1);
    assert!(
        rolls >= 5,
        "the workload must roll segments, rolled {rolls}"
    );
    if durability == Durability::Sync {
        // S2: an append is acknowledged only after its frame is synced.
        for (i, b) in run.batches.iter().enumerate() {
            assert!(
                b.synced_op <= b.acked_op,
                "batch {i}: written at op {}, acknowledged at op {}, but synced only at op {}",
                b.written_op,
                b.acked_op,
                b.synced_op
            );
        }
    }

    // Each check waits on real fsyncs (recovery syncs what it recovered),
    // so a few threads share the crash points; each point is checked the
    // same way whatever the order.
    let checked = AtomicU64::new(0);
    let store_checked = AtomicU64::new(0);
    let torn_tails = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for w in 0..WORKERS {
            let (vfs, tmp, run) = (&vfs, &tmp, &run);
            let (checked, store_checked, torn_tails) = (&checked, &store_checked, &torn_tails);
            scope.spawn(move || {
                for n in (w..=total).step_by(WORKERS as usize) {
                    let modes = [
                        CrashMode::Lost,
                        CrashMode::Torn {
                            seed: seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                        },
                        CrashMode::Process,
                    ];
                    for (m, mode) in modes.into_iter().enumerate() {
                        let last_op = n.checked_sub(1).and_then(|i| run.ops.get(i as usize));
                        let what = format!(
                            "{durability:?}: crash after op {n} of {total} ({:?}), {mode:?}, \
                             STRATA_SWEEP_SEED={seed}",
                            last_op.map(|o| (o.kind, &o.path))
                        );
                        let allowed = run.allowed(n, mode);
                        if n % STORE_CHECK_EVERY == m as u64 {
                            let dir = tmp.path().join(format!("store-{n}-{m}"));
                            vfs.materialize_after(n, &dir, mode).unwrap();
                            check_store(&dir, &what, run, allowed.clone());
                            std::fs::remove_dir_all(&dir).unwrap();
                            store_checked.fetch_add(1, Ordering::Relaxed);
                        }
                        let dir = tmp.path().join(format!("crash-{n}-{m}"));
                        vfs.materialize_after(n, &dir, mode).unwrap();
                        let append_after = n.is_multiple_of(3);
                        if check_log(&dir, &what, run, allowed, append_after) {
                            torn_tails.fetch_add(1, Ordering::Relaxed);
                        }
                        checked.fetch_add(1, Ordering::Relaxed);
                        std::fs::remove_dir_all(&dir).unwrap();
                    }
                }
            });
        }
    });
    let events = run.events_in(run.batches.len());
    eprintln!(
        "crash sweep ({durability:?}): {batch_count} batches, {events} events, {rolls} segment \
         rolls, {total} operations; checked {} crash states ({} with a torn tail cut; {} also \
         as a whole store) in {:.1?}",
        checked.into_inner(),
        torn_tails.into_inner(),
        store_checked.into_inner(),
        started.elapsed()
    );
}

/// S1–S4 hold at every crash point of a seeded workload in
/// `Durability::Sync`: nothing acknowledged is ever lost.
#[test]
fn s1_s4_crash_at_every_operation_of_a_seeded_workload() {
    let seed = env_or("STRATA_SWEEP_SEED", SEED_DEFAULT);
    let batches = env_or("STRATA_SWEEP_BATCHES", BATCHES_DEFAULT);
    sweep(Durability::Sync, seed, batches);
}

/// In `Durability::None` a power loss may take acknowledged batches that
/// no sync covered, but no more: everything synced (at a roll, on close)
/// survives, a killed process loses nothing, batches stay whole, and a
/// crash state is never taken for damage.
#[test]
fn s1_s4_crash_at_every_operation_with_durability_none() {
    let seed = env_or("STRATA_SWEEP_SEED", SEED_DEFAULT);
    let batches = env_or("STRATA_SWEEP_BATCHES", BATCHES_DEFAULT) / 3;
    sweep(Durability::None, seed, batches);
}
