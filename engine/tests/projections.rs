//! Projections: S7 (exactly once, checkpoint is a position) and S8 (schema
//! evolution by replay into a shadow database). The crash loop that kills a
//! process mid-batch lives in the workspace's tests/ crate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::Connection;
use strata::projection::counter::{self, CounterProjection};
use strata::projection::todo::{self, TodoProjection};
use strata::projection::{
    HandlerError, Projection, ProjectionError, ProjectionState, ViewOptions, Views,
};
use strata::{Durability, EventRef, ExpectedVersion, NewEvent, Options, Store, Timestamp};

fn store(dir: &std::path::Path) -> Store {
    Store::open(
        dir,
        Options {
            durability: Durability::None,
            ..Options::default()
        },
    )
    .unwrap()
}

fn sync_views(store: &Store, projections: Vec<Arc<dyn Projection>>, batch: usize) -> Views {
    Views::open(
        store,
        projections,
        ViewOptions {
            batch_events_max: batch,
            background: false,
            ..ViewOptions::default()
        },
    )
    .unwrap()
}

/// Counter values computed from the log alone, up to `upto`.
fn replay_counters(store: &Store, upto: u64) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for e in store.read_all(1) {
        let e = e.unwrap();
        if e.position > upto {
            break;
        }
        let v: serde_json::Value = e.data_json().unwrap();
        let n = v["value"].as_i64().unwrap();
        match e.event_type.as_str() {
            counter::INCREMENTED => *out.entry(e.aggregate_id).or_default() += n,
            counter::DECREMENTED => *out.entry(e.aggregate_id).or_default() -= n,
            _ => {}
        }
    }
    out
}

fn view_counters(conn: &Connection) -> BTreeMap<String, i64> {
    let mut stmt = conn
        .prepare(
            "SELECT i.aggregate_id, c.value FROM current_count c JOIN counter_ids i ON i.id = c.id",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn s7_reads_see_the_callers_own_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    // The background follower is on: reads must still never be behind.
    let views = Views::open(
        &store,
        vec![Arc::new(CounterProjection)],
        ViewOptions::default(),
    )
    .unwrap();
    for i in 1..=50 {
        store
            .append(
                "counter-a",
                ExpectedVersion::Any,
                vec![counter::increment(1)],
            )
            .unwrap();
        let v = views.read(|c| counter::value(c, "counter-a")).unwrap();
        assert_eq!(v, Some(i), "read right after append {i}");
    }
    store
        .append(
            "counter-b",
            ExpectedVersion::Any,
            vec![counter::decrement(3)],
        )
        .unwrap();
    assert_eq!(
        views.read(|c| counter::value(c, "counter-b")).unwrap(),
        Some(-3)
    );
    // The mapping from aggregate to row id: by first appearance in the log.
    assert_eq!(
        views.read(|c| counter::row_id(c, "counter-a")).unwrap(),
        Some(1)
    );
    assert_eq!(
        views.read(|c| counter::row_id(c, "counter-b")).unwrap(),
        Some(2)
    );
    assert_eq!(views.read(|c| counter::value(c, "nobody")).unwrap(), None);
}

#[test]
fn s7_checkpoint_is_a_position_so_a_late_event_with_an_older_hlc_is_projected() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let views = sync_views(&store, vec![Arc::new(CounterProjection)], 100);
    store
        .append("c", ExpectedVersion::Any, vec![counter::increment(1)])
        .unwrap();
    assert_eq!(views.read(|c| counter::value(c, "c")).unwrap(), Some(1));
    // An event from another device whose clock is far behind arrives now:
    // its HLC is older than everything projected so far. The seed keyed
    // its checkpoint on last_processed_hlc and would skip it forever.
    let old = Timestamp::from_parts(1_000, 0, "slow-device").unwrap();
    store
        .append(
            "c",
            ExpectedVersion::Any,
            vec![counter::increment(10).with_timestamp(old.clone())],
        )
        .unwrap();
    let events: Vec<_> = store.read_all(1).map(Result::unwrap).collect();
    assert!(
        events[1].timestamp < events[0].timestamp,
        "the late event has the older HLC"
    );
    assert_eq!(views.read(|c| counter::value(c, "c")).unwrap(), Some(11));
}

#[test]
fn s7_handler_failure_stops_only_that_projection_and_resumes_from_its_checkpoint() {
    /// Sums `value`s, but fails on events whose data says "poison" while
    /// `broken` is set.
    struct Flaky {
        broken: Arc<AtomicBool>,
    }
    impl Projection for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }
        fn version(&self) -> u32 {
            1
        }
        fn schema(&self) -> &str {
            "CREATE TABLE flaky_sum (id INTEGER PRIMARY KEY, total INTEGER NOT NULL); INSERT INTO flaky_sum VALUES (1, 0);"
        }
        fn apply(&self, conn: &Connection, e: &EventRef<'_>) -> Result<(), HandlerError> {
            if self.broken.load(Ordering::SeqCst) && std::str::from_utf8(e.data)?.contains("poison")
            {
                return Err("poisoned event".into());
            }
            let v: serde_json::Value = e.json()?;
            conn.execute(
                "UPDATE flaky_sum SET total = total + ?1",
                [v["value"].as_i64().unwrap_or(0)],
            )?;
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let broken = Arc::new(AtomicBool::new(true));
    let open = || {
        sync_views(
            &store,
            vec![
                Arc::new(Flaky {
                    broken: broken.clone(),
                }),
                Arc::new(CounterProjection),
            ],
            10,
        )
    };
    let views = open();
    // Positions 1..=14 fine, 15 poisoned, 16..=20 fine; batches of 10.
    for i in 1..=20 {
        let data = if i == 15 {
            r#"{"value":1,"note":"poison"}"#.to_string()
        } else {
            r#"{"value":1}"#.to_string()
        };
        store
            .append(
                "c",
                ExpectedVersion::Any,
                vec![NewEvent::new(counter::INCREMENTED, data)],
            )
            .unwrap();
    }
    let poisoned_id = store.read_all(15).next().unwrap().unwrap().event_id;
    // The read succeeds: the counter is healthy and current.
    assert_eq!(views.read(|c| counter::value(c, "c")).unwrap(), Some(20));
    let err = views.check().unwrap_err();
    match &err {
        ProjectionError::Handler {
            projection,
            position,
            event_id,
            message,
        } => {
            assert_eq!(
                (projection.as_str(), *position, *event_id),
                ("flaky", 15, poisoned_id)
            );
            assert!(message.contains("poisoned event"));
        }
        other => panic!("{other}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("\"flaky\"")
            && text.contains("position 15")
            && text.contains(&poisoned_id.to_string()),
        "{text}"
    );
    // Nothing of the failing batch (positions 11..=20) was committed for it.
    let status = views.status();
    let flaky = status.iter().find(|s| s.name == "flaky").unwrap();
    assert_eq!(flaky.position, 10);
    assert!(matches!(
        flaky.state,
        ProjectionState::Failed {
            position: Some(15),
            ..
        }
    ));
    assert_eq!(
        views
            .read(|c| c.query_row("SELECT total FROM flaky_sum", [], |r| r.get::<_, i64>(0)))
            .unwrap(),
        10
    );
    let counter_status = status.iter().find(|s| s.name == "counter").unwrap();
    assert_eq!(
        (counter_status.position, &counter_status.state),
        (20, &ProjectionState::Ready)
    );
    drop(views);

    // The handler is fixed; the next open resumes from position 10.
    broken.store(false, Ordering::SeqCst);
    let views = open();
    assert_eq!(
        views
            .read(|c| c.query_row("SELECT total FROM flaky_sum", [], |r| r.get::<_, i64>(0)))
            .unwrap(),
        20
    );
    views.check().unwrap();
}

#[test]
fn s7_a_panicking_handler_is_a_failure_not_a_crash() {
    struct Panics;
    impl Projection for Panics {
        fn name(&self) -> &str {
            "panics"
        }
        fn version(&self) -> u32 {
            1
        }
        fn schema(&self) -> &str {
            "CREATE TABLE panics_table (x INTEGER);"
        }
        fn apply(&self, _: &Connection, _: &EventRef<'_>) -> Result<(), HandlerError> {
            panic!("boom")
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    store
        .append("c", ExpectedVersion::Any, vec![counter::increment(1)])
        .unwrap();
    let views = Views::open(
        &store,
        vec![Arc::new(Panics), Arc::new(CounterProjection)],
        ViewOptions::default(),
    )
    .unwrap();
    let _ = views.wait_ready();
    let err = views.check().unwrap_err().to_string();
    assert!(err.contains("panicked: boom"), "{err}");
    assert_eq!(views.read(|c| counter::value(c, "c")).unwrap(), Some(1));
}

/// Panics on any event whose payload is `"boom"`, and records the others.
struct PanicsOnBoom;

impl Projection for PanicsOnBoom {
    fn name(&self) -> &str {
        "boom"
    }
    fn version(&self) -> u32 {
        1
    }
    fn schema(&self) -> &str {
        "CREATE TABLE boom_seen (position INTEGER PRIMARY KEY);"
    }
    fn apply(&self, conn: &Connection, event: &EventRef<'_>) -> Result<(), HandlerError> {
        assert!(event.data != b"\"boom\"", "boom at {}", event.position);
        conn.execute("INSERT INTO boom_seen VALUES (?1)", [event.position])?;
        Ok(())
    }
}

/// Appends `count` events in one batch, the one at `boom_at` (a position)
/// with the payload `PanicsOnBoom` panics on. Returns that event's id.
fn append_batch_with_boom(store: &Store, count: u64, boom_at: u64) -> strata::Uuid {
    let first = store.head() + 1;
    let events: Vec<NewEvent> = (first..first + count)
        .map(|p| {
            let data: &[u8] = if p == boom_at { b"\"boom\"" } else { b"1" };
            NewEvent::new("T", data.to_vec())
        })
        .collect();
    let id = events[(boom_at - first) as usize].event_id;
    let committed = store.append("b", ExpectedVersion::Any, events).unwrap();
    assert_eq!(committed[0].position, first);
    id
}

fn assert_blamed(views: &Views, position: u64, event_id: strata::Uuid, checkpoint: u64) {
    let err = views.check().unwrap_err();
    match &err {
        ProjectionError::Handler {
            projection,
            position: p,
            event_id: id,
            message,
        } => {
            assert_eq!(projection, "boom");
            assert_eq!((*p, *id), (position, event_id), "{err}");
            assert!(message.contains("panicked: boom at"), "{message}");
        }
        other => panic!("expected a handler failure, got {other}"),
    }
    let status = views
        .status()
        .into_iter()
        .find(|s| s.name == "boom")
        .unwrap();
    assert_eq!(
        status.position, checkpoint,
        "the checkpoint stays before the batch"
    );
    assert!(
        matches!(
            status.state,
            ProjectionState::Failed { position: Some(p), event_id: Some(id), .. }
                if p == position && id == event_id
        ),
        "{:?}",
        status.state
    );
}

/// A panic does not say which event caused it: the views apply the batch
/// again event by event to name the one that panics, not the batch's
/// first, both while following the log and during a first build.
#[test]
fn s7_a_panicking_handler_is_blamed_on_the_event_that_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    for _ in 0..40 {
        store
            .append("c", ExpectedVersion::Any, vec![counter::increment(1)])
            .unwrap();
    }
    let views = sync_views(
        &store,
        vec![Arc::new(PanicsOnBoom), Arc::new(CounterProjection)],
        1_000,
    );
    views.wait_ready().unwrap();
    // Positions 41..=50 in one log batch; 42 panics.
    let boom_id = append_batch_with_boom(&store, 10, 42);
    views.catch_up().unwrap();
    assert_blamed(&views, 42, boom_id, 40);
    // The other projection took the whole batch.
    assert_eq!(views.read(|c| counter::value(c, "c")).unwrap(), Some(40));
    let seen: u64 = views
        .read(|c| c.query_row("SELECT count(*) FROM boom_seen", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(seen, 40, "nothing of the failing batch is kept");
    views.close();

    // A first build (replay into a shadow) names the same event.
    std::fs::remove_file(dir.path().join(strata::projection::VIEWS_FILE)).unwrap();
    let err = Views::open(
        &store,
        vec![Arc::new(PanicsOnBoom)],
        ViewOptions {
            background: false,
            ..ViewOptions::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, ProjectionError::Handler { position: 42, event_id, .. } if event_id == boom_id),
        "{err}"
    );
}

/// The counter, with another version number and an extra column: a schema
/// change.
struct CounterV2 {
    slow: Duration,
    applied: Arc<AtomicU64>,
}

impl Projection for CounterV2 {
    fn name(&self) -> &str {
        "counter"
    }
    fn version(&self) -> u32 {
        2
    }
    fn schema(&self) -> &str {
        "CREATE TABLE current_count (id INTEGER PRIMARY KEY DEFAULT 1, value INTEGER NOT NULL, events INTEGER NOT NULL DEFAULT 0);
         CREATE TABLE counter_ids (aggregate_id TEXT PRIMARY KEY, id INTEGER NOT NULL UNIQUE);
         CREATE INDEX current_count_by_value ON current_count (value);"
    }
    fn apply(&self, conn: &Connection, e: &EventRef<'_>) -> Result<(), HandlerError> {
        std::thread::sleep(self.slow);
        self.applied.fetch_add(1, Ordering::SeqCst);
        CounterProjection.apply(conn, e)?;
        conn.execute(
            "UPDATE current_count SET events = events + 1 WHERE id = (SELECT id FROM counter_ids WHERE aggregate_id = ?1)",
            [e.aggregate_id],
        )?;
        Ok(())
    }
}

/// Waits for `done`, failing the test after 30 s instead of hanging.
fn wait_until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn fill(store: &Store, n: usize) {
    for i in 0..n {
        let e = if i % 3 == 0 {
            counter::decrement(2)
        } else {
            counter::increment(5)
        };
        store
            .append(&format!("counter-{}", i % 4), ExpectedVersion::Any, vec![e])
            .unwrap();
    }
}

#[test]
fn s8_version_bump_rebuilds_by_replay_and_equals_a_fresh_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    {
        let views = sync_views(&store, vec![Arc::new(CounterProjection)], 7);
        fill(&store, 100);
        views.catch_up().unwrap();
    }
    let progress = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = progress.clone();
    let views = Views::open(
        &store,
        vec![Arc::new(CounterV2 {
            slow: Duration::ZERO,
            applied: Arc::default(),
        })],
        ViewOptions {
            batch_events_max: 7,
            background: false,
            progress: Some(Arc::new(move |p| {
                seen.lock().unwrap().push((p.done, p.total))
            })),
        },
    )
    .unwrap();
    let got = views.read(|c| Ok(view_counters(c))).unwrap();
    assert_eq!(got, replay_counters(&store, u64::MAX));
    // The new column exists and counts every event once.
    let events: i64 = views
        .read(|c| c.query_row("SELECT sum(events) FROM current_count", [], |r| r.get(0)))
        .unwrap();
    assert_eq!(events, 100);
    let progress = progress.lock().unwrap();
    assert_eq!(progress.first(), Some(&(0, 100)));
    assert_eq!(progress.last(), Some(&(100, 100)));
    assert!(progress.len() > 10, "progress is reported batch by batch");
    let s = &views.status()[0];
    assert_eq!((s.version, s.view_version, s.position), (2, Some(2), 100));
}

#[test]
fn s8_readers_keep_the_old_view_until_the_swap() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    {
        let views = sync_views(&store, vec![Arc::new(CounterProjection)], 50);
        fill(&store, 200);
        views.catch_up().unwrap();
    }
    let before = replay_counters(&store, u64::MAX);
    let applied = Arc::new(AtomicU64::new(0));
    let views = Views::open(
        &store,
        vec![Arc::new(CounterV2 {
            slow: Duration::from_millis(2),
            applied: applied.clone(),
        })],
        ViewOptions {
            batch_events_max: 20,
            ..ViewOptions::default()
        },
    )
    .unwrap();
    // While the shadow is being built, reads answer from the old (v1) view.
    wait_until(|| applied.load(Ordering::SeqCst) >= 40);
    let status = views.status();
    assert!(
        matches!(
            status[0].state,
            ProjectionState::Rebuilding { total: 200, .. }
        ),
        "{status:?}"
    );
    assert_eq!(status[0].view_version, Some(1));
    let during = views.read(|c| Ok(view_counters(c))).unwrap();
    assert_eq!(during, before);
    let has_events_column = views
        .read(|c| c.prepare("SELECT events FROM current_count").map(|_| true))
        .unwrap_or(false);
    assert!(
        !has_events_column,
        "readers must not see the half-built v2 table"
    );
    views.wait_ready().unwrap();
    assert!(
        views
            .read(|c| c.prepare("SELECT events FROM current_count").map(|_| true))
            .unwrap()
    );
    assert_eq!(views.read(|c| Ok(view_counters(c))).unwrap(), before);
    assert_eq!(views.status()[0].view_version, Some(2));
}

#[test]
fn s8_a_crash_during_rebuild_leaves_the_old_view_and_the_rebuild_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    {
        let views = sync_views(&store, vec![Arc::new(CounterProjection)], 50);
        fill(&store, 300);
        views.catch_up().unwrap();
    }
    let before = replay_counters(&store, u64::MAX);
    let shadow = dir.path().join("views.sqlite.rebuild-counter");
    {
        let applied = Arc::new(AtomicU64::new(0));
        let views = Views::open(
            &store,
            vec![Arc::new(CounterV2 {
                slow: Duration::from_millis(1),
                applied: applied.clone(),
            })],
            ViewOptions {
                batch_events_max: 10,
                ..ViewOptions::default()
            },
        )
        .unwrap();
        wait_until(|| applied.load(Ordering::SeqCst) >= 50);
        assert!(shadow.exists());
        // Stop mid-rebuild, as a crash would.
        views.close();
    }
    assert!(shadow.exists(), "the half-built shadow is left behind");
    let conn = Connection::open(dir.path().join("views.sqlite")).unwrap();
    assert_eq!(view_counters(&conn), before, "the old view is intact");
    let version: u32 = conn
        .query_row(
            "SELECT version FROM strata_projections WHERE name = 'counter'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, 1);
    drop(conn);
    let views = sync_views(
        &store,
        vec![Arc::new(CounterV2 {
            slow: Duration::ZERO,
            applied: Arc::default(),
        })],
        50,
    );
    assert_eq!(views.read(|c| Ok(view_counters(c))).unwrap(), before);
    assert_eq!(views.status()[0].view_version, Some(2));
    assert!(!shadow.exists(), "the shadow is gone after the swap");
}

#[test]
fn s8_deleting_views_sqlite_by_hand_rebuilds_everything() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    {
        let views = sync_views(
            &store,
            vec![Arc::new(CounterProjection), Arc::new(TodoProjection)],
            50,
        );
        fill(&store, 60);
        views.catch_up().unwrap();
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("views.sqlite{suffix}")));
    }
    let views = Views::open(
        &store,
        vec![Arc::new(CounterProjection), Arc::new(TodoProjection)],
        ViewOptions::default(),
    )
    .unwrap();
    assert_eq!(
        views.read(|c| Ok(view_counters(c))).unwrap(),
        replay_counters(&store, u64::MAX)
    );
    views.wait_ready().unwrap();
    assert!(
        views
            .status()
            .iter()
            .all(|s| s.state == ProjectionState::Ready && s.position == 60)
    );
}

#[test]
fn todo_view_depends_on_event_order() {
    let run = |events: Vec<(&str, serde_json::Value)>| {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let views = sync_views(&store, vec![Arc::new(TodoProjection)], 10);
        for (ty, data) in events {
            store
                .append(
                    "list",
                    ExpectedVersion::Any,
                    vec![NewEvent::json(ty, &data).unwrap()],
                )
                .unwrap();
        }
        views.read(|c| todo::items(c, "list")).unwrap()
    };
    use serde_json::json;
    let add = ("TodoAdded", json!({"id": "a", "title": "milk"}));
    let rename = ("TodoRenamed", json!({"id": "a", "title": "oat milk"}));
    let delete = ("TodoDeleted", json!({"id": "a"}));
    let re_add = ("TodoAdded", json!({"id": "a", "title": "again"}));
    assert_eq!(
        run(vec![add.clone(), rename.clone()]),
        vec![("a".into(), "oat milk".into(), false)]
    );
    assert_eq!(
        run(vec![add.clone(), delete.clone(), rename.clone()]),
        vec![]
    );
    assert_eq!(
        run(vec![add.clone(), rename.clone(), delete.clone(), re_add]),
        vec![],
        "deleted ids stay deleted"
    );
    let r1 = ("TodoRenamed", json!({"id": "a", "title": "first"}));
    let r2 = ("TodoRenamed", json!({"id": "a", "title": "second"}));
    assert_ne!(
        run(vec![add.clone(), r1.clone(), r2.clone()]),
        run(vec![add, r2, r1])
    );
}

#[test]
fn hlc_functions_are_registered_on_the_views_connection() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let views = sync_views(&store, vec![Arc::new(CounterProjection)], 10);
    let (now, cmp): (String, i64) = views
        .read(|c| {
            c.query_row(
                "SELECT hlc_now(), hlc_compare('9:0:A', '10:0:A')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
        })
        .unwrap();
    assert!(now.ends_with(&format!(":{}", store.hlc().node())), "{now}");
    assert_eq!(cmp, -1);
}

#[test]
fn projection_names_are_checked() {
    struct Named(&'static str);
    impl Projection for Named {
        fn name(&self) -> &str {
            self.0
        }
        fn version(&self) -> u32 {
            1
        }
        fn schema(&self) -> &str {
            ""
        }
        fn apply(&self, _: &Connection, _: &EventRef<'_>) -> Result<(), HandlerError> {
            Ok(())
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let err = Views::open(
        &store,
        vec![Arc::new(Named("bad name"))],
        ViewOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("[A-Za-z0-9_-]"), "{err}");
    let err = Views::open(
        &store,
        vec![Arc::new(Named("x")), Arc::new(Named("x"))],
        ViewOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("two projections"), "{err}");
}

#[test]
fn s7_batched_counter_equals_event_by_event_application() {
    /// The counter without its `apply_batch` override.
    struct OneByOne;
    impl Projection for OneByOne {
        fn name(&self) -> &str {
            "counter"
        }
        fn version(&self) -> u32 {
            1
        }
        fn schema(&self) -> &str {
            CounterProjection.schema()
        }
        fn apply(&self, conn: &Connection, e: &EventRef<'_>) -> Result<(), HandlerError> {
            CounterProjection.apply(conn, e)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mut seed = 7u64;
    for _ in 0..500 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let agg = format!("c{}", (seed >> 33) % 9);
        let n = ((seed >> 40) % 5) as i64 + 1;
        let e = if seed >> 63 == 1 {
            counter::increment(n)
        } else {
            counter::decrement(n)
        };
        store.append(&agg, ExpectedVersion::Any, vec![e]).unwrap();
    }
    let rows = |views: &Views| {
        views
            .read(|c| {
                let mut stmt = c.prepare(
                    "SELECT i.aggregate_id, i.id, c.value FROM current_count c JOIN counter_ids i ON i.id = c.id ORDER BY i.id",
                )?;
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .unwrap()
    };
    let batched = rows(&sync_views(&store, vec![Arc::new(CounterProjection)], 37));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("views.sqlite{suffix}")));
    }
    let one_by_one = rows(&sync_views(&store, vec![Arc::new(OneByOne)], 37));
    assert_eq!(batched, one_by_one, "same values and the same row ids");
    assert_eq!(batched.len(), 9);
}

/// S8 across a repair: the log is cut below the views' checkpoints and new
/// events take the cut positions (more of them than were cut) before the
/// views open again. The views must not trust their checkpoints: the
/// repair moved the log to a new generation, and each view rebuilds. The
/// repair itself touches no file but the log's (the views are not its).
#[test]
fn s8_views_rebuild_when_a_repair_rewrote_positions_they_had_seen() {
    let dir = tempfile::tempdir().unwrap();
    let views_path = dir.path().join(strata::projection::VIEWS_FILE);
    {
        let store = store(dir.path());
        let views = sync_views(&store, vec![Arc::new(CounterProjection)], 50);
        fill(&store, 60);
        views.catch_up().unwrap();
        views.close();
        store.close().unwrap();
    }
    let (_, plan) = strata::log::repair::plan(dir.path(), Some(20)).unwrap();
    strata::log::repair::apply(dir.path(), &plan).unwrap();
    assert!(views_path.exists(), "the repair left the views' file alone");
    let store = store(dir.path());
    assert_eq!(store.head(), 20);
    assert_eq!(store.log_generation(), 1);
    // Other events at positions 21..=80, written without the views.
    for _ in 0..60 {
        store
            .append("other", ExpectedVersion::Any, vec![counter::increment(5)])
            .unwrap();
    }
    let views = sync_views(&store, vec![Arc::new(CounterProjection)], 50);
    views.catch_up().unwrap();
    assert_eq!(
        views.read(|c| Ok(view_counters(c))).unwrap(),
        replay_counters(&store, u64::MAX),
        "the view equals a replay of the repaired log"
    );
    // And the index (S5): "other" is read from the repaired log.
    assert_eq!(store.aggregate_version("other").unwrap(), 60);
    assert_eq!(store.read_aggregate("other", 1, 100).unwrap().len(), 60);
}
