// The Strata browser client: a local-first event store in the page's
// origin, in the spirit of the Rust `Replica` (engine/src/sync/local.rs).
//
//   const store = await openStore({ name: 'default', schema: new URL('./views.js', import.meta.url) });
//   await store.append('counter-1', 'CounterIncremented', { value: 1 });
//   store.watch('SELECT id, value FROM counters', [], (rows) => render(rows));
//
// All data lives in SQLite (the official Wasm build) in OPFS, in a worker;
// one tab per origin and store owns the database and the others go through
// it (worker.js), so every tab is persistent. docs/BROWSER.md is the guide.

import { StrataError, fromWire } from './errors.js';
import { prepareAppend } from './engine.js';

export { StrataError } from './errors.js';
export { uuidv7 } from './engine.js';

/** Store names: as the server's (1 to 64 of a-z, 0-9, _ and -). */
const STORE_NAME = /^[a-z0-9_-]{1,64}$/;

/**
 * @typedef {object} OpenOptions
 * @property {string} [name] the store: the local database and the server's store (default "default")
 * @property {string | URL | null} [server] the server's WebSocket endpoint (ws:, wss:, http:, https: or a path
 *   on this origin); default `/ws` on this page's origin; null: no sync
 * @property {string} [token] sent in an `auth` message when the socket opens (not in the URL)
 * @property {string | URL} [schema] module exporting `projections` (and optionally `rebase`); every tab's
 *   worker imports it, since any tab may come to own the database
 * @property {'opfs' | 'memory'} [storage] default "opfs"; "memory" keeps nothing past the tab, and says so
 * @property {string | URL} [workerUrl] where worker.js is served, if not beside this file
 */

/**
 * Status of a store, as its owner tab reports it.
 * @typedef {object} Status
 * @property {string} store
 * @property {'this-tab' | 'another-tab' | 'none'} owner which tab holds the database
 * @property {'opfs' | 'memory'} storage
 * @property {boolean} persistent
 * @property {'offline' | 'connecting' | 'syncing' | 'online'} connection
 * @property {boolean} online whether it tries to be connected (setOnline)
 * @property {number} pending events not yet accepted by the server
 * @property {number | null} oldestPendingMs when the oldest pending event was appended (ms since the epoch)
 * @property {number | null} oldestPendingAgeMs its age when this status was read
 * @property {number} rejections events refused for good
 * @property {number} position the last server position held here
 * @property {number | null} lastSyncMs when the server last answered
 * @property {string | null} error the last sync or hook error
 * @property {{name: string, version: number, failed: string | null}[]} projections
 * @property {{projection: string, done: number, total: number} | null} rebuilding
 * @property {string | null} note e.g. waiting for another tab
 * @property {string | null} node this store's HLC node id
 */

/**
 * Opens a store. Resolves when this tab owns the database or reached the
 * tab that does; rejects with a StrataError (code `no_opfs`, `invalid`, ...)
 * when it cannot.
 * @param {OpenOptions} [options]
 * @returns {Promise<Store>}
 */
export async function openStore(options = {}) {
  const name = options.name ?? 'default';
  if (typeof name !== 'string' || !STORE_NAME.test(name)) {
    throw new StrataError('invalid', `store name ${JSON.stringify(name)} is invalid: use 1 to 64 characters of a-z, 0-9, _ and -`);
  }
  const storage = options.storage ?? 'opfs';
  if (storage !== 'opfs' && storage !== 'memory') throw new StrataError('invalid', `storage must be "opfs" or "memory", not ${JSON.stringify(storage)}`);
  if (storage === 'opfs') {
    const missing = [
      !globalThis.isSecureContext && 'a secure context (https or localhost)',
      !navigator.storage?.getDirectory && 'OPFS (navigator.storage.getDirectory)',
      !navigator.locks && 'Web Locks (navigator.locks)',
      typeof BroadcastChannel === 'undefined' && 'BroadcastChannel',
    ].filter(Boolean);
    if (missing.length) {
      throw new StrataError(
        'no_opfs',
        `this browser cannot keep a Strata store here: it lacks ${missing.join(', ')}. Nothing falls back to memory on its own; open with storage: "memory" to run without persistence`,
      );
    }
  }
  const url = options.server === null ? null : serverUrl(options.server ?? '/ws', name);
  const worker = new Worker(options.workerUrl ?? new URL('./worker.js', import.meta.url), { type: 'module', name: `strata:${name}` });
  const store = new Store(worker, name);
  worker.postMessage({
    op: 'init',
    options: {
      name,
      url,
      token: options.token ?? null,
      schema: options.schema ? new URL(options.schema, location.href).toString() : null,
      storage,
    },
  });
  await store.ready;
  return store;
}

/**
 * The WebSocket URL for a server option, with the store named.
 * @param {string | URL} server @param {string} store
 */
export function serverUrl(server, store) {
  const u = new URL(server, location.href);
  if (u.protocol === 'http:') u.protocol = 'ws:';
  else if (u.protocol === 'https:') u.protocol = 'wss:';
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') throw new StrataError('invalid', `server ${u} is not a ws:, wss:, http: or https: URL`);
  if (!u.searchParams.has('store')) u.searchParams.set('store', store);
  return u.toString();
}

/**
 * A store opened in this tab. Every method goes to the tab that owns the
 * database (maybe this one) and resolves with its answer.
 */
export class Store {
  /** @param {Worker} worker @param {string} name */
  constructor(worker, name) {
    this.name = name;
    this.worker = worker;
    this.nextId = 1;
    /** @type {Map<number, {resolve: (v: any) => void, reject: (e: any) => void}>} */
    this.calls = new Map();
    /** @type {Status | null} */
    this.lastStatus = null;
    /** @type {Map<string, Set<(arg: any) => void>>} */
    this.listeners = new Map([
      ['status', new Set()],
      ['change', new Set()],
    ]);
    /** @type {Set<{sql: string, params: unknown[], callback: (rows: any[]) => void, last: string | null, running: boolean, again: boolean}>} */
    this.watches = new Set();
    this.closed = false;
    /** @type {StrataError | null} */
    this.fatal = null;
    /** @type {Promise<void>} */
    this.ready = new Promise((resolve, reject) => {
      this.readyResolve = resolve;
      this.readyReject = reject;
    });
    worker.onmessage = (ev) => this.onMessage(ev.data);
    worker.onerror = (ev) => {
      ev.preventDefault?.();
      this.fail(new StrataError('internal', `the Strata worker failed to start: ${ev.message || 'see the console'}`));
    };
    // A frozen tab (or one kept in the back/forward cache) must not keep
    // the database from the other tabs.
    this.onFreeze = () => this.worker.postMessage({ op: 'release' });
    /** @param {PageTransitionEvent} ev */
    this.onPageHide = (ev) => {
      if (ev.persisted) this.worker.postMessage({ op: 'release' });
    };
    document.addEventListener('freeze', this.onFreeze);
    addEventListener('pagehide', this.onPageHide);
  }

  /** @param {any} m */
  onMessage(m) {
    switch (m.kind) {
      case 'res': {
        const call = this.calls.get(m.id);
        if (!call) return;
        this.calls.delete(m.id);
        if (m.ok) call.resolve(m.value);
        else call.reject(fromWire(m.error));
        break;
      }
      case 'status':
        this.lastStatus = m.status;
        for (const f of this.listeners.get('status') ?? []) f(this.status());
        break;
      case 'ready':
        this.readyResolve?.();
        break;
      case 'changed':
        for (const f of this.listeners.get('change') ?? []) f(undefined);
        for (const w of this.watches) this.runWatch(w);
        break;
      case 'fatal':
        this.fail(fromWire(m.error));
        break;
      default:
        break;
    }
  }

  /** @param {StrataError} e */
  fail(e) {
    this.fatal = e;
    this.readyReject?.(e);
    for (const c of this.calls.values()) c.reject(e);
    this.calls.clear();
    for (const f of this.listeners.get('status') ?? []) f(this.status());
  }

  /** @param {string} op @param {any} [args] @returns {Promise<any>} */
  call(op, args) {
    if (this.closed) return Promise.reject(new StrataError('closed', 'this store was closed'));
    if (this.fatal) return Promise.reject(this.fatal);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject });
      this.worker.postMessage({ id, op, args });
    });
  }

  /**
   * Appends one event: durable in this browser and visible in queries when
   * it resolves, pushed to the server when online.
   * @param {string} aggregateId
   * @param {string} type
   * @param {unknown} data any JSON value
   * @param {{expectedVersion?: number, metadata?: unknown, eventId?: string}} [options]
   *   expectedVersion: the aggregate's version counting pending events (0: none yet); a mismatch
   *   rejects with code `conflict` and `currentVersion`
   * @returns {Promise<{eventId: string, version: number, position: number}>} version and position are
   *   provisional until the server accepts the event
   */
  async append(aggregateId, type, data, options = {}) {
    const r = await this.appendEvents(aggregateId, [{ type, data, metadata: options.metadata, eventId: options.eventId }], options);
    return r[0];
  }

  /**
   * Appends events to one aggregate, all or nothing.
   * @param {string} aggregateId
   * @param {{type: string, data: unknown, metadata?: unknown, eventId?: string}[]} events
   * @param {{expectedVersion?: number}} [options]
   * @returns {Promise<{eventId: string, version: number, position: number}[]>}
   */
  async appendEvents(aggregateId, events, options = {}) {
    // Checked and given ids here, so that a retry through another tab
    // carries the same ids (and cannot write twice).
    const req = prepareAppend(aggregateId, events, options.expectedVersion);
    const r = await this.call('append', req);
    return r.events;
  }

  /**
   * Runs one read-only SQL statement over the views (committed events with
   * the pending ones applied on top). Rows come as objects.
   * @param {string} sql @param {unknown[]} [params]
   * @returns {Promise<Record<string, any>[]>}
   */
  query(sql, params = []) {
    return this.call('query', { sql, params });
  }

  /**
   * Calls `callback` with the query's rows now and whenever they change.
   * @param {string} sql @param {unknown[]} params @param {(rows: Record<string, any>[]) => void} callback
   * @returns {() => void} stops watching
   */
  watch(sql, params, callback) {
    const w = { sql, params, callback, last: null, running: false, again: false };
    this.watches.add(w);
    this.runWatch(w);
    return () => this.watches.delete(w);
  }

  /** @param {{sql: string, params: unknown[], callback: (rows: any[]) => void, last: string | null, running: boolean, again: boolean}} w */
  async runWatch(w) {
    if (w.running) {
      w.again = true;
      return;
    }
    w.running = true;
    try {
      do {
        w.again = false;
        const rows = await this.query(w.sql, w.params);
        const key = JSON.stringify(rows, (_, v) => (typeof v === 'bigint' ? `${v}n` : v));
        if (key !== w.last && this.watches.has(w)) {
          w.last = key;
          w.callback(rows);
        }
      } while (w.again && this.watches.has(w));
    } catch (e) {
      console.error(`strata: watched query failed: ${/** @type {Error} */ (e).message}`);
    } finally {
      w.running = false;
    }
  }

  /**
   * The last status the owner tab reported.
   * @returns {Status}
   */
  status() {
    const s = /** @type {any} */ (this.lastStatus ?? { owner: 'none', pending: 0, oldestPendingMs: null });
    return {
      ...s,
      oldestPendingAgeMs: s.oldestPendingMs == null ? null : Math.max(0, Date.now() - s.oldestPendingMs),
      error: this.fatal ? this.fatal.message : s.error ?? null,
    };
  }

  /**
   * @param {'status' | 'change'} event
   * @param {(arg: any) => void} f
   * @returns {() => void} unsubscribes
   */
  on(event, f) {
    const set = this.listeners.get(event);
    if (!set) throw new StrataError('invalid', `unknown event ${JSON.stringify(event)}: use "status" or "change"`);
    set.add(f);
    return () => set.delete(f);
  }

  /** Connects (true) or works offline (false); remembered in the store. @param {boolean} online */
  setOnline(online) {
    return this.call('setOnline', { online });
  }

  /**
   * What the inspector shows: the latest committed events, the outbox,
   * rejections, projections.
   * @param {number} [limit]
   */
  inspect(limit = 50) {
    return this.call('inspect', { limit });
  }

  /** Gives the database to another tab, if one waits (this one queues again). */
  release() {
    this.worker.postMessage({ op: 'release' });
  }

  /** Stops the worker; another tab takes the database over. */
  close() {
    this.closed = true;
    document.removeEventListener('freeze', this.onFreeze);
    removeEventListener('pagehide', this.onPageHide);
    this.worker.terminate();
    for (const c of this.calls.values()) c.reject(new StrataError('closed', 'this store was closed'));
    this.calls.clear();
  }
}
