//! The continuous archive (issue 18): an archive taken while writers
//! append restores to a store that checks clean and holds the source's
//! prefix; sealed segments end up as one verified object each; failures
//! are retried without stopping appends; a damaged or foreign archive is
//! refused with a reason.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata::log::inspect::verify_log;
use strata::{AggregateEvents, Durability, Event, ExpectedVersion, NewEvent, Options, Store};
use strata_archive::target::{self, LocalDir, Target};
use strata_archive::{
    ArchiveError, ArchiveOptions, Archiver, MANIFEST_KEY, Manifest, RestoreOptions, restore,
};

/// Small segments: an archive meets many sealed ones, and an active one
/// that grows between steps.
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

/// The restored directory checks clean, opens read-write (its index
/// rebuilt from the log), and holds exactly the first `head` events of
/// `source`.
fn assert_restored_prefix(dest: &Path, source: &[Event], head: u64) {
    let report = verify_log(dest).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let store = Store::open(dest, options()).unwrap();
    let (problems, _) = store.verify_index(10).unwrap();
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(store.head(), head);
    assert_eq!(all(&store), source[..head as usize]);
    store.close().unwrap();
}

#[test]
fn an_archive_taken_while_four_threads_append_restores_their_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let store = Store::open(&src, options()).unwrap();
    append(&store, "seed", 50);
    let archive = dir.path().join("archive");
    let target = target::open(archive.to_str().unwrap()).unwrap();
    let mut archiver = Archiver::new(store.clone(), target.clone()).unwrap();

    let stop = AtomicBool::new(false);
    let mut heads = Vec::new();
    std::thread::scope(|s| {
        for w in 0..4 {
            let (store, stop) = (&store, &stop);
            s.spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && i < 400 {
                    append(store, &format!("writer-{w}"), 1 + i % 7);
                    i += 1;
                }
            });
        }
        // Steps while they append: each archives at least the head it saw.
        for _ in 0..20 {
            let before = store.head();
            let head = archiver.step().unwrap();
            assert!(
                head >= before,
                "archived {head} < head {before} at the start"
            );
            heads.push(head);
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert!(heads.windows(2).all(|w| w[0] <= w[1]), "{heads:?}");
    assert!(
        heads.first() < heads.last(),
        "the archive never moved: {heads:?}"
    );

    // A restore of this moment holds at least what the last step saw.
    let mid = dir.path().join("mid");
    let report = restore(&*target, &mid, &RestoreOptions::default()).unwrap();
    assert!(report.head >= *heads.last().unwrap());
    let source = all(&store);
    assert_restored_prefix(&mid, &source, report.head);

    // Caught up: the archive is the whole log.
    let head = archiver.step().unwrap();
    assert_eq!(head, store.head());
    let manifest = Manifest::load(&*target).unwrap().unwrap();
    assert_eq!(manifest.head, head);
    assert!(manifest.segments.len() > 3, "{:?}", manifest.segments.len());
    // Every sealed segment is one object, its chunks gone; only the
    // active one is in chunks.
    let (sealed, active) = manifest.segments.split_at(manifest.segments.len() - 1);
    assert!(sealed.iter().all(|s| s.sealed && s.whole_crc32.is_some()));
    assert!(!active[0].sealed && active[0].whole_crc32.is_none());
    for s in sealed {
        let chunks = target.list(&format!("log/0/{}.", s.name)).unwrap();
        assert!(chunks.is_empty(), "{} kept chunks {chunks:?}", s.name);
    }
    let full = dir.path().join("full");
    let report = restore(&*target, &full, &RestoreOptions::default()).unwrap();
    assert_eq!((report.head, report.archived_head), (head, head));
    assert_eq!(report.store_id, store.store_id().to_string());
    assert_restored_prefix(&full, &source, head);
    store.close().unwrap();
}

/// A real directory that fails every call while `failing` is set, and
/// corrupts what it stores while `corrupting` is set: the faults of a
/// network disk or an object store.
#[derive(Debug)]
struct Faulty {
    inner: LocalDir,
    failing: AtomicBool,
    corrupting: AtomicBool,
    calls: Mutex<u64>,
}

impl Faulty {
    fn new(dir: &Path) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner: LocalDir::new(dir.to_path_buf(), "faulty"),
            failing: AtomicBool::new(false),
            corrupting: AtomicBool::new(false),
            calls: Mutex::new(0),
        })
    }

    fn check(&self) -> io::Result<()> {
        *self.calls.lock().unwrap() += 1;
        if self.failing.load(Ordering::Relaxed) {
            return Err(io::Error::other("the archive is unreachable (test)"));
        }
        Ok(())
    }
}

impl Target for Faulty {
    fn put(&self, key: &str, bytes: &[u8]) -> io::Result<()> {
        self.check()?;
        let mut bytes = bytes.to_vec();
        if self.corrupting.load(Ordering::Relaxed) && key != MANIFEST_KEY {
            let last = bytes.len() - 1;
            bytes[last] ^= 0x40;
        }
        self.inner.put(key, &bytes)
    }
    fn get(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        self.check()?;
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.check()?;
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        self.check()?;
        self.inner.delete(key)
    }
    fn url(&self) -> &str {
        self.inner.url()
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn appends_go_on_while_the_archive_fails_and_it_catches_up_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("src"), options()).unwrap();
    let faulty = Faulty::new(&dir.path().join("archive"));
    let archiver = Archiver::new(store.clone(), faulty.clone()).unwrap();
    let handle = strata_archive::spawn(
        archiver,
        ArchiveOptions {
            interval: Duration::from_millis(20),
            retry_min: Duration::from_millis(5),
            retry_max: Duration::from_millis(40),
        },
        "test-archive".into(),
    )
    .unwrap();
    let status = handle.status().clone();
    append(&store, "a", 10);
    wait_until("the archive holds the first events", || status.head() == 10);

    faulty.failing.store(true, Ordering::Relaxed);
    let calls = *faulty.calls.lock().unwrap();
    // Appends are never held up by the archive: 300 batches land while
    // every archive call fails.
    for i in 0..300 {
        append(&store, "a", 1 + i % 5);
    }
    wait_until("steps failed and were retried", || {
        status.failures.load(Ordering::Relaxed) >= 3 && *faulty.calls.lock().unwrap() > calls + 3
    });
    assert_eq!(
        status.head(),
        10,
        "nothing is recorded while the target fails"
    );
    let error = status.last_error().expect("the failure is reported");
    assert!(error.contains("unreachable"), "{error}");

    faulty.failing.store(false, Ordering::Relaxed);
    let head = store.head();
    wait_until("the archive caught up", || status.head() == head);
    assert_eq!(status.last_error(), None);
    append(&store, "a", 3);
    // A clean stop archives the last events too.
    assert_eq!(handle.stop().unwrap(), head + 3);
    let out = dir.path().join("restored");
    let report = restore(&*faulty, &out, &RestoreOptions::default()).unwrap();
    assert_eq!(report.head, head + 3);
    assert_restored_prefix(&out, &all(&store), head + 3);
    store.close().unwrap();
}

#[test]
fn an_upload_that_does_not_read_back_intact_is_an_error_and_is_redone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("src"), options()).unwrap();
    append(&store, "a", 20);
    let faulty = Faulty::new(&dir.path().join("archive"));
    let mut archiver = Archiver::new(store.clone(), faulty.clone()).unwrap();
    faulty.corrupting.store(true, Ordering::Relaxed);
    let e = archiver.step().unwrap_err();
    assert!(
        matches!(
            &e,
            ArchiveError::Corrupt {
                what: "uploaded",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("CRC-32"), "{e}");
    assert!(
        Manifest::load(&*faulty).unwrap().is_none(),
        "recorded a bad upload"
    );
    faulty.corrupting.store(false, Ordering::Relaxed);
    assert_eq!(archiver.step().unwrap(), 20);
    store.close().unwrap();
}

#[test]
fn a_damaged_or_missing_archive_object_fails_the_restore_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("src"), options()).unwrap();
    for _ in 0..50 {
        append(&store, "a", 10);
    }
    let archive = dir.path().join("archive");
    let target = target::open(archive.to_str().unwrap()).unwrap();
    Archiver::new(store.clone(), target.clone())
        .unwrap()
        .step()
        .unwrap();
    let manifest = Manifest::load(&*target).unwrap().unwrap();
    let sealed = &manifest.segments[0];
    let key = format!("log/0/{}", sealed.name);
    let mut bytes = target.get(&key).unwrap().unwrap();
    bytes[100] ^= 1;
    target.put(&key, &bytes).unwrap();
    let e = restore(&*target, &dir.path().join("r1"), &RestoreOptions::default()).unwrap_err();
    assert!(
        matches!(&e, ArchiveError::Corrupt { key: k, .. } if *k == key),
        "{e}"
    );
    // The half-written destination is refused as a store, and a restore
    // into it again (once the archive is mended) completes it.
    let e = Store::open(dir.path().join("r1"), options()).unwrap_err();
    assert!(e.to_string().contains("BACKUP-INCOMPLETE"), "{e}");
    bytes[100] ^= 1;
    target.put(&key, &bytes).unwrap();
    restore(&*target, &dir.path().join("r1"), &RestoreOptions::default()).unwrap();

    // The active segment's chunks: one missing is named by its offset.
    let active = manifest.segments.last().unwrap();
    let chunks = target.list(&format!("log/0/{}.", active.name)).unwrap();
    target.delete(&chunks[0]).unwrap();
    let e = restore(&*target, &dir.path().join("r2"), &RestoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no chunk starts at byte 0"), "{e}");

    // Not empty, not an archive, not this store's: each says so.
    let e = restore(
        &*target,
        &dir.path().join("src"),
        &RestoreOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ArchiveError::DestNotEmpty { .. }), "{e}");
    let empty = target::open(dir.path().join("nothing").to_str().unwrap()).unwrap();
    let e = restore(&*empty, &dir.path().join("r3"), &RestoreOptions::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::NoArchive { .. }), "{e}");
    let other = Store::open(dir.path().join("other"), options()).unwrap();
    let e = Archiver::new(other.clone(), target.clone())
        .unwrap()
        .step()
        .unwrap_err();
    assert!(matches!(e, ArchiveError::OtherStore { .. }), "{e}");
    other.close().unwrap();
    store.close().unwrap();
}

#[test]
fn a_log_whose_history_a_repair_rewrote_is_archived_again_under_its_generation() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let store = Store::open(&src, options()).unwrap();
    append(&store, "a", 30);
    let archive = dir.path().join("archive");
    let target = target::open(archive.to_str().unwrap()).unwrap();
    Archiver::new(store.clone(), target.clone())
        .unwrap()
        .step()
        .unwrap();
    store.close().unwrap();
    // What `strata repair` does when it rewrites history: a new
    // generation (the log itself is unchanged here; what matters is that
    // the archive no longer treats its old objects as this history's).
    std::fs::write(src.join("log").join("GENERATION"), "1\n").unwrap();
    let store = Store::open(&src, options()).unwrap();
    append(&store, "a", 5);
    let head = Archiver::new(store.clone(), target.clone())
        .unwrap()
        .step()
        .unwrap();
    assert_eq!(head, 35);
    let manifest = Manifest::load(&*target).unwrap().unwrap();
    assert_eq!(manifest.generation, 1);
    assert!(!target.list("log/1/").unwrap().is_empty());
    assert!(
        !target.list("log/0/").unwrap().is_empty(),
        "the old history is kept"
    );
    let out = dir.path().join("restored");
    let report = restore(&*target, &out, &RestoreOptions::default()).unwrap();
    assert_eq!((report.head, report.generation), (35, 1));
    assert_eq!(
        std::fs::read_to_string(out.join("log").join("GENERATION")).unwrap(),
        "1\n"
    );
    assert_restored_prefix(&out, &all(&store), 35);
    store.close().unwrap();
}

#[test]
fn an_archive_in_an_object_store_restores_as_one_in_a_directory_does() {
    use object_store::memory::InMemory;
    use object_store::path::Path as ObjectPath;
    use strata_archive::target::ObjectStoreTarget;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("src"), options()).unwrap();
    let target: Arc<dyn Target> = Arc::new(
        ObjectStoreTarget::new(
            Arc::new(InMemory::new()),
            ObjectPath::from("archives/src"),
            "memory:///archives/src",
        )
        .unwrap(),
    );
    let mut archiver = Archiver::new(store.clone(), target.clone()).unwrap();
    for round in 0..40 {
        append(&store, "a", 5 + round % 11);
        archiver.step().unwrap();
    }
    let out = dir.path().join("restored");
    let report = restore(&*target, &out, &RestoreOptions::default()).unwrap();
    assert_eq!(report.head, store.head());
    assert!(report.segments > 1);
    assert_restored_prefix(&out, &all(&store), store.head());
    store.close().unwrap();
}

#[test]
fn a_log_that_went_back_is_refused_rather_than_mixed_into_its_archive() {
    let dir = tempfile::tempdir().unwrap();
    let (src, older) = (dir.path().join("src"), dir.path().join("older"));
    let store = Store::open(&src, options()).unwrap();
    append(&store, "a", 20);
    strata::backup::backup(&src, &older, &strata::backup::BackupOptions::default()).unwrap();
    append(&store, "a", 20);
    let target = target::open(dir.path().join("archive").to_str().unwrap()).unwrap();
    Archiver::new(store.clone(), target.clone())
        .unwrap()
        .step()
        .unwrap();
    store.close().unwrap();

    // The store is replaced by its older copy: behind the archive.
    let copy = Store::open(&older, options()).unwrap();
    let e = Archiver::new(copy.clone(), target.clone())
        .unwrap()
        .step()
        .unwrap_err();
    assert!(matches!(e, ArchiveError::Diverged { .. }), "{e}");
    assert!(
        e.to_string().contains("up to 40, the log ends at 20"),
        "{e}"
    );
    // Grown past the archive with other events: as long, but not the
    // same bytes.
    append(&copy, "b", 30);
    let e = Archiver::new(copy.clone(), target.clone())
        .unwrap()
        .step()
        .unwrap_err();
    assert!(matches!(e, ArchiveError::Diverged { .. }), "{e}");
    assert!(
        e.to_string().contains("differ from the archived ones"),
        "{e}"
    );
    // The archive is as it was: it restores the original 40 events.
    let out = dir.path().join("restored");
    assert_eq!(
        restore(&*target, &out, &RestoreOptions::default())
            .unwrap()
            .head,
        40
    );
    copy.close().unwrap();
}

#[test]
fn a_second_archiver_at_the_same_location_is_refused_not_interleaved() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("src"), options()).unwrap();
    let target = target::open(dir.path().join("archive").to_str().unwrap()).unwrap();
    let mut first = Archiver::new(store.clone(), target.clone()).unwrap();
    let mut second = Archiver::new(store.clone(), target.clone()).unwrap();
    append(&store, "a", 5);
    assert_eq!(first.step().unwrap(), 5);
    append(&store, "a", 5);
    assert_eq!(second.step().unwrap(), 10);
    append(&store, "a", 5);
    let e = first.step().unwrap_err();
    assert!(matches!(e, ArchiveError::Contended { .. }), "{e}");
    assert!(first.step().is_err(), "it stays refused");
    assert_eq!(Manifest::load(&*target).unwrap().unwrap().head, 10);
    store.close().unwrap();
}

#[test]
fn chunks_a_cut_short_step_left_beyond_the_record_are_deleted_when_it_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("src"), options()).unwrap();
    append(&store, "a", 5);
    let target = target::open(dir.path().join("archive").to_str().unwrap()).unwrap();
    Archiver::new(store.clone(), target.clone())
        .unwrap()
        .step()
        .unwrap();
    let m = Manifest::load(&*target).unwrap().unwrap();
    let active = m.segments.last().unwrap();
    // A chunk uploaded past the record by a step that died before it
    // wrote the record (its bytes are not the log's: they never count).
    let stray = strata_archive::chunk_key(0, &active.name, active.len, active.len + 9, 7);
    target.put(&stray, b"123456789").unwrap();
    append(&store, "a", 5);
    let mut next = Archiver::new(store.clone(), target.clone()).unwrap();
    assert_eq!(next.step().unwrap(), 10);
    assert_eq!(target.get(&stray).unwrap(), None, "the stray chunk is gone");
    let out = dir.path().join("restored");
    assert_eq!(
        restore(&*target, &out, &RestoreOptions::default())
            .unwrap()
            .head,
        10
    );
    store.close().unwrap();
}

#[test]
fn a_segment_written_a_little_at_every_step_keeps_few_chunks() {
    use strata_archive::CHUNK_MERGE_FANOUT;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path().join("src"),
        Options {
            segment_bytes_max: 16 << 20,
            ..options()
        },
    )
    .unwrap();
    let target = target::open(dir.path().join("archive").to_str().unwrap()).unwrap();
    let mut archiver = Archiver::new(store.clone(), target.clone()).unwrap();
    let steps = CHUNK_MERGE_FANOUT * CHUNK_MERGE_FANOUT + 5;
    let mut most = 0;
    for i in 0..steps {
        append(&store, "a", 1);
        archiver.step().unwrap();
        if i % 37 == 0 {
            // A new archiver (a restart) picks up the chain from the target.
            archiver = Archiver::new(store.clone(), target.clone()).unwrap();
        }
        most = most.max(target.list("log/0/").unwrap().len());
    }
    // One chunk per step would be 261; base-16 merging keeps at most 15 a
    // level, two levels here (plus the one a restart may not merge yet).
    assert!(most <= 2 * CHUNK_MERGE_FANOUT, "{most} chunks at once");
    let out = dir.path().join("restored");
    let report = restore(&*target, &out, &RestoreOptions::default()).unwrap();
    assert_eq!(report.head, steps as u64);
    assert!(
        report.objects <= 2 * CHUNK_MERGE_FANOUT as u64,
        "{report:?}"
    );
    assert_restored_prefix(&out, &all(&store), steps as u64);
    store.close().unwrap();
}
