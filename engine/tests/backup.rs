//! Backups of a live store (issue 18, `strata::backup`): a copy made beside
//! writers is a store whose log is the source's prefix, checks clean, and
//! opens read-write; a second backup into the same directory copies only
//! what it lacks; sealed segments can be hard-linked; a backup cut short is
//! refused until it is completed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use strata::backup::{BackupOptions, backup};
use strata::log::inspect::verify_log;
use strata::{
    AggregateEvents, Durability, Error, Event, ExpectedVersion, NewEvent, Options, Store,
};

/// Small segments, so that a backup meets many sealed ones and an active
/// one that grows while it copies.
const SEGMENT_BYTES: u64 = 64 << 10;

fn options() -> Options {
    Options {
        segment_bytes_max: SEGMENT_BYTES,
        durability: Durability::Sync,
        ..Options::default()
    }
}

fn append(store: &Store, aggregate: &str, n: usize) {
    let events = (0..n)
        .map(|i| {
            NewEvent::new(
                "Happened",
                format!(r#"{{"i":{i},"pad":"{}"}}"#, "x".repeat(100)).into_bytes(),
            )
        })
        .collect();
    store
        .append_batch(&[AggregateEvents {
            aggregate_id: aggregate.into(),
            expected: ExpectedVersion::Any,
            events,
        }])
        .unwrap();
}

fn all(store: &Store) -> Vec<Event> {
    store.read_all(1).map(Result::unwrap).collect()
}

/// DEST opens read-write, its log and index check clean, and it holds
/// exactly the first `head` events of the source.
fn assert_is_prefix_store(dest: &Path, source: &[Event]) -> u64 {
    let report = verify_log(dest).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let copy = Store::open(dest, options()).unwrap();
    let (problems, _) = copy.verify_index(10).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    let events = all(&copy);
    let head = copy.head();
    assert_eq!(events.len() as u64, head);
    assert_eq!(
        &events[..],
        &source[..head as usize],
        "the backup is the source's prefix"
    );
    // It is a store: it takes appends.
    append(&copy, "after-restore", 1);
    assert_eq!(copy.head(), head + 1);
    copy.close().unwrap();
    head
}

#[test]
fn a_backup_beside_four_appending_threads_is_the_sources_prefix_and_checks_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    let store = Arc::new(Store::open(&src, options()).unwrap());
    // A few segments' worth before the backup starts.
    for k in 0..20 {
        append(&store, &format!("warm-{k}"), 50);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|t| {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut batches = 0;
                while !stop.load(Ordering::Relaxed) {
                    append(&store, &format!("writer-{t}"), 5);
                    batches += 1;
                }
                batches
            })
        })
        .collect();
    let durable_at_start = store.head();
    let report = backup(&src, &dest, &BackupOptions::default()).unwrap();
    stop.store(true, Ordering::Relaxed);
    let batches: u32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(batches > 0, "the writers ran");
    assert!(
        report.head >= durable_at_start,
        "{report:?} < {durable_at_start}"
    );
    assert!(report.segments_copied > 1, "{report:?}");
    assert!(
        report.snapshots.iter().any(|s| s == "index.sqlite"),
        "{report:?}"
    );
    let source = all(&store);
    assert!(
        source.len() as u64 > report.head,
        "appends went on during the backup"
    );
    let head = assert_is_prefix_store(&dest, &source);
    assert_eq!(head, report.head);
}

#[test]
fn a_second_backup_copies_only_what_dest_lacks_and_link_shares_sealed_segments() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    let store = Store::open(&src, options()).unwrap();
    for k in 0..20 {
        append(&store, &format!("a-{k}"), 20);
    }
    let first = backup(&src, &dest, &BackupOptions::default()).unwrap();
    append(&store, "more", 20);
    let second = backup(&src, &dest, &BackupOptions::default()).unwrap();
    assert!(
        second.segments_kept >= first.segments_copied - 1,
        "sealed segments are kept: {first:?} then {second:?}"
    );
    assert!(
        second.log_bytes_copied < first.log_bytes_copied / 2,
        "{first:?} then {second:?}"
    );
    assert_is_prefix_store(&dest, &all(&store));

    let linked = tmp.path().join("linked");
    let report = backup(
        &src,
        &linked,
        &BackupOptions {
            link: true,
            ..BackupOptions::default()
        },
    )
    .unwrap();
    assert!(report.segments_linked > 0, "{report:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let log = |d: &Path| d.join("log");
        let shared = std::fs::read_dir(log(&linked))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| {
                let other = log(&src).join(e.file_name());
                other.exists()
                    && e.metadata().unwrap().ino() == std::fs::metadata(other).unwrap().ino()
            })
            .count();
        assert_eq!(shared as u64, report.segments_linked);
    }
    assert_is_prefix_store(&linked, &all(&store));
}

#[test]
fn a_backup_cut_short_is_refused_until_it_is_completed() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    let store = Store::open(&src, options()).unwrap();
    append(&store, "a", 50);
    backup(&src, &dest, &BackupOptions::default()).unwrap();
    // What a backup killed midway leaves: its marker.
    std::fs::write(dest.join(strata::BACKUP_INCOMPLETE_FILE), b"").unwrap();
    let err = Store::open(&dest, options()).unwrap_err();
    assert!(matches!(err, Error::BackupIncomplete { .. }), "{err}");
    assert!(err.to_string().contains("run the backup again"), "{err}");
    assert!(Store::open_read_only(&dest).is_err());
    backup(&src, &dest, &BackupOptions::default()).unwrap();
    assert_is_prefix_store(&dest, &all(&store));
}

/// A repair that rewrote the source's history between two backups (cut
/// after position 100, then other events appended) must not leave DEST
/// with the old history's segments taken for a prefix of the new one.
#[test]
fn a_backup_after_a_repair_rewrote_the_history_copies_the_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dest) = (tmp.path().join("src"), tmp.path().join("dest"));
    let store = Store::open(&src, options()).unwrap();
    for k in 0..20 {
        append(&store, &format!("old-{k}"), 20);
    }
    store.close().unwrap();
    backup(&src, &dest, &BackupOptions::default()).unwrap();
    let (_, plan) = strata::log::repair::plan(&src, Some(100)).unwrap();
    strata::log::repair::apply(&src, &plan).unwrap();
    let store = Store::open(&src, options()).unwrap();
    assert_eq!(store.head(), 100);
    for k in 0..20 {
        append(&store, &format!("new-{k}"), 20);
    }
    backup(&src, &dest, &BackupOptions::default()).unwrap();
    let source = all(&store);
    assert_eq!(assert_is_prefix_store(&dest, &source), source.len() as u64);
}
