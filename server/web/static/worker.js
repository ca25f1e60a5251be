// The counter's local-first engine, in a worker: SQLite (the official Wasm
// build) persisted in OPFS through the SAH-pool VFS (no cross-origin
// isolation needed), the seed's `events` table and `current_count` view, an
// outbox of pending events, the HLC, and sync over the seed's JSON protocol
// at /ws. The page only renders what this posts and sends clicks.
//
// Rules, as in the Rust replica (docs/PROTOCOL.md):
// * `events` holds committed events only, exactly as the server's log has
//   them (same positions, versions, timestamps); pending local events wait
//   in `outbox`, durable, and the value shown is the committed view plus
//   the pending deltas on top.
// * The cursor is a server position (and the server's cursor token), never
//   an HLC, so an event that arrives late with an older clock is not skipped.
// * On PULL_REQUIRED: store the missing events, rebase the outbox (versions
//   renumbered after the committed ones, timestamps re-stamped by the receive
//   rule; counter events are always kept), push again.
// * Events the server refuses for good (`error` with code `rejected` and an
//   `event_id`) move from the outbox to `rejections`: kept, never silently
//   dropped, and never pushed again. `too_large` halves the push (as the
//   Rust replica does); a single event still too large is rejected that
//   way. Other refusals retry with backoff.
// * Reconnects by itself with exponential backoff and jitter; the outbox
//   drains without waiting for a new click.

import sqlite3InitModule from './sqlite/index.mjs';
import { Hlc, formatHlc, parseHlc } from './hlc.js';

const AGGREGATE = 'counter';
const STORE = 'default';
const DB_FILE = '/strata-counter.sqlite3';
const VFS_NAME = 'strata-counter';
const PUSH_EVENTS_MAX = 500;
// The server's page size for missing events (strata::sync::seed).
const EVENTS_PER_MESSAGE_MAX = 1000;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 10_000;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS events (
    event_id        TEXT PRIMARY KEY,
    aggregate_id    TEXT NOT NULL,
    version         INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    event_data      BLOB NOT NULL,
    timestamp       TEXT NOT NULL,
    metadata        BLOB,
    position        INTEGER NOT NULL UNIQUE,  -- the server's log position
    CONSTRAINT ux_aggregate_version UNIQUE (aggregate_id, version)
);
CREATE TABLE IF NOT EXISTS outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    aggregate_id    TEXT NOT NULL,
    version         INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    event_data      BLOB NOT NULL,
    timestamp       TEXT NOT NULL,
    metadata        BLOB
);
CREATE TABLE IF NOT EXISTS rejections (
    event_id        TEXT PRIMARY KEY,
    aggregate_id    TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    event_data      BLOB NOT NULL,
    reason          TEXT NOT NULL,
    rejected_at     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS current_count (
    id      INTEGER PRIMARY KEY DEFAULT 1,
    value   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS _metadata (
    key     TEXT PRIMARY KEY,
    value   TEXT NOT NULL
);
`;

let db;
let hlc;
let persistent = false;
let ws = null;
let wantOnline = true;
let conn = 'offline';
let inFlight = false;
let backoff = BACKOFF_MIN_MS;
// Events per push: halved on `too_large`, back to the most on reconnect.
let pushLimit = PUSH_EVENTS_MAX;
let reconnectTimer = null;
let retryTimer = null;
let retryBackoff = BACKOFF_MIN_MS;
let lastError = null;

const meta = (key) => db.selectValue('SELECT value FROM _metadata WHERE key = ?', [key]);
const setMeta = (key, value) => db.exec({ sql: 'INSERT OR REPLACE INTO _metadata (key, value) VALUES (?, ?)', bind: [key, String(value)] });

function delta(type, data) {
  const n = Number(JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data)).value ?? 0);
  if (type === 'CounterIncremented') return n;
  if (type === 'CounterDecremented') return -n;
  return 0;
}

function state() {
  const committed = db.selectValue('SELECT value FROM current_count WHERE id = 1') ?? 0;
  const pending = db.selectObjects('SELECT event_type, event_data FROM outbox WHERE aggregate_id = ? ORDER BY seq', [AGGREGATE]);
  const value = pending.reduce((v, e) => v + delta(e.event_type, e.event_data), committed);
  return {
    type: 'state',
    value,
    committed,
    pending: pending.length,
    rejected: db.selectValue('SELECT count(*) FROM rejections'),
    conn,
    wantOnline,
    persistent,
    position: Number(meta('position') ?? 0),
    error: lastError,
  };
}

const post = () => self.postMessage(state());

async function init() {
  const sqlite3 = await sqlite3InitModule();
  try {
    const pool = await sqlite3.installOpfsSAHPoolVfs({ name: VFS_NAME });
    db = new pool.OpfsSAHPoolDb(DB_FILE);
    persistent = true;
  } catch (e) {
    // No OPFS (an insecure context, or another tab holds the database):
    // keep working in memory and say so.
    lastError = `not persistent: ${e.message}`;
    db = new sqlite3.oo1.DB(':memory:', 'ct');
  }
  db.exec(SCHEMA);
  let node = meta('node');
  if (!node) {
    node = `web-${crypto.randomUUID().slice(0, 13)}`;
    setMeta('node', node);
  }
  hlc = new Hlc(node);
  // After a reload, the clock continues after everything it stamped or saw.
  for (const table of ['events', 'outbox']) {
    const t = db.selectValue(`SELECT max(timestamp) FROM ${table}`);
    if (t) hlc.restore(parseHlc(t));
  }
  post();
  connect();
}

// --- local changes ---------------------------------------------------------

function localVersion() {
  const pending = db.selectValue('SELECT max(version) FROM outbox WHERE aggregate_id = ?', [AGGREGATE]);
  if (pending != null) return pending;
  return db.selectValue('SELECT max(version) FROM events WHERE aggregate_id = ?', [AGGREGATE]) ?? 0;
}

function append(type) {
  db.exec({
    sql: `INSERT INTO outbox (event_id, aggregate_id, version, event_type, event_data, timestamp, metadata)
          VALUES (?, ?, ?, ?, ?, ?, NULL)`,
    bind: [crypto.randomUUID(), AGGREGATE, localVersion() + 1, type, JSON.stringify({ value: 1 }), formatHlc(hlc.now())],
  });
  post();
  if (conn !== 'offline' && !inFlight) push();
}

// --- committed events ----------------------------------------------------------

/** Stores committed events (in position order), applies them to the view,
 *  and retires the pending events among them. */
function storeCommitted(events) {
  if (!events || events.length === 0) return;
  db.transaction(() => {
    let position = Number(meta('position') ?? 0);
    for (const e of events) {
      const p = Number(e.position);
      if (p <= position) continue; // a resend
      if (p !== position + 1) throw new Error(`the server skipped from position ${position} to ${p}`);
      const data = typeof e.event_data === 'string' ? e.event_data : JSON.stringify(e.event_data);
      db.exec({
        sql: `INSERT INTO events (event_id, aggregate_id, version, event_type, event_data, timestamp, metadata, position)
              VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
        bind: [e.event_id, e.aggregate_id, e.version, e.event_type, data, e.timestamp,
               e.metadata == null ? null : JSON.stringify(e.metadata), p],
      });
      if (e.aggregate_id === AGGREGATE) {
        db.exec({
          sql: `INSERT INTO current_count (id, value) VALUES (1, ?)
                ON CONFLICT (id) DO UPDATE SET value = value + excluded.value`,
          bind: [delta(e.event_type, data)],
        });
      }
      db.exec({ sql: 'DELETE FROM outbox WHERE event_id = ?', bind: [e.event_id] });
      hlc.restore(parseHlc(e.timestamp));
      position = p;
    }
    setMeta('position', position);
  });
}

/** Renumbers pending events after the committed ones and re-stamps them
 *  after everything seen (the receive rule already ran in storeCommitted). */
function rebase() {
  const committed = db.selectValue('SELECT max(version) FROM events WHERE aggregate_id = ?', [AGGREGATE]) ?? 0;
  const pending = db.selectObjects('SELECT seq, version FROM outbox WHERE aggregate_id = ? ORDER BY seq', [AGGREGATE]);
  if (pending.every((e, i) => e.version === committed + 1 + i)) return;
  db.transaction(() => {
    pending.forEach((e, i) => {
      db.exec({
        sql: 'UPDATE outbox SET version = ?, timestamp = ? WHERE seq = ?',
        bind: [committed + 1 + i, formatHlc(hlc.now()), e.seq],
      });
    });
  });
}

function outboxEvents() {
  return db
    .selectObjects(`SELECT event_id, aggregate_id, version, event_type, event_data, timestamp, metadata
                    FROM outbox ORDER BY seq LIMIT ${pushLimit}`)
    .map((e) => ({ ...e, event_data: JSON.parse(e.event_data), metadata: e.metadata == null ? null : JSON.parse(e.metadata) }));
}

// --- sync ------------------------------------------------------------------------

function send(msg) {
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify(msg));
    return true;
  }
  return false;
}

function syncRequest() {
  rebase();
  inFlight = send({
    type: 'client_sync_request',
    last_synced_hlc: meta('cursor') ?? '',
    last_synced_position: Number(meta('position') ?? 0),
    local_events: outboxEvents(),
  });
  conn = 'syncing';
  post();
}

/** Pushes again after `ms` (the server asked us to wait our turn, or
 *  refused the last push for a reason that may pass). */
function retryLater(ms) {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(() => {
    if (!inFlight && conn !== 'offline') push();
  }, ms);
}

/** The server refused one event for good: keep it aside, out of the outbox. */
function reject(eventId, reason) {
  db.transaction(() => {
    db.exec({
      sql: `INSERT OR REPLACE INTO rejections (event_id, aggregate_id, event_type, event_data, reason, rejected_at)
            SELECT event_id, aggregate_id, event_type, event_data, ?, ? FROM outbox WHERE event_id = ?`,
      bind: [reason, new Date().toISOString(), eventId],
    });
    db.exec({ sql: 'DELETE FROM outbox WHERE event_id = ?', bind: [eventId] });
  });
}

function push() {
  rebase();
  const events = outboxEvents();
  if (events.length === 0) {
    inFlight = false;
    conn = 'online';
    post();
    return;
  }
  inFlight = send({ type: 'client_push_events', rebased_events: events });
  conn = 'syncing';
  post();
}

function handle(msg) {
  switch (msg.type) {
    case 'server_sync_response':
      storeCommitted(msg.missing_events);
      if (msg.new_server_hlc) setMeta('cursor', msg.new_server_hlc);
      inFlight = false;
      retryBackoff = BACKOFF_MIN_MS;
      // A full page of missing events means there may be more: catch up
      // first. Another client has the turn: wait as told. Otherwise push
      // what is pending (rebased after PULL_REQUIRED).
      if ((msg.missing_events ?? []).length >= EVENTS_PER_MESSAGE_MAX) syncRequest();
      else if (msg.retry_after_ms > 0) {
        conn = 'syncing';
        post();
        retryLater(msg.retry_after_ms);
      } else push();
      break;
    case 'server_new_events':
      storeCommitted(msg.events);
      post();
      break;
    case 'error':
      lastError = `${msg.code}: ${msg.message}`;
      if (msg.code === 'rejected' && msg.event_id) {
        // The answer to the push follows: stay in flight.
        reject(msg.event_id, msg.message);
      } else if (msg.code === 'too_large' && pushLimit > 1) {
        pushLimit = Math.floor(pushLimit / 2);
        inFlight = false;
        push();
      } else if (msg.code === 'too_large') {
        // One event alone is over the server's limit: it can never pass.
        const first = outboxEvents()[0];
        if (first) reject(first.event_id, msg.message);
        inFlight = false;
        push();
      } else {
        inFlight = false;
        retryLater(retryBackoff);
        retryBackoff = Math.min(retryBackoff * 2, BACKOFF_MAX_MS);
      }
      post();
      break;
    default:
      break;
  }
}

function connect() {
  clearTimeout(reconnectTimer);
  if (!wantOnline || ws) return;
  conn = 'connecting';
  post();
  const configured = new URL(self.location.href).searchParams.get('server');
  const url = configured ? new URL(configured) : new URL('/ws', self.location.href);
  if (url.protocol === 'http:' || url.protocol === 'https:') url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  if (!url.searchParams.has('store')) url.searchParams.set('store', STORE);
  const socket = new WebSocket(url);
  ws = socket;
  socket.onopen = () => {
    backoff = BACKOFF_MIN_MS;
    pushLimit = PUSH_EVENTS_MAX;
    lastError = null;
    syncRequest();
  };
  socket.onmessage = (ev) => {
    try {
      handle(JSON.parse(ev.data));
    } catch (e) {
      lastError = String(e.message ?? e);
      socket.close();
    }
  };
  socket.onclose = () => {
    if (ws === socket) ws = null;
    inFlight = false;
    conn = 'offline';
    post();
    if (wantOnline) {
      const wait = backoff + Math.random() * backoff;
      backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      reconnectTimer = setTimeout(connect, wait);
    }
  };
}

function setOnline(online) {
  wantOnline = online;
  if (online) {
    backoff = BACKOFF_MIN_MS;
    connect();
  } else {
    clearTimeout(reconnectTimer);
    if (ws) ws.close();
    ws = null;
    conn = 'offline';
    post();
  }
}

self.onmessage = (ev) => {
  const { type } = ev.data ?? {};
  if (!db) return;
  if (type === 'incr') append('CounterIncremented');
  else if (type === 'decr') append('CounterDecremented');
  else if (type === 'offline') setOnline(false);
  else if (type === 'online') setOnline(true);
  else if (type === 'state') post();
};

init().catch((e) => self.postMessage({ type: 'fatal', message: String(e.message ?? e) }));
