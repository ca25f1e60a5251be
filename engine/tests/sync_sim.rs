//! Deterministic simulation of sync (Y1–Y6): the real `ServerCore` over a
//! real `Store` as its canonical log, several real `ReplicaCore`s whose
//! storage rebases with the real `sync::rebase` code (the one `Replica`
//! uses), and a network that delays, duplicates and drops (on disconnect)
//! messages, with replica and server crashes, failed commits and clock
//! skew. The harness plays the server's shell, as `strata-server` does: it
//! welcomes clients, carries out the core's group commits when the dice
//! say so, and streams the log to followers. Every step checks the
//! invariants; at the end the network heals and every replica must
//! converge on the server's log and views, with every event either
//! committed once or recorded as rejected.
//!
//! `STRATA_SIM_SEEDS` sets the number of seeds (default 500),
//! `STRATA_SIM_SEED` runs one seed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata::sync::proto::{ClientMessage, PROTOCOL_VERSION, Proposal, ServerMessage};
use strata::sync::rebase::{next_push, rebase};
use strata::sync::{
    CanonicalLog, ClientInfo, CommitResult, PendingEvent, PushOutcome, RebaseDecision,
    ReplicaConfig, ReplicaCore, ReplicaStorage, ServerConfig, ServerCore, StorageError,
};
use strata::{Durability, Error, Event, Hlc, ManualClock, NodeId, Options, Store, Uuid};

const SEEDS_DEFAULT: u64 = 500;
const REPLICAS: usize = 4;
const STEPS: usize = 300;
const HEAL_STEPS_MAX: usize = 20_000;
const DRIFT_MS: u64 = 10_000;
/// Events per follow message the simulated shell sends.
const FOLLOW_EVENTS_MAX: usize = 5;

// --- the server: the real store as the canonical log ------------------------

struct Server {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    /// `None` only while it crashes.
    store: Option<Store>,
    core: ServerCore,
    /// Each connection's next follow position (the shell's, not the core's).
    follow: HashMap<u64, u64>,
    /// The log as read so far, for the checks.
    events: Vec<Event>,
}

fn server_config() -> ServerConfig {
    ServerConfig {
        lease_ms: 300,
        ..ServerConfig::default()
    }
}

fn store_options(clock: Arc<ManualClock>) -> Options {
    Options {
        durability: Durability::None,
        node_id: Some("server".into()),
        hlc_drift_ms_max: DRIFT_MS,
        clock,
        ..Options::default()
    }
}

impl Server {
    fn new(now: u64) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(now));
        let store = Store::open(dir.path(), store_options(clock.clone())).unwrap();
        let core = ServerCore::new(server_config(), 0);
        Server {
            dir,
            clock,
            store: Some(store),
            core,
            follow: HashMap::new(),
            events: Vec::new(),
        }
    }

    fn log(&self) -> &Store {
        self.store.as_ref().expect("open")
    }

    /// A crash of the server process: connections, the core's turn and
    /// waiting pushes are gone; the store recovers from its files.
    fn crash(&mut self) {
        // The store's lock goes with its last handle.
        self.store.take().expect("open").close().unwrap();
        let store = Store::open(self.dir.path(), store_options(self.clock.clone())).unwrap();
        self.core = ServerCore::new(server_config(), store.head());
        self.store = Some(store);
        self.follow.clear();
    }

    /// The log, read on from where the last call stopped.
    fn events(&mut self) -> &[Event] {
        let next = self.events.len() as u64 + 1;
        self.events.extend(
            self.store
                .as_ref()
                .expect("open")
                .read_all(next)
                .map(Result::unwrap),
        );
        &self.events
    }
}

// --- a replica's storage, in memory ------------------------------------------

/// Durable state of a replica (survives its crashes).
struct MemReplica {
    remote: Option<Uuid>,
    committed: Vec<Event>,
    outbox: Vec<PendingEvent>,
    rejected: HashMap<Uuid, String>,
    hlc: Hlc,
    /// Every event ever appended here, for the no-loss check.
    appended: Vec<Uuid>,
}

impl MemReplica {
    fn version(committed: &[Event], agg: &str) -> u64 {
        committed
            .iter()
            .rev()
            .find(|e| e.aggregate_id == agg)
            .map_or(0, |e| e.version)
    }

    fn local_append(&mut self, agg: &str, n: usize, now_ms: u64, rng: &mut StdRng) {
        let v = self
            .outbox
            .iter()
            .rev()
            .find(|p| p.aggregate_id == agg)
            .map_or_else(|| Self::version(&self.committed, agg), |p| p.version);
        for v in v + 1..v + 1 + n as u64 {
            let id = Uuid::from_u128(rng.random());
            self.appended.push(id);
            self.outbox.push(PendingEvent {
                event_id: id,
                aggregate_id: agg.into(),
                version: v,
                event_type: if rng.random_bool(0.5) {
                    "Add".into()
                } else {
                    "Set".into()
                },
                data: rng.random_range(1..10u32).to_string().into_bytes(),
                metadata: None,
                timestamp: self
                    .hlc
                    .now()
                    .expect("the simulated clock is far from its end"),
                created_ms: now_ms,
            });
        }
    }
}

/// The simulation's rebase hook, decided by the event id so that every run
/// of a seed decides alike: most events are kept, some replaced (a "Set"
/// to 0, which changes every later value), some dropped.
fn decide(e: &PendingEvent, _version: u64) -> RebaseDecision {
    match e.event_id.as_u128() % 32 {
        0 => RebaseDecision::Drop {
            reason: "dropped by the simulation's rebase hook".into(),
        },
        1 | 2 => RebaseDecision::Replace {
            event_type: "Set".into(),
            data: b"0".to_vec(),
            metadata: Some(b"rebased".to_vec()),
        },
        _ => RebaseDecision::Keep,
    }
}

impl ReplicaStorage for MemReplica {
    fn remote_store_id(&self) -> Option<Uuid> {
        self.remote
    }

    fn set_remote_store_id(&mut self, id: Uuid) -> Result<(), Error> {
        self.remote = Some(id);
        Ok(())
    }

    fn committed_head(&self) -> u64 {
        self.committed.len() as u64
    }

    fn apply_events(&mut self, events: &[Event]) -> Result<(), Error> {
        for e in events {
            if e.position <= self.committed_head() {
                continue;
            }
            assert_eq!(
                e.position,
                self.committed_head() + 1,
                "Y6: the stream skipped a position"
            );
            self.hlc
                .restore(e.timestamp.physical_ms(), e.timestamp.counter());
            self.committed.push(e.clone());
            self.outbox.retain(|p| p.event_id != e.event_id);
        }
        Ok(())
    }

    fn apply_records(&mut self, _: &strata::log::RawRun) -> Result<(), Error> {
        unreachable!("the simulated transport carries events")
    }

    fn prepare_push(
        &mut self,
        max: usize,
        max_bytes: usize,
        _now_ms: u64,
    ) -> Result<Vec<Proposal>, Error> {
        let MemReplica {
            committed,
            outbox,
            rejected,
            hlc,
            ..
        } = self;
        let rebased = rebase(
            outbox,
            |agg| Ok(MemReplica::version(committed, agg)),
            decide,
            || Ok(hlc.now().expect("the simulated clock is far from its end")),
        )?;
        for (e, reason) in rebased.dropped {
            rejected.insert(e.event_id, reason);
        }
        Ok(next_push(outbox, max, max_bytes))
    }

    fn reject(&mut self, rejections: &[(Uuid, String)], _now_ms: u64) -> Result<(), Error> {
        for (id, reason) in rejections {
            if self.outbox.iter().any(|p| p.event_id == *id) {
                self.rejected.insert(*id, reason.clone());
            }
            self.outbox.retain(|p| p.event_id != *id);
        }
        Ok(())
    }

    fn pending(&self) -> (usize, Option<u64>) {
        (
            self.outbox.len(),
            self.outbox.iter().map(|p| p.created_ms).min(),
        )
    }
}

// --- the simulation ------------------------------------------------------------

struct Conn {
    id: u64,
    to_server: VecDeque<(u64, ClientMessage)>,
    to_client: VecDeque<(u64, ServerMessage)>,
}

struct Node {
    core: ReplicaCore,
    storage: MemReplica,
    clock: Arc<ManualClock>,
    conn: Option<Conn>,
}

struct Sim {
    rng: StdRng,
    now: u64,
    server: Server,
    nodes: Vec<Node>,
    next_conn: u64,
    pushes: u64,
    commits: u64,
}

fn config(i: usize) -> ReplicaConfig {
    ReplicaConfig {
        request_timeout_ms: 5_000,
        push_events_max: 7,
        ..ReplicaConfig::new("default", format!("r{i}"))
    }
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = (0..REPLICAS)
            .map(|i| {
                // Clock skew: most replicas within the drift, some far ahead.
                let skew: i64 = if rng.random_bool(0.1) {
                    60_000
                } else {
                    rng.random_range(-3_000..3_000)
                };
                let clock = Arc::new(ManualClock::new((1_000_000 + skew) as u64));
                Node {
                    core: ReplicaCore::new(config(i)),
                    storage: MemReplica {
                        remote: None,
                        committed: Vec::new(),
                        outbox: Vec::new(),
                        rejected: HashMap::new(),
                        hlc: Hlc::new(
                            NodeId::new(&format!("r{i}")).unwrap(),
                            clock.clone(),
                            DRIFT_MS,
                        ),
                        appended: Vec::new(),
                    },
                    clock,
                    conn: None,
                }
            })
            .collect();
        Sim {
            rng,
            now: 1_000_000,
            server: Server::new(1_000_000),
            nodes,
            next_conn: 1,
            pushes: 0,
            commits: 0,
        }
    }

    fn delay(&mut self) -> u64 {
        self.now + self.rng.random_range(0..40)
    }

    fn connect(&mut self, i: usize) {
        let id = self.next_conn;
        self.next_conn += 1;
        let node = &mut self.nodes[i];
        node.conn = Some(Conn {
            id,
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
        });
        node.core.handle_connected(&node.storage);
        self.flush_client(i);
    }

    fn disconnect(&mut self, i: usize) {
        if let Some(c) = self.nodes[i].conn.take() {
            self.server.core.handle_disconnect(self.now, c.id);
            self.server.follow.remove(&c.id);
            self.nodes[i].core.handle_disconnected();
        }
    }

    /// Moves what the replica wants to send onto its connection.
    fn flush_client(&mut self, i: usize) {
        while let Some(m) = self.nodes[i].core.poll_transmit() {
            let at = self.delay();
            if let Some(c) = &mut self.nodes[i].conn {
                if matches!(m, ClientMessage::Push { .. }) {
                    self.pushes += 1;
                }
                c.to_server.push_back((at, m));
            }
        }
    }

    /// Routes what the server core transmitted to its connections.
    fn flush_core(&mut self) {
        while let Some((client, msg)) = self.server.core.poll_transmit() {
            let at = self.delay();
            if let Some(c) = self
                .nodes
                .iter_mut()
                .filter_map(|n| n.conn.as_mut())
                .find(|c| c.id == client)
            {
                c.to_client.push_back((at, msg));
            }
        }
        while self.server.core.poll_event().is_some() {}
    }

    /// The shell's committer: one group commit, or (now and then) one that
    /// fails in storage, answered `Unavailable`.
    fn commit(&mut self, allow_failure: bool) {
        let Some(commit) = self.server.core.poll_commit() else {
            return;
        };
        self.commits += 1;
        let result = if allow_failure && self.rng.random_bool(0.05) {
            Err(StorageError::Unavailable {
                reason: "simulated".into(),
            })
        } else {
            self.server.log().append_pushes(&commit.pushes)
        };
        self.server
            .core
            .handle_committed(self.now, commit.id, result);
        self.flush_core();
    }

    /// The shell's follow streams: committed events to every follower.
    fn flush_server(&mut self) {
        let head = self.server.log().head();
        for i in 0..self.nodes.len() {
            let Some(id) = self.nodes[i].conn.as_ref().map(|c| c.id) else {
                continue;
            };
            // A bounded queue: at most a few messages in flight per client.
            while self.nodes[i].conn.as_ref().unwrap().to_client.len() < 4 {
                let Some(&next) = self.server.follow.get(&id).filter(|&&n| n <= head) else {
                    break;
                };
                let events = self
                    .server
                    .log()
                    .read(next, FOLLOW_EVENTS_MAX, usize::MAX)
                    .unwrap();
                self.server
                    .follow
                    .insert(id, events.last().unwrap().position + 1);
                let at = self.delay();
                self.nodes[i]
                    .conn
                    .as_mut()
                    .unwrap()
                    .to_client
                    .push_back((at, ServerMessage::Events { events }));
            }
        }
    }

    /// The server's shell receives one message.
    fn server_receives(&mut self, i: usize, id: u64, m: ClientMessage) {
        match m {
            ClientMessage::Hello { client, .. } => {
                self.server.core.handle_connect(
                    id,
                    ClientInfo {
                        name: client,
                        may_write: true,
                    },
                );
                let welcome = ServerMessage::Welcome {
                    protocol: PROTOCOL_VERSION,
                    store_id: self.server.log().store_id(),
                    head: self.server.log().head(),
                };
                let at = self.delay();
                if let Some(c) = self.nodes[i].conn.as_mut() {
                    c.to_client.push_back((at, welcome));
                }
            }
            ClientMessage::Follow { from } => {
                self.server.follow.insert(id, from.max(1));
            }
            ClientMessage::Push {
                request, events, ..
            } => {
                self.server.core.handle_push(self.now, id, request, events);
                self.flush_core();
            }
        }
    }

    fn deliver(&mut self, i: usize, duplicate: bool) {
        let now = self.now;
        let Some(c) = self.nodes[i].conn.as_mut() else {
            return;
        };
        let id = c.id;
        // Each direction is ordered, like a QUIC stream or a WebSocket.
        if self.rng.random_bool(0.5) {
            if c.to_server.front().is_some_and(|(at, _)| *at <= now) {
                let (_, m) = if duplicate {
                    c.to_server.front().cloned().unwrap()
                } else {
                    c.to_server.pop_front().unwrap()
                };
                self.server_receives(i, id, m);
            }
        } else if c.to_client.front().is_some_and(|(at, _)| *at <= now) {
            let (_, m) = if duplicate {
                c.to_client.front().cloned().unwrap()
            } else {
                c.to_client.pop_front().unwrap()
            };
            let node = &mut self.nodes[i];
            if node.core.handle_message(now, m, &mut node.storage).is_err() {
                self.disconnect(i);
            }
        }
        self.flush_client(i);
    }

    fn step(&mut self, allow_chaos: bool) {
        let i = self.rng.random_range(0..self.nodes.len());
        let roll: u32 = self.rng.random_range(0..100);
        match roll {
            0..=14 if allow_chaos => {
                let agg = ["x", "y", "z"][self.rng.random_range(0..3)];
                let n = self.rng.random_range(1..4);
                let now = self.now;
                let node = &mut self.nodes[i];
                node.storage.local_append(agg, n, now, &mut self.rng);
                let _ = node.core.handle_local_change(now, &mut node.storage);
                self.flush_client(i);
            }
            15..=17 if allow_chaos => self.disconnect(i),
            18 if allow_chaos => {
                // Replica crash: the core's memory is gone, storage stays.
                self.disconnect(i);
                self.nodes[i].core = ReplicaCore::new(config(i));
            }
            19 if allow_chaos && self.rng.random_bool(0.3) => {
                // Server crash: every connection, the turn and the waiting
                // pushes are gone; the log recovers.
                for j in 0..self.nodes.len() {
                    self.disconnect(j);
                }
                self.server.crash();
            }
            20..=22 if allow_chaos => self.deliver(i, true),
            23..=29 => {
                self.now += self.rng.random_range(1..50);
                self.server.clock.set(self.now);
                for n in &self.nodes {
                    n.clock.advance(self.rng.random_range(0..50));
                }
                let now = self.now;
                self.server.core.handle_timeout(now);
                self.flush_core();
                for j in 0..self.nodes.len() {
                    let node = &mut self.nodes[j];
                    if node.core.handle_timeout(now, &mut node.storage).is_err() {
                        self.disconnect(j);
                    } else {
                        self.flush_client(j);
                    }
                }
            }
            30..=39 => self.commit(allow_chaos),
            _ => {
                if self.nodes[i].conn.is_none() {
                    self.connect(i);
                } else {
                    self.deliver(i, false);
                }
            }
        }
        self.flush_server();
    }

    fn check(&mut self, seed: u64) {
        self.server.events();
        let server = &self.server.events;
        // Y4: no event twice on the server; versions gapless per aggregate.
        let mut ids = HashSet::new();
        let mut versions: HashMap<&str, u64> = HashMap::new();
        for e in server {
            assert!(
                ids.insert(e.event_id),
                "seed {seed}: Y4 duplicate {}",
                e.event_id
            );
            let v = versions.entry(&e.aggregate_id).or_default();
            *v += 1;
            assert_eq!(
                e.version, *v,
                "seed {seed}: versions of {} not gapless",
                e.aggregate_id
            );
        }
        for (i, n) in self.nodes.iter().enumerate() {
            // Y1 and Y6: a replica's committed log is an exact prefix.
            assert!(
                n.storage.committed.len() <= server.len(),
                "seed {seed}: replica {i} ahead of the server"
            );
            for (a, b) in n.storage.committed.iter().zip(server) {
                assert_eq!(
                    a, b,
                    "seed {seed}: replica {i} diverged at position {}",
                    b.position
                );
            }
            // Y4: every local event is committed, pending, or rejected.
            for id in &n.storage.appended {
                let committed = ids.contains(id);
                let pending = n.storage.outbox.iter().any(|p| p.event_id == *id);
                let rejected = n.storage.rejected.contains_key(id);
                assert!(
                    committed || pending || rejected,
                    "seed {seed}: replica {i} lost event {id}"
                );
                assert!(
                    !(pending && rejected),
                    "seed {seed}: event {id} both pending and rejected"
                );
            }
        }
    }
}

/// A non-commutative view: per aggregate, a register that "Set" replaces
/// and "Add" adds to, in log order.
fn view(events: &[Event]) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for e in events {
        let n: i64 = std::str::from_utf8(&e.data).unwrap().parse().unwrap();
        let slot = out.entry(e.aggregate_id.clone()).or_insert(0i64);
        if e.event_type == "Set" {
            *slot = n;
        } else {
            *slot += n;
        }
    }
    out
}

fn run(seed: u64) -> (u64, u64, usize) {
    let mut sim = Sim::new(seed);
    for _ in 0..STEPS {
        sim.step(true);
        sim.check(seed);
    }
    // Heal: everyone connected, no more chaos, until nothing is pending.
    let mut steps = 0;
    loop {
        for i in 0..sim.nodes.len() {
            if sim.nodes[i].conn.is_none() {
                sim.connect(i);
            }
        }
        let server_head = sim.server.log().head() as usize;
        let done = sim.nodes.iter().all(|n| {
            n.storage.outbox.is_empty()
                && n.storage.committed.len() == server_head
                && n.conn
                    .as_ref()
                    .is_some_and(|c| c.to_client.is_empty() && c.to_server.is_empty())
        });
        if done {
            break;
        }
        steps += 1;
        if steps >= HEAL_STEPS_MAX {
            for (i, n) in sim.nodes.iter().enumerate() {
                eprintln!(
                    "replica {i}: committed {} of {server_head}, outbox {:?}, core {:?}",
                    n.storage.committed.len(),
                    n.storage
                        .outbox
                        .iter()
                        .map(|p| (&p.aggregate_id, p.version, p.timestamp.to_string()))
                        .collect::<Vec<_>>(),
                    n.core
                );
            }
            panic!("seed {seed}: no convergence after {steps} steps (starvation?)");
        }
        sim.step(false);
        sim.check(seed);
    }
    // Y3: identical logs, so identical views of any deterministic fold.
    let server_events = sim.server.events().to_vec();
    let server_view = view(&server_events);
    for (i, n) in sim.nodes.iter().enumerate() {
        assert_eq!(
            n.storage.committed, server_events,
            "seed {seed}: replica {i} log"
        );
        assert_eq!(
            view(&n.storage.committed),
            server_view,
            "seed {seed}: replica {i} view"
        );
    }
    // Events of the replica whose clock ran far ahead are rejected, never
    // lost: the no-loss check above covered them.
    (sim.pushes, sim.commits, server_events.len())
}

#[test]
fn y1_to_y6_hold_under_delays_duplicates_disconnects_crashes_and_skew() {
    let seeds: Vec<u64> = match std::env::var("STRATA_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(one) => vec![one],
        None => {
            let n = std::env::var("STRATA_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(SEEDS_DEFAULT);
            (0..n).collect()
        }
    };
    let (mut pushes, mut commits, mut events) = (0, 0, 0);
    for &seed in &seeds {
        let (p, c, e) = run(seed);
        pushes += p;
        commits += c;
        events += e;
    }
    eprintln!(
        "simulated {} seeds: {events} events committed, {pushes} pushes in {commits} group commits",
        seeds.len()
    );
}

// --- the core alone: the turn, holding, group commit ---------------------------

/// A server core over a real store, with clients 1 to `clients`
/// connected, and the shell's part played synchronously: every push is
/// followed by commits until the core is quiet.
struct Harness {
    core: ServerCore,
    store: Store,
    replies: HashMap<u64, Vec<ServerMessage>>,
    /// A commit taken from the core and not yet carried out.
    in_flight: Option<strata::sync::Commit>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(clients: u64, lease_ms: u64, durability: Durability) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            Options {
                durability,
                ..store_options(Arc::new(ManualClock::new(1_000_000)))
            },
        )
        .unwrap();
        let mut core = ServerCore::new(
            ServerConfig {
                lease_ms,
                ..ServerConfig::default()
            },
            0,
        );
        for c in 1..=clients {
            core.handle_connect(
                c,
                ClientInfo {
                    name: format!("c{c}"),
                    may_write: true,
                },
            );
        }
        Harness {
            core,
            store,
            replies: HashMap::new(),
            in_flight: None,
            _dir: dir,
        }
    }

    /// Hands the push to the core, settles, and returns the push's final
    /// answer if it came (a held push has none yet).
    fn push(&mut self, now: u64, client: u64, events: Vec<Proposal>) -> Option<ServerMessage> {
        let before = self.replies.get(&client).map_or(0, Vec::len);
        self.core.handle_push(now, client, 1, events);
        self.settle(now);
        self.replies.get(&client)?[before..]
            .iter()
            .rfind(|m| !matches!(m, ServerMessage::Rejected { .. }))
            .cloned()
    }

    /// Runs the turn's clock and every possible commit.
    fn settle(&mut self, now: u64) {
        while self.commit_once(now) {}
        self.drain();
    }

    /// Moves what the core transmitted into `replies`.
    fn drain(&mut self) {
        while let Some((client, msg)) = self.core.poll_transmit() {
            self.replies.entry(client).or_default().push(msg);
        }
    }

    /// Runs the turn's clock and one commit, if there is one to run.
    fn commit_once(&mut self, now: u64) -> bool {
        self.begin_commit(now) && {
            self.end_commit(now);
            true
        }
    }

    /// Takes the next commit from the core, as the committer does before
    /// it writes; pushes that arrive meanwhile wait for the next one.
    fn begin_commit(&mut self, now: u64) -> bool {
        if self.in_flight.is_none() {
            self.core.handle_timeout(now);
            self.in_flight = self.core.poll_commit();
        }
        self.in_flight.is_some()
    }

    /// Carries out the commit in flight and hands the result back.
    fn end_commit(&mut self, now: u64) {
        if let Some(commit) = self.in_flight.take() {
            let result = self.store.append_pushes(&commit.pushes);
            self.core.handle_committed(now, commit.id, result);
        }
        self.drain();
    }

    fn last(&self, client: u64) -> Option<&ServerMessage> {
        self.replies.get(&client).and_then(|r| r.last())
    }
}

/// Event `n` (its id and its clock's counter) at `version` of `agg`.
fn ev(agg: &str, version: u64, n: u32) -> Proposal {
    Proposal {
        event_id: Uuid::from_u128(n as u128),
        aggregate_id: agg.into(),
        version,
        event_type: "T".into(),
        data: vec![],
        timestamp: strata::Timestamp::from_parts(1_000_000, n, "c").unwrap(),
        metadata: None,
    }
}

fn accepted(m: Option<&ServerMessage>) -> bool {
    matches!(m, Some(ServerMessage::Accepted { .. }))
}

fn pull_required(m: Option<&ServerMessage>) -> bool {
    matches!(m, Some(ServerMessage::PullRequired { .. }))
}

#[test]
fn y5_the_first_refused_client_gets_the_turn_and_others_wait_in_order() {
    let mut h = Harness::new(4, 100, Durability::None);
    // Client 1 wins version 1; client 2, also at version 1, is refused and
    // gets the turn on "hot".
    assert!(accepted(h.push(0, 1, vec![ev("hot", 1, 1)]).as_ref()));
    assert!(pull_required(h.push(1, 2, vec![ev("hot", 1, 2)]).as_ref()));
    assert_eq!(h.core.turn_holder(), Some(2));
    // Client 3, up to date, waits for client 2: its push is held, not
    // refused (a client that retries at once would only spin).
    assert_eq!(h.push(2, 3, vec![ev("hot", 2, 3)]), None);
    assert_eq!(h.core.pushes_waiting(), 1);
    // Other aggregates are not held up.
    assert!(accepted(h.push(2, 4, vec![ev("cold", 1, 30)]).as_ref()));
    // Client 2 comes back rebased and wins; the turn passes to client 3,
    // whose held push now goes, finds "hot" moved, and gets what it missed.
    assert!(accepted(h.push(3, 2, vec![ev("hot", 2, 2)]).as_ref()));
    assert_eq!(h.core.turn_holder(), Some(3));
    assert!(
        matches!(h.last(3), Some(ServerMessage::PullRequired { conflicts, .. }) if conflicts == &[("hot".to_string(), 2)])
    );
    // Client 1 now waits for client 3, which pushes rebased and wins.
    assert_eq!(h.push(4, 1, vec![ev("hot", 3, 4)]), None);
    assert!(accepted(h.push(5, 3, vec![ev("hot", 3, 3)]).as_ref()));
    assert_eq!(h.core.turn_holder(), Some(1));
    assert!(pull_required(h.last(1)));
    // Client 1 never comes back: its turn lapses, and others go on.
    assert!(accepted(h.push(500, 3, vec![ev("hot", 4, 5)]).as_ref()));
}

#[test]
fn y5_a_holder_that_keeps_failing_loses_the_turn_when_its_time_is_up() {
    let mut h = Harness::new(3, 100, Durability::None);
    assert!(accepted(h.push(0, 1, vec![ev("hot", 1, 1)]).as_ref()));
    // Client 2 is refused at t=1 and holds the turn until t=101; client
    // 3's push waits behind it.
    assert!(pull_required(h.push(1, 2, vec![ev("hot", 1, 2)]).as_ref()));
    assert_eq!(h.push(2, 3, vec![ev("hot", 2, 3)]), None);
    // Client 2 keeps pushing the same stale event (a client that never
    // renumbers): each refusal must not move its deadline.
    for t in [30, 60, 90] {
        assert!(pull_required(h.push(t, 2, vec![ev("hot", 1, 2)]).as_ref()));
        assert_eq!(h.last(3), None, "still held at {t}");
    }
    // At t=102 the turn has lapsed, passes to client 3, and its push goes.
    h.settle(102);
    assert!(accepted(h.last(3)));
}

#[test]
fn y5_a_push_from_a_client_that_is_behind_is_accepted_when_it_conflicts_with_nothing() {
    let mut h = Harness::new(1, strata::sync::server::LEASE_MS_DEFAULT, Durability::None);
    for n in 1..=5 {
        assert!(accepted(
            h.push(0, 1, vec![ev("other", n as u64, n)]).as_ref()
        ));
    }
    // The client has seen none of them, but "mine" never moved: accepted.
    let reply = h.push(0, 1, vec![ev("mine", 1, 99)]);
    assert!(
        matches!(reply, Some(ServerMessage::Accepted { placed, .. }) if placed[0].position == 6)
    );
}

/// Group commit: pushes that wait together go in one commit, written with
/// one sync, and each gets its own answer (a conflicting one its own
/// refusal, the others their positions).
#[test]
fn group_commit_writes_waiting_pushes_with_one_sync_and_answers_each() {
    const CLIENTS: u64 = 8;
    let mut h = Harness::new(CLIENTS + 1, 1_000, Durability::Sync);
    for c in 1..=CLIENTS {
        h.core
            .handle_push(0, c, c, vec![ev(&format!("agg-{c}"), 1, c as u32)]);
    }
    // Client 9 races client 1 for agg-1 and loses, in the same commit.
    h.core
        .handle_push(0, CLIENTS + 1, 9, vec![ev("agg-1", 1, 99)]);
    let syncs = h
        .store
        .log()
        .stats()
        .syncs
        .load(std::sync::atomic::Ordering::Relaxed);
    let commit = h.core.poll_commit().unwrap();
    assert_eq!(commit.pushes.len(), CLIENTS as usize + 1);
    assert!(h.core.poll_commit().is_none(), "one commit at a time");
    let result = h.store.append_pushes(&commit.pushes);
    assert_eq!(
        h.store
            .log()
            .stats()
            .syncs
            .load(std::sync::atomic::Ordering::Relaxed)
            - syncs,
        1,
        "one sync for the whole commit"
    );
    h.core.handle_committed(0, commit.id, result);
    h.settle(0);
    let mut positions = HashSet::new();
    for c in 1..=CLIENTS {
        match h.last(c) {
            Some(ServerMessage::Accepted {
                request, placed, ..
            }) => {
                assert_eq!(*request, c);
                assert!(positions.insert(placed[0].position));
            }
            other => panic!("client {c}: {other:?}"),
        }
    }
    assert!(
        matches!(h.last(CLIENTS + 1), Some(ServerMessage::PullRequired { request: 9, conflicts, .. }) if conflicts == &[("agg-1".to_string(), 1)])
    );
    assert_eq!(h.store.head(), CLIENTS);
}

/// Y5 without starvation for clients that retry at once (the seed's JSON
/// clients do): several clients contend for one aggregate, each pushing
/// again as soon as it is answered, on the versions it last learned.
/// Every event lands exactly once, versions stay contiguous, and no push
/// is refused twice in a row: a refused client holds the turn, so its
/// rebased push goes through.
#[test]
fn y5_clients_that_retry_at_once_on_one_aggregate_never_starve() {
    for (clients, events) in [(5u64, 200u64), (32, 30)] {
        let mut rng = StdRng::seed_from_u64(clients);
        let mut h = Harness::new(
            clients,
            strata::sync::server::LEASE_MS_DEFAULT,
            Durability::None,
        );
        // Per client: events still to write, the batch in flight (its
        // size), refusals in a row, and the version it last learned.
        let mut left: Vec<u64> = vec![events; clients as usize + 1];
        let mut in_flight: Vec<Option<u64>> = vec![None; clients as usize + 1];
        let mut refused_in_a_row = vec![0u32; clients as usize + 1];
        let mut learned = vec![0u64; clients as usize + 1];
        // Events others appended while a client's push waited, at most.
        let mut waited_max = 0u64;
        let mut sent_at_head = vec![0u64; clients as usize + 1];
        let mut worst = 0;
        let mut ids = 0u32;
        let mut now = 0;
        while (1..=clients).any(|c| left[c as usize] > 0 || in_flight[c as usize].is_some()) {
            now += 1;
            // Clients act one at a time, as their messages arrive; the
            // committer takes a commit now and then and finishes it later,
            // while more pushes arrive.
            let roll = rng.random_range(0..8);
            if roll == 0 {
                h.begin_commit(now);
            } else if roll == 1 {
                h.end_commit(now);
            } else {
                let c = rng.random_range(1..=clients);
                let ci = c as usize;
                if in_flight[ci].is_none() && left[ci] > 0 {
                    let n = rng.random_range(1..=5).min(left[ci]);
                    // What a seed client knows: the version its last
                    // answer told it, which others may have passed since.
                    let base = learned[ci];
                    let batch = (1..=n)
                        .map(|k| {
                            ids += 1;
                            ev("hot", base + k, ids)
                        })
                        .collect();
                    h.core.handle_push(now, c, now, batch);
                    in_flight[ci] = Some(n);
                    sent_at_head[ci] = h.store.head();
                }
            }
            for c in 1..=clients {
                let ci = c as usize;
                let answers = std::mem::take(h.replies.entry(c).or_default());
                for m in answers {
                    waited_max = waited_max.max(h.store.head() - sent_at_head[ci]);
                    match m {
                        ServerMessage::Accepted { placed, .. } => {
                            left[ci] -= in_flight[ci].take().unwrap();
                            refused_in_a_row[ci] = 0;
                            learned[ci] = placed.last().unwrap().version;
                        }
                        ServerMessage::PullRequired { conflicts, .. } => {
                            learned[ci] = conflicts[0].1;
                            in_flight[ci] = None;
                            refused_in_a_row[ci] += 1;
                            worst = worst.max(refused_in_a_row[ci]);
                        }
                        other => panic!("client {c}: {other:?}"),
                    }
                }
            }
            assert!(now < 1_000_000, "no progress: {left:?}");
        }
        assert!(
            worst <= 1,
            "{clients} clients: a push was refused {worst} times in a row"
        );
        // Fairness: while a client waits, each other client gets at most
        // about one turn (two pushes of at most 5 events).
        assert!(
            waited_max <= 2 * 5 * clients,
            "{clients} clients: a push waited while {waited_max} events were appended"
        );
        let log: Vec<Event> = h.store.read_all(1).map(Result::unwrap).collect();
        assert_eq!(log.len() as u64, clients * events);
        for (i, e) in log.iter().enumerate() {
            assert_eq!(e.version, i as u64 + 1);
        }
    }
}

/// A log shared by several nodes keeps the turn itself: a push it answers
/// `Held` stays unanswered and out of commits (with the later pushes of
/// its client behind it) until the head moves past what the log saw or
/// the log's wait runs out; a conflict is refused at once, and the core
/// claims no turn of its own.
#[test]
fn a_push_the_log_holds_waits_unanswered_until_the_head_moves_or_its_wait_runs_out() {
    let mut core = ServerCore::new(
        ServerConfig {
            log_keeps_turns: true,
            ..ServerConfig::default()
        },
        0,
    );
    for c in [1, 2] {
        core.handle_connect(
            c,
            ClientInfo {
                name: format!("c{c}"),
                may_write: true,
            },
        );
    }
    let held = |head| {
        Ok(CommitResult {
            outcomes: vec![PushOutcome::Held { wait_ms: 50 }],
            head,
        })
    };
    core.handle_push(0, 1, 7, vec![ev("hot", 1, 1)]);
    let commit = core.poll_commit().unwrap();
    assert_eq!(commit.pushes[0].client, 1, "each push names its client");
    core.handle_committed(0, commit.id, held(3));
    assert_eq!(core.poll_transmit(), None, "a held push is not answered");
    assert!(core.poll_commit().is_none(), "a held push waits");
    // The client's next push stays behind its held one; another client's
    // push goes meanwhile.
    core.handle_push(1, 1, 8, vec![ev("mine", 1, 2)]);
    core.handle_push(1, 2, 9, vec![ev("cold", 1, 3)]);
    let other = core.poll_commit().unwrap();
    assert_eq!(other.pushes.len(), 1);
    assert_eq!(other.pushes[0].client, 2);
    let placed = |position| strata::sync::proto::Placed {
        event_id: Uuid::from_u128(3),
        position,
        version: 1,
    };
    core.handle_committed(
        2,
        other.id,
        Ok(CommitResult {
            outcomes: vec![PushOutcome::Appended(vec![placed(3)])],
            head: 3,
        }),
    );
    assert!(accepted(core.poll_transmit().map(|(_, m)| m).as_ref()));
    assert!(core.poll_commit().is_none(), "the head did not pass 3");
    assert_eq!(core.poll_timeout(), Some(50));
    // Another node appended: the holder's push may have been; offer again.
    assert!(!core.handle_head(3));
    assert!(core.handle_head(4));
    let again = core.poll_commit().unwrap();
    assert_eq!(again.pushes.len(), 1);
    assert_eq!(&*again.pushes[0].events, &[ev("hot", 1, 1)]);
    // Held again; this time the wait runs out.
    core.handle_committed(10, again.id, held(4));
    core.handle_timeout(59);
    assert!(core.poll_commit().is_none());
    core.handle_timeout(60);
    let third = core.poll_commit().unwrap();
    // The log refuses it for a conflict: answered at once, no turn kept
    // here (the log claimed it).
    core.handle_committed(
        61,
        third.id,
        Ok(CommitResult {
            outcomes: vec![PushOutcome::Conflict(vec![("hot".into(), 2)])],
            head: 4,
        }),
    );
    assert!(pull_required(core.poll_transmit().map(|(_, m)| m).as_ref()));
    assert_eq!(core.turn_holder(), None);
    while core.poll_event().is_some() {}
    // Only now does the client's second push go.
    let fourth = core.poll_commit().unwrap();
    assert_eq!(&*fourth.pushes[0].events, &[ev("mine", 1, 2)]);
    // The log hears when a client that took part in its turn leaves, and
    // only then; one whose push is in a commit, once that commit is done
    // (told earlier, the log could take it back into its turn).
    core.handle_disconnect(70, 2);
    assert_eq!(core.poll_event(), None);
    core.handle_disconnect(70, 1);
    assert_eq!(core.poll_event(), None, "its push is still in a commit");
    core.handle_committed(
        71,
        fourth.id,
        Ok(CommitResult {
            outcomes: vec![PushOutcome::Held { wait_ms: 50 }],
            head: 4,
        }),
    );
    assert_eq!(
        core.poll_event(),
        Some(strata::sync::CoreEvent::LeftTurn { client: 1 })
    );
    assert_eq!(core.poll_event(), None);
}
