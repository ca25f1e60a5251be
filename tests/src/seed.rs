//! A client of the seed's JSON protocol, written only from the seed
//! document (../shared/seed/original-design.txt): its message shapes, its
//! event object, its client flow (pull before push, rebase by renumbering
//! and re-stamping). It knows nothing of Strata's cursor tokens or
//! positions; it sends back the `new_server_hlc` it last received and
//! ignores fields it does not know. The WebSocket end-to-end tests and the
//! scale-out tests drive it against real servers.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::net::{Ws, recv, send};

/// A seed event object (what a client proposes).
pub fn event(id: &str, aggregate: &str, version: u64, data: Value) -> Value {
    json!({
        "event_id": id, "aggregate_id": aggregate, "version": version,
        "event_type": "CounterIncremented", "event_data": data,
        "timestamp": format!("{}:0:tester", wall_ms()), "metadata": null,
    })
}

pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A random UUID (version 4), as the seed's clients make them.
pub fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// What the client sends as `last_synced_hlc`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cursor {
    /// The seed's client flow: the `new_server_hlc` it last received.
    LastReceived,
    /// The largest event timestamp it has seen (a client that keeps its
    /// own notion of "the HLC of the last event received").
    MaxSeen,
}

/// The seed's client: an events table keyed by `event_id`, its own
/// not-yet-synced events, an HLC `physical:counter:node`, and the sync flow
/// of the seed's "Git-like Pull-Before-Push Logic".
#[derive(Debug, Clone)]
pub struct SeedClient {
    pub node: String,
    /// Added to the wall clock (a client whose clock is behind).
    pub clock_offset_ms: i64,
    pub hlc: (i64, u64),
    /// The seed's `events` table.
    pub events: BTreeMap<String, Value>,
    /// Ids of local events not yet accepted by the server, oldest first.
    pub local: Vec<String>,
    pub last_synced_hlc: String,
    pub cursor: Cursor,
    pub max_seen: Option<((u64, u64, String), String)>,
    /// Events received that the client already held.
    pub duplicates: usize,
    /// Most `PULL_REQUIRED` answers one sync may get before the client
    /// gives up (panics): [`SEED_ROUNDS_MAX`] by default.
    pub rounds_max: usize,
}

/// Default [`SeedClient::rounds_max`]: on one server, fairness bounds a
/// request at two rounds; ten is a wide margin.
pub const SEED_ROUNDS_MAX: usize = 10;

/// `physical:counter:node`, parsed like the seed's `%lld:%d:%s`.
pub fn parse_hlc(s: &str) -> (u64, u64, String) {
    let mut parts = s.splitn(3, ':');
    let p = parts.next().unwrap().parse().unwrap();
    let c = parts.next().unwrap().parse().unwrap();
    (p, c, parts.next().unwrap().to_owned())
}

/// The seed's view of a session: the statuses of the responses it got.
pub type Statuses = Vec<String>;

impl SeedClient {
    pub fn new(node: &str) -> SeedClient {
        SeedClient {
            node: node.to_owned(),
            clock_offset_ms: 0,
            hlc: (0, 0),
            events: BTreeMap::new(),
            local: Vec::new(),
            last_synced_hlc: String::new(),
            cursor: Cursor::LastReceived,
            max_seen: None,
            duplicates: 0,
            rounds_max: SEED_ROUNDS_MAX,
        }
    }

    /// The seed's `hlc_now`.
    pub fn hlc_now(&mut self) -> String {
        let now = wall_ms() as i64 + self.clock_offset_ms;
        if now > self.hlc.0 {
            self.hlc = (now, 0);
        } else if now == self.hlc.0 {
            self.hlc.1 += 1;
        } else {
            self.hlc = (self.hlc.0 + 1, 0);
        }
        format!("{}:{}:{}", self.hlc.0, self.hlc.1, self.node)
    }

    pub fn version_of(&self, aggregate: &str, skip_local: bool) -> u64 {
        self.events
            .iter()
            .filter(|(id, e)| {
                e["aggregate_id"] == aggregate && !(skip_local && self.local.contains(*id))
            })
            .map(|(_, e)| e["version"].as_u64().unwrap())
            .max()
            .unwrap_or(0)
    }

    /// `increment_counter()`: a local event, applied at once.
    pub fn increment(&mut self, aggregate: &str, n: i64) {
        let id = uuid_v4();
        let e = json!({
            "event_id": id, "aggregate_id": aggregate,
            "version": self.version_of(aggregate, false) + 1,
            "event_type": "CounterIncremented", "event_data": {"value": n},
            "timestamp": self.hlc_now(), "metadata": null,
        });
        self.events.insert(id.clone(), e);
        self.local.push(id);
    }

    /// The materialised `current_count` of one counter.
    pub fn count(&self, aggregate: &str) -> i64 {
        self.events
            .values()
            .filter(|e| e["aggregate_id"] == aggregate)
            .map(|e| {
                let v = e["event_data"]["value"].as_i64().unwrap();
                match e["event_type"].as_str().unwrap() {
                    "CounterIncremented" => v,
                    "CounterDecremented" => -v,
                    _ => 0,
                }
            })
            .sum()
    }

    /// Stores server events it does not hold (keeping only the seed's
    /// fields); returns how many were new.
    pub fn store(&mut self, events: &Value) -> usize {
        let mut new = 0;
        for e in events.as_array().expect("an array of events") {
            let id = e["event_id"].as_str().unwrap().to_owned();
            let ts = e["timestamp"].as_str().unwrap().to_owned();
            let key = parse_hlc(&ts);
            if self.max_seen.as_ref().is_none_or(|(m, _)| key > *m) {
                self.max_seen = Some((key, ts));
            }
            if self.events.contains_key(&id) {
                self.duplicates += 1;
                continue;
            }
            let mut seed = serde_json::Map::new();
            for f in [
                "event_id",
                "aggregate_id",
                "version",
                "event_type",
                "event_data",
                "timestamp",
                "metadata",
            ] {
                seed.insert(f.to_owned(), e.get(f).cloned().unwrap_or(Value::Null));
            }
            self.events.insert(id, Value::Object(seed));
            new += 1;
        }
        new
    }

    pub fn local_events(&self) -> Vec<Value> {
        self.local
            .iter()
            .map(|id| self.events[id].clone())
            .collect()
    }

    /// The sync flow: `client_sync_request`; on `PULL_REQUIRED` store the
    /// missing events, rebase and `client_push_events`; done on `OK`.
    pub async fn sync(&mut self, ws: &mut Ws) -> Result<Statuses, Value> {
        let last_synced_hlc = match self.cursor {
            Cursor::LastReceived => self.last_synced_hlc.clone(),
            Cursor::MaxSeen => self
                .max_seen
                .as_ref()
                .map(|(_, s)| s.clone())
                .unwrap_or_default(),
        };
        send(
            ws,
            &json!({"type": "client_sync_request", "last_synced_hlc": last_synced_hlc, "local_events": self.local_events()}),
        )
        .await;
        let mut statuses = Vec::new();
        loop {
            let msg = recv(ws).await;
            match msg["type"].as_str() {
                Some("server_new_events") => {
                    self.store(&msg["events"]);
                }
                Some("server_sync_response") => {
                    self.store(&msg["missing_events"]);
                    self.last_synced_hlc = msg["new_server_hlc"].as_str().unwrap().to_owned();
                    let status = msg["status"].as_str().unwrap().to_owned();
                    statuses.push(status.clone());
                    if status == "OK" {
                        self.local.clear();
                        return Ok(statuses);
                    }
                    assert_eq!(status, "PULL_REQUIRED");
                    assert!(
                        statuses.len() < self.rounds_max,
                        "the client keeps being refused: {statuses:?}"
                    );
                    self.rebase();
                    send(ws, &json!({"type": "client_push_events", "rebased_events": self.local_events()})).await;
                }
                Some("error") => return Err(msg),
                _ => {} // a message this client does not know
            }
        }
    }

    /// The seed's rebase: local events follow the server's, renumbered
    /// after its versions and re-stamped after its latest HLC.
    pub fn rebase(&mut self) {
        if let Some(((p, c, _), _)) = &self.max_seen {
            let latest = (*p as i64, *c);
            self.hlc = self.hlc.max(latest);
        }
        let local = self.local.clone();
        let mut next: BTreeMap<String, u64> = BTreeMap::new();
        for id in &local {
            let aggregate = self.events[id]["aggregate_id"].as_str().unwrap().to_owned();
            let base = self.version_of(&aggregate, true);
            let v = next.entry(aggregate).or_insert(base);
            *v += 1;
            let version = *v;
            let ts = self.hlc_now();
            let e = self.events.get_mut(id).unwrap();
            e["version"] = json!(version);
            e["timestamp"] = json!(ts);
        }
    }

    /// Handles `server_new_events` until `done` holds.
    pub async fn listen_until(&mut self, ws: &mut Ws, done: impl Fn(&SeedClient) -> bool) {
        while !done(self) {
            let msg = recv(ws).await;
            if msg["type"] == "server_new_events" {
                self.store(&msg["events"]);
            }
        }
    }
}

/// Versions of an aggregate in a client's table, sorted.
pub fn versions(c: &SeedClient, aggregate: &str) -> Vec<u64> {
    let mut v: Vec<u64> = c
        .events
        .values()
        .filter(|e| e["aggregate_id"] == aggregate)
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    v.sort();
    v
}
