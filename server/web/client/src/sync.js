// Sync over the seed's JSON protocol at /ws (docs/PROTOCOL.md section 6),
// for the tab that owns the database. It follows the checklist of 6.10:
// * on every (re)connect, `client_sync_request` with the last cursor token
//   and the committed position, plus pending events (at most
//   PUSH_EVENTS_MAX, fewer after `too_large`);
// * missing and live events are stored as committed (engine.receive), the
//   outbox is rebased there, and what is pending is pushed with
//   `client_push_events` when nothing is in flight;
// * `rejected` with an event id moves that event to the rejections;
//   `too_large` halves the push, and one event alone too large is rejected;
//   other errors retry with backoff; a closed socket reconnects with
//   backoff and jitter.
// event_data and metadata go out as the JSON text they were stored as,
// and what comes back is read as JSON values, whatever its key order.

import { toWire } from './errors.js';

const PUSH_EVENTS_MAX = 500;
/** The server's page size for missing events (strata::sync::seed). */
const EVENTS_PER_MESSAGE_MAX = 1000;
const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 10_000;
/** A push or sync request without any answer for this long: the
 *  connection is taken as dead and reopened. */
const REQUEST_TIMEOUT_MS = 30_000;

/**
 * @typedef {'offline' | 'connecting' | 'syncing' | 'online'} Connection
 */

export class Sync {
  /**
   * @param {import('./engine.js').Engine} engine
   * @param {object} options
   * @param {string} options.url ws: or wss: URL of /ws, with `store`
   * @param {string | null} [options.token] sent in an `auth` message first
   * @param {boolean} [options.online] start connected (default true)
   * @param {(what: {committed: number, rejected: number}) => void} options.onChange after the database changed
   * @param {() => void} options.onStatus after the connection state changed
   */
  constructor(engine, options) {
    this.engine = engine;
    this.url = options.url;
    this.token = options.token ?? null;
    this.onChange = options.onChange;
    this.onStatus = options.onStatus;
    this.wantOnline = options.online ?? true;
    /** @type {Connection} */
    this.connection = 'offline';
    /** @type {WebSocket | null} */
    this.ws = null;
    this.inFlight = false;
    /** @type {string[]} ids of the push in flight */
    this.pushed = [];
    this.pushLimit = PUSH_EVENTS_MAX;
    this.backoff = BACKOFF_MIN_MS;
    this.retryBackoff = BACKOFF_MIN_MS;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.reconnectTimer = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.retryTimer = undefined;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this.requestTimer = undefined;
    /** @type {string | null} */
    this.error = null;
    const last = engine.meta('last_sync_ms');
    /** @type {number | null} */
    this.lastSyncMs = last == null ? null : Number(last);
    this.stopped = false;
  }

  start() {
    this.connect();
  }

  /** Closes the socket for good (the tab gives up the database). */
  stop() {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.retryTimer);
    clearTimeout(this.requestTimer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, 'closing');
  }

  /** @param {boolean} online */
  setOnline(online) {
    this.wantOnline = online;
    if (online) {
      this.backoff = BACKOFF_MIN_MS;
      this.connect();
    } else {
      clearTimeout(this.reconnectTimer);
      clearTimeout(this.retryTimer);
      const ws = this.ws;
      this.ws = null;
      this.inFlight = false;
      if (ws) ws.close(1000, 'working offline');
      this.setConnection('offline');
    }
  }

  /** Something was appended: push it if the line is free. */
  kick() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN && !this.inFlight && this.connection !== 'connecting') this.push();
  }

  /** @param {Connection} c */
  setConnection(c) {
    if (this.connection === c) return;
    this.connection = c;
    this.onStatus();
  }

  /** @param {string} text */
  send(text) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(text);
      clearTimeout(this.requestTimer);
      const ws = this.ws;
      this.requestTimer = setTimeout(() => {
        if (this.ws === ws && this.inFlight) {
          this.error = `no answer from the server in ${REQUEST_TIMEOUT_MS / 1000} s; reconnecting`;
          ws.close(4000, 'request timeout');
        }
      }, REQUEST_TIMEOUT_MS);
      return true;
    }
    return false;
  }

  syncRequest() {
    const { ids, json } = this.engine.outboxForPush(this.pushLimit);
    const cursor = this.engine.meta('cursor') ?? '';
    this.pushed = ids;
    this.inFlight = this.send(
      `{"type":"client_sync_request","last_synced_hlc":${JSON.stringify(cursor)},"last_synced_position":${this.engine.position},"local_events":[${json.join(',')}]}`,
    );
    this.setConnection('syncing');
  }

  push() {
    const { ids, json } = this.engine.outboxForPush(this.pushLimit);
    if (ids.length === 0) {
      this.inFlight = false;
      this.setConnection('online');
      return;
    }
    this.pushed = ids;
    this.inFlight = this.send(`{"type":"client_push_events","rebased_events":[${json.join(',')}]}`);
    this.setConnection('syncing');
  }

  /** @param {number} ms */
  retryLater(ms) {
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      if (!this.inFlight && this.ws && this.ws.readyState === WebSocket.OPEN) this.push();
    }, ms);
  }

  /** @param {any} msg */
  handle(msg) {
    switch (msg?.type) {
      case 'server_sync_response': {
        clearTimeout(this.requestTimer);
        const missing = Array.isArray(msg.missing_events) ? msg.missing_events : [];
        const committed = this.engine.receive(missing);
        if (typeof msg.new_server_hlc === 'string' && msg.new_server_hlc) this.engine.setMeta('cursor', msg.new_server_hlc);
        this.lastSyncMs = this.engine.now();
        this.engine.setMeta('last_sync_ms', this.lastSyncMs);
        this.inFlight = false;
        this.retryBackoff = BACKOFF_MIN_MS;
        this.error = null;
        this.onChange({ committed, rejected: 0 });
        // A full page of missing events means there may be more: catch up
        // first. Another client has the turn: wait as told. Otherwise push
        // what is pending (already rebased by receive).
        if (missing.length >= EVENTS_PER_MESSAGE_MAX) this.syncRequest();
        else if (msg.retry_after_ms > 0) {
          this.setConnection('syncing');
          this.retryLater(Math.min(Number(msg.retry_after_ms), BACKOFF_MAX_MS));
        } else this.push();
        this.onStatus();
        break;
      }
      case 'server_new_events': {
        const committed = this.engine.receive(Array.isArray(msg.events) ? msg.events : []);
        this.lastSyncMs = this.engine.now();
        if (committed > 0) this.onChange({ committed, rejected: 0 });
        this.onStatus();
        break;
      }
      case 'error': {
        this.error = `${msg.code}: ${msg.message}`;
        if (msg.code === 'rejected' && typeof msg.event_id === 'string') {
          // The answer to the push follows: stay in flight.
          const n = this.engine.reject([{ eventId: msg.event_id, reason: String(msg.message) }]);
          this.onChange({ committed: 0, rejected: n });
        } else if (msg.code === 'too_large' && this.pushLimit > 1 && this.pushed.length > 1) {
          this.pushLimit = Math.max(1, Math.floor(Math.min(this.pushLimit, this.pushed.length) / 2));
          this.inFlight = false;
          this.push();
        } else if (msg.code === 'too_large' && this.pushed.length === 1) {
          // One event alone is over the server's limit: it can never pass.
          const n = this.engine.reject([{ eventId: this.pushed[0], reason: String(msg.message) }]);
          this.onChange({ committed: 0, rejected: n });
          this.inFlight = false;
          this.push();
        } else {
          this.inFlight = false;
          this.retryLater(this.retryBackoff);
          this.retryBackoff = Math.min(this.retryBackoff * 2, BACKOFF_MAX_MS);
        }
        this.onStatus();
        break;
      }
      default:
        break;
    }
  }

  connect() {
    clearTimeout(this.reconnectTimer);
    if (!this.wantOnline || this.ws || this.stopped) return;
    this.setConnection('connecting');
    let socket;
    try {
      socket = new WebSocket(this.url);
    } catch (e) {
      this.error = `cannot open ${this.url}: ${/** @type {Error} */ (e).message}`;
      this.scheduleReconnect();
      return;
    }
    this.ws = socket;
    socket.onopen = () => {
      if (this.ws !== socket) return;
      this.backoff = BACKOFF_MIN_MS;
      this.pushLimit = PUSH_EVENTS_MAX;
      if (this.token) socket.send(JSON.stringify({ type: 'auth', token: this.token }));
      this.syncRequest();
    };
    socket.onmessage = (ev) => {
      if (this.ws !== socket) return;
      try {
        this.handle(JSON.parse(String(ev.data)));
      } catch (e) {
        // Storing failed or the server sent something unreadable: nothing
        // was half-applied (one transaction); start over from the cursor.
        this.error = toWire(e).message;
        socket.close(4000, 'client error');
      }
    };
    socket.onclose = (ev) => {
      if (this.ws !== socket) return;
      this.ws = null;
      this.inFlight = false;
      clearTimeout(this.requestTimer);
      if (ev.code === 1008 && ev.reason) this.error = `the server refused: ${ev.reason}`;
      this.setConnection('offline');
      this.onStatus();
      this.scheduleReconnect();
    };
  }

  scheduleReconnect() {
    if (!this.wantOnline || this.stopped) return;
    const wait = this.backoff + Math.random() * this.backoff;
    this.backoff = Math.min(this.backoff * 2, BACKOFF_MAX_MS);
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), wait);
  }
}
