//! Readers beside a running writer (issue 11). A read-only handle's view of
//! the log was fixed at open while its index queries read the live
//! `index.sqlite`, which the writer keeps extending: aggregate reads failed
//! with "position N is not visible yet ... run strata verify", calling a
//! healthy store damaged. Now every read of a handle answers from one view
//! (whole batches, up to a head it knows) and `Store::refresh` moves it.
//!
//! Long-lived read-only handles read the pairs workload (each batch writes
//! the same number of events to three aggregates, atomically) while a
//! writer appends for several seconds, in the writer's own process and in
//! another one; the CLI's reading commands run beside the other process.
//! `STRATA_READERS_MS` sets how long the writer runs (default 3,000 ms).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use strata::Store;
use strata_tests::{
    PAIR_AGGREGATES, PAIR_EVENTS, Seen, append_pairs, check_pairs_view, pairs_writer_options,
    strata_cli,
};

fn writer_ms() -> u64 {
    std::env::var("STRATA_READERS_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

/// What one long-lived reader did.
#[derive(Debug, Default)]
struct ReaderLog {
    checks: u64,
    /// Refreshes that moved the head.
    moves: u64,
    last: Option<(u64, u64)>,
}

/// Opens one read-only handle and keeps it until `stop`: checks the view
/// (several reads, one view), and every few checks refreshes it, which
/// must never move the head back.
fn long_lived_reader(dir: &std::path::Path, stop: &AtomicBool) -> ReaderLog {
    let store = Store::open_read_only(dir).unwrap();
    let mut log = ReaderLog::default();
    let mut head = store.head();
    while !stop.load(Ordering::Relaxed) {
        let Seen { head: h, version } = check_pairs_view(&store);
        assert_eq!(h, head, "the head moved without a refresh");
        log.checks += 1;
        log.last = Some((h, version));
        if log.checks % 3 == 0 {
            let new_head = store.refresh().unwrap();
            assert!(new_head >= head, "refresh moved the head back");
            if new_head > head {
                log.moves += 1;
            }
            head = new_head;
        }
    }
    // Once the writer has stopped, a refresh shows everything.
    if store.refresh().unwrap() > head {
        log.moves += 1;
    }
    log.last = Some({
        let seen = check_pairs_view(&store);
        (seen.head, seen.version)
    });
    log
}

/// A read-only handle's subscription follows the log by itself: every
/// position once, in order, up to `until` (a head the writer reached).
fn follow_to(store: &Store, until: u64, deadline: Duration) {
    let mut sub = store.subscribe(1);
    let start = Instant::now();
    let mut next = 1;
    while next <= until {
        assert!(
            start.elapsed() < deadline,
            "the subscription stopped at {next}, short of {until}"
        );
        if let Some(e) = sub.next_timeout(Duration::from_millis(200)).unwrap() {
            assert_eq!(e.position, next);
            next += 1;
        }
    }
}

fn assert_readers(logs: &[ReaderLog], final_head: u64, batches: u64) {
    for (i, log) in logs.iter().enumerate() {
        assert!(
            log.checks >= 3,
            "reader {i} checked only {} times",
            log.checks
        );
        assert!(
            log.moves >= 1,
            "reader {i} never saw a newer append after {} checks",
            log.checks
        );
        assert_eq!(
            log.last,
            Some((final_head, batches * PAIR_EVENTS)),
            "reader {i} after the writer stopped"
        );
    }
}

#[test]
fn read_only_handles_beside_a_writer_in_the_same_process_see_whole_batches_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), pairs_writer_options()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (store, stop) = (store.clone(), stop.clone());
        thread::spawn(move || append_pairs(&store, &stop))
    };
    // Readers opened at different moments, each kept to the end.
    let readers: Vec<_> = (0..3)
        .map(|i| {
            let (dir, stop) = (dir.path().to_path_buf(), stop.clone());
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(100 * i));
                long_lived_reader(&dir, &stop)
            })
        })
        .collect();
    let follower = Store::open_read_only(dir.path()).unwrap();
    thread::sleep(Duration::from_millis(writer_ms()));
    stop.store(true, Ordering::Relaxed);
    let batches = writer.join().unwrap();
    let final_head = store.head();
    assert_eq!(
        final_head,
        batches * PAIR_EVENTS * PAIR_AGGREGATES.len() as u64
    );
    let logs: Vec<ReaderLog> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_readers(&logs, final_head, batches);
    follow_to(&follower, final_head, Duration::from_secs(60));
    store.close().unwrap();
}

/// A writer in a child process; readers here; the CLI's reading commands
/// (processes of their own) beside it.
#[test]
fn read_only_handles_and_cli_reads_beside_a_writer_in_another_process_see_whole_batches_only() {
    let dir = tempfile::tempdir().unwrap();
    let cli = strata_cli();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pair_writer"))
        .arg(dir.path())
        .arg(writer_ms().to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first batches, so readers have something to open.
    let opened = Instant::now();
    loop {
        if let Ok(store) = Store::open_read_only(dir.path())
            && store.head() > 0
        {
            break;
        }
        assert!(
            opened.elapsed() < Duration::from_secs(30),
            "the writer never wrote"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (dir, stop) = (dir.path().to_path_buf(), stop.clone());
            thread::spawn(move || long_lived_reader(&dir, &stop))
        })
        .collect();

    let strata = |args: &[&str]| {
        let out = Command::new(&cli)
            .arg("--store")
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "strata {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let versions = |json_lines: &str| -> Vec<u64> {
        json_lines
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["version"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    let mut rounds = 0;
    while child.try_wait().unwrap().is_none() {
        rounds += 1;
        let exported = versions(&strata(&["--json", "export", "--aggregate", "pair-a"]));
        assert_eq!(
            exported.len() as u64 % PAIR_EVENTS,
            0,
            "export: {exported:?}"
        );
        assert!(exported.iter().copied().eq(1..=exported.len() as u64));

        let tailed = versions(&strata(&[
            "--json",
            "tail",
            "--aggregate",
            "pair-b",
            "-n",
            "4",
        ]));
        assert!(tailed.len() <= 4);
        assert!(
            tailed.windows(2).all(|w| w[1] == w[0] + 1),
            "tail: {tailed:?}"
        );
        if let Some(last) = tailed.last() {
            assert_eq!(last % PAIR_EVENTS, 0, "tail: {tailed:?}");
        }

        let value: i64 = strata(&["counter", "show", "pair-counter"])
            .trim()
            .parse()
            .unwrap();
        assert_eq!(value % PAIR_EVENTS as i64, 0, "counter show: {value}");

        // Exit 0, and a well-formed line per view once the views exist.
        for line in strata(&["--json", "views", "status"]).lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(row["name"], "counter");
            assert!(row["failed"].is_null(), "{line}");
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the writer failed: {}", out.status);
    let done = String::from_utf8(out.stdout).unwrap();
    let mut words = done.split_whitespace();
    assert_eq!(words.next(), Some("DONE"), "{done}");
    let batches: u64 = words.next().unwrap().parse().unwrap();
    let final_head: u64 = words.next().unwrap().parse().unwrap();
    assert!(
        rounds >= 2,
        "the CLI ran only {rounds} rounds beside the writer"
    );

    stop.store(true, Ordering::Relaxed);
    let logs: Vec<ReaderLog> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert_readers(&logs, final_head, batches);
    let value: u64 = strata(&["counter", "show", "pair-counter"])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(value, batches * PAIR_EVENTS);
    let follower = Store::open_read_only(dir.path()).unwrap();
    follow_to(&follower, final_head, Duration::from_secs(60));
}
