//! S2/S3/S4 across real crashes: a child process appends in `Sync`
//! durability and is SIGKILLed at a random moment; the parent reopens the
//! store and checks that every acknowledged event is there at its
//! acknowledged position, that every batch is all there or not at all, and
//! that positions are gapless. The store carries over from one iteration to
//! the next, so recovery runs on top of earlier recoveries.
//!
//! `STRATA_CRASH_ITERATIONS` sets the number of kills (default 200).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use strata::{Options, Store, Uuid};

const ITERATIONS_DEFAULT: usize = 200;

#[test]
fn s2_s3_s4_sigkill_at_random_moments_loses_no_acknowledged_event() {
    let iterations: usize = std::env::var("STRATA_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ITERATIONS_DEFAULT);
    let seed: u64 = std::env::var("STRATA_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5EED);
    eprintln!("crash loop: {iterations} iterations, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    // Every event acknowledged so far, and every batch ever begun.
    let mut acked: HashMap<Uuid, u64> = HashMap::new();
    let mut batches: Vec<Vec<Uuid>> = Vec::new();
    let mut torn_tails = 0;
    let mut kills_before_first_ack = 0;
    for iteration in 0..iterations {
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_writer"))
            .arg(&store_dir)
            .arg(rng.random::<u64>().to_string())
            .arg((16 * 1024).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(5..60)));
        child.kill().unwrap(); // SIGKILL
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.code() != Some(3),
            "iteration {iteration}: the child could not open the store"
        );
        let mut pending: Option<Vec<Uuid>> = None;
        let mut acks_now = 0;
        for line in out.lines() {
            let mut words = line.split(' ');
            match words.next() {
                Some("BEGIN") => {
                    let ids: Vec<Uuid> = words.map(|w| w.parse().unwrap()).collect();
                    batches.push(ids.clone());
                    pending = Some(ids);
                }
                Some("ACK") => {
                    let first: u64 = words.next().unwrap().parse().unwrap();
                    let last: u64 = words.next().unwrap().parse().unwrap();
                    let ids = pending.take().expect("ACK follows BEGIN");
                    assert_eq!(last - first + 1, ids.len() as u64);
                    for (i, id) in ids.into_iter().enumerate() {
                        acked.insert(id, first + i as u64);
                    }
                    acks_now += 1;
                }
                // A line cut by the kill.
                _ => {}
            }
        }
        if acks_now == 0 {
            kills_before_first_ack += 1;
        }

        let store = Store::open(&store_dir, Options::default())
            .unwrap_or_else(|e| panic!("iteration {iteration}: open after SIGKILL failed: {e}"));
        if store.recovery_report().torn_tail.is_some() {
            torn_tails += 1;
        }
        let mut present: HashMap<Uuid, u64> = HashMap::new();
        for (expected_position, e) in (1..).zip(store.read_all(1)) {
            let e = e.unwrap_or_else(|e| panic!("iteration {iteration}: read failed: {e}"));
            assert_eq!(
                e.position, expected_position,
                "iteration {iteration}: positions must be gapless"
            );
            present.insert(e.event_id, e.position);
        }
        for (id, position) in &acked {
            assert_eq!(
                present.get(id),
                Some(position),
                "iteration {iteration}: acknowledged event {id} lost or moved"
            );
        }
        for batch in &batches {
            let there = batch.iter().filter(|id| present.contains_key(id)).count();
            assert!(
                there == 0 || there == batch.len(),
                "iteration {iteration}: partial batch ({there} of {})",
                batch.len()
            );
        }
        // A batch the child began but never acknowledged may have made it;
        // either way it is now part of history like any other.
        let known: HashSet<&Uuid> = batches.iter().flatten().collect();
        assert!(
            present.keys().all(|id| known.contains(id)),
            "iteration {iteration}: an event nobody wrote"
        );
        for (id, position) in present {
            acked.insert(id, position);
        }
        assert!(
            store.verify_index(5).unwrap().0.is_empty(),
            "iteration {iteration}: index disagrees with log"
        );
        store.close().unwrap();
    }
    let segments = std::fs::read_dir(store_dir.join("log")).unwrap().count();
    eprintln!(
        "crash loop done: {iterations} kills, {} events, {segments} segments, {torn_tails} torn tails cut, {kills_before_first_ack} kills before the first ack",
        acked.len()
    );
    assert!(
        acked.len() > iterations,
        "the child must get some work done between kills"
    );
}
