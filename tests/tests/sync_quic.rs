//! Sync over real QUIC on loopback, real stores in temporary directories:
//! the seed's counter flow, contention between replicas, an
//! order-dependent view, crashes of server and client processes, and
//! refused clients. The sans-IO cores are simulated in
//! engine/tests/sync_sim.rs; this file proves the transport keeps their
//! promises (Y1–Y5).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use strata::projection::counter::{self, CounterProjection};
use strata::projection::todo::{self, TodoProjection};
use strata::projection::{ViewOptions, Views};
use strata::sync::proto::ErrorCode;
use strata::sync::{Replica, ReplicaOptions, SyncError};
use strata::{Event, ExpectedVersion, NewEvent, Options, Store, Uuid};
use strata_sync::client::{ClientError, ClientOptions, SyncClient, SyncReport, sync_until_idle};
use strata_sync::tls::Trust;
use strata_tests::procs::{ClientProcess, kill, spawn_client, spawn_server};

/// The child processes of the crash tests (tests/src/bin/).
const SERVER_BIN: &str = env!("CARGO_BIN_EXE_sync_server");
const CLIENT_BIN: &str = env!("CARGO_BIN_EXE_sync_client");

/// Longest any replica may take to sync everything in the contention test.
const CONTENTION_DEADLINE: Duration = Duration::from_secs(40);

struct TestServer {
    addr: SocketAddr,
    fingerprint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), strata_server::ServerError>>,
}

async fn start_server(data: &Path, tokens: &[&str]) -> TestServer {
    let mut config = strata_server::Config::new(
        data.to_path_buf(),
        "127.0.0.1:0".parse().unwrap(),
        Some("127.0.0.1:0".parse().unwrap()),
    );
    config.tokens = tokens.iter().map(|t| t.to_string()).collect();
    config.database = strata_tests::net::test_database(data).await;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(strata_server::serve(
        config,
        move |b: &strata_server::Bound| {
            let _ = ready_tx.send((b.quic.unwrap(), b.fingerprint.clone().unwrap()));
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let (addr, fingerprint) = tokio::time::timeout(Duration::from_secs(20), ready_rx)
        .await
        .expect("server ready in time")
        .expect("server started");
    TestServer {
        addr,
        fingerprint,
        stop: Some(stop),
        task,
    }
}

impl TestServer {
    fn options(&self) -> ClientOptions {
        let mut o = ClientOptions::new(self.addr.to_string(), Trust::Pin(self.fingerprint.clone()));
        o.request_timeout = Duration::from_secs(20);
        o.backoff_max = Duration::from_millis(200);
        o
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

fn open_replica(dir: &Path) -> Arc<Replica> {
    Arc::new(
        Replica::open(
            dir,
            ReplicaOptions {
                projections: vec![Arc::new(CounterProjection), Arc::new(TodoProjection)],
                ..ReplicaOptions::default()
            },
        )
        .unwrap(),
    )
}

fn close_replica(r: Arc<Replica>) {
    Arc::try_unwrap(r)
        .expect("no sync client holds the replica any more")
        .close()
        .unwrap();
}

/// The server's default store and its views, opened once the server has
/// stopped.
fn open_server_store(data: &Path) -> (Store, Views) {
    let store = Store::open(data.join("default"), Options::default()).unwrap();
    let views = Views::open(
        &store,
        vec![Arc::new(CounterProjection), Arc::new(TodoProjection)],
        ViewOptions::default(),
    )
    .unwrap();
    (store, views)
}

fn log_of(store: &Store) -> Vec<Event> {
    store.read_all(1).collect::<Result<Vec<_>, _>>().unwrap()
}

fn counter_of(r: &Replica, id: &str) -> i64 {
    r.read_views(|c| counter::value(c, id))
        .unwrap()
        .unwrap_or(0)
}

async fn sync(r: &Arc<Replica>, opts: &ClientOptions) -> SyncReport {
    tokio::time::timeout(
        Duration::from_secs(30),
        sync_until_idle(r.clone(), opts.clone()),
    )
    .await
    .expect("sync finishes in time")
    .expect("sync succeeds")
}

fn incr(r: &Replica, id: &str) -> Uuid {
    let e = counter::increment(1);
    let event_id = e.event_id;
    r.append(id, ExpectedVersion::Any, vec![e]).unwrap();
    event_id
}

/// The seed's example, with its arithmetic fixed (Y5, Y3): A +1 and sync;
/// B syncs and sees 1; A, offline, +1 twice; B +1 and syncs; A syncs, is
/// told PULL_REQUIRED once, rebases and pushes. Everyone ends at 4.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn y5_seed_counter_flow_converges_at_4_after_one_pull_required() {
    let data = tempfile::tempdir().unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let server = start_server(data.path(), &[]).await;
    let opts = server.options();
    let (a, b) = (open_replica(dir_a.path()), open_replica(dir_b.path()));

    incr(&a, "counter-1");
    assert_eq!(
        counter_of(&a, "counter-1"),
        1,
        "Y2: visible locally at once"
    );
    let report = sync(&a, &opts).await;
    assert_eq!((report.pushes, report.pull_required), (1, 0), "{report:?}");
    sync(&b, &opts).await;
    assert_eq!(counter_of(&b, "counter-1"), 1);

    incr(&a, "counter-1");
    incr(&a, "counter-1");
    assert_eq!(
        counter_of(&a, "counter-1"),
        3,
        "offline: pending on top of committed"
    );
    incr(&b, "counter-1");
    sync(&b, &opts).await;
    assert_eq!(counter_of(&b, "counter-1"), 2);

    let report = sync(&a, &opts).await;
    assert_eq!(
        report.pull_required, 1,
        "A's push was refused once: {report:?}"
    );
    assert_eq!(report.pushes, 2, "{report:?}");
    assert_eq!(report.accepted_events, 2, "{report:?}");
    assert_eq!(counter_of(&a, "counter-1"), 4);
    sync(&b, &opts).await;
    assert_eq!(counter_of(&b, "counter-1"), 4);
    assert!(a.pending().is_empty() && b.pending().is_empty());
    assert!(a.rejections().unwrap().is_empty());

    server.stop().await;
    let (store, views) = open_server_store(data.path());
    let server_value = views.read(|c| counter::value(c, "counter-1")).unwrap();
    assert_eq!(server_value, Some(4));
    let log = log_of(&store);
    assert_eq!(log.len(), 4);
    assert_eq!(log_of(a.committed()), log, "Y1");
    assert_eq!(log_of(b.committed()), log, "Y1");
    views.close();
    store.close().unwrap();
    close_replica(a);
    close_replica(b);
}

/// Y1, Y3, Y4, Y5 under contention: five replicas append 200 events each
/// to one aggregate while syncing continuously. The server ends with
/// exactly the 1,000 events, each once; every replica's committed log
/// equals the server's record for record; every counter view says 1,000;
/// and every replica finishes in time (nobody starves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn y4_five_replicas_contending_on_one_aggregate_lose_and_duplicate_nothing() {
    const REPLICAS: usize = 5;
    const EVENTS: usize = 200;
    let data = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..REPLICAS)
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let server = start_server(data.path(), &[]).await;
    let replicas: Vec<Arc<Replica>> = dirs.iter().map(|d| open_replica(d.path())).collect();
    let clients: Vec<Arc<SyncClient>> = replicas
        .iter()
        .map(|r| Arc::new(SyncClient::new(r.clone(), server.options()).unwrap()))
        .collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let runs: Vec<_> = clients
        .iter()
        .map(|c| {
            let c = c.clone();
            let stop = stop_rx.clone();
            tokio::spawn(async move { c.run(stop).await })
        })
        .collect();
    let started = Instant::now();
    let writers: Vec<_> = replicas
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let r = r.clone();
            tokio::task::spawn_blocking(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
                let mut ids = Vec::with_capacity(EVENTS);
                // Spread out, so that pushes interleave and conflict.
                for _ in 0..EVENTS {
                    ids.push(incr(&r, "hot"));
                    std::thread::sleep(Duration::from_micros(rng.random_range(0..4_000)));
                }
                ids
            })
        })
        .collect();
    let mut appended = Vec::new();
    for w in writers {
        appended.extend(w.await.unwrap());
    }
    let total = (REPLICAS * EVENTS) as u64;
    let mut finished: Vec<Option<Duration>> = vec![None; REPLICAS];
    while finished.iter().any(Option::is_none) {
        for (i, c) in clients.iter().enumerate() {
            let s = c.status();
            if finished[i].is_none() && s.pending == 0 && s.committed == total {
                finished[i] = Some(started.elapsed());
            }
        }
        assert!(
            started.elapsed() < CONTENTION_DEADLINE,
            "starvation: not every replica finished in {CONTENTION_DEADLINE:?}: {:?}",
            clients.iter().map(|c| c.status()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(true).unwrap();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    let reports: Vec<SyncReport> = clients.iter().map(|c| c.report()).collect();
    let retries: Vec<u64> = reports.iter().map(|r| r.pull_required).collect();
    eprintln!(
        "contention: {total} events in {:?}; finished at {finished:?}; PULL_REQUIRED per replica {retries:?} (max {}); pushes {:?}",
        started.elapsed(),
        retries.iter().max().unwrap(),
        reports.iter().map(|r| r.pushes).collect::<Vec<_>>()
    );
    assert!(
        reports.iter().all(|r| r.rejected_events == 0),
        "{reports:?}"
    );
    drop(clients);

    server.stop().await;
    let (store, views) = open_server_store(data.path());
    let log = log_of(&store);
    assert_eq!(log.len() as u64, total, "Y4: exactly the appended events");
    let ids: HashSet<Uuid> = log.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), log.len(), "Y4: no event twice");
    assert_eq!(
        ids,
        appended.iter().copied().collect::<HashSet<_>>(),
        "Y4: no event lost"
    );
    for (i, e) in log.iter().enumerate() {
        assert_eq!(e.version, i as u64 + 1, "versions gapless");
    }
    let server_value = views.read(|c| counter::value(c, "hot")).unwrap();
    assert_eq!(server_value, Some(total as i64));
    for r in &replicas {
        assert_eq!(
            log_of(r.committed()),
            log,
            "Y1: the replica's log is the server's"
        );
        assert_eq!(counter_of(r, "hot"), total as i64, "Y3");
    }
    views.close();
    store.close().unwrap();
    for r in replicas {
        close_replica(r);
    }
}

fn todo_event(kind: &str, id: &str, title: Option<&str>) -> NewEvent {
    let data = match title {
        Some(t) => serde_json::json!({ "id": id, "title": t }),
        None => serde_json::json!({ "id": id }),
    };
    NewEvent::new(kind, data.to_string())
}

fn todos(r: &Replica) -> Vec<(String, String, bool)> {
    r.read_views(|c| todo::items(c, "list-1")).unwrap()
}

/// Y3 for a view that depends on event order (renames, deletes and
/// completions of the same items, concurrently on three replicas): after
/// everyone synced, every replica's view equals the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn y3_order_dependent_todo_view_converges_on_every_replica() {
    let data = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let server = start_server(data.path(), &[]).await;
    let opts = server.options();
    let r: Vec<Arc<Replica>> = dirs.iter().map(|d| open_replica(d.path())).collect();
    let append = |i: usize, kind: &str, id: &str, title: Option<&str>| {
        r[i].append(
            "list-1",
            ExpectedVersion::Any,
            vec![todo_event(kind, id, title)],
        )
        .unwrap();
    };
    for n in 1..=4 {
        append(0, "TodoAdded", &format!("t{n}"), Some(&format!("item {n}")));
    }
    for x in &r {
        sync(x, &opts).await;
    }
    assert_eq!(todos(&r[2]).len(), 4);

    // Offline, concurrently: conflicting edits of the same items.
    append(0, "TodoRenamed", "t1", Some("renamed by A"));
    append(0, "TodoDeleted", "t2", None);
    append(0, "TodoCompleted", "t3", None);
    append(1, "TodoRenamed", "t1", Some("renamed by B"));
    append(1, "TodoRenamed", "t2", Some("renamed by B"));
    append(1, "TodoDeleted", "t3", None);
    append(1, "TodoAdded", "t5", Some("added by B"));
    append(2, "TodoCompleted", "t1", None);
    append(2, "TodoDeleted", "t4", None);
    append(2, "TodoAdded", "t5", Some("added by C"));
    append(2, "TodoRenamed", "t4", Some("renamed after delete"));
    // Each replica sees its own edits at once (Y2).
    assert!(todos(&r[0]).iter().all(|(id, _, _)| id != "t2"));
    assert!(
        todos(&r[2])
            .iter()
            .any(|(id, title, _)| id == "t5" && title == "added by C")
    );

    let (x, y, z) = tokio::join!(sync(&r[0], &opts), sync(&r[1], &opts), sync(&r[2], &opts));
    let retries = x.pull_required + y.pull_required + z.pull_required;
    assert!(retries >= 1, "concurrent pushes on one list conflict");
    for x in &r {
        sync(x, &opts).await;
    }
    server.stop().await;
    let (store, views) = open_server_store(data.path());
    let expected = views.read(|c| todo::items(c, "list-1")).unwrap();
    assert_eq!(log_of(&store).len(), 15);
    assert!(!expected.is_empty());
    for (i, x) in r.iter().enumerate() {
        assert!(x.pending().is_empty());
        assert_eq!(todos(x), expected, "Y3: replica {i}'s view is the server's");
        assert_eq!(log_of(x.committed()), log_of(&store), "Y1");
    }
    views.close();
    store.close().unwrap();
    for x in r {
        close_replica(x);
    }
}

/// Refused clients: a server with tokens refuses a client without one or
/// with the wrong one (and creates no store for it), accepts the right
/// one; a wrong fingerprint pin fails the handshake with an error saying
/// which certificate was expected and which was found; the certificate
/// file works as a CA file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_without_the_token_and_with_a_wrong_pin() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(data.path(), &["s3cret-token-0002"]).await;
    let r = open_replica(dir.path());
    incr(&r, "counter-1");

    for token in [None, Some("wrong")] {
        let mut opts = server.options();
        opts.token = token.map(str::to_owned);
        opts.store = "sneaky".into();
        let err = sync_until_idle(r.clone(), opts).await.unwrap_err();
        assert!(
            matches!(
                &err,
                ClientError::Sync(SyncError::Refused {
                    code: ErrorCode::Unauthorized,
                    ..
                })
            ),
            "{err}"
        );
        assert!(err.is_permanent());
        assert!(err.to_string().contains("token"), "{err}");
    }
    assert!(
        !data.path().join("sneaky").exists(),
        "no store made for a stranger"
    );

    let mut opts = server.options();
    opts.trust = Trust::Pin("ab".repeat(32));
    opts.token = Some("s3cret-token-0002".into());
    let err = sync_until_idle(r.clone(), opts).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ClientError::FingerprintMismatch(_)), "{text}");
    assert!(
        text.contains(&format!(
            "certificate fingerprint mismatch: expected {}, got {}",
            "ab".repeat(32),
            server.fingerprint
        )),
        "{text}"
    );

    let mut opts = server.options();
    opts.token = Some("s3cret-token-0002".into());
    opts.trust = Trust::CaFile(
        data.path()
            .join(strata_server::tls::TLS_DIR)
            .join(strata_server::tls::CERT_FILE),
    );
    // The address as the server prints it.
    opts.server = format!("quic://{}/", server.addr);
    let report = sync(&r, &opts).await;
    assert_eq!(report.accepted_events, 1);
    assert!(r.pending().is_empty());
    server.stop().await;
    close_replica(r);
}

// --- crashes ---------------------------------------------------------------

/// Rounds of killing a process in the crash test.
const KILL_ROUNDS: usize = 10;
/// Replica processes in the crash test.
const KILL_CLIENTS: usize = 2;

/// SIGTERM (what systemd and container runtimes send) is a graceful
/// shutdown: the server exits 0, releases its stores, and keeps every
/// event it acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_gracefully_and_keeps_what_it_acknowledged() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(
        SERVER_BIN.as_ref(),
        data.path(),
        "127.0.0.1:0".parse().unwrap(),
        None,
    );
    let r = open_replica(dir.path());
    let id = incr(&r, "counter-1");
    let mut opts = ClientOptions::new(
        server.addr.to_string(),
        Trust::Pin(server.fingerprint.clone()),
    );
    opts.request_timeout = Duration::from_secs(20);
    let report = sync(&r, &opts).await;
    assert_eq!(report.accepted_events, 1);
    close_replica(r);

    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not stop within 20 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    // The lock is free and the event is there.
    let (store, views) = open_server_store(data.path());
    assert_eq!(
        log_of(&store)
            .iter()
            .map(|e| e.event_id)
            .collect::<Vec<_>>(),
        [id]
    );
    views.close();
    store.close().unwrap();
}

/// Y4 across crashes: the server process and replica processes are killed
/// (SIGKILL) at random points while replicas append and sync, and
/// restarted. Afterwards every event a replica acknowledged is on the
/// server exactly once or recorded as a rejection, nothing is on the
/// server twice, and every replica's log is the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn y4_exactly_once_when_server_and_replica_processes_are_killed() {
    let seed: u64 = std::env::var("STRATA_SYNC_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let data = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..KILL_CLIENTS)
        .map(|i| data.path().join(format!("replica-{i}")))
        .collect();
    let server_data = data.path().join("server");
    let mut server = spawn_server(
        SERVER_BIN.as_ref(),
        &server_data,
        "127.0.0.1:0".parse().unwrap(),
        None,
    );
    let (addr, fingerprint) = (server.addr, server.fingerprint.clone());
    let appended: Vec<Arc<Mutex<Vec<Uuid>>>> = (0..KILL_CLIENTS)
        .map(|_| Arc::new(Mutex::new(Vec::new())))
        .collect();
    // The server comes back at the same address with the same identity.
    let spawn = |i: usize, seed: u64| -> ClientProcess {
        let addr = addr.to_string();
        spawn_client(
            CLIENT_BIN.as_ref(),
            &dirs[i],
            &addr,
            &fingerprint,
            seed,
            appended[i].clone(),
        )
    };
    let mut clients: Vec<ClientProcess> =
        (0..KILL_CLIENTS).map(|i| spawn(i, rng.random())).collect();
    let (mut server_kills, mut client_kills) = (0, 0);
    for _ in 0..KILL_ROUNDS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..500))).await;
        if rng.random_bool(0.4) {
            kill(&mut server.child);
            server_kills += 1;
            server = spawn_server(SERVER_BIN.as_ref(), &server_data, addr, None);
            assert_eq!(
                server.fingerprint, fingerprint,
                "the identity survives restarts"
            );
        } else {
            let i = rng.random_range(0..KILL_CLIENTS);
            kill(&mut clients[i].child);
            client_kills += 1;
            // Dead already: this reads the last of what it printed.
            std::mem::replace(&mut clients[i], spawn(i, rng.random())).kill();
        }
    }
    for c in clients {
        c.kill();
    }

    // Drain every outbox (twice round, so everyone also has the others'
    // last events), then crash the server once more.
    let opts = {
        let mut o = ClientOptions::new(addr.to_string(), Trust::Pin(fingerprint.clone()));
        o.request_timeout = Duration::from_secs(10);
        o
    };
    let replicas: Vec<Arc<Replica>> = dirs.iter().map(|d| open_replica(d)).collect();
    for _ in 0..2 {
        for r in &replicas {
            sync(r, &opts).await;
        }
    }
    kill(&mut server.child);

    let (store, views) = open_server_store(&server_data);
    let log = log_of(&store);
    let mut on_server: HashMap<Uuid, usize> = HashMap::new();
    for e in &log {
        *on_server.entry(e.event_id).or_default() += 1;
    }
    assert!(
        on_server.values().all(|n| *n == 1),
        "Y4: an event is on the server twice"
    );
    let mut acknowledged = 0;
    for (i, r) in replicas.iter().enumerate() {
        assert!(r.pending().is_empty(), "replica {i} drained");
        let rejected: HashSet<Uuid> = r.rejections().unwrap().iter().map(|x| x.event_id).collect();
        for id in appended[i].lock().unwrap().iter() {
            acknowledged += 1;
            let committed = on_server.contains_key(id);
            assert!(
                committed != rejected.contains(id),
                "Y4: replica {i}'s event {id} is committed: {committed}, rejected: {}",
                rejected.contains(id)
            );
        }
        assert_eq!(log_of(r.committed()), log, "Y1: replica {i}");
    }
    for id in ["counter-0", "counter-1", "counter-2"] {
        let server_value = views.read(|c| counter::value(c, id)).unwrap().unwrap_or(0);
        let events = log.iter().filter(|e| e.aggregate_id == id).count() as i64;
        assert_eq!(server_value, events, "{id}");
        for r in &replicas {
            assert_eq!(counter_of(r, id), server_value, "Y3: {id}");
        }
    }
    eprintln!(
        "seed {seed}: {server_kills} server kills, {client_kills} replica kills; {acknowledged} acknowledged events, {} on the server",
        log.len()
    );
    assert!(acknowledged > 0 && log.len() >= acknowledged);
    views.close();
    store.close().unwrap();
    for r in replicas {
        close_replica(r);
    }
}

/// The in-process tests again with the server's log in PostgreSQL (issue
/// 14): QUIC works unchanged on that backend, and the server's views
/// (here from its mirror of the log) agree. The killed-process tests run
/// on PostgreSQL in tests/scale_out.rs.
mod on_postgres {
    use strata_tests::net::on_postgres;

    #[test]
    fn y5_seed_counter_flow_converges_at_4_after_one_pull_required() {
        on_postgres(super::y5_seed_counter_flow_converges_at_4_after_one_pull_required);
    }

    #[test]
    fn y4_five_replicas_contending_on_one_aggregate_lose_and_duplicate_nothing() {
        on_postgres(super::y4_five_replicas_contending_on_one_aggregate_lose_and_duplicate_nothing);
    }

    #[test]
    fn y3_order_dependent_todo_view_converges_on_every_replica() {
        on_postgres(super::y3_order_dependent_todo_view_converges_on_every_replica);
    }

    #[test]
    fn refused_without_the_token_and_with_a_wrong_pin() {
        on_postgres(super::refused_without_the_token_and_with_a_wrong_pin);
    }
}
