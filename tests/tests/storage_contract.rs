//! The storage contract of `strata::sync::CanonicalLog`
//! (engine/src/sync/storage.rs) checked on both backends with the same
//! code: the embedded `Store`, and `PgLog` on a real PostgreSQL started in
//! a temporary cluster (tests/src/pg.rs). Each check below runs twice,
//! as `embedded::<name>` and `postgres::<name>`; where a check needs a
//! second server node, the embedded backend hands out its one store again
//! and PostgreSQL a second connection pool on the same database.
//!
//! Then what only the PostgreSQL backend has: several nodes writing at
//! once, the LISTEN/NOTIFY helper, and its errors at start.
//!
//! The PostgreSQL tests need Debian's `postgresql` package; without it they
//! fail saying so (`.ci/run` installs it).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata::event::{AGGREGATE_ID_BYTES_MAX_DEFAULT, EVENT_TYPE_BYTES_MAX_DEFAULT};
use strata::hlc::DRIFT_MS_MAX_DEFAULT;
use strata::sync::proto::{Placed, Proposal};
use strata::sync::server::LEASE_MS_DEFAULT;
use strata::sync::{CanonicalLog, ClientId, CommitResult, Push, PushOutcome};
use strata::{Event, Options, Store, Timestamp, Uuid};
use strata_server::pg::{
    HeadSource, HeadUpdate, LISTENER_APPLICATION_NAME, ListenerConfig, PgConfig, PgDatabase,
    PgError, PgLog, SCHEMA_VERSION,
};
use strata_tests::pg::PgCluster;

/// The store every check writes to.
const STORE: &str = "contract";
/// Longest a listener may take to report a commit.
const LISTEN_DEADLINE: Duration = Duration::from_secs(10);
/// Threads per node, and pushes per thread, of the concurrency check.
const WRITER_THREADS_PER_NODE: usize = 3;
const WRITER_PUSHES: usize = 30;

// --- backends ---------------------------------------------------------------

/// A fresh, empty log of one backend, and a way to reach it as a second
/// server node.
trait Backend {
    fn log(&self) -> &dyn CanonicalLog;
    fn second_node(&self) -> Box<dyn CanonicalLog + '_>;
}

struct Embedded {
    store: Store,
    _dir: tempfile::TempDir,
}

impl Embedded {
    fn new() -> Embedded {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Options::default()).unwrap();
        Embedded { store, _dir: dir }
    }
}

impl Backend for Embedded {
    fn log(&self) -> &dyn CanonicalLog {
        &self.store
    }
    fn second_node(&self) -> Box<dyn CanonicalLog + '_> {
        // One process owns an embedded store: a second node is the same one.
        Box::new(self.store.clone())
    }
}

/// A log in a new database of the shared test cluster. Fields drop in
/// order: the log and its pool before the runtime they run on.
struct Postgres {
    log: PgLog,
    rt: tokio::runtime::Runtime,
    db_name: String,
    cluster: &'static PgCluster,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

impl Postgres {
    fn new() -> Postgres {
        let cluster = PgCluster::shared();
        let db_name = cluster.create_database();
        // Defaults a database may have that the backend must not depend
        // on: it runs its commits read committed, whatever the default
        // (under serializable, two nodes' commits would fail each other).
        cluster.sql(
            &db_name,
            &format!("ALTER DATABASE {db_name} SET default_transaction_isolation = 'serializable'"),
        );
        let rt = runtime();
        let db = rt
            .block_on(PgDatabase::connect(PgConfig::new(cluster.url(&db_name))))
            .unwrap();
        let log = db.open_log(STORE).unwrap();
        Postgres {
            log,
            rt,
            db_name,
            cluster,
        }
    }

    fn config(&self) -> PgConfig {
        PgConfig::new(self.cluster.url(&self.db_name))
    }

    /// Another node: its own pool on the same database.
    fn node(&self) -> PgDatabase {
        self.rt
            .block_on(PgDatabase::connect(self.config()))
            .unwrap()
    }

    fn sql(&self, sql: &str) -> String {
        self.cluster.sql(&self.db_name, sql)
    }
}

impl Backend for Postgres {
    fn log(&self) -> &dyn CanonicalLog {
        &self.log
    }
    fn second_node(&self) -> Box<dyn CanonicalLog + '_> {
        Box::new(self.node().open_log(STORE).unwrap())
    }
}

/// Each check, as a test on each backend.
macro_rules! on_both_backends {
    ($($check:ident),* $(,)?) => {
        mod embedded {
            $(#[test]
            fn $check() {
                super::$check(&super::Embedded::new());
            })*
        }
        mod postgres {
            $(#[test]
            fn $check() {
                super::$check(&super::Postgres::new());
            })*
        }
    };
}

on_both_backends!(
    s1_positions_are_gapless_and_the_head_follows,
    s3_a_push_is_all_or_nothing,
    y5_conflicts_name_every_aggregate_not_where_the_push_builds_on,
    y5_a_later_push_of_a_commit_sees_the_earlier_ones,
    y4_a_retry_is_answered_with_the_original_positions,
    s6_an_id_reused_with_other_content_is_refused_naming_what_differs,
    h1_a_timestamp_beyond_the_drift_limit_is_refused,
    payload_bytes_are_kept_verbatim,
    reads_are_in_position_order_from_any_position_in_whole_pushes,
    y1_concurrent_commits_from_two_nodes_place_every_event_once,
    the_store_id_is_the_same_on_every_node,
);

// --- helpers ----------------------------------------------------------------

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn event(aggregate: &str, version: u64) -> Proposal {
    Proposal {
        event_id: Uuid::now_v7(),
        aggregate_id: aggregate.to_owned(),
        version,
        event_type: "Happened".to_owned(),
        data: format!(r#"{{"aggregate":"{aggregate}","version":{version}}}"#).into_bytes(),
        timestamp: Timestamp::from_parts(wall_ms(), 0, "replica-a").unwrap(),
        metadata: None,
    }
}

fn push(events: &[Proposal]) -> Push {
    push_as(0, events)
}

/// A push of connection `client` (of the node it is handed to).
fn push_as(client: ClientId, events: &[Proposal]) -> Push {
    Push {
        client,
        events: events.to_vec().into(),
    }
}

fn commit(log: &dyn CanonicalLog, pushes: &[Push]) -> CommitResult {
    let result = log.append_pushes(pushes).unwrap();
    assert_eq!(result.outcomes.len(), pushes.len(), "one outcome per push");
    result
}

fn placed(outcome: &PushOutcome) -> &[Placed] {
    match outcome {
        PushOutcome::Appended(p) => p,
        other => panic!("expected Appended, got {other:?}"),
    }
}

fn read_all(log: &dyn CanonicalLog) -> Vec<Event> {
    log.read(1, usize::MAX, usize::MAX).unwrap()
}

/// Asserts `events` are `proposals` as appended at `placed`.
fn assert_stored(events: &[Event], proposals: &[Proposal], placed: &[Placed]) {
    assert_eq!(events.len(), proposals.len());
    for ((e, p), at) in events.iter().zip(proposals).zip(placed) {
        assert_eq!(e.event_id, p.event_id);
        assert_eq!(e.position, at.position);
        assert_eq!(e.version, at.version);
        assert_eq!(e.version, p.version);
        assert_eq!(e.aggregate_id, p.aggregate_id);
        assert_eq!(e.event_type, p.event_type);
        assert_eq!(e.data, p.data, "event_data of {}", p.event_id);
        assert_eq!(e.metadata, p.metadata, "metadata of {}", p.event_id);
        assert_eq!(e.timestamp, p.timestamp);
    }
}

// --- checks on both backends ------------------------------------------------

/// S1: positions are 1, 2, 3, … in commit order, and every commit reports
/// the head it left.
fn s1_positions_are_gapless_and_the_head_follows(b: &dyn Backend) {
    let log = b.log();
    assert_eq!(log.head().unwrap(), 0);
    assert!(read_all(log).is_empty());
    let mut appended = Vec::new();
    let mut placements = Vec::new();
    for (i, size) in [1usize, 3, 2, 5].into_iter().enumerate() {
        let events: Vec<Proposal> = (0..size)
            .map(|k| event(&format!("agg-{i}"), k as u64 + 1))
            .collect();
        let r = commit(log, &[push(&events)]);
        let at = placed(&r.outcomes[0]);
        let first = appended.len() as u64 + 1;
        assert_eq!(
            at.iter().map(|p| p.position).collect::<Vec<_>>(),
            (first..first + size as u64).collect::<Vec<_>>()
        );
        appended.extend(events);
        placements.extend_from_slice(at);
        assert_eq!(r.head, appended.len() as u64);
        assert_eq!(log.head().unwrap(), r.head);
    }
    assert_stored(&read_all(log), &appended, &placements);
}

/// S3: a push is all or nothing, whatever refuses it: a conflict on its
/// second aggregate, or a refused timestamp on its last event.
fn s3_a_push_is_all_or_nothing(b: &dyn Backend) {
    let log = b.log();
    let base = event("base", 1);
    commit(log, &[push(std::slice::from_ref(&base))]);

    let a = event("a", 1);
    let stale = event("base", 1); // base is at 1 already
    let r = commit(log, &[push(&[a.clone(), stale])]);
    assert_eq!(
        r.outcomes[0],
        PushOutcome::Conflict(vec![("base".into(), 1)])
    );
    assert_eq!(r.head, 1, "nothing of the push was written");

    let mut future = event("a", 2);
    future.timestamp =
        Timestamp::from_parts(wall_ms() + 10 * DRIFT_MS_MAX_DEFAULT, 0, "replica-a").unwrap();
    let r = commit(log, &[push(&[a.clone(), future.clone()])]);
    assert!(
        matches!(&r.outcomes[0], PushOutcome::Refused { event_id, .. } if *event_id == future.event_id),
        "{:?}",
        r.outcomes[0]
    );
    assert_eq!(log.head().unwrap(), 1, "nothing of the push was written");
    assert_eq!(read_all(log).len(), 1);

    // The same first event goes in alone: it was never written.
    let r = commit(log, &[push(std::slice::from_ref(&a))]);
    assert_eq!(placed(&r.outcomes[0])[0].position, 2);
}

/// Y5: a refused push is answered with every aggregate of it that is not
/// at the version the push builds on, with its current version, in the
/// push's order; when all are (a gap inside the push), with the aggregate
/// the check failed on.
fn y5_conflicts_name_every_aggregate_not_where_the_push_builds_on(b: &dyn Backend) {
    let log = b.log();
    commit(log, &[push(&[event("a", 1), event("a", 2), event("b", 1)])]);
    // a is at 2, b at 1, c at 0.
    let r = commit(
        log,
        &[push(&[
            event("a", 2), // builds on 1: a moved to 2
            event("b", 2), // builds on 1: fine
            event("c", 3), // builds on 2: c is at 0
        ])],
    );
    assert_eq!(
        r.outcomes[0],
        PushOutcome::Conflict(vec![("a".into(), 2), ("c".into(), 0)])
    );
    // A gap inside the push: a builds on 2 (right), then jumps to 5.
    let r = commit(log, &[push(&[event("a", 3), event("a", 5)])]);
    assert_eq!(r.outcomes[0], PushOutcome::Conflict(vec![("a".into(), 2)]));
    assert_eq!(r.head, 3);
    assert_eq!(read_all(log).len(), 3);
}

/// Y5 within a group commit: each push is checked against the log as the
/// pushes before it in the same call leave it; a conflict is named as the
/// log stands after the call.
fn y5_a_later_push_of_a_commit_sees_the_earlier_ones(b: &dyn Backend) {
    let log = b.log();
    let a1 = event("a", 1);
    let a2 = event("a", 2);
    let late = event("a", 1); // another client, also building on 0
    let b1 = event("b", 1);
    let r = commit(
        log,
        &[
            push(std::slice::from_ref(&a1)),
            push(std::slice::from_ref(&a2)),
            push(std::slice::from_ref(&late)),
            push(std::slice::from_ref(&b1)),
        ],
    );
    assert_eq!(placed(&r.outcomes[0])[0].position, 1);
    assert_eq!(
        placed(&r.outcomes[1])[0],
        Placed {
            event_id: a2.event_id,
            position: 2,
            version: 2
        }
    );
    assert_eq!(r.outcomes[2], PushOutcome::Conflict(vec![("a".into(), 2)]));
    assert_eq!(placed(&r.outcomes[3])[0].position, 3);
    assert_eq!(r.head, 3);
    let events = read_all(log);
    assert_eq!(
        events.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        [a1.event_id, a2.event_id, b1.event_id]
    );
}

/// Y4: an id the log holds, with the same content, is the same event: a
/// retry (in a later commit or the same one, whole or mixed with new
/// events) is answered with its position and version and writes nothing.
fn y4_a_retry_is_answered_with_the_original_positions(b: &dyn Backend) {
    let log = b.log();
    let first = [event("a", 1), event("b", 1)];
    let r = commit(log, &[push(&first)]);
    let original = placed(&r.outcomes[0]).to_vec();

    // A retry in a later commit, and twice in one commit.
    let r = commit(log, &[push(&first), push(&first)]);
    assert_eq!(placed(&r.outcomes[0]), original);
    assert_eq!(placed(&r.outcomes[1]), original);
    assert_eq!(r.head, 2, "a retry writes nothing");

    // A push that went through, then a retry within the same commit.
    let c = [event("c", 1)];
    let r = commit(log, &[push(&c), push(&c)]);
    assert_eq!(placed(&r.outcomes[0])[0].position, 3);
    assert_eq!(placed(&r.outcomes[1]), placed(&r.outcomes[0]));

    // Held events mixed with new ones: the held keep their place.
    let a2 = event("a", 2);
    let r = commit(log, &[push(&[first[0].clone(), a2.clone()])]);
    assert_eq!(
        placed(&r.outcomes[0]),
        [
            original[0],
            Placed {
                event_id: a2.event_id,
                position: 4,
                version: 2
            }
        ]
    );
    assert_eq!(r.head, 4);
    assert_eq!(read_all(log).len(), 4);
}

/// S6: an id the log holds, with other content, is refused with the
/// engine's message naming the id, where it is, and what differs; nothing
/// of its push is written.
fn s6_an_id_reused_with_other_content_is_refused_naming_what_differs(b: &dyn Backend) {
    let log = b.log();
    let held = event("a", 1);
    commit(log, &[push(std::slice::from_ref(&held))]);

    let mut changed = held.clone();
    changed.version = 2;
    changed.data = br#"{"other":true}"#.to_vec();
    changed.metadata = Some(b"m".to_vec());
    let fresh = event("b", 1);
    let r = commit(log, &[push(&[fresh, changed])]);
    let expected = strata::Error::EventIdReused {
        event_id: held.event_id,
        position: 1,
        existing_aggregate: "a".into(),
        differs: vec!["event_data", "metadata"],
    }
    .to_string();
    assert_eq!(
        r.outcomes[0],
        PushOutcome::Refused {
            event_id: held.event_id,
            reason: expected.clone()
        }
    );
    assert!(expected.contains(&held.event_id.to_string()), "{expected}");
    assert_eq!(r.head, 1, "nothing of the push was written");

    // Another aggregate and type under the id, inside one commit: refused
    // against the event the same commit appended.
    let mine = event("c", 1);
    let mut theirs = mine.clone();
    theirs.aggregate_id = "d".into();
    theirs.event_type = "Other".into();
    let r = commit(log, &[push(std::slice::from_ref(&mine)), push(&[theirs])]);
    assert_eq!(placed(&r.outcomes[0])[0].position, 2);
    match &r.outcomes[1] {
        PushOutcome::Refused { event_id, reason } => {
            assert_eq!(*event_id, mine.event_id);
            assert!(reason.contains("aggregate_id and event_type"), "{reason}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(read_all(log).len(), 2);

    // Bytes changed without changing their length, and metadata absent
    // where the held event has it present but empty: both differ.
    let mut quiet = event("e", 1);
    quiet.metadata = Some(Vec::new());
    commit(log, &[push(std::slice::from_ref(&quiet))]);
    let mut flipped = quiet.clone();
    flipped.data[0] ^= 1;
    flipped.metadata = None;
    let r = commit(log, &[push(&[flipped])]);
    let expected = strata::Error::EventIdReused {
        event_id: quiet.event_id,
        position: 3,
        existing_aggregate: "e".into(),
        differs: vec!["event_data", "metadata"],
    }
    .to_string();
    assert_eq!(
        r.outcomes[0],
        PushOutcome::Refused {
            event_id: quiet.event_id,
            reason: expected
        }
    );
    assert_eq!(r.head, 3);
}

/// H1: a timestamp further ahead of the server's clock than the drift
/// limit is refused with the clock's reason; one within it is taken as is.
fn h1_a_timestamp_beyond_the_drift_limit_is_refused(b: &dyn Backend) {
    let log = b.log();
    let mut ahead = event("a", 1);
    ahead.timestamp =
        Timestamp::from_parts(wall_ms() + DRIFT_MS_MAX_DEFAULT + 60_000, 7, "fast").unwrap();
    let r = commit(log, &[push(std::slice::from_ref(&ahead))]);
    match &r.outcomes[0] {
        PushOutcome::Refused { event_id, reason } => {
            assert_eq!(*event_id, ahead.event_id);
            assert!(reason.contains("more than the allowed drift"), "{reason}");
            assert!(reason.contains("check the remote node's clock"), "{reason}");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert_eq!(r.head, 0);

    let mut near = event("a", 1);
    near.timestamp =
        Timestamp::from_parts(wall_ms() + DRIFT_MS_MAX_DEFAULT / 2, 3, "fast").unwrap();
    let r = commit(log, &[push(std::slice::from_ref(&near))]);
    assert_eq!(placed(&r.outcomes[0])[0].position, 1);
    assert_eq!(read_all(log)[0].timestamp, near.timestamp);
}

/// Payloads are the client's bytes: JSON text as sent (spacing, escapes,
/// key order), bytes that are not UTF-8, NUL bytes, empty payloads, and
/// metadata absent versus present but empty.
fn payload_bytes_are_kept_verbatim(b: &dyn Backend) {
    let log = b.log();
    let payloads: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
        (
            b"{ \"b\" : 1,\n\t\"a\":\"\\u00e9\xc3\xa9\" }".to_vec(),
            Some(b"{\"trace\":  \"x\"}".to_vec()),
        ),
        (
            vec![0xff, 0xfe, 0x00, 0xc3, 0x28, 0x80],
            Some(vec![0x00, 0xff]),
        ),
        (Vec::new(), Some(Vec::new())),
        (b"null".to_vec(), None),
        ((0..=255u8).collect(), Some((0..=255u8).rev().collect())),
    ];
    let events: Vec<Proposal> = payloads
        .into_iter()
        .enumerate()
        .map(|(i, (data, metadata))| {
            let mut e = event("bytes-\u{00e9}\u{4e16}", i as u64 + 1);
            e.event_type = format!("Type-\u{1f600}-{i}");
            e.data = data;
            e.metadata = metadata;
            e
        })
        .collect();
    let r = commit(log, &[push(&events)]);
    assert_stored(&read_all(log), &events, placed(&r.outcomes[0]));
    // The same bytes again are the same events.
    let r2 = commit(log, &[push(&events)]);
    assert_eq!(placed(&r2.outcomes[0]), placed(&r.outcomes[0]));
    // Names as long as the default limits allow.
    let mut longest = event(&"\u{00e9}".repeat(AGGREGATE_ID_BYTES_MAX_DEFAULT / 2), 1);
    longest.event_type = "t".repeat(EVENT_TYPE_BYTES_MAX_DEFAULT);
    let r3 = commit(log, &[push(std::slice::from_ref(&longest))]);
    assert_stored(
        &log.read(r.head + 1, 10, usize::MAX).unwrap(),
        std::slice::from_ref(&longest),
        placed(&r3.outcomes[0]),
    );
}

/// Reads return committed events in position order from any position:
/// from there to the end of its push, then whole pushes while the message
/// has fewer events than the limit (or, with a byte limit of 1, nothing
/// more): the same answer from both backends when each push was its own
/// commit.
fn reads_are_in_position_order_from_any_position_in_whole_pushes(b: &dyn Backend) {
    let log = b.log();
    let sizes = [1usize, 3, 2, 5, 1, 4];
    let mut all: Vec<Proposal> = Vec::new();
    let mut push_end = Vec::new(); // the last position of each event's push
    let mut versions: HashMap<String, u64> = HashMap::new();
    for (i, size) in sizes.iter().enumerate() {
        let events: Vec<Proposal> = (0..*size)
            .map(|k| {
                let agg = format!("r{}", k % 2);
                let v = versions.entry(agg.clone()).or_insert(0);
                *v += 1;
                event(&agg, *v)
            })
            .collect();
        let r = commit(log, &[push(&events)]);
        assert!(
            matches!(r.outcomes[0], PushOutcome::Appended(_)),
            "push {i}: {:?}",
            r.outcomes[0]
        );
        all.extend(events);
        push_end.extend(std::iter::repeat_n(all.len() as u64, *size));
    }
    let head = all.len() as u64;
    assert_eq!(log.head().unwrap(), head);
    for from in 0..=head + 1 {
        for max_events in [1usize, 2, 3, 7, usize::MAX] {
            for (max_bytes, one_push) in [(1usize, true), (usize::MAX, false)] {
                let got = log.read(from, max_events, max_bytes).unwrap();
                let start = from.max(1);
                let expected_end = if start > head {
                    start - 1
                } else {
                    // The first push (from `start`), then whole pushes
                    // while fewer than max_events events are taken.
                    let mut end = push_end[start as usize - 1];
                    while !one_push && end < head && ((end - start + 1) as usize) < max_events {
                        end = push_end[end as usize];
                    }
                    end
                };
                let positions: Vec<u64> = got.iter().map(|e| e.position).collect();
                assert_eq!(
                    positions,
                    (start..=expected_end).collect::<Vec<_>>(),
                    "read(from {from}, max_events {max_events}, max_bytes {max_bytes})"
                );
                for e in &got {
                    assert_eq!(e.event_id, all[e.position as usize - 1].event_id);
                }
            }
        }
    }
    assert!(log.read(1, 0, usize::MAX).unwrap().is_empty());
}

/// Y1 across nodes: writers on two nodes commit at once, to aggregates of
/// their own and to one they all share, retrying after conflicts as a
/// client does. Every event is in the log once, at the position its commit
/// reported, positions have no gaps, and each aggregate's versions run
/// 1, 2, 3, ….
fn y1_concurrent_commits_from_two_nodes_place_every_event_once(b: &dyn Backend) {
    let second = b.second_node();
    let nodes: [&dyn CanonicalLog; 2] = [b.log(), &*second];
    let reported: Mutex<HashMap<Uuid, Placed>> = Mutex::new(HashMap::new());
    std::thread::scope(|scope| {
        for (n, node) in nodes.iter().enumerate() {
            for t in 0..WRITER_THREADS_PER_NODE {
                let reported = &reported;
                scope.spawn(move || {
                    let own = format!("own-{n}-{t}");
                    let client = (n * WRITER_THREADS_PER_NODE + t) as ClientId;
                    let mut shared_version = 0u64;
                    for i in 0..WRITER_PUSHES {
                        let mut events = vec![event(&own, i as u64 + 1)];
                        // Every third push also writes the shared aggregate.
                        let shares = i % 3 == 0;
                        if shares {
                            events.push(event("shared", shared_version + 1));
                        }
                        loop {
                            let r = node.append_pushes(&[push_as(client, &events)]).unwrap();
                            match &r.outcomes[0] {
                                PushOutcome::Appended(at) => {
                                    let mut rep = reported.lock().unwrap();
                                    for p in at {
                                        assert!(rep.insert(p.event_id, *p).is_none());
                                    }
                                    if shares {
                                        shared_version = at[1].version;
                                    }
                                    break;
                                }
                                PushOutcome::Conflict(c) => {
                                    // As a client rebases: renumber on the
                                    // version the server named.
                                    assert_eq!(
                                        c.len(),
                                        1,
                                        "only the shared aggregate moves: {c:?}"
                                    );
                                    assert_eq!(c[0].0, "shared");
                                    shared_version = c[0].1;
                                    events[1].version = shared_version + 1;
                                }
                                PushOutcome::Held { wait_ms } => {
                                    // Another node's writer holds the turn
                                    // (PostgreSQL): offer it again soon.
                                    assert!(*wait_ms <= LEASE_MS_DEFAULT);
                                    std::thread::sleep(Duration::from_millis(1));
                                }
                                other => panic!("unexpected {other:?}"),
                            }
                        }
                    }
                });
            }
        }
    });
    let reported = reported.into_inner().unwrap();
    let events = read_all(b.log());
    let threads = 2 * WRITER_THREADS_PER_NODE;
    let expected = threads * WRITER_PUSHES + threads * WRITER_PUSHES.div_ceil(3);
    assert_eq!(events.len(), expected);
    assert_eq!(reported.len(), expected);
    assert_eq!(b.log().head().unwrap(), expected as u64);
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let mut ids = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "gapless");
        assert!(ids.insert(e.event_id), "event {} twice", e.event_id);
        let v = versions.entry(&e.aggregate_id).or_insert(0);
        *v += 1;
        assert_eq!(
            e.version, *v,
            "versions of {} are contiguous",
            e.aggregate_id
        );
        let at = reported[&e.event_id];
        assert_eq!((at.position, at.version), (e.position, e.version));
    }
    assert_eq!(nodes[1].head().unwrap(), expected as u64);
}

/// A store's id is made once, when it is created, and every node sees it.
fn the_store_id_is_the_same_on_every_node(b: &dyn Backend) {
    let id = b.log().store_id();
    assert!(!id.is_nil());
    assert_eq!(b.second_node().store_id(), id);
}

// --- PostgreSQL only --------------------------------------------------------

/// Waits until `updates` holds one that `want` accepts; returns it.
fn wait_for(
    updates: &Mutex<Vec<HeadUpdate>>,
    want: impl Fn(&HeadUpdate) -> bool,
    what: &str,
) -> HeadUpdate {
    let deadline = Instant::now() + LISTEN_DEADLINE;
    loop {
        if let Some(u) = updates.lock().unwrap().iter().find(|u| want(u)) {
            return u.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not reported within {LISTEN_DEADLINE:?}; got {:?}",
            updates.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The fairness turn across nodes (server/src/pg/turn.rs): the first
/// client refused for a conflict holds the turn in the database, so that a
/// push of a client on *another* node to the same aggregate is held
/// (nothing appended, even though it builds on the current version) until
/// the holder's push lands; the turn then passes to the held client, whose
/// rebased push wins. Other aggregates are never held. Without turns in the
/// database each node would only order its own clients (docs/ARCHITECTURE.md,
/// "Protocol: rationale and history"; the rule is PROTOCOL §5.4).
#[test]
fn postgres_the_turn_holds_clients_of_every_node_in_order() {
    let pg = Postgres::new();
    assert!(pg.log().keeps_turns());
    let (a, second) = (pg.log(), pg.second_node());
    let b = &*second;
    let outcome = |log: &dyn CanonicalLog, client, events: &[Proposal]| {
        commit(log, &[push_as(client, events)]).outcomes.remove(0)
    };
    assert!(matches!(
        outcome(a, 1, &[event("hot", 1)]),
        PushOutcome::Appended(_)
    ));
    // Clients 2 and 8 of node B built on nothing, in one commit: client 2
    // is refused and holds the turn; client 8's push waits (what it
    // rebased now would be stale again by its turn), and its client
    // leaves.
    let both = commit(
        b,
        &[
            push_as(2, &[event("hot", 1)]),
            push_as(8, &[event("hot", 1)]),
        ],
    );
    assert_eq!(
        both.outcomes[0],
        PushOutcome::Conflict(vec![("hot".into(), 1)])
    );
    assert!(
        matches!(both.outcomes[1], PushOutcome::Held { wait_ms } if wait_ms > 0),
        "{:?}",
        both.outcomes[1]
    );
    b.client_left(8).unwrap();
    // Client 3 of node A is up to date, yet waits for client 2's turn.
    match outcome(a, 3, &[event("hot", 2)]) {
        PushOutcome::Held { wait_ms } => assert!(wait_ms <= LEASE_MS_DEFAULT, "{wait_ms}"),
        other => panic!("expected Held, got {other:?}"),
    }
    // The same connection number on the other node is another client.
    assert!(matches!(
        outcome(a, 2, &[event("hot", 2)]),
        PushOutcome::Held { .. }
    ));
    assert_eq!(a.head().unwrap(), 1, "a held push appends nothing");
    // Other aggregates go on.
    assert!(matches!(
        outcome(a, 3, &[event("cold", 1)]),
        PushOutcome::Appended(_)
    ));
    // The holder's rebased push lands; the turn passes to client 3 of A,
    // the first that waited, whose stale push is now refused (it learns
    // what it missed) while client 4 of B waits behind it.
    assert!(matches!(
        outcome(b, 2, &[event("hot", 2)]),
        PushOutcome::Appended(_)
    ));
    assert_eq!(
        outcome(a, 3, &[event("hot", 2)]),
        PushOutcome::Conflict(vec![("hot".into(), 2)])
    );
    assert!(matches!(
        outcome(b, 4, &[event("hot", 3)]),
        PushOutcome::Held { .. }
    ));
    let won = outcome(a, 3, &[event("hot", 3)]);
    assert_eq!(placed(&won)[0].version, 3);
    // Client 2 of A waited too (before client 4): the turn is its now;
    // clients 4 of B and 10 of A queue behind it.
    for (log, client) in [(b, 4), (a, 10)] {
        assert!(matches!(
            outcome(log, client, &[event("hot", 4)]),
            PushOutcome::Held { .. }
        ));
    }
    // Turn and queue live in the store's row, readable by an operator.
    let stored = pg.sql(&format!(
        "SELECT turn->'holder'->>'client', jsonb_array_length(turn->'queue')
           FROM strata_stores WHERE name = '{STORE}'"
    ));
    let (holder, queued) = stored.trim().split_once('|').unwrap();
    assert!(holder.ends_with("/2"), "{stored}");
    assert_eq!(queued, "2", "{stored}");
    // A waiter that disconnects leaves the queue.
    b.client_left(4).unwrap();
    // A push held in the commit that passes the turn to its client is
    // offered again at once (wait 0), not when the old turn runs out.
    let passing = commit(
        a,
        &[
            push_as(2, &[event("hot", 4)]),
            push_as(10, &[event("hot", 4)]),
        ],
    );
    assert!(matches!(passing.outcomes[0], PushOutcome::Appended(_)));
    assert_eq!(passing.outcomes[1], PushOutcome::Held { wait_ms: 0 });
    // A holder that disconnects leaves the turn at once (its node says so)
    // instead of keeping it to its deadline.
    a.client_left(10).unwrap();
    assert!(matches!(
        outcome(b, 5, &[event("hot", 5)]),
        PushOutcome::Appended(_)
    ));
    // A node that dies takes its clients out of the turn: its presence
    // lock is released with its connection, and the next commit on
    // another node sees it.
    assert_eq!(
        outcome(b, 6, &[event("hot", 5)]),
        PushOutcome::Conflict(vec![("hot".into(), 5)])
    );
    assert!(matches!(
        outcome(a, 7, &[event("hot", 6)]),
        PushOutcome::Held { .. }
    ));
    let presences = || {
        pg.sql(&format!(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND classid = {} AND objsubid = 2
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            strata_server::pg::PRESENCE_LOCK_CLASS
        ))
        .trim()
        .parse::<u32>()
        .unwrap()
    };
    // Advisory locks belong to one database: the other tests' nodes, in
    // databases of their own in the same cluster, do not count.
    assert_eq!(presences(), 2, "one per node");
    drop(second);
    let deadline = Instant::now() + LISTEN_DEADLINE;
    while presences() > 1 {
        assert!(
            Instant::now() < deadline,
            "node B's presence lock is still held"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(matches!(
        outcome(a, 7, &[event("hot", 6)]),
        PushOutcome::Appended(_)
    ));
}

/// The listener of one node hears every commit of another at once (a
/// notification, with polling too slow to be the cause), still hears them
/// after its connection was killed, and finds a head that moved without
/// a notification by polling.
#[test]
fn postgres_listener_hears_other_nodes_commits() {
    let pg = Postgres::new();
    let other = pg.node();
    let updates = Arc::new(Mutex::new(Vec::new()));
    let heard = updates.clone();
    let listener = other
        .listen(
            ListenerConfig {
                poll_interval: Duration::from_secs(3600),
                reconnect_delay: Duration::from_millis(50),
            },
            move |u| heard.lock().unwrap().push(u),
        )
        .unwrap();
    let deadline = Instant::now() + LISTEN_DEADLINE;
    while !listener.is_connected() {
        assert!(Instant::now() < deadline, "the listener did not connect");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = commit(&pg.log, &[push(&[event("a", 1), event("a", 2)])]);
    let u = wait_for(&updates, |u| u.head == r.head, "the first commit");
    assert_eq!(
        u,
        HeadUpdate {
            store: STORE.into(),
            head: 2,
            source: HeadSource::Notify
        }
    );

    // Kill the listening session: it reconnects, polls, and listens again.
    let killed = pg.sql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{LISTENER_APPLICATION_NAME}'"
    ));
    assert_eq!(killed, "1");
    let r = commit(&pg.log, &[push(&[event("a", 3)])]);
    wait_for(&updates, |u| u.head == r.head, "a commit after the kill");
    let deadline = Instant::now() + LISTEN_DEADLINE;
    while listener.connections() < 2 || !listener.is_connected() {
        assert!(Instant::now() < deadline, "the listener did not reconnect");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = commit(&pg.log, &[push(&[event("a", 4)])]);
    let u = wait_for(
        &updates,
        |u| u.head == r.head,
        "a commit after reconnecting",
    );
    assert_eq!(u.source, HeadSource::Notify);
    drop(listener);

    // A head that moves without a notification (as one lost while the
    // listener was away): the poll finds it. The test moves the head of a
    // store of its own by hand, which only a test may do.
    let polled = Arc::new(Mutex::new(Vec::new()));
    let heard = polled.clone();
    let _poller = other
        .listen(
            ListenerConfig {
                poll_interval: Duration::from_millis(100),
                reconnect_delay: Duration::from_millis(50),
            },
            move |u| heard.lock().unwrap().push(u),
        )
        .unwrap();
    other.open_log("quiet").unwrap();
    pg.sql("UPDATE strata_stores SET head = 7 WHERE name = 'quiet'");
    let u = wait_for(
        &polled,
        |u| u.store == "quiet",
        "a head moved without a notification",
    );
    assert_eq!((u.head, u.source), (7, HeadSource::Poll));
    // Heads only rise: the first poll reported the contract store's head
    // once, and nothing reports it again.
    std::thread::sleep(Duration::from_millis(300));
    let contract: Vec<_> = polled
        .lock()
        .unwrap()
        .iter()
        .filter(|u| u.store == STORE)
        .cloned()
        .collect();
    assert_eq!(contract.len(), 1, "{contract:?}");
    assert_eq!(contract[0].head, 4);
}

/// The server calls the log from its committer (a std thread) and from
/// Tokio's blocking threads; both work.
#[test]
fn postgres_log_works_from_blocking_threads_of_the_runtime() {
    let pg = Postgres::new();
    let log = Arc::new(pg.node().open_log(STORE).unwrap());
    let from_blocking = {
        let log = log.clone();
        pg.rt
            .block_on(async move {
                tokio::task::spawn_blocking(move || {
                    log.append_pushes(&[push(&[event("a", 1)])]).unwrap();
                    log.read(1, 10, 1 << 20).unwrap()
                })
                .await
            })
            .unwrap()
    };
    assert_eq!(from_blocking.len(), 1);
    let from_thread = std::thread::spawn(move || log.head().unwrap())
        .join()
        .unwrap();
    assert_eq!(from_thread, 1);
}

/// A database that does not answer is a clear error at start, naming it
/// and what to check; so is a missing database.
#[test]
fn postgres_an_unreachable_database_is_a_clear_error() {
    let rt = runtime();
    // No server at all: a socket directory where none runs.
    let empty = tempfile::tempdir().unwrap();
    let url = format!(
        "host={} port=5432 user=strata dbname=strata",
        empty.path().display()
    );
    let err = rt
        .block_on(PgDatabase::connect(PgConfig::new(url)))
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PgError::Unreachable { .. }), "{msg}");
    assert!(
        msg.starts_with(&format!(
            "cannot connect to PostgreSQL at strata@{}:5432/strata",
            empty.path().display()
        )),
        "{msg}"
    );
    assert!(
        msg.contains("No such file or directory"),
        "the cause is named: {msg}"
    );
    assert!(msg.contains("check that PostgreSQL is running"), "{msg}");

    // A server that takes the connection and never answers: the connect
    // timeout ends the wait. (The listener is held, so no other process
    // can take its port meanwhile.)
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut config = PgConfig::new(format!("postgres://strata:hunter2@127.0.0.1:{port}/strata"));
    config.connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = rt.block_on(PgDatabase::connect(config)).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let msg = err.to_string();
    assert!(matches!(err, PgError::Unreachable { .. }), "{msg}");
    assert!(
        msg.starts_with(&format!(
            "cannot connect to PostgreSQL at strata@127.0.0.1:{port}/strata: no connection within 1s"
        )),
        "{msg}"
    );
    assert!(
        !msg.contains("hunter2"),
        "the password is never shown: {msg}"
    );
    drop(silent);

    let cluster = PgCluster::shared();
    let err = rt
        .block_on(PgDatabase::connect(PgConfig::new(cluster.url("nosuchdb"))))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("database \"nosuchdb\" does not exist"),
        "{msg}"
    );
    assert!(msg.contains("create it"), "{msg}");

    let err = rt
        .block_on(PgDatabase::connect(PgConfig::new("postgres://[bad")))
        .unwrap_err();
    assert!(matches!(err, PgError::BadUrl { .. }), "{err}");

    // Limits the database cannot hold are refused before connecting.
    let mut config = PgConfig::new(cluster.url("postgres"));
    config.limits.aggregate_id_bytes_max = 10_000;
    let err = rt.block_on(PgDatabase::connect(config)).unwrap_err();
    assert!(
        err.to_string().contains("limits.aggregate_id_bytes_max"),
        "{err}"
    );
}

/// A schema newer than the binary is refused at start, saying what to do,
/// and nothing is changed; nodes that start together migrate once.
#[test]
fn postgres_a_newer_schema_is_refused_and_migrations_run_once() {
    let cluster = PgCluster::shared();
    let db = cluster.create_database();
    let rt = runtime();
    let nodes: Vec<_> = (0..3)
        .map(|_| PgDatabase::connect(PgConfig::new(cluster.url(&db))))
        .collect();
    for node in rt.block_on(futures_util::future::join_all(nodes)) {
        node.unwrap();
    }
    assert_eq!(
        cluster.sql(
            &db,
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM strata_schema"
        ),
        (1..=SCHEMA_VERSION)
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );

    let newer = SCHEMA_VERSION + 1;
    cluster.sql(
        &db,
        &format!("INSERT INTO strata_schema (version, name) VALUES ({newer}, 'from_the_future')"),
    );
    let err = rt
        .block_on(PgDatabase::connect(PgConfig::new(cluster.url(&db))))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, PgError::SchemaNewer { found, supported, .. } if found == newer && supported == SCHEMA_VERSION),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "schema version {newer}, newer than this binary's {SCHEMA_VERSION}"
        )),
        "{msg}"
    );
    assert!(msg.contains("run that version"), "{msg}");
    assert_eq!(
        cluster.sql(&db, "SELECT count(*) FROM strata_schema"),
        (SCHEMA_VERSION + 1).to_string()
    );
}

/// Stores in one database are separate logs: each has its own id and its
/// own positions from 1, and reads one store's events only.
#[test]
fn postgres_stores_in_one_database_are_separate_logs() {
    let pg = Postgres::new();
    let db = pg.log.database();
    let other = db.open_log("other").unwrap();
    assert_ne!(other.store_id(), pg.log.store_id());
    let a = [event("a", 1), event("a", 2)];
    commit(&pg.log, &[push(&a)]);
    // The same ids and aggregate in another store are other events.
    let r = commit(&other, &[push(&a[..1])]);
    assert_eq!(placed(&r.outcomes[0])[0].position, 1);
    assert_eq!((pg.log.head().unwrap(), other.head().unwrap()), (2, 1));
    assert_eq!(read_all(&other).len(), 1);
    assert_eq!(read_all(&pg.log).len(), 2);
    let err = db.open_log("Not Valid").unwrap_err();
    assert!(matches!(err, PgError::BadStoreName { .. }), "{err}");
    let err = db
        .listen(
            ListenerConfig {
                poll_interval: Duration::ZERO,
                ..ListenerConfig::default()
            },
            |_| {},
        )
        .unwrap_err();
    assert!(err.to_string().contains("poll_interval"), "{err}");
}

/// What the log finds broken in the database is reported as damage, with
/// where; never handed out as an event.
#[test]
fn postgres_a_bad_row_is_reported_as_damage() {
    let pg = Postgres::new();
    commit(&pg.log, &[push(&[event("a", 1)])]);
    pg.sql("UPDATE strata_events SET hlc = 'not a clock' WHERE position = 1");
    let err = pg.log.read(1, 10, 1 << 20).unwrap_err();
    assert!(
        matches!(&err, strata::sync::StorageError::Damaged { .. }),
        "{err:?}"
    );
    assert!(err.detail().contains("position 1"), "{}", err.detail());
}

/// The database goes away under a node and comes back: calls fail as
/// unavailable meanwhile (the sync core answers `Unavailable` and clients
/// retry), then work again without reconnecting the node by hand; the
/// listener reconnects by itself and hears commits again.
#[test]
fn postgres_a_restarted_database_is_unavailable_then_serves_again() {
    // A cluster of its own: the shared one must not stop under other tests.
    let cluster = PgCluster::start();
    let db_name = cluster.create_database();
    let rt = runtime();
    let mut config = PgConfig::new(cluster.url(&db_name));
    config.connect_timeout = Duration::from_secs(2);
    let db = rt.block_on(PgDatabase::connect(config)).unwrap();
    let log = db.open_log(STORE).unwrap();
    let updates = Arc::new(Mutex::new(Vec::new()));
    let heard = updates.clone();
    let listener = db
        .listen(
            ListenerConfig {
                poll_interval: Duration::from_secs(3600),
                reconnect_delay: Duration::from_millis(50),
            },
            move |u| heard.lock().unwrap().push(u),
        )
        .unwrap();
    commit(&log, &[push(&[event("a", 1)])]);
    wait_for(&updates, |u| u.head == 1, "a commit before the restart");

    cluster.stop();
    let held = event("a", 2);
    let err = log
        .append_pushes(&[push(std::slice::from_ref(&held))])
        .unwrap_err();
    assert!(
        matches!(err, strata::sync::StorageError::Unavailable { .. }),
        "{err:?}"
    );
    assert!(log.read(1, 10, 1 << 20).is_err());
    cluster.start_again();

    // Connections the restart closed are replaced as they are found closed.
    let deadline = Instant::now() + LISTEN_DEADLINE;
    let r = loop {
        match log.append_pushes(&[push(std::slice::from_ref(&held))]) {
            Ok(r) => break r,
            Err(e) => {
                assert!(Instant::now() < deadline, "still failing: {e:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(placed(&r.outcomes[0])[0].position, 2);
    wait_for(&updates, |u| u.head == 2, "a commit after the restart");
    assert!(listener.connections() >= 2);
    assert_eq!(read_all(&log).len(), 2);
}
