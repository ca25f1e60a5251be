//! The real replica storage (`sync::Replica`: a Store, a durable SQLite
//! outbox, views with pending events on top, rejections, the rebase hook)
//! against a real server Store, driven through the sans-IO cores with an
//! in-process "network". Transports are tested in tests/.

use std::sync::Arc;

use strata::hlc::Timestamp;
use strata::projection::counter::{self, CounterProjection};
use strata::projection::{ViewOptions, Views};
use strata::sync::proto::{ClientMessage, ErrorCode, Proposal, ServerMessage};
use strata::sync::{
    CanonicalLog, ClientInfo, PendingEvent, RebaseDecision, RebaseHook, Replica, ReplicaConfig,
    ReplicaCore, ReplicaOptions, ServerConfig, ServerCore, SyncError,
};
use strata::{Durability, ExpectedVersion, NewEvent, Options, Store};
use uuid::Uuid;

/// A server: a real store and the real sync core, with the shell's part
/// (welcome, follow streams, group commits) played synchronously.
struct Server {
    store: Store,
    core: ServerCore,
    next: u64,
    /// Each connection's next follow position.
    follow: std::collections::HashMap<u64, u64>,
    /// Messages for each connection, not yet delivered.
    out: std::collections::HashMap<u64, std::collections::VecDeque<ServerMessage>>,
    /// What the tokens of clients connecting from now on grant.
    may_write: bool,
}

impl Server {
    fn new(dir: &std::path::Path) -> Server {
        Server {
            store: Store::open(
                dir,
                Options {
                    durability: Durability::None,
                    ..Options::default()
                },
            )
            .unwrap(),
            core: ServerCore::new(ServerConfig::default(), 0),
            next: 1,
            follow: Default::default(),
            out: Default::default(),
            may_write: true,
        }
    }

    /// A new core with `config` (a restarted server).
    fn restart(&mut self, config: ServerConfig) {
        self.core = ServerCore::new(config, self.store.head());
        self.follow.clear();
        self.out.clear();
    }

    /// One message from client `id`, handled as `strata-server` does:
    /// Hello welcomes, Follow starts the stream, a push goes to the core,
    /// whose commits run until it is quiet.
    fn receive(&mut self, now: u64, id: u64, m: ClientMessage) {
        match m {
            ClientMessage::Hello { client, .. } => {
                self.core.handle_connect(
                    id,
                    ClientInfo {
                        name: client,
                        may_write: self.may_write,
                    },
                );
                let welcome = ServerMessage::Welcome {
                    protocol: strata::sync::proto::PROTOCOL_VERSION,
                    store_id: self.store.store_id(),
                    head: self.store.head(),
                };
                self.out.entry(id).or_default().push_back(welcome);
            }
            ClientMessage::Follow { from } => {
                self.follow.insert(id, from.max(1));
            }
            ClientMessage::Push {
                request, events, ..
            } => {
                self.core.handle_push(now, id, request, events);
                while let Some(commit) = self.core.poll_commit() {
                    let result = self.store.append_pushes(&commit.pushes);
                    self.core.handle_committed(now, commit.id, result);
                }
                while let Some((to, msg)) = self.core.poll_transmit() {
                    self.out.entry(to).or_default().push_back(msg);
                }
            }
        }
    }

    /// The next message for `id`: an answer first, then the follow stream
    /// (raw log records, as over QUIC).
    fn next_for(&mut self, id: u64) -> Option<ServerMessage> {
        if let Some(m) = self.out.get_mut(&id).and_then(|q| q.pop_front()) {
            return Some(m);
        }
        let next = *self.follow.get(&id)?;
        let run = self.store.read_raw_records(next, 1 << 20).unwrap()?;
        self.follow.insert(id, run.last_position() + 1);
        Some(run.into())
    }

    /// Pushes `events` as client `id` and returns the answers it got.
    fn push(&mut self, id: u64, events: Vec<Proposal>) -> Vec<ServerMessage> {
        let base = self.store.head();
        self.receive(
            0,
            id,
            ClientMessage::Push {
                request: 7,
                base,
                events,
            },
        );
        self.out.remove(&id).map(Vec::from).unwrap_or_default()
    }
}

struct Client {
    id: u64,
    core: ReplicaCore,
    replica: Replica,
}

fn replica(dir: &std::path::Path, hook: Option<Arc<dyn RebaseHook>>) -> Replica {
    let mut options = ReplicaOptions {
        store: Options {
            durability: Durability::None,
            ..Options::default()
        },
        projections: vec![Arc::new(CounterProjection)],
        views: ViewOptions {
            background: false,
            ..ViewOptions::default()
        },
        ..ReplicaOptions::default()
    };
    if let Some(h) = hook {
        options.hook = h;
    }
    Replica::open(dir, options).unwrap()
}

fn connect(server: &mut Server, replica: Replica, name: &str) -> Client {
    let id = server.next;
    server.next += 1;
    let mut core = ReplicaCore::new(ReplicaConfig {
        request_timeout_ms: 10_000,
        push_events_max: 100,
        ..ReplicaConfig::new("default", name)
    });
    core.handle_connected(&replica.storage());
    Client { id, core, replica }
}

/// Moves messages both ways until nothing moves.
fn pump(server: &mut Server, clients: &mut [&mut Client]) {
    loop {
        let mut moved = false;
        for c in clients.iter_mut() {
            while let Some(m) = c.core.poll_transmit() {
                moved = true;
                server.receive(0, c.id, m);
            }
        }
        for c in clients.iter_mut() {
            while let Some(m) = server.next_for(c.id) {
                moved = true;
                c.core
                    .handle_message(0, m, &mut c.replica.storage())
                    .unwrap();
            }
        }
        if !moved {
            return;
        }
    }
}

fn value(r: &Replica, id: &str) -> i64 {
    r.read_views(|c| counter::value(c, id))
        .unwrap()
        .unwrap_or(0)
}

#[test]
fn y2_y3_local_appends_are_visible_at_once_and_converge_after_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(&dir.path().join("server"));
    let mut a = connect(&mut server, replica(&dir.path().join("a"), None), "a");
    let mut b = connect(&mut server, replica(&dir.path().join("b"), None), "b");
    pump(&mut server, &mut [&mut a, &mut b]);

    // Y2: visible locally at once, online or not.
    a.replica
        .append("counter", ExpectedVersion::Any, vec![counter::increment(1)])
        .unwrap();
    assert_eq!(value(&a.replica, "counter"), 1);
    assert_eq!(a.replica.pending().len(), 1);
    assert!(a.replica.read_aggregate("counter").unwrap()[0].pending);
    a.core
        .handle_local_change(0, &mut a.replica.storage())
        .unwrap();
    pump(&mut server, &mut [&mut a, &mut b]);
    assert_eq!(
        a.replica.pending().len(),
        0,
        "the accepted event left the outbox"
    );
    assert_eq!(
        value(&b.replica, "counter"),
        1,
        "B got A's event from the stream"
    );

    // A offline: +1 +1 (versions 2 and 3 locally); B +1 and syncs (its
    // version 2 wins on the server).
    a.core.handle_disconnected();
    a.replica
        .append("counter", ExpectedVersion::Any, vec![counter::increment(1)])
        .unwrap();
    a.replica
        .append("counter", ExpectedVersion::Any, vec![counter::increment(1)])
        .unwrap();
    assert_eq!(value(&a.replica, "counter"), 3);
    b.replica
        .append("counter", ExpectedVersion::Any, vec![counter::increment(1)])
        .unwrap();
    b.core
        .handle_local_change(0, &mut b.replica.storage())
        .unwrap();
    pump(&mut server, &mut [&mut a, &mut b]);
    assert_eq!(value(&b.replica, "counter"), 2);

    // A comes back: PULL_REQUIRED, rebase (versions 3 and 4 now), push.
    a.core.handle_connected(&a.replica.storage());
    pump(&mut server, &mut [&mut a, &mut b]);
    assert_eq!(value(&a.replica, "counter"), 4);
    assert_eq!(value(&b.replica, "counter"), 4);
    let server_events: Vec<_> = server.store.read_all(1).map(Result::unwrap).collect();
    assert_eq!(server_events.len(), 4);
    // Y1: committed logs are the server's, record for record.
    for r in [&a.replica, &b.replica] {
        let local: Vec<_> = r.committed().read_all(1).map(Result::unwrap).collect();
        assert_eq!(local, server_events);
    }
    let server_views = Views::open(
        &server.store,
        vec![Arc::new(CounterProjection)],
        ViewOptions {
            background: false,
            ..ViewOptions::default()
        },
    )
    .unwrap();
    assert_eq!(
        server_views.read(|c| counter::value(c, "counter")).unwrap(),
        Some(4)
    );
}

#[test]
fn y4_the_outbox_survives_a_restart_and_drains_after_reconnecting() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(&dir.path().join("server"));
    let adir = dir.path().join("a");
    {
        let r = replica(&adir, None);
        r.append("counter", ExpectedVersion::Any, vec![counter::increment(5)])
            .unwrap();
        r.close().unwrap();
    }
    // Restarted, then connected: the outbox drains by itself.
    let mut a = connect(&mut server, replica(&adir, None), "a");
    assert_eq!(a.replica.pending().len(), 1);
    pump(&mut server, &mut [&mut a]);
    assert_eq!(a.replica.pending().len(), 0);
    assert_eq!(server.store.head(), 1);
    // The push is replayed (as after a crash between push and answer): the
    // server answers with the existing position, nothing is written twice.
    let e = a.replica.committed().read_all(1).next().unwrap().unwrap();
    let replay = ClientMessage::Push {
        request: 99,
        base: 0,
        events: vec![strata::sync::proto::Proposal {
            event_id: e.event_id,
            aggregate_id: e.aggregate_id.clone(),
            version: e.version,
            event_type: e.event_type.clone(),
            data: e.data.clone(),
            timestamp: e.timestamp.clone(),
            metadata: None,
        }],
    };
    server.receive(0, a.id, replay);
    let replies: Vec<ServerMessage> = server.out.remove(&a.id).map(Vec::from).unwrap_or_default();
    assert!(
        matches!(&replies[0], ServerMessage::Accepted { placed, .. } if placed[0].position == 1),
        "{replies:?}"
    );
    assert_eq!(server.store.head(), 1);
}

#[test]
fn refused_events_become_rejection_records_never_silence() {
    struct DropDecrements;
    impl RebaseHook for DropDecrements {
        fn rebase(&self, e: &PendingEvent, _: &Store, _: u64) -> RebaseDecision {
            if e.event_type == counter::DECREMENTED {
                RebaseDecision::Drop {
                    reason: "decrements do not survive a conflict".into(),
                }
            } else {
                RebaseDecision::Keep
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(&dir.path().join("server"));
    let mut a = connect(
        &mut server,
        replica(&dir.path().join("a"), Some(Arc::new(DropDecrements))),
        "a",
    );
    let mut b = connect(&mut server, replica(&dir.path().join("b"), None), "b");
    pump(&mut server, &mut [&mut a, &mut b]);
    // A prepares an increment and a decrement offline; B gets in first.
    a.core.handle_disconnected();
    a.replica
        .append(
            "counter",
            ExpectedVersion::Any,
            vec![counter::increment(1), counter::decrement(1)],
        )
        .unwrap();
    b.replica
        .append(
            "counter",
            ExpectedVersion::Any,
            vec![counter::increment(10)],
        )
        .unwrap();
    b.core
        .handle_local_change(0, &mut b.replica.storage())
        .unwrap();
    pump(&mut server, &mut [&mut a, &mut b]);
    a.core.handle_connected(&a.replica.storage());
    pump(&mut server, &mut [&mut a, &mut b]);
    // The hook dropped the decrement during the rebase: a rejection record.
    let rejections = a.replica.rejections().unwrap();
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].event_type, counter::DECREMENTED);
    assert!(rejections[0].reason.contains("do not survive"));
    assert_eq!(a.replica.pending().len(), 0);
    assert_eq!(value(&a.replica, "counter"), 11);
    assert_eq!(value(&b.replica, "counter"), 11);

    // The server refuses for good an event it can never take (here: too
    // large for its limits): also a rejection.
    let big = NewEvent::new(
        counter::INCREMENTED,
        format!("{{\"value\":1,\"pad\":\"{}\"}}", "x".repeat(2 << 20)),
    );
    a.replica
        .append("counter", ExpectedVersion::Any, vec![big])
        .unwrap_err();
    let small_limits = strata::Limits {
        event_data_bytes_max: 8,
        ..strata::Limits::default()
    };
    server.restart(ServerConfig {
        limits: small_limits,
        ..ServerConfig::default()
    });
    let mut a = connect(&mut server, a.replica, "a2");
    a.replica
        .append("counter", ExpectedVersion::Any, vec![counter::increment(1)])
        .unwrap();
    a.core
        .handle_local_change(0, &mut a.replica.storage())
        .unwrap();
    pump(&mut server, &mut [&mut a]);
    let rejections = a.replica.rejections().unwrap();
    assert_eq!(rejections.len(), 2);
    assert!(
        rejections.iter().any(|r| r.reason.contains("event_data")),
        "{rejections:?}"
    );
    assert_eq!(a.replica.pending().len(), 0, "the outbox moved on");
}

#[test]
fn status_reports_pending_and_positions() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(&dir.path().join("server"));
    server
        .store
        .append("x", ExpectedVersion::Any, vec![NewEvent::new("T", "{}")])
        .unwrap();
    let mut a = connect(&mut server, replica(&dir.path().join("a"), None), "a");
    a.replica
        .append("counter", ExpectedVersion::Any, vec![counter::increment(1)])
        .unwrap();
    let s = a.core.status(&a.replica.storage(), u64::MAX / 2);
    assert_eq!((s.connected, s.pending, s.committed), (false, 1, 0));
    assert!(s.oldest_pending_ms.is_some());
    pump(&mut server, &mut [&mut a]);
    let s = a.core.status(&a.replica.storage(), 0);
    assert_eq!(
        (s.connected, s.pending, s.committed, s.server_head),
        (true, 0, 2, 2)
    );
}

fn hello(server: &mut Server, id: u64) {
    server.receive(
        0,
        id,
        ClientMessage::Hello {
            protocol: strata::sync::proto::PROTOCOL_VERSION,
            store: "default".into(),
            token: None,
            client: format!("c{id}"),
        },
    );
    assert!(matches!(
        server.next_for(id),
        Some(ServerMessage::Welcome { .. })
    ));
}

fn proposal(id: u128, aggregate: &str, version: u64, physical_ms: u64) -> Proposal {
    Proposal {
        event_id: Uuid::from_u128(id),
        aggregate_id: aggregate.into(),
        version,
        event_type: "T".into(),
        data: b"{}".to_vec(),
        timestamp: Timestamp::from_parts(physical_ms, 0, "client").unwrap(),
        metadata: None,
    }
}

#[test]
fn a_push_gets_one_final_answer_when_the_store_refuses_single_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(&dir.path().join("server"));
    let taken = Uuid::from_u128(1);
    server
        .store
        .append(
            "other",
            ExpectedVersion::Any,
            vec![NewEvent::new("T", "{}").with_id(taken)],
        )
        .unwrap();
    hello(&mut server, 1);
    let now = strata::hlc::WallClock::now_ms(&strata::hlc::SystemClock);
    let valid = proposal(3, "c", 1, now);
    let replies = server.push(
        1,
        vec![
            // An id another aggregate holds.
            proposal(1, "a", 1, now),
            // A clock an hour fast: beyond the allowed drift (H1).
            proposal(2, "b", 1, now + 3_600_000),
            valid.clone(),
            // The same event twice is one event.
            valid.clone(),
        ],
    );
    let [
        ServerMessage::Rejected { rejections, .. },
        ServerMessage::Accepted { placed, .. },
    ] = &replies[..]
    else {
        panic!("expected Rejected then Accepted, got {replies:?}");
    };
    let mut refused: Vec<Uuid> = rejections.iter().map(|(id, _)| *id).collect();
    refused.sort();
    assert_eq!(refused, [Uuid::from_u128(1), Uuid::from_u128(2)]);
    assert!(
        rejections.iter().any(|(_, why)| why.contains("drift")),
        "{rejections:?}"
    );
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0].event_id, valid.event_id);
    assert_eq!(server.store.head(), 2, "only the valid event was written");
}

#[test]
fn a_refused_push_names_every_aggregate_that_moved() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(&dir.path().join("server"));
    for agg in ["a", "b"] {
        server
            .store
            .append(agg, ExpectedVersion::Any, vec![NewEvent::new("T", "{}")])
            .unwrap();
    }
    hello(&mut server, 1);
    let now = strata::hlc::WallClock::now_ms(&strata::hlc::SystemClock);
    let replies = server.push(
        1,
        vec![
            proposal(10, "a", 1, now),
            proposal(11, "b", 1, now),
            proposal(12, "fresh", 1, now),
        ],
    );
    let [ServerMessage::PullRequired { conflicts, .. }] = &replies[..] else {
        panic!("expected PullRequired, got {replies:?}");
    };
    assert_eq!(conflicts, &[("a".to_string(), 1), ("b".to_string(), 1)]);
}

#[test]
fn a_push_over_the_byte_limit_is_refused_whole_and_the_replica_backs_off_smaller() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(&dir.path().join("server"));
    let limits = strata::Limits {
        batch_bytes_max: 4_000,
        ..strata::Limits::default()
    };
    server.restart(ServerConfig {
        limits,
        ..ServerConfig::default()
    });
    let a = replica(&dir.path().join("a"), None);
    for _ in 0..40 {
        a.append("counter", ExpectedVersion::Any, vec![counter::increment(1)])
            .unwrap();
    }
    // Alone over the server's limit: it can never pass.
    let huge = NewEvent::new("Note", vec![b'x'; 5_000]);
    let huge_id = huge.event_id;
    a.append("notes", ExpectedVersion::Any, vec![huge]).unwrap();
    let mut a = connect(&mut server, a, "a");
    let mut now = 0;
    let mut pushes = Vec::new();
    let mut refusals = 0;
    // Drive by hand to see each push and the waits between them.
    for _ in 0..200 {
        let mut moved = false;
        while let Some(m) = a.core.poll_transmit() {
            moved = true;
            if let ClientMessage::Push { events, .. } = &m {
                pushes.push((now, events.len()));
            }
            server.receive(now, a.id, m);
        }
        while let Some(m) = server.next_for(a.id) {
            moved = true;
            if matches!(m, ServerMessage::Error { .. }) {
                refusals += 1;
            }
            a.core
                .handle_message(now, m, &mut a.replica.storage())
                .unwrap();
        }
        if moved {
            continue;
        }
        if a.replica.pending().is_empty() {
            break;
        }
        match a.core.poll_timeout() {
            Some(t) => {
                assert!(t > now, "a refused push is not retried at once");
                now = t;
                a.core
                    .handle_timeout(now, &mut a.replica.storage())
                    .unwrap();
            }
            None => a
                .core
                .handle_local_change(now, &mut a.replica.storage())
                .unwrap(),
        }
    }
    assert!(a.replica.pending().is_empty(), "pushes: {pushes:?}");
    assert_eq!(server.store.head(), 40);
    assert!(refusals > 0, "the first push of 41 events is too large");
    // Each refusal halved the push: the first was all 41, a later one fit.
    assert_eq!(pushes[0].1, 41);
    assert!(pushes.iter().any(|&(_, n)| n < 41));
    assert_eq!(value(&a.replica, "counter"), 40);
    // The event too large alone became a rejection, not a retry forever.
    let rejections = a.replica.rejections().unwrap();
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert_eq!(rejections[0].event_id, huge_id);
    assert!(
        rejections[0].reason.contains("too large"),
        "{}",
        rejections[0].reason
    );
}

/// A token that may only read: the replica follows the store, and its
/// first push ends the session with `Unauthorized` (no retry can change a
/// grant); its events stay pending, for a token that may write.
#[test]
fn a_push_with_a_read_only_grant_ends_the_session_and_keeps_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(&dir.path().join("server"));
    let mut writer = connect(&mut server, replica(&dir.path().join("w"), None), "w");
    writer
        .replica
        .append("counter", ExpectedVersion::Any, vec![counter::increment(1)])
        .unwrap();
    writer
        .core
        .handle_local_change(0, &mut writer.replica.storage())
        .unwrap();
    pump(&mut server, &mut [&mut writer]);
    assert_eq!(server.store.head(), 1);

    server.may_write = false;
    let mut reader = connect(&mut server, replica(&dir.path().join("r"), None), "r");
    reader
        .replica
        .append("counter", ExpectedVersion::Any, vec![counter::increment(5)])
        .unwrap();
    let mut refused = None;
    for _ in 0..20 {
        while let Some(m) = reader.core.poll_transmit() {
            server.receive(0, reader.id, m);
        }
        let mut moved = false;
        while let Some(m) = server.next_for(reader.id) {
            moved = true;
            if let Err(e) = reader
                .core
                .handle_message(0, m, &mut reader.replica.storage())
            {
                refused = Some(e);
                break;
            }
        }
        if refused.is_some() || !moved {
            break;
        }
    }
    match refused {
        Some(SyncError::Refused {
            code: ErrorCode::Unauthorized,
            message,
        }) => assert!(message.contains("read"), "{message}"),
        other => panic!("expected Unauthorized, got {other:?}"),
    }
    assert_eq!(server.store.head(), 1, "nothing was written");
    assert_eq!(reader.replica.pending().len(), 1, "the event stays pending");
}

#[test]
fn a_server_that_lost_events_is_refused_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::new(&dir.path().join("server"));
    let mut a = connect(&mut server, replica(&dir.path().join("a"), None), "a");
    a.replica
        .append("counter", ExpectedVersion::Any, vec![counter::increment(1)])
        .unwrap();
    a.core
        .handle_local_change(0, &mut a.replica.storage())
        .unwrap();
    pump(&mut server, &mut [&mut a]);
    assert_eq!(a.replica.committed().head(), 1);
    // The same store, restored from a backup taken before that event.
    a.core.handle_connected(&a.replica.storage());
    let err = a
        .core
        .handle_message(
            0,
            ServerMessage::Welcome {
                protocol: strata::sync::proto::PROTOCOL_VERSION,
                store_id: server.store.store_id(),
                head: 0,
            },
            &mut a.replica.storage(),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            SyncError::ServerBehind {
                server_head: 0,
                local_head: 1
            }
        ),
        "{err}"
    );
    // Malformed server messages are errors, not panics.
    a.core.handle_connected(&a.replica.storage());
    let err = a
        .core
        .handle_message(
            0,
            ServerMessage::Records {
                first_position: 2,
                count: 0,
                records: Vec::new(),
            },
            &mut a.replica.storage(),
        )
        .unwrap_err();
    assert!(matches!(err, SyncError::Unexpected(_)), "{err}");
}

#[test]
fn a_replicas_log_refuses_plain_appends_even_when_opened_as_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a");
    let r = replica(&path, None);
    let plain = r
        .committed()
        .append("x", ExpectedVersion::Any, vec![NewEvent::new("T", "{}")]);
    assert!(
        matches!(plain, Err(strata::Error::ReplicaLog { .. })),
        "{plain:?}"
    );
    r.close().unwrap();
    // The mark is the store's own file: it holds without the outbox, a
    // file of the layer above.
    assert!(path.join(strata::REPLICA_LOG_FILE).exists());
    std::fs::rename(
        path.join(strata::sync::local::OUTBOX_FILE),
        dir.path().join("outbox-elsewhere"),
    )
    .unwrap();
    let store = Store::open(&path, Options::default()).unwrap();
    let err = store
        .append("x", ExpectedVersion::Any, vec![NewEvent::new("T", "{}")])
        .unwrap_err();
    assert!(err.to_string().contains("sync replica"), "{err}");
}

/// What a broken or hostile server sends must not reach a replica's log,
/// where it would stop the index (a repeated event id), the log encoder
/// (an event type past the format's limit) or every later read (a clock
/// past the largest): each is refused with the position named, nothing
/// is written, and the log still takes the server's real events after.
/// (The fuzz target `replica_core` found these; its corpus keeps the
/// raw-record forms, `fuzz/corpus/replica_core/crash-*`.)
#[test]
fn events_a_replica_log_cannot_hold_are_refused_before_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let options = || Options {
        durability: Durability::None,
        ..Options::default()
    };
    let server = Store::open(dir.path().join("server"), options()).unwrap();
    for agg in ["a", "b", "a"] {
        server
            .append(agg, ExpectedVersion::Any, vec![NewEvent::new("T", "{}")])
            .unwrap();
    }
    let events = server.read_events(1, 100, usize::MAX).unwrap();
    let local = Store::open(dir.path().join("replica"), options()).unwrap();
    local.append_replicated(&events[..1]).unwrap();

    let mut repeated = events[1].clone();
    repeated.event_id = events[0].event_id;
    let mut long_type = events[1].clone();
    long_type.event_type = "T".repeat(strata::log::format::EVENT_TYPE_BYTES_MAX + 1);
    let mut past_the_end = events[1].clone();
    past_the_end.position = u64::MAX;
    let twice = vec![events[1].clone(), {
        let mut e = events[2].clone();
        e.event_id = events[1].event_id;
        e
    }];
    let good_then_held = vec![events[1].clone(), {
        let mut e = events[2].clone();
        e.event_id = events[0].event_id;
        e
    }];
    for (what, bad, expected) in [
        ("a held id", vec![repeated], "already held at position 1"),
        ("a long type", vec![long_type], "event_type is 65536 bytes"),
        ("a position gap", vec![past_the_end], "next position is 2"),
        ("an id twice", twice, "appears twice"),
        (
            "a good event, then a held id",
            good_then_held,
            "already held",
        ),
    ] {
        let err = local.append_replicated(&bad).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, strata::Error::Replica { .. }) && text.contains(expected),
            "{what}: {text}"
        );
        assert_eq!(local.head(), 1, "{what}");
    }
    local.append_replicated(&events[1..]).unwrap();
    assert_eq!(local.head(), 3);
    local.close().unwrap();
    let local = Store::open(dir.path().join("replica"), options()).unwrap();
    let copied = local.read_events(1, 100, usize::MAX).unwrap();
    assert_eq!(copied, events);
}

/// A plain store with events of its own cannot become a replica (its log
/// is no prefix of a server's): opening it as one is refused and leaves
/// it a plain store. An empty store (`strata init`) can become one.
#[test]
fn a_store_with_events_of_its_own_does_not_become_a_replica() {
    let dir = tempfile::tempdir().unwrap();
    let options = || ReplicaOptions {
        store: Options {
            durability: Durability::None,
            ..Options::default()
        },
        ..ReplicaOptions::default()
    };
    let plain = Store::open(dir.path(), options().store).unwrap();
    plain
        .append("x", ExpectedVersion::Any, vec![NewEvent::new("T", "{}")])
        .unwrap();
    plain.close().unwrap();
    let err = Replica::open(dir.path(), options()).unwrap_err();
    assert!(
        matches!(err, strata::Error::NotAReplica { events: 1, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("sync into an empty directory"),
        "{err}"
    );
    assert!(!dir.path().join(strata::sync::local::OUTBOX_FILE).exists());
    let plain = Store::open(dir.path(), options().store).unwrap();
    plain
        .append("x", ExpectedVersion::Any, vec![NewEvent::new("T", "{}")])
        .unwrap();
    plain.close().unwrap();

    let empty = tempfile::tempdir().unwrap();
    Store::open(empty.path(), options().store)
        .unwrap()
        .close()
        .unwrap();
    Replica::open(empty.path(), options())
        .unwrap()
        .close()
        .unwrap();
}
