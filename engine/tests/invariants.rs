//! Store invariants S1–S6 on real files. The crash loop with a killed child
//! process lives in the workspace's tests/ crate.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use proptest::prelude::*;
use strata::log::vfs::{OpenMode, OsVfs, Vfs, VfsFile};
use strata::{
    AggregateEvents, Durability, Error, Event, ExpectedVersion, NewEvent, Options, Store, Uuid,
};

fn small_segments(durability: Durability) -> Options {
    Options {
        durability,
        segment_bytes_max: 4096,
        ..Options::default()
    }
}

fn ev(ty: &str, n: u64) -> NewEvent {
    NewEvent::new(ty, format!("{{\"value\":{n}}}").into_bytes())
}

fn all(store: &Store) -> Vec<Event> {
    store.read_all(1).collect::<Result<_, _>>().unwrap()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Positions are 1..=n without gaps and versions per aggregate likewise.
fn assert_gapless(events: &[Event]) {
    let mut versions: BTreeMap<&str, u64> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "positions must be gapless");
        let v = versions.entry(&e.aggregate_id).or_default();
        *v += 1;
        assert_eq!(
            e.version, *v,
            "versions of {} must be gapless",
            e.aggregate_id
        );
    }
}

#[test]
fn s1_s3_append_then_read_back_across_segment_rolls_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    {
        let store = Store::open(dir.path(), small_segments(Durability::Sync)).unwrap();
        for i in 0..200u64 {
            let agg = format!("agg-{}", i % 7);
            let batch: Vec<_> = (0..3).map(|j| ev("Thing", i * 3 + j)).collect();
            ids.extend(batch.iter().map(|e| e.event_id));
            store.append(&agg, ExpectedVersion::Any, batch).unwrap();
        }
        assert_eq!(store.head(), 600);
        store.close().unwrap();
    }
    assert!(
        segment_files(dir.path()).len() > 5,
        "small segments must roll"
    );
    let store = Store::open(dir.path(), small_segments(Durability::Sync)).unwrap();
    let events = all(&store);
    assert_eq!(events.len(), 600);
    assert_gapless(&events);
    assert_eq!(events.iter().map(|e| e.event_id).collect::<Vec<_>>(), ids);
    // S1: what was acknowledged reads back unchanged.
    assert_eq!(events[10].data, b"{\"value\":10}");
    let agg3 = store.read_aggregate("agg-3", 1, usize::MAX).unwrap();
    assert_eq!(
        agg3.len(),
        events.iter().filter(|e| e.aggregate_id == "agg-3").count()
    );
    let latest = store.read_aggregate_backward("agg-3", 2).unwrap();
    assert_eq!(latest[0].version, agg3.len() as u64);
    assert_eq!(latest[1].version, agg3.len() as u64 - 1);
    assert_eq!(store.get(ids[123]).unwrap().unwrap().position, 124);
    assert!(store.get(Uuid::now_v7()).unwrap().is_none());
    assert!(store.verify_index(10).unwrap().0.is_empty());
}

#[test]
fn s3_multi_aggregate_batch_is_one_atomic_append() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    store
        .append("b", ExpectedVersion::Any, vec![ev("X", 0)])
        .unwrap();
    let batch = vec![
        AggregateEvents {
            aggregate_id: "a".into(),
            expected: ExpectedVersion::NoStream,
            events: vec![ev("X", 1), ev("X", 2)],
        },
        AggregateEvents {
            aggregate_id: "b".into(),
            expected: ExpectedVersion::Exact(0), // stale: b is at 1
            events: vec![ev("X", 3)],
        },
    ];
    let err = store.append_batch(&batch).unwrap_err();
    assert!(
        matches!(err, Error::Conflict { ref aggregate_id, current: 1, .. } if aggregate_id == "b"),
        "{err}"
    );
    assert_eq!(
        store.head(),
        1,
        "a refused batch writes nothing, not even the valid part"
    );
    let mut batch = batch;
    batch[1].expected = ExpectedVersion::Exact(1);
    let c = store.append_batch(&batch).unwrap();
    assert_eq!(
        c.iter()
            .map(|c| (c.position, c.version))
            .collect::<Vec<_>>(),
        vec![(2, 1), (3, 2), (4, 2)]
    );
}

#[test]
fn s3_one_batch_may_interleave_aggregates_and_keeps_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let group = |agg: &str, expected, n| AggregateEvents {
        aggregate_id: agg.into(),
        expected,
        events: (0..n).map(|i| ev("X", i)).collect(),
    };
    // a, b, a again: the second group of `a` follows the first.
    let c = store
        .append_batch(&[
            group("a", ExpectedVersion::NoStream, 2),
            group("b", ExpectedVersion::NoStream, 1),
            group("a", ExpectedVersion::Exact(2), 1),
        ])
        .unwrap();
    let got: Vec<_> = c.iter().map(|c| (c.position, c.version)).collect();
    assert_eq!(got, vec![(1, 1), (2, 2), (3, 1), (4, 3)]);
    // Each group is checked against what the one before it left.
    let err = store
        .append_batch(&[
            group("a", ExpectedVersion::Exact(3), 1),
            group("a", ExpectedVersion::Exact(3), 1),
        ])
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { current: 4, .. }), "{err}");
    assert_eq!(store.head(), 4, "the refused batch wrote nothing");
}

#[test]
fn s6_conflict_names_the_current_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    store
        .append(
            "acc",
            ExpectedVersion::NoStream,
            vec![ev("Opened", 0), ev("Deposited", 5)],
        )
        .unwrap();
    let err = store
        .append("acc", ExpectedVersion::Exact(1), vec![ev("Deposited", 1)])
        .unwrap_err();
    match &err {
        Error::Conflict { current, .. } => assert_eq!(*current, 2),
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(err.to_string().contains("current version is 2"), "{err}");
    let err = store
        .append("acc", ExpectedVersion::NoStream, vec![ev("Opened", 0)])
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { current: 2, .. }));
    store
        .append("acc", ExpectedVersion::Exact(2), vec![ev("Deposited", 1)])
        .unwrap();
}

#[test]
fn s6_reappending_an_event_id_is_idempotent_across_restart_and_reindex() {
    let dir = tempfile::tempdir().unwrap();
    let e = ev("Created", 1);
    let first = {
        let store = Store::open(dir.path(), Options::default()).unwrap();
        let first = store
            .append("x", ExpectedVersion::NoStream, vec![e.clone()])
            .unwrap();
        // Same process, event still in the in-memory tail or just indexed.
        let again = store
            .append("x", ExpectedVersion::NoStream, vec![e.clone()])
            .unwrap();
        assert!(again[0].existed);
        assert_eq!(
            (again[0].position, again[0].version),
            (first[0].position, first[0].version)
        );
        store.close().unwrap();
        first
    };
    for reindex in [false, true] {
        if reindex {
            strata::index::remove_index_files(dir.path()).unwrap();
        }
        let store = Store::open(dir.path(), Options::default()).unwrap();
        let again = store
            .append("x", ExpectedVersion::NoStream, vec![e.clone()])
            .unwrap();
        assert!(again[0].existed, "reindex={reindex}");
        assert_eq!(again[0].position, first[0].position);
        assert_eq!(store.head(), 1, "nothing written");
        // An id reused for another aggregate is an error, not a silent skip.
        let err = store
            .append("y", ExpectedVersion::Any, vec![e.clone()])
            .unwrap_err();
        assert!(matches!(err, Error::EventIdReused { .. }), "{err}");
        store.close().unwrap();
    }
}

/// S6: an event id names one event. Re-appending it with the same
/// aggregate, type, payload and metadata is a retry (the first position,
/// nothing written); with any of them different it is refused, naming the
/// id and what differs, from the in-memory tail, from the index after a
/// restart, and between batches of one `append_batches` call.
#[test]
fn s6_an_event_id_reused_with_other_content_is_refused_naming_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    let original = NewEvent::new("Created", br#"{"a":1}"#.to_vec()).with_metadata(b"m".to_vec());
    let variants: Vec<(&str, &str, NewEvent)> = vec![
        (
            "x",
            "event_data",
            NewEvent {
                data: br#"{"a":2}"#.to_vec(),
                ..original.clone()
            },
        ),
        (
            "x",
            "event_type",
            NewEvent {
                event_type: "Renamed".into(),
                ..original.clone()
            },
        ),
        (
            "x",
            "metadata",
            NewEvent {
                metadata: None,
                ..original.clone()
            },
        ),
        ("y", "aggregate_id", original.clone()),
    ];
    let check = |store: &Store, when: &str| {
        for (agg, differs, attempt) in &variants {
            let err = store
                .append(agg, ExpectedVersion::Any, vec![attempt.clone()])
                .unwrap_err();
            match &err {
                Error::EventIdReused {
                    event_id,
                    position,
                    differs: d,
                    ..
                } => {
                    assert_eq!((*event_id, *position), (original.event_id, 1), "{when}");
                    assert_eq!(d, &vec![*differs], "{when}: {err}");
                }
                other => panic!("{when}: expected EventIdReused, got {other}"),
            }
            assert!(err.to_string().contains(&original.event_id.to_string()));
        }
        let again = store
            .append("x", ExpectedVersion::Exact(0), vec![original.clone()])
            .unwrap();
        assert!(again[0].existed && again[0].position == 1, "{when}");
        assert_eq!(store.head(), 1, "{when}: nothing written");
    };
    let store = Store::open(dir.path(), Options::default()).unwrap();
    store
        .append("x", ExpectedVersion::NoStream, vec![original.clone()])
        .unwrap();
    check(&store, "in the tail");
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    check(&store, "in the index");

    // Between batches of one call: the second batch sees the first's event.
    let fresh = NewEvent::new("T", b"1".to_vec());
    let changed = NewEvent {
        data: b"2".to_vec(),
        ..fresh.clone()
    };
    let group = |e: &NewEvent| {
        [AggregateEvents {
            aggregate_id: "z".into(),
            expected: ExpectedVersion::Any,
            events: vec![e.clone()],
        }]
    };
    let (first, same, other) = (group(&fresh), group(&fresh), group(&changed));
    let results = store.append_batches(&[&first, &same, &other]).unwrap();
    let placed = results[0].as_ref().unwrap()[0];
    assert!(!placed.existed);
    let retried = results[1].as_ref().unwrap()[0];
    assert!(retried.existed && retried.position == placed.position);
    assert!(matches!(
        &results[2],
        Err(Error::EventIdReused { differs, .. }) if differs == &vec!["event_data"]
    ));
    assert_eq!(store.head(), 2);
    store.close().unwrap();
}

#[test]
fn s6_concurrent_appenders_with_conflicts_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let threads = 8;
    let per_thread = 40;
    let conflicts = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let conflicts = conflicts.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut mine = Vec::new();
                for i in 0..per_thread {
                    let e = ev(&format!("T{t}"), i);
                    loop {
                        let v = store.aggregate_version("hot").unwrap();
                        match store.append("hot", ExpectedVersion::Exact(v), vec![e.clone()]) {
                            Ok(c) => {
                                mine.push(c[0].event_id);
                                break;
                            }
                            Err(Error::Conflict { current, .. }) => {
                                assert!(current > v);
                                conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(other) => panic!("{other}"),
                        }
                    }
                }
                mine
            })
        })
        .collect();
    let acked: Vec<Uuid> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let events = store.read_aggregate("hot", 1, usize::MAX).unwrap();
    assert_eq!(events.len(), threads * per_thread as usize);
    assert_gapless(&events);
    let logged: HashSet<Uuid> = events.iter().map(|e| e.event_id).collect();
    assert_eq!(logged, acked.into_iter().collect::<HashSet<_>>());
    eprintln!("conflicts retried: {}", conflicts.load(Ordering::Relaxed));
}

#[test]
fn s4_last_batch_cut_at_every_byte_recovers_the_acknowledged_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original");
    {
        let store = Store::open(&original, Options::default()).unwrap();
        store
            .append("a", ExpectedVersion::Any, vec![ev("X", 1), ev("X", 2)])
            .unwrap();
        store
            .append("b", ExpectedVersion::Any, vec![ev("X", 3)])
            .unwrap();
        store.close().unwrap();
    }
    let seg = segment_files(&original).pop().unwrap();
    let before_last = fs::metadata(&seg).unwrap().len();
    {
        let store = Store::open(&original, Options::default()).unwrap();
        store
            .append(
                "c",
                ExpectedVersion::Any,
                vec![ev("X", 4), ev("X", 5), ev("X", 6)],
            )
            .unwrap();
        store.close().unwrap();
    }
    let full = fs::metadata(&seg).unwrap().len();
    assert!(full > before_last);
    for cut in before_last..=full {
        let copy = dir.path().join(format!("cut-{cut}"));
        copy_dir(&original, &copy);
        let seg_copy = copy.join("log").join(seg.file_name().unwrap());
        fs::OpenOptions::new()
            .write(true)
            .open(&seg_copy)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let store =
            Store::open(&copy, Options::default()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let events = all(&store);
        let expected = if cut == full { 6 } else { 3 };
        assert_eq!(
            events.len(),
            expected,
            "cut at {cut}: a partial batch must never appear"
        );
        assert_gapless(&events);
        let report = store.recovery_report();
        assert_eq!(
            report.torn_tail.is_some(),
            cut != full && cut != before_last,
            "cut at {cut}"
        );
        // The index rebuilt itself where it claimed more than the log holds.
        assert!(store.verify_index(5).unwrap().0.is_empty(), "cut at {cut}");
        // Appending after recovery continues the sequence.
        let c = store
            .append("d", ExpectedVersion::Any, vec![ev("X", 7)])
            .unwrap();
        assert_eq!(c[0].position, expected as u64 + 1);
        store.close().unwrap();
        fs::remove_dir_all(&copy).unwrap();
    }
}

#[test]
fn s4_garbage_after_the_last_batch_is_cut_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Options::default()).unwrap();
        store
            .append("a", ExpectedVersion::Any, vec![ev("X", 1)])
            .unwrap();
        store.close().unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let len = fs::metadata(&seg).unwrap().len();
    let mut bytes = fs::read(&seg).unwrap();
    bytes.extend_from_slice(&[0u8; 300]); // pre-allocated zeros after a crash
    fs::write(&seg, &bytes).unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let torn = store
        .recovery_report()
        .torn_tail
        .clone()
        .expect("torn tail reported");
    assert_eq!((torn.offset, torn.bytes, torn.cut), (len, 300, true));
    assert_eq!(fs::metadata(&seg).unwrap().len(), len);
    assert_eq!(all(&store).len(), 1);
}

#[test]
fn s4_damage_before_a_synced_frame_is_an_error_not_a_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Options::default()).unwrap();
        for i in 0..5 {
            store
                .append("a", ExpectedVersion::Any, vec![ev("X", i)])
                .unwrap();
        }
        store.close().unwrap();
    }
    let seg = segment_files(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    // Flip a byte inside the second batch of the active segment: later
    // frames were written after it was synced, so this is damage.
    let second_frame = find_frames(&bytes)[1];
    bytes[second_frame as usize + 40] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();
    let err = Store::open(dir.path(), Options::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&seg.display().to_string()), "{err}");
    assert!(err.contains(&format!("offset {second_frame}")), "{err}");
    assert_eq!(fs::read(&seg).unwrap(), bytes, "nothing was cut");
}

/// Offsets of batch frames in a segment file (test helper: finds magics).
fn find_frames(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = strata::log::format::SEGMENT_HEADER_BYTES;
    while at + 8 <= bytes.len() {
        assert_eq!(&bytes[at..at + 4], b"SBAT");
        out.push(at as u64);
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += strata::log::format::FRAME_HEADER_BYTES + len;
    }
    out
}

#[test]
fn s4_flipped_byte_in_a_sealed_segment_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), small_segments(Durability::None)).unwrap();
        for i in 0..100 {
            store
                .append("a", ExpectedVersion::Any, vec![ev("X", i)])
                .unwrap();
        }
        store.close().unwrap();
    }
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3);
    let sealed = &segs[0];
    let mut bytes = fs::read(sealed).unwrap();
    let frames = find_frames_until_seal(&bytes);
    let target = frames[frames.len() / 2];
    bytes[target as usize + 60] ^= 0x01;
    fs::write(sealed, &bytes).unwrap();

    // Sealed segments are trusted on open; the damage surfaces on read,
    // naming file and offset, and nothing is dropped.
    let store = Store::open(dir.path(), small_segments(Durability::None)).unwrap();
    let err = store
        .read_all(1)
        .find_map(Result::err)
        .expect("read must fail")
        .to_string();
    assert!(err.contains(&sealed.display().to_string()), "{err}");
    assert!(err.contains(&format!("offset {target}")), "{err}");
    assert!(err.contains("checksum"), "{err}");
    assert_eq!(
        fs::read(sealed).unwrap(),
        bytes,
        "a sealed segment is never cut"
    );

    // Damage to the seal itself stops open.
    drop(store);
    let len = bytes.len();
    bytes[len - 5] ^= 0x01;
    fs::write(sealed, &bytes).unwrap();
    let err = Store::open(dir.path(), small_segments(Durability::None))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&sealed.display().to_string()) && err.contains("seal"),
        "{err}"
    );
}

fn find_frames_until_seal(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut at = strata::log::format::SEGMENT_HEADER_BYTES;
    while &bytes[at..at + 4] == b"SBAT" {
        out.push(at as u64);
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        at += strata::log::format::FRAME_HEADER_BYTES + len;
    }
    assert_eq!(&bytes[at..at + 4], b"SEAL");
    out
}

#[test]
fn s4_event_data_that_looks_like_a_seal_does_not_seal_the_segment() {
    // Found in review: open used to trust any valid seal frame in the last
    // 36 bytes of the last segment, and event data comes last in a record.
    let dir = tempfile::tempdir().unwrap();
    let mut fake = Vec::new();
    strata::log::format::Seal {
        last_position: 1,
        body_crc: 0,
    }
    .encode_frame(&mut fake, 48);
    let mut data = b"{\"looks\":\"innocent\"}".to_vec();
    data.extend_from_slice(&fake);
    {
        let store = Store::open(dir.path(), Options::default()).unwrap();
        store
            .append(
                "a",
                ExpectedVersion::Any,
                vec![NewEvent::new("Tricky", data.clone())],
            )
            .unwrap();
        store.close().unwrap();
    }
    for read_only in [true, false] {
        let store = Store::open(
            dir.path(),
            Options {
                read_only,
                create_if_missing: !read_only,
                ..Options::default()
            },
        )
        .unwrap();
        assert_eq!(all(&store)[0].data, data);
        if !read_only {
            store
                .append("a", ExpectedVersion::Exact(1), vec![ev("X", 2)])
                .unwrap();
            assert_eq!(all(&store).len(), 2);
        }
    }
}

#[test]
fn s4_a_missing_first_segment_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), small_segments(Durability::None)).unwrap();
        for i in 0..50 {
            store
                .append("a", ExpectedVersion::Any, vec![ev("X", i)])
                .unwrap();
        }
        store.close().unwrap();
    }
    let segs = segment_files(dir.path());
    fs::remove_file(&segs[0]).unwrap();
    let err = Store::open(dir.path(), small_segments(Durability::None))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not 1: earlier segments are missing"), "{err}");
    assert!(err.contains(&segs[1].display().to_string()), "{err}");
}

#[test]
fn s5_index_deleted_and_rebuilt_equals_the_original() {
    let dir = tempfile::tempdir().unwrap();
    type Row = (i64, String, String, i64, String, String, i64, i64);
    let dump = |dir: &Path| -> Vec<Row> {
        let conn = rusqlite::Connection::open(dir.join("index.sqlite")).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT position, event_id, aggregate_id, version, event_type, timestamp, log_segment, log_offset
                 FROM events ORDER BY position",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    {
        let store = Store::open(dir.path(), small_segments(Durability::None)).unwrap();
        for i in 0..300u64 {
            store
                .append(
                    &format!("agg-{}", i % 13),
                    ExpectedVersion::Any,
                    vec![ev("X", i)],
                )
                .unwrap();
        }
        store.close().unwrap();
    }
    let before = dump(dir.path());
    assert_eq!(before.len(), 300);
    strata::index::remove_index_files(dir.path()).unwrap();
    let store = Store::open(dir.path(), small_segments(Durability::None)).unwrap();
    assert!(store.verify_index(10).unwrap().0.is_empty());
    store.close().unwrap();
    assert_eq!(dump(dir.path()), before);
}

#[test]
fn s5_verify_index_reports_disagreement() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Options::default()).unwrap();
        for i in 0..10 {
            store
                .append("a", ExpectedVersion::Any, vec![ev("X", i)])
                .unwrap();
        }
        store.close().unwrap();
    }
    let conn = rusqlite::Connection::open(dir.path().join("index.sqlite")).unwrap();
    conn.execute(
        "UPDATE event_rows SET event_type = 'Tampered' WHERE position = 4",
        [],
    )
    .unwrap();
    conn.execute("DELETE FROM event_rows WHERE position = 7", [])
        .unwrap();
    drop(conn);
    let store = Store::open_read_only(dir.path()).unwrap();
    let (problems, total) = store.verify_index(10).unwrap();
    assert_eq!(total, 3, "{problems:?}");
    assert!(problems[0].starts_with("position 4:") && problems[0].contains("Tampered"));
    assert!(problems[1].starts_with("position 7: in the log but not in the index"));
    // The run of position 7 now holds a row that is not there.
    assert!(problems[2].contains("aggregate runs: they cover 10 versions and 9 rows of 9"));
}

/// A read-only handle's reads combine an in-memory tail (the log after the
/// index's checkpoint when it last looked) with the index, read in one
/// snapshot. An index that goes back below that tail (deleted and being
/// rebuilt by a writer) would leave a hole between the two: the handle
/// reads the log for it instead. Rows past the checkpoint (another
/// process's view) are never damage to a reader, and rows past the
/// checkpoint are damage to `verify`.
#[test]
fn s5_a_read_only_handle_whose_index_goes_back_reads_the_log_for_the_hole() {
    let dir = tempfile::tempdir().unwrap();
    let mut ids = Vec::new();
    {
        let store = Store::open(dir.path(), small_segments(Durability::None)).unwrap();
        for i in 0..100 {
            let c = store
                .append("a", ExpectedVersion::Any, vec![ev("X", i)])
                .unwrap();
            ids.push(c[0].event_id);
        }
        store.close().unwrap();
    }
    let ro = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(ro.read_aggregate("a", 1, usize::MAX).unwrap().len(), 100);
    // The index as a rebuild halfway would leave it.
    let conn = rusqlite::Connection::open(dir.path().join("index.sqlite")).unwrap();
    conn.execute_batch(
        "DELETE FROM event_rows WHERE position > 50;
         DELETE FROM aggregate_runs WHERE first_position > 50;
         UPDATE strata_meta SET value = '50' WHERE key = 'indexed_position';",
    )
    .unwrap();
    let versions: Vec<u64> = ro
        .read_aggregate("a", 1, usize::MAX)
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(versions, (1..=100).collect::<Vec<u64>>());
    assert_eq!(ro.aggregate_version("a").unwrap(), 100);
    assert_eq!(ro.get(ids[70]).unwrap().unwrap().version, 71);
    assert!(ro.verify_index(10).unwrap().0.is_empty());
    // A row past the checkpoint is an index that lies.
    conn.execute_batch("UPDATE strata_meta SET value = '40' WHERE key = 'indexed_position';")
        .unwrap();
    let (problems, total) = ro.verify_index(10).unwrap();
    assert_eq!(total, 10, "{problems:?}");
    assert!(
        problems[0].contains("past its checkpoint 40"),
        "{problems:?}"
    );
}

#[test]
fn lock_second_writer_is_refused_naming_the_holder_and_readers_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    store
        .append("a", ExpectedVersion::Any, vec![ev("X", 1)])
        .unwrap();
    let err = Store::open(dir.path(), Options::default()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Locked { .. }), "{text}");
    assert!(
        text.contains(&format!("pid {}", std::process::id())),
        "{text}"
    );
    let ro = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(all(&ro).len(), 1);
    assert!(matches!(
        ro.append("a", ExpectedVersion::Any, vec![ev("X", 2)]),
        Err(Error::ReadOnly)
    ));
    drop(store);
    Store::open(dir.path(), Options::default()).unwrap();
}

#[test]
fn read_only_store_sees_events_the_index_has_not_caught_up_with() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    for i in 0..5 {
        store
            .append("a", ExpectedVersion::Any, vec![ev("X", i)])
            .unwrap();
    }
    store.close().unwrap();
    strata::index::remove_index_files(dir.path()).unwrap();
    let ro = Store::open_read_only(dir.path()).unwrap();
    assert!(
        !dir.path().join("index.sqlite").exists(),
        "read-only never writes"
    );
    assert_eq!(ro.read_aggregate("a", 2, 10).unwrap().len(), 4);
    assert_eq!(ro.aggregate_version("a").unwrap(), 5);
}

#[test]
fn subscribe_catches_up_then_follows_live_appends_across_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_segments(Durability::Sync)).unwrap();
    for i in 0..10 {
        store
            .append("a", ExpectedVersion::Any, vec![ev("X", i)])
            .unwrap();
    }
    let mut sub = store.subscribe(5);
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 10..200 {
                store
                    .append("a", ExpectedVersion::Any, vec![ev("X", i)])
                    .unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 196 {
        let e = sub
            .next_timeout(Duration::from_secs(10))
            .unwrap()
            .expect("an event within 10 s");
        seen.push(e.position);
    }
    writer.join().unwrap();
    assert_eq!(seen, (5..=200).collect::<Vec<_>>());
    assert!(segment_files(dir.path()).len() > 2);
    assert!(
        sub.next_timeout(Duration::from_millis(50))
            .unwrap()
            .is_none()
    );
    store.close().unwrap();
    assert!(
        sub.next().is_none(),
        "a subscription ends when the store closes"
    );
}

#[test]
fn limits_are_checked_at_the_boundary_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let long = "x".repeat(300);
    let err = store
        .append(&long, ExpectedVersion::Any, vec![ev("X", 1)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("aggregate_id is 300 bytes") && err.contains("aggregate_id_bytes_max"),
        "{err}"
    );
    let big = NewEvent::new("X", vec![b'x'; (1 << 20) + 1]);
    let err = store
        .append("a", ExpectedVersion::Any, vec![big])
        .unwrap_err()
        .to_string();
    assert!(err.contains("event_data"), "{err}");
    let err = store
        .append("a", ExpectedVersion::Any, vec![])
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least one event"), "{err}");
    let e = ev("X", 1);
    let err = store
        .append("a", ExpectedVersion::Any, vec![e.clone(), e])
        .unwrap_err()
        .to_string();
    assert!(err.contains("twice"), "{err}");
    assert_eq!(store.head(), 0);
    let bad = Options {
        segment_bytes_max: 10,
        ..Options::default()
    };
    let err = Store::open(dir.path().join("other"), bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("segment_bytes_max"), "{err}");
}

#[test]
fn h1_restart_with_a_clock_that_stepped_back_stays_monotonic() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(strata::ManualClock::new(1_000_000));
    let opts = || Options {
        clock: clock.clone(),
        ..Options::default()
    };
    {
        let store = Store::open(dir.path(), opts()).unwrap();
        store
            .append("a", ExpectedVersion::Any, vec![ev("X", 1)])
            .unwrap();
        store.close().unwrap();
    }
    clock.set(5_000); // the wall clock went back in time
    let store = Store::open(dir.path(), opts()).unwrap();
    store
        .append("a", ExpectedVersion::Any, vec![ev("X", 2)])
        .unwrap();
    let events = all(&store);
    assert!(events[1].timestamp > events[0].timestamp);
    assert_eq!(events[1].timestamp.physical_ms(), 1_000_000);
}

/// A store whose wall clock stands at `ms`.
fn open_at_manual_clock(dir: &std::path::Path, ms: u64) -> Store {
    Store::open(
        dir,
        Options {
            clock: Arc::new(strata::ManualClock::new(ms)),
            ..Options::default()
        },
    )
    .unwrap()
}

/// A batch's new events are stamped together once every check passed: a
/// batch refused for a conflict in a later group leaves the clock where it
/// was, and the stamps of one batch are consecutive.
#[test]
fn h1_a_refused_batch_leaves_the_clock_and_a_batch_is_stamped_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at_manual_clock(dir.path(), 1_000_000);
    store
        .append("a", ExpectedVersion::Any, vec![ev("X", 1)])
        .unwrap();
    let group = |agg: &str, expected, n: u64| AggregateEvents {
        aggregate_id: agg.into(),
        expected,
        events: (0..n).map(|i| ev("X", 10 * n + i)).collect(),
    };
    // `b` holds, then `a` conflicts: nothing is written.
    let err = store
        .append_batch(&[
            group("b", ExpectedVersion::Exact(0), 2),
            group("a", ExpectedVersion::Exact(5), 1),
        ])
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { current: 1, .. }), "{err}");
    store
        .append_batch(&[
            group("b", ExpectedVersion::Exact(0), 3),
            group("a", ExpectedVersion::Exact(1), 1),
        ])
        .unwrap();
    let stamps: Vec<(u64, u32)> = all(&store)
        .iter()
        .map(|e| (e.timestamp.physical_ms(), e.timestamp.counter()))
        .collect();
    assert_eq!(
        stamps,
        [
            (1_000_000, 0),
            (1_000_000, 1),
            (1_000_000, 2),
            (1_000_000, 3),
            (1_000_000, 4)
        ],
        "no tick lost to the refused batch, and one per event in order"
    );
}

/// A batch in which one event brings its own timestamp (a remote event,
/// ahead of the local clock within the drift bound) and the others are
/// local: each is stamped as it is checked, so the local event before the
/// given one is stamped from the wall clock, the given one is kept as it
/// came, and the local one after it passes it (H1). Its own refusal (a
/// given timestamp past the drift bound) writes nothing.
#[test]
fn h1_a_batch_with_a_given_timestamp_stamps_the_local_events_around_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_at_manual_clock(dir.path(), 1_000_000);
    let remote = strata::NodeId::new("remote").unwrap();
    let given = strata::Timestamp::new(1_000_500, 7, remote.clone()).unwrap();
    store
        .append(
            "a",
            ExpectedVersion::Any,
            vec![
                ev("X", 1),
                ev("X", 2).with_timestamp(given.clone()),
                ev("X", 3),
            ],
        )
        .unwrap();
    let events = all(&store);
    let stamps: Vec<(u64, u32)> = events
        .iter()
        .map(|e| (e.timestamp.physical_ms(), e.timestamp.counter()))
        .collect();
    // The given stamp goes through the clock's receive rule, which takes
    // a tick past it ((1_000_500, 8), `Hlc::observe`); the next local
    // stamp follows that tick.
    assert_eq!(
        stamps,
        [(1_000_000, 0), (1_000_500, 7), (1_000_500, 9)],
        "local, given, then local past the given one"
    );
    assert_eq!(events[1].timestamp, given, "the given stamp is kept whole");
    assert!(events[2].timestamp > events[1].timestamp);

    // Past the drift bound (60 s by default): refused, nothing written.
    let too_far = strata::Timestamp::new(1_000_000 + 3_600_000, 0, remote).unwrap();
    let err = store
        .append(
            "a",
            ExpectedVersion::Any,
            vec![ev("X", 4), ev("X", 5).with_timestamp(too_far)],
        )
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(store.head(), 3);
}

// --- S2: group commit and poisoning, through a file system that counts
// syncs and can be told to fail one.

#[derive(Debug, Default)]
struct CountingVfs {
    syncs: AtomicUsize,
    writes: AtomicUsize,
    fail_next_sync: std::sync::atomic::AtomicBool,
    slow_sync: Duration,
}

#[derive(Debug)]
struct CountingFile {
    inner: Arc<dyn VfsFile>,
    vfs: Arc<CountingVfs>,
}

#[derive(Debug, Clone)]
struct CountingVfsHandle(Arc<CountingVfs>);

impl Vfs for CountingVfsHandle {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn VfsFile>> {
        Ok(Arc::new(CountingFile {
            inner: OsVfs.open(path, mode)?,
            vfs: self.0.clone(),
        }))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        OsVfs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        OsVfs.remove_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        OsVfs.sync_dir(path)
    }
    fn list(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        OsVfs.list(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        OsVfs.create_dir_all(path)
    }
    fn exists(&self, path: &Path) -> bool {
        OsVfs.exists(path)
    }
}

impl VfsFile for CountingFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.vfs.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.vfs.syncs.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(self.vfs.slow_sync);
        if self.vfs.fail_next_sync.swap(false, Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn map(&self, len: u64) -> io::Result<Option<memmap2::Mmap>> {
        self.inner.map(len)
    }
}

/// A store on a file system that counts writes and syncs, each sync taking
/// `slow_sync` (so that concurrent appends meet in one).
fn store_counting_syncs(dir: &Path, slow_sync: Duration) -> (Store, Arc<CountingVfs>) {
    let vfs = Arc::new(CountingVfs {
        slow_sync,
        ..CountingVfs::default()
    });
    let store = Store::open(
        dir,
        Options {
            vfs: Arc::new(CountingVfsHandle(vfs.clone())),
            ..Options::default()
        },
    )
    .unwrap();
    (store, vfs)
}

#[test]
fn s2_concurrent_appends_share_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (store, vfs) = store_counting_syncs(dir.path(), Duration::from_millis(2));
    let before = vfs.syncs.load(Ordering::SeqCst);
    let threads = 16;
    let per_thread = 25;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..per_thread {
                    store
                        .append(&format!("t{t}"), ExpectedVersion::Any, vec![ev("X", i)])
                        .unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let appends = threads * per_thread as usize;
    let syncs = vfs.syncs.load(Ordering::SeqCst) - before;
    eprintln!("{appends} durable appends used {syncs} syncs");
    assert!(
        syncs * 3 <= appends,
        "group commit: {syncs} syncs for {appends} appends"
    );
    assert_eq!(store.head(), appends as u64);
}

/// Concurrent durable appends go through the commit queue: one thread
/// writes everything queued as one round (one write, one sync), and each
/// append still gets its own answer: a conflict on a hot aggregate fails
/// only the append that lost, whatever else its round held.
#[test]
fn s2_s6_concurrent_durable_appends_are_written_in_rounds_each_answered_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (store, vfs) = store_counting_syncs(dir.path(), Duration::from_millis(2));
    let (writes_before, syncs_before) = (
        vfs.writes.load(Ordering::SeqCst),
        vfs.syncs.load(Ordering::SeqCst),
    );
    let threads = 16;
    let per_thread = 25u64;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let (mut won, mut lost) = (Vec::new(), 0u64);
                for i in 0..per_thread {
                    if i % 2 == 0 {
                        let c = store
                            .append(&format!("t{t}"), ExpectedVersion::Any, vec![ev("X", i)])
                            .unwrap();
                        assert_eq!(c[0].version, i / 2 + 1, "t{t}'s own versions");
                        continue;
                    }
                    // Everyone races for the next version of "hot".
                    let seen = store.aggregate_version("hot").unwrap();
                    match store.append("hot", ExpectedVersion::Exact(seen), vec![ev("H", i)]) {
                        Ok(c) => {
                            assert_eq!(c[0].version, seen + 1);
                            won.push(c[0].version);
                        }
                        Err(Error::Conflict { current, .. }) => {
                            assert!(current > seen, "a conflict names a newer version");
                            lost += 1;
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                (won, lost)
            })
        })
        .collect();
    let mut hot_versions = Vec::new();
    let mut lost = 0;
    for h in handles {
        let (won, l) = h.join().unwrap();
        hot_versions.extend(won);
        lost += l;
    }
    hot_versions.sort_unstable();
    let hot = hot_versions.len() as u64;
    assert_eq!(
        hot_versions,
        (1..=hot).collect::<Vec<u64>>(),
        "every won version once"
    );
    assert_eq!(hot + lost, threads as u64 * (per_thread / 2));
    let appends = threads * (per_thread as usize / 2 + 1) + hot as usize;
    assert_eq!(store.head(), appends as u64);
    let writes = vfs.writes.load(Ordering::SeqCst) - writes_before;
    let syncs = vfs.syncs.load(Ordering::SeqCst) - syncs_before;
    eprintln!("{appends} durable appends: {writes} writes, {syncs} syncs");
    // Without the queue every append writes its own frame.
    assert!(
        writes * 2 <= appends,
        "rounds: {writes} writes for {appends} appends"
    );
    let events = all(&store);
    assert_gapless(&events);
    assert_eq!(
        store.read_aggregate("hot", 1, usize::MAX).unwrap().len() as u64,
        hot
    );
}

/// A round whose sync fails answers none of its appends as written: each
/// runs again alone and is refused (the log is poisoned), and none hangs.
#[test]
fn s2_a_failed_sync_fails_every_append_of_its_round_and_none_hangs() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = Arc::new(CountingVfs {
        slow_sync: Duration::from_millis(2),
        ..CountingVfs::default()
    });
    let opts = || Options {
        vfs: Arc::new(CountingVfsHandle(vfs.clone())),
        ..Options::default()
    };
    let store = Store::open(dir.path(), opts()).unwrap();
    let threads = 12;
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let mut acked = Vec::new();
                for i in 0.. {
                    match store.append(&format!("t{t}"), ExpectedVersion::Any, vec![ev("X", i)]) {
                        Ok(c) => acked.push(c[0].event_id),
                        Err(e) => {
                            let text = e.to_string();
                            assert!(
                                text.contains("injected fsync failure")
                                    || text.contains("refused until the store is reopened"),
                                "{text}"
                            );
                            return acked;
                        }
                    }
                }
                unreachable!()
            })
        })
        .collect();
    barrier.wait();
    std::thread::sleep(Duration::from_millis(50));
    vfs.fail_next_sync.store(true, Ordering::SeqCst);
    let acked: Vec<Uuid> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert!(!acked.is_empty());
    drop(store);
    let store = Store::open(dir.path(), opts()).unwrap();
    let ids: HashSet<Uuid> = all(&store).iter().map(|e| e.event_id).collect();
    assert!(
        acked.iter().all(|id| ids.contains(id)),
        "every acknowledged append survived"
    );
}

#[test]
fn s2_failed_sync_poisons_the_store_until_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let vfs = Arc::new(CountingVfs::default());
    let opts = || Options {
        vfs: Arc::new(CountingVfsHandle(vfs.clone())),
        ..Options::default()
    };
    let store = Store::open(dir.path(), opts()).unwrap();
    store
        .append("a", ExpectedVersion::Any, vec![ev("X", 1)])
        .unwrap();
    vfs.fail_next_sync.store(true, Ordering::SeqCst);
    let err = store
        .append("a", ExpectedVersion::Any, vec![ev("X", 2)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("injected fsync failure") && err.contains("reopened"),
        "{err}"
    );
    // The sync would succeed now, but a failed fsync is never retried as if
    // nothing happened.
    let err = store
        .append("a", ExpectedVersion::Any, vec![ev("X", 3)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("refused until the store is reopened"), "{err}");
    assert!(store.poisoned().is_some());
    assert_eq!(store.head(), 1, "the unsynced batch never became visible");
    drop(store);
    let store = Store::open(dir.path(), opts()).unwrap();
    // The batch whose sync failed may or may not have reached the disk; the
    // acknowledged one must be there, and writes work again.
    let events = all(&store);
    assert!(events.len() == 1 || events.len() == 2);
    assert_eq!(events[0].data, b"{\"value\":1}");
    store
        .append("a", ExpectedVersion::Any, vec![ev("X", 4)])
        .unwrap();
}

// --- Model-based property test: random appends, reads and reopens.

#[derive(Debug, Clone)]
enum Op {
    Append { agg: u8, n: u8, expect: u8 },
    Retry { nth: usize },
    Reopen,
    ReadAggregate { agg: u8, from: u8 },
    ReadAll { from: u16 },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 1u8..5, 0u8..4).prop_map(|(agg, n, expect)| Op::Append { agg, n, expect }),
        1 => any::<usize>().prop_map(|nth| Op::Retry { nth }),
        1 => Just(Op::Reopen),
        2 => (0u8..4, 0u8..6).prop_map(|(agg, from)| Op::ReadAggregate { agg, from }),
        1 => (0u16..80).prop_map(|from| Op::ReadAll { from }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn s1_s6_random_operations_match_an_in_memory_model(ops in proptest::collection::vec(arb_op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let opts = || small_segments(Durability::None);
        let mut store = Store::open(dir.path(), opts()).unwrap();
        let mut model: Vec<(Uuid, String, u64, Vec<u8>)> = Vec::new();
        let mut batches: Vec<(String, Vec<NewEvent>)> = Vec::new();
        for op in ops {
            match op {
                Op::Append { agg, n, expect } => {
                    let agg = format!("agg-{agg}");
                    let current = model.iter().filter(|m| m.1 == agg).count() as u64;
                    let expected = match expect {
                        0 => ExpectedVersion::Any,
                        1 => ExpectedVersion::Exact(current),
                        2 => ExpectedVersion::Exact(current + 1),
                        _ => ExpectedVersion::NoStream,
                    };
                    let events: Vec<_> = (0..n).map(|i| ev("T", model.len() as u64 + i as u64)).collect();
                    match store.append(&agg, expected, events.clone()) {
                        Ok(c) => {
                            prop_assert!(expected.admits(current));
                            for (i, e) in events.iter().enumerate() {
                                prop_assert_eq!(c[i].position, model.len() as u64 + 1);
                                prop_assert_eq!(c[i].version, current + i as u64 + 1);
                                model.push((e.event_id, agg.clone(), current + i as u64 + 1, e.data.clone()));
                            }
                            batches.push((agg, events));
                        }
                        Err(Error::Conflict { current: c, .. }) => {
                            prop_assert!(!expected.admits(current));
                            prop_assert_eq!(c, current);
                        }
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    }
                }
                Op::Retry { nth } => {
                    if batches.is_empty() { continue }
                    let (agg, events) = &batches[nth % batches.len()];
                    let c = store.append(agg, ExpectedVersion::Exact(0), events.clone()).unwrap();
                    prop_assert!(c.iter().all(|c| c.existed));
                }
                Op::Reopen => {
                    drop(store);
                    store = Store::open(dir.path(), opts()).unwrap();
                }
                Op::ReadAggregate { agg, from } => {
                    let agg = format!("agg-{agg}");
                    let got: Vec<_> = store.read_aggregate(&agg, from as u64, 100).unwrap()
                        .into_iter().map(|e| (e.event_id, e.version)).collect();
                    let want: Vec<_> = model.iter().filter(|m| m.1 == agg && m.2 >= from as u64)
                        .map(|m| (m.0, m.2)).collect();
                    prop_assert_eq!(got, want);
                }
                Op::ReadAll { from } => {
                    let got: Vec<_> = store.read_all(from as u64).map(|e| e.unwrap().event_id).collect();
                    let want: Vec<_> = model.iter().skip((from as usize).saturating_sub(1)).map(|m| m.0).collect();
                    prop_assert_eq!(got, want);
                }
            }
        }
        let events = all(&store);
        prop_assert_eq!(events.len(), model.len());
        for (e, m) in events.iter().zip(&model) {
            prop_assert_eq!((&e.event_id, &e.aggregate_id, e.version, &e.data), (&m.0, &m.1, m.2, &m.3));
        }
        prop_assert!(store.verify_index(5).unwrap().0.is_empty());
    }
}

/// Reads by aggregate go through the index's runs (an aggregate's
/// consecutive versions written back to back in one frame) and the tail
/// the indexer has not written yet. Whatever the shape of the batches
/// (several aggregates interleaved in one, runs split across frames and
/// segments) and of the read (a version inside a run, limits that cut
/// one, backward), the answer is the log's, before the indexer catches up,
/// after, and after a reopen; and `verify` finds the runs sound.
/// A batch: groups of (aggregate, number of events).
fn arb_batch() -> impl Strategy<Value = Vec<(u8, u8)>> {
    proptest::collection::vec((0u8..4, 1u8..40), 1..5)
}

fn check_reads(store: &Store, log: &[Event], reads: &[(u8, u64, usize, bool)]) {
    for &(agg, from, limit, backward) in reads {
        let agg = format!("agg-{agg}");
        let of_agg = log.iter().filter(|e| e.aggregate_id == agg);
        let (got, want): (Vec<Event>, Vec<Event>) = if backward {
            let mut want: Vec<Event> = of_agg.cloned().collect();
            want.reverse();
            want.truncate(limit);
            (store.read_aggregate_backward(&agg, limit).unwrap(), want)
        } else {
            let want: Vec<Event> = of_agg
                .filter(|e| e.version >= from)
                .take(limit)
                .cloned()
                .collect();
            // The borrowed read sees the same events.
            let mut seen = Vec::new();
            let n = store
                .visit_aggregate(&agg, from, limit, |e| {
                    seen.push((e.position, e.data.to_vec()))
                })
                .unwrap();
            assert_eq!(n as usize, seen.len());
            let want_seen: Vec<(u64, Vec<u8>)> =
                want.iter().map(|e| (e.position, e.data.clone())).collect();
            assert_eq!(seen, want_seen, "visit {agg} from {from} limit {limit}");
            (store.read_aggregate(&agg, from, limit).unwrap(), want)
        };
        assert_eq!(
            got, want,
            "{agg} from {from} limit {limit} backward {backward}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn s5_reads_by_aggregate_through_runs_and_tail_equal_the_log(
        batches in proptest::collection::vec(arb_batch(), 1..12),
        reads in proptest::collection::vec((0u8..4, 0u64..120, 0usize..150, any::<bool>()), 1..24),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let opts = || Options {
            // Small frames and segments: runs end at frame and segment
            // boundaries.
            segment_bytes_max: 16 << 10,
            ..small_segments(Durability::None)
        };
        let store = Store::open(dir.path(), opts()).unwrap();
        let mut n = 0u64;
        for batch in &batches {
            let groups: Vec<AggregateEvents> = batch
                .iter()
                .map(|(agg, count)| {
                    AggregateEvents {
                        aggregate_id: format!("agg-{agg}"),
                        expected: ExpectedVersion::Any,
                        events: (0..*count)
                            .map(|_| {
                                n += 1;
                                ev("X", n)
                            })
                            .collect(),
                    }
                })
                .collect();
            store.append_batch(&groups).unwrap();
            // Read with part of the log still in the tail.
            check_reads(&store, &all(&store), &reads[..reads.len().min(3)]);
        }
        let log = all(&store);
        check_reads(&store, &log, &reads);
        store.flush_index().unwrap();
        check_reads(&store, &log, &reads);
        let (problems, _) = store.verify_index(10).unwrap();
        prop_assert!(problems.is_empty(), "{problems:?}");
        store.close().unwrap();
        let store = Store::open(dir.path(), opts()).unwrap();
        check_reads(&store, &log, &reads);
        store.close().unwrap();
        let ro = Store::open_read_only(dir.path()).unwrap();
        check_reads(&ro, &log, &reads);
    }
}

/// The runs are checked too: a run that claims a version it does not
/// hold, or that overlaps another, is reported by `verify`.
#[test]
fn s5_verify_index_reports_runs_that_disagree() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path(), Options::default()).unwrap();
        for agg in ["a", "b"] {
            store
                .append(
                    agg,
                    ExpectedVersion::Any,
                    (0..5).map(|i| ev("X", i)).collect(),
                )
                .unwrap();
        }
        store.close().unwrap();
    }
    let conn = rusqlite::Connection::open(dir.path().join("index.sqlite")).unwrap();
    let runs: i64 = conn
        .query_row("SELECT count(*) FROM aggregate_runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(runs, 2, "one run per aggregate: each append is one frame");
    let verify = || {
        let store = Store::open_read_only(dir.path()).unwrap();
        store.verify_index(10).unwrap().0
    };
    assert!(verify().is_empty(), "{:?}", verify());
    // b's run now starts at a's first event.
    conn.execute(
        "UPDATE aggregate_runs SET first_position = 1 WHERE aggregate_id = 'b'",
        [],
    )
    .unwrap();
    let problems = verify();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("not the aggregate and version their run says")),
        "{problems:?}"
    );
    conn.execute(
        "UPDATE aggregate_runs SET first_position = 6 WHERE aggregate_id = 'b'",
        [],
    )
    .unwrap();
    assert!(verify().is_empty());
    // a's run claims a version too many: it overlaps nothing but covers
    // b's first row as its own.
    conn.execute(
        "UPDATE aggregate_runs SET last_version = 6 WHERE aggregate_id = 'a'",
        [],
    )
    .unwrap();
    let problems = verify();
    assert!(!problems.is_empty(), "{problems:?}");
    conn.execute_batch(
        "UPDATE aggregate_runs SET last_version = 5 WHERE aggregate_id = 'a';
         INSERT INTO aggregate_runs VALUES ('a', 3, 4, 3, 1, 0);",
    )
    .unwrap();
    let problems = verify();
    assert!(
        problems.iter().any(|p| p.contains("overlap another run")),
        "{problems:?}"
    );
    // A run that points at another aggregate's records, whole: a read
    // refuses it instead of answering a's events as b's.
    conn.execute_batch(
        "DELETE FROM aggregate_runs WHERE first_version = 3;
         UPDATE aggregate_runs SET (first_position, log_segment, log_offset) =
           (SELECT first_position, log_segment, log_offset FROM aggregate_runs WHERE aggregate_id = 'a')
         WHERE aggregate_id = 'b';",
    )
    .unwrap();
    let store = Store::open_read_only(dir.path()).unwrap();
    let err = store
        .read_aggregate("b", 1, usize::MAX)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the index expected version 1 of \"b\"") && err.contains("strata reindex"),
        "{err}"
    );
}
