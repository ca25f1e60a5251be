//! S7 and S8 across real crashes: a child process appends counter events
//! while its views follow, and is SIGKILLed at random moments (often in the
//! middle of a views transaction, sometimes in the middle of a full
//! rebuild). After each kill, before anything catches up, the view must
//! equal a replay of the log up to the view's own checkpoint: nothing
//! applied twice, nothing skipped. Then a normal open must bring it to the
//! log's head.
//!
//! `STRATA_PROJECTION_CRASH_ITERATIONS` sets the number of kills (default 60).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use strata::projection::counter::{self, CounterProjection};
use strata::projection::rusqlite::{Connection, OpenFlags, OptionalExtension};
use strata::projection::{ViewOptions, Views};
use strata::{Options, Store};

const ITERATIONS_DEFAULT: usize = 60;

fn replay(store: &Store, upto: u64) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for e in store.read_all(1) {
        let e = e.unwrap();
        if e.position > upto {
            break;
        }
        let v: serde_json::Value = e.data_json().unwrap();
        let n = v["value"].as_i64().unwrap();
        let sign = if e.event_type == counter::INCREMENTED {
            1
        } else {
            -1
        };
        *out.entry(e.aggregate_id).or_default() += sign * n;
    }
    out
}

/// The view and its checkpoint as the crash left them, read without
/// applying anything.
fn view_as_left(dir: &Path) -> Option<(u64, BTreeMap<String, i64>)> {
    let path = dir.join("views.sqlite");
    if !path.exists() {
        return None;
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let position: Option<u64> = conn
        .query_row(
            "SELECT position FROM strata_projections WHERE name = 'counter'",
            [],
            |r| r.get(0),
        )
        .optional()
        .unwrap_or(None);
    let position = position?;
    let mut stmt = conn
        .prepare(
            "SELECT i.aggregate_id, c.value FROM current_count c JOIN counter_ids i ON i.id = c.id",
        )
        .unwrap();
    let values = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    Some((position, values))
}

#[test]
fn s7_s8_sigkill_mid_batch_and_mid_rebuild_applies_every_event_exactly_once() {
    let iterations: usize = std::env::var("STRATA_PROJECTION_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ITERATIONS_DEFAULT);
    let seed = 0x0F_1E_C7;
    eprintln!("projection crash loop: {iterations} iterations, seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    // Create the store first: under load the first child may be killed
    // before it gets to create it.
    Store::open(&store_dir, Options::default())
        .unwrap()
        .close()
        .unwrap();
    let (mut checked, mut rebuild_kills) = (0, 0);
    for iteration in 0..iterations {
        // Now and then, delete the views so the child rebuilds them from
        // the whole log, and the kill may land in the rebuild.
        let rebuild = iteration % 7 == 6;
        if rebuild {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(store_dir.join(format!("views.sqlite{suffix}")));
            }
            rebuild_kills += 1;
        }
        let mut child = Command::new(env!("CARGO_BIN_EXE_crash_projector"))
            .arg(&store_dir)
            .arg(rng.random::<u64>().to_string())
            .arg(rng.random_range(5..60).to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(10..80)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            !matches!(status.code(), Some(3 | 4)),
            "iteration {iteration}: the child could not open"
        );

        let store = Store::open_read_only(&store_dir)
            .unwrap_or_else(|e| panic!("iteration {iteration}: {e}"));
        if let Some((position, values)) = view_as_left(&store_dir) {
            assert!(
                position <= store.head(),
                "iteration {iteration}: checkpoint beyond the log"
            );
            let expected = replay(&store, position);
            assert_eq!(
                values, expected,
                "iteration {iteration}: view at checkpoint {position} differs from a replay"
            );
            checked += 1;
        }
        drop(store);
        let store = Store::open(&store_dir, Options::default()).unwrap();
        let views = Views::open(
            &store,
            vec![Arc::new(CounterProjection)],
            ViewOptions::default(),
        )
        .unwrap();
        let caught_up = views
            .read(|c| {
                let mut stmt = c.prepare("SELECT i.aggregate_id, c.value FROM current_count c JOIN counter_ids i ON i.id = c.id")?;
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<BTreeMap<String, i64>, _>>()
            })
            .unwrap();
        assert_eq!(
            caught_up,
            replay(&store, store.head()),
            "iteration {iteration}: caught-up view differs"
        );
        views.close();
        store.close().unwrap();
    }
    eprintln!(
        "projection crash loop done: {iterations} kills ({rebuild_kills} during rebuilds), {checked} views checked at their checkpoint"
    );
    assert!(checked > iterations / 2);
}
