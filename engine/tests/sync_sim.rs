//! Deterministic simulation of the sync core (Y1–Y6): one `ServerCore`,
//! several `ReplicaCore`s, in-memory storage, and a network that delays,
//! duplicates and drops (on disconnect) messages, with replica and server
//! crashes and clock skew. Every step checks the invariants; at the end the
//! network heals and every replica must converge on the server's log and
//! views, with every event either committed once or recorded as rejected.
//!
//! `STRATA_SIM_SEEDS` sets the number of seeds (default 500),
//! `STRATA_SIM_SEED` runs one seed.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use strata::sync::proto::{ClientMessage, Proposal, ServerMessage};
use strata::sync::{
    CanonicalLog, ReplicaConfig, ReplicaCore, ReplicaStorage, ServerConfig, ServerCore,
};
use strata::{AggregateEvents, Committed, Error, Event, Hlc, ManualClock, NodeId, Timestamp, Uuid};

const SEEDS_DEFAULT: u64 = 500;
const REPLICAS: usize = 4;
const STEPS: usize = 300;
const HEAL_STEPS_MAX: usize = 20_000;
const DRIFT_MS: u64 = 10_000;

// --- the server's log, in memory ------------------------------------------

struct MemLog {
    events: Vec<Event>,
    versions: HashMap<String, u64>,
    ids: HashMap<Uuid, usize>,
    hlc: Hlc,
}

impl MemLog {
    fn new(clock: Arc<ManualClock>) -> MemLog {
        MemLog {
            events: Vec::new(),
            versions: HashMap::new(),
            ids: HashMap::new(),
            hlc: Hlc::new(NodeId::new("server").unwrap(), clock, DRIFT_MS),
        }
    }
}

impl CanonicalLog for MemLog {
    fn store_id(&self) -> Uuid {
        Uuid::from_u128(42)
    }

    fn head(&self) -> u64 {
        self.events.len() as u64
    }

    /// The same contract as `Store::append_batch`: existing ids are answered
    /// with their positions; otherwise each group's expectation must hold
    /// against the version the earlier groups left; all or nothing.
    fn append(&mut self, groups: &[AggregateEvents]) -> Result<Vec<Committed>, Error> {
        let all_exist = groups
            .iter()
            .flat_map(|g| &g.events)
            .all(|e| self.ids.contains_key(&e.event_id));
        if all_exist {
            return Ok(groups
                .iter()
                .flat_map(|g| &g.events)
                .map(|e| {
                    let ev = &self.events[self.ids[&e.event_id]];
                    Committed {
                        event_id: e.event_id,
                        position: ev.position,
                        version: ev.version,
                        existed: true,
                    }
                })
                .collect());
        }
        let mut versions = self.versions.clone();
        let mut staged = Vec::new();
        let mut out = Vec::new();
        for g in groups {
            let current = *versions.get(&g.aggregate_id).unwrap_or(&0);
            let new: Vec<_> = g
                .events
                .iter()
                .filter(|e| !self.ids.contains_key(&e.event_id))
                .collect();
            if new.is_empty() {
                for e in &g.events {
                    let ev = &self.events[self.ids[&e.event_id]];
                    out.push(Committed {
                        event_id: e.event_id,
                        position: ev.position,
                        version: ev.version,
                        existed: true,
                    });
                }
                continue;
            }
            if !g.expected.admits(current) {
                return Err(Error::Conflict {
                    aggregate_id: g.aggregate_id.clone(),
                    expected: g.expected,
                    current,
                });
            }
            let mut v = current;
            for e in new {
                let ts = e.timestamp.clone().unwrap();
                if self.hlc.observe(&ts).is_err() {
                    return Err(Error::Invalid(strata::InvalidInput::NoEvents));
                }
                v += 1;
                let position = self.events.len() as u64 + staged.len() as u64 + 1;
                staged.push(Event {
                    position,
                    event_id: e.event_id,
                    aggregate_id: g.aggregate_id.clone(),
                    version: v,
                    event_type: e.event_type.clone(),
                    data: e.data.clone(),
                    timestamp: ts,
                    metadata: e.metadata.clone(),
                });
                out.push(Committed {
                    event_id: e.event_id,
                    position,
                    version: v,
                    existed: false,
                });
            }
            versions.insert(g.aggregate_id.clone(), v);
        }
        for e in staged {
            self.ids.insert(e.event_id, self.events.len());
            self.events.push(e);
        }
        self.versions = versions;
        Ok(out)
    }

    fn read(
        &mut self,
        from: u64,
        max_events: usize,
        _max_bytes: usize,
    ) -> Result<Vec<Event>, Error> {
        let start = (from.max(1) - 1) as usize;
        Ok(self
            .events
            .iter()
            .skip(start)
            .take(max_events)
            .cloned()
            .collect())
    }

    fn aggregate_version(&mut self, aggregate_id: &str) -> Result<u64, Error> {
        Ok(*self.versions.get(aggregate_id).unwrap_or(&0))
    }
}

// --- a replica's storage, in memory -----------------------------------------

#[derive(Clone)]
struct Pending {
    p: Proposal,
    created_ms: u64,
}

/// Durable state of a replica (survives its crashes).
struct MemReplica {
    remote: Option<Uuid>,
    committed: Vec<Event>,
    outbox: Vec<Pending>,
    rejected: HashMap<Uuid, String>,
    hlc: Hlc,
    /// Every event ever appended here, for the no-loss check.
    appended: Vec<Uuid>,
}

impl MemReplica {
    fn version(&self, agg: &str) -> u64 {
        self.committed
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
            .find(|p| p.p.aggregate_id == agg)
            .map_or_else(|| self.version(agg), |p| p.p.version);
        let first = v + 1;
        for v in first..first + n as u64 {
            let id = Uuid::from_u128(rng.random());
            self.appended.push(id);
            self.outbox.push(Pending {
                p: Proposal {
                    event_id: id,
                    aggregate_id: agg.into(),
                    version: v,
                    event_type: if rng.random_bool(0.5) {
                        "Add".into()
                    } else {
                        "Set".into()
                    },
                    data: rng.random_range(1..10u32).to_string().into_bytes(),
                    timestamp: self
                        .hlc
                        .now()
                        .expect("the simulated clock is far from its end"),
                    metadata: None,
                },
                created_ms: now_ms,
            });
        }
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
            self.outbox.retain(|p| p.p.event_id != e.event_id);
        }
        Ok(())
    }

    fn apply_records(&mut self, _: u64, _: u32, _: &[u8]) -> Result<(), Error> {
        unreachable!("the simulated transport carries events")
    }

    fn prepare_push(
        &mut self,
        max: usize,
        max_bytes: usize,
        _now_ms: u64,
    ) -> Result<Vec<Proposal>, Error> {
        let mut versions: HashMap<String, u64> = HashMap::new();
        for i in 0..self.outbox.len() {
            let agg = self.outbox[i].p.aggregate_id.clone();
            let committed = *versions
                .entry(agg.clone())
                .or_insert_with(|| self.version(&agg));
            if self.outbox[i].p.version != committed + 1 {
                self.outbox[i].p.version = committed + 1;
                self.outbox[i].p.timestamp = self
                    .hlc
                    .now()
                    .expect("the simulated clock is far from its end");
            }
            versions.insert(agg, committed + 1);
        }
        let mut bytes = 0;
        Ok(self
            .outbox
            .iter()
            .take(max)
            .take_while(|p| {
                let first = bytes == 0;
                bytes += p.p.size_bytes();
                first || bytes <= max_bytes
            })
            .map(|p| p.p.clone())
            .collect())
    }

    fn reject(&mut self, rejections: &[(Uuid, String)], _now_ms: u64) -> Result<(), Error> {
        for (id, reason) in rejections {
            if self.outbox.iter().any(|p| p.p.event_id == *id) {
                self.rejected.insert(*id, reason.clone());
            }
            self.outbox.retain(|p| p.p.event_id != *id);
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
    server: ServerCore,
    log: MemLog,
    nodes: Vec<Node>,
    next_conn: u64,
    pushes: u64,
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
        let server_clock = Arc::new(ManualClock::new(1_000_000));
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
            server: ServerCore::new(ServerConfig {
                lease_ms: 300,
                message_events_max: 5,
                ..ServerConfig::default()
            }),
            log: MemLog::new(server_clock),
            nodes,
            next_conn: 1,
            pushes: 0,
        }
    }

    fn delay(&mut self) -> u64 {
        self.now + self.rng.random_range(0..40)
    }

    fn connect(&mut self, i: usize) {
        let id = self.next_conn;
        self.next_conn += 1;
        self.server.connect(id, false);
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
            self.server.disconnect(c.id, self.now);
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

    /// Lets the server stream committed events to every follower.
    fn flush_server(&mut self) {
        for i in 0..self.nodes.len() {
            let Some(id) = self.nodes[i].conn.as_ref().map(|c| c.id) else {
                continue;
            };
            // A bounded queue: at most a few messages in flight per client.
            while self.nodes[i].conn.as_ref().unwrap().to_client.len() < 4
                && self.server.wants_events(id, self.log.head())
            {
                let msg = self.server.poll_events(id, &mut self.log).unwrap().unwrap();
                let at = self.delay();
                self.nodes[i]
                    .conn
                    .as_mut()
                    .unwrap()
                    .to_client
                    .push_back((at, msg));
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
                let replies = self.server.handle(now, id, m, &mut self.log);
                for r in replies {
                    let at = self.delay();
                    if let Some(c) = self.nodes[i].conn.as_mut() {
                        c.to_client.push_back((at, r));
                    }
                }
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
                // Server crash: every connection and the leases are gone.
                for j in 0..self.nodes.len() {
                    self.disconnect(j);
                }
                self.server = ServerCore::new(ServerConfig {
                    lease_ms: 300,
                    message_events_max: 5,
                    ..ServerConfig::default()
                });
            }
            20..=22 if allow_chaos => self.deliver(i, true),
            23..=29 => {
                self.now += self.rng.random_range(1..50);
                for n in &self.nodes {
                    n.clock.advance(self.rng.random_range(0..50));
                }
                let now = self.now;
                for j in 0..self.nodes.len() {
                    let node = &mut self.nodes[j];
                    if node.core.handle_timeout(now, &mut node.storage).is_err() {
                        self.disconnect(j);
                    } else {
                        self.flush_client(j);
                    }
                }
            }
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

    fn check(&self, seed: u64) {
        let server = &self.log.events;
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
                let committed = self.log.ids.contains_key(id);
                let pending = n.storage.outbox.iter().any(|p| p.p.event_id == *id);
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

fn run(seed: u64) -> (u64, usize) {
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
        let done = sim.nodes.iter().all(|n| {
            n.storage.outbox.is_empty()
                && n.storage.committed.len() == sim.log.events.len()
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
                    "replica {i}: committed {} of {}, outbox {:?}, core {:?}",
                    n.storage.committed.len(),
                    sim.log.events.len(),
                    n.storage
                        .outbox
                        .iter()
                        .map(|p| (&p.p.aggregate_id, p.p.version, p.p.timestamp.to_string()))
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
    let server_view = view(&sim.log.events);
    for (i, n) in sim.nodes.iter().enumerate() {
        assert_eq!(
            n.storage.committed, sim.log.events,
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
    (sim.pushes, sim.log.events.len())
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
    let (mut pushes, mut events) = (0, 0);
    for &seed in &seeds {
        let (p, e) = run(seed);
        pushes += p;
        events += e;
    }
    eprintln!(
        "simulated {} seeds: {events} events committed, {pushes} pushes",
        seeds.len()
    );
}

#[test]
fn y5_the_first_refused_client_gets_the_turn_and_others_wait_in_order() {
    let (mut core, mut log) = core_with_clients(3, 100);
    let mut push = |now, c, events: Vec<Proposal>| core_push(&mut core, &mut log, now, c, events);
    // Client 1 wins version 1; client 2, also at version 1, is refused and
    // gets the turn on "hot".
    assert!(matches!(
        push(0, 1, vec![ev("hot", 1, 1)]),
        ServerMessage::Accepted { .. }
    ));
    assert!(matches!(
        push(1, 2, vec![ev("hot", 1, 2)]),
        ServerMessage::PullRequired {
            retry_after_ms: 0,
            ..
        }
    ));
    // Client 3, up to date, must wait for client 2, and is told when to retry.
    assert!(matches!(
        push(2, 3, vec![ev("hot", 2, 3)]),
        ServerMessage::PullRequired {
            retry_after_ms: strata::sync::server::RETRY_AFTER_MS_MAX,
            ..
        }
    ));
    // Other aggregates are not held up.
    assert!(matches!(
        push(2, 3, vec![ev("cold", 1, 30)]),
        ServerMessage::Accepted { .. }
    ));
    // Client 2 comes back rebased and wins; the turn passes to client 3.
    assert!(matches!(
        push(3, 2, vec![ev("hot", 2, 2)]),
        ServerMessage::Accepted { .. }
    ));
    assert!(matches!(
        push(4, 1, vec![ev("hot", 3, 4)]),
        ServerMessage::PullRequired { .. }
    ));
    assert!(matches!(
        push(5, 3, vec![ev("hot", 3, 3)]),
        ServerMessage::Accepted { .. }
    ));
    // Client 1 queued behind; if it never comes back, the turn lapses.
    assert!(matches!(
        push(500, 3, vec![ev("hot", 4, 5)]),
        ServerMessage::Accepted { .. }
    ));
}

#[test]
fn y5_a_holder_that_keeps_failing_loses_the_turn_when_its_time_is_up() {
    let (mut core, mut log) = core_with_clients(3, 100);
    let mut push = |now, c, events: Vec<Proposal>| core_push(&mut core, &mut log, now, c, events);
    assert!(matches!(
        push(0, 1, vec![ev("hot", 1, 1)]),
        ServerMessage::Accepted { .. }
    ));
    // Client 2 is refused at t=1 and holds the turn until t=101; client 3
    // queues behind it.
    assert!(matches!(
        push(1, 2, vec![ev("hot", 1, 2)]),
        ServerMessage::PullRequired { .. }
    ));
    assert!(matches!(
        push(2, 3, vec![ev("hot", 2, 3)]),
        ServerMessage::PullRequired { .. }
    ));
    // Client 2 keeps pushing the same stale event (a client that never
    // renumbers): each refusal must not move its deadline.
    for t in [30, 60, 90] {
        assert!(matches!(
            push(t, 2, vec![ev("hot", 1, 2)]),
            ServerMessage::PullRequired { .. }
        ));
    }
    // At t=102 the turn has lapsed and passes to client 3.
    assert!(matches!(
        push(102, 3, vec![ev("hot", 2, 3)]),
        ServerMessage::Accepted { .. }
    ));
}

/// A server core over a `MemLog` with clients 1 to `clients` welcomed.
fn core_with_clients(clients: u64, lease_ms: u64) -> (ServerCore, MemLog) {
    let mut log = MemLog::new(Arc::new(ManualClock::new(1_000_000)));
    let mut core = ServerCore::new(ServerConfig {
        lease_ms,
        ..ServerConfig::default()
    });
    for c in 1..=clients {
        core.connect(c, false);
        core.handle(
            0,
            c,
            ClientMessage::Hello {
                protocol: 1,
                store: "s".into(),
                token: None,
                client: format!("c{c}"),
            },
            &mut log,
        );
    }
    (core, log)
}

/// Event `n` (its id and its clock's counter) at `version` of `agg`.
fn ev(agg: &str, version: u64, n: u32) -> Proposal {
    Proposal {
        event_id: Uuid::from_u128(n as u128),
        aggregate_id: agg.into(),
        version,
        event_type: "T".into(),
        data: vec![],
        timestamp: Timestamp::from_parts(1_000_000, n, "c").unwrap(),
        metadata: None,
    }
}

fn core_push(
    core: &mut ServerCore,
    log: &mut MemLog,
    now: u64,
    c: u64,
    events: Vec<Proposal>,
) -> ServerMessage {
    core.handle(
        now,
        c,
        ClientMessage::Push {
            request: 1,
            base: 0,
            events,
        },
        log,
    )
    .pop()
    .unwrap()
}

#[test]
fn y5_a_push_from_a_client_that_is_behind_is_accepted_when_it_conflicts_with_nothing() {
    let (mut core, mut log) = core_with_clients(1, strata::sync::server::LEASE_MS_DEFAULT);
    for n in 1..=5 {
        core.handle(
            0,
            1,
            ClientMessage::Push {
                request: n as u64,
                base: 0,
                events: vec![ev("other", n as u64, n)],
            },
            &mut log,
        );
    }
    // Based on position 0, but "mine" never moved: accepted.
    let reply = core.handle(
        0,
        1,
        ClientMessage::Push {
            request: 9,
            base: 0,
            events: vec![ev("mine", 1, 99)],
        },
        &mut log,
    );
    assert!(
        matches!(reply.last(), Some(ServerMessage::Accepted { placed, .. }) if placed[0].position == 6)
    );
}
