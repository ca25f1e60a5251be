// One of these runs in every tab that opens a store (a module worker, as
// OPFS sync access handles exist only in workers). The tabs of one origin
// elect an owner per store with a Web Lock: the worker holding the lock
// opens the database (OPFS, SAH-pool VFS, which only one context may hold
// at a time) and syncs; the others forward their page's requests to it
// over a BroadcastChannel and wait in the lock's queue. When the owner's
// tab closes, its lock goes with it and the next tab in the queue opens
// the database: pending events are in the outbox on disk, in order, and
// requests that had no answer yet are sent again to the new owner
// (appends carry their event ids, so a retry never writes twice).
// Before a tab is frozen or goes into the back/forward cache, its page
// asks this worker to give the database up (op `release`).
//
// Messages, page -> worker: {op: 'init', options} once, then
// {id, op, args}; worker -> page: {kind: 'res', id, ok, value | error},
// {kind: 'status', status}, {kind: 'changed'}, {kind: 'ready'},
// {kind: 'fatal', error}.
// Between tabs (BroadcastChannel `strata:<store>`): `who`, `leader`,
// `bye`, `req`, `res`, `status`, `changed`.

import sqlite3InitModule from '../sqlite/index.mjs';
import { Engine } from './engine.js';
import { Sync } from './sync.js';
import { StrataError, toWire } from './errors.js';

/** How long a new owner keeps trying to open the files the previous one
 *  may not have let go of yet (its tab is still closing). */
const OPEN_RETRY_MS_MAX = 20_000;
/** A follower that hears from no owner in this long says so in its status. */
const OWNER_WAIT_MS = 3_000;
const DB_FILE = '/strata.sqlite3';

/** @typedef {import('./engine.js').Projection} Projection */

/**
 * @typedef {object} WorkerOptions
 * @property {string} name store name (local database and server store)
 * @property {string | null} url ws(s) URL of the server's /ws, with ?store=; null: no sync
 * @property {string | null} token
 * @property {string | null} schema module URL exporting `projections` (and optionally `rebase`)
 * @property {'opfs' | 'memory'} storage
 */

const me = crypto.randomUUID();
/** @type {WorkerOptions} */
let options;
/** @type {'starting' | 'follower' | 'leader' | 'failed'} */
let role = 'starting';
/** @type {string | null} */
let leaderId = null;
/** @type {BroadcastChannel | null} */
let channel = null;
/** @type {Engine | null} */
let engine = null;
/** @type {Sync | null} */
let sync = null;
/** @type {any} */
let sqlite3 = null;
/** @type {any} */
let pool = null;
/** @type {any} */
let db = null;
/** @type {(() => void) | null} */
let releaseLock = null;
/** @type {Projection[]} */
let projections = [];
/** @type {import('./engine.js').RebaseHook | undefined} */
let rebaseHook;
let schemaKey = '';
/** Page requests sent to the owner and not answered yet, in order. */
/** @type {Map<number, {op: string, args: any}>} */
const forwarded = new Map();
/** @type {{req: import('./engine.js').AppendRequest, done: (r: any) => void}[]} */
let appendQueue = [];
let flushScheduled = false;
/** @type {{projection: string, done: number, total: number} | null} */
let rebuilding = null;
/** @type {string | null} */
let storageNote = null;
/** @type {ReturnType<typeof setTimeout> | undefined} */
let statusTimer;
/** @type {ReturnType<typeof setTimeout> | undefined} */
let ownerTimer;
let ready = false;
/** @type {any} */
let lastStatus = null;

const post = (/** @type {any} */ m) => self.postMessage(m);
const bcast = (/** @type {any} */ m) => channel?.postMessage({ ...m, from: me });

self.onmessage = (ev) => {
  const m = ev.data ?? {};
  if (m.op === 'init') {
    init(m.options).catch((e) => {
      role = 'failed';
      post({ kind: 'fatal', error: toWire(e) });
    });
  } else if (m.op === 'release') release();
  else if (typeof m.id === 'number') request(m.id, m.op, m.args);
};

/** @param {WorkerOptions} o */
async function init(o) {
  options = o;
  if (o.schema) {
    const mod = await import(o.schema);
    projections = mod.projections ?? [];
    rebaseHook = mod.rebase;
    if (!Array.isArray(projections)) throw new StrataError('invalid', `${o.schema} must export \`projections\` as an array`);
    if (rebaseHook != null && typeof rebaseHook !== 'function') throw new StrataError('invalid', `${o.schema}: \`rebase\` must be a function`);
  }
  schemaKey = Engine.schemaKey(projections);
  if (o.storage === 'memory') {
    await becomeLeader();
    return;
  }
  if (!(/** @type {any} */ (globalThis).FileSystemFileHandle?.prototype?.createSyncAccessHandle) || !navigator.storage?.getDirectory) {
    throw new StrataError(
      'no_opfs',
      'this browser gives workers no OPFS sync access handles, so Strata cannot keep events here; use a current Chrome, Edge, Firefox or Safari over https or localhost (or open the store with storage: "memory", knowing events go when the tab closes)',
    );
  }
  channel = new BroadcastChannel(`strata:${o.name}`);
  channel.onmessage = (ev) => onChannel(ev.data);
  role = 'follower';
  bcast({ kind: 'who' });
  ownerTimer = setTimeout(() => {
    sendStatus(true);
    markReady();
  }, OWNER_WAIT_MS);
  queueForLock();
}

function queueForLock() {
  navigator.locks
    .request(`strata:${options.name}`, async () => {
      try {
        await becomeLeader();
      } catch (e) {
        role = 'failed';
        post({ kind: 'fatal', error: toWire(e) });
        closeDatabase();
        return;
      }
      await new Promise((resolve) => {
        releaseLock = () => resolve(undefined);
      });
    })
    .catch((e) => post({ kind: 'fatal', error: toWire(e) }));
}

async function openPool() {
  const started = Date.now();
  for (let wait = 50; ; wait = Math.min(wait * 2, 1000)) {
    try {
      if (pool) return await pool.unpauseVfs();
      return await sqlite3.installOpfsSAHPoolVfs({
        name: `strata-${options.name}`,
        directory: `.strata-${options.name}`,
        // Never delete the files because they could not be opened: another
        // tab may still hold them for a moment.
        preserveOnInitFailure: true,
        forceReinitIfPreviouslyFailed: true,
      });
    } catch (e) {
      if (Date.now() - started > OPEN_RETRY_MS_MAX) {
        throw new StrataError('storage', `could not open the database files in OPFS for ${OPEN_RETRY_MS_MAX / 1000} s: ${/** @type {Error} */ (e).message}`);
      }
      storageNote = 'waiting for the previous owner tab to let go of the files';
      statusSoon();
      await new Promise((r) => setTimeout(r, wait));
    }
  }
}

async function becomeLeader() {
  sqlite3 ??= await sqlite3InitModule();
  if (options.storage === 'memory') db = new sqlite3.oo1.DB(':memory:', 'c');
  else {
    pool = await openPool();
    storageNote = null;
    db = new pool.OpfsSAHPoolDb(DB_FILE);
  }
  const e = new Engine(sqlite3, db, {
    projections,
    rebase: rebaseHook,
    onProgress: (p) => {
      rebuilding = p.done < p.total ? p : null;
      sendStatus();
    },
  });
  e.open();
  rebuilding = null;
  const server = options.url ? serverIdentity(options.url) : null;
  const known = e.meta('server');
  if (server && known && known !== server) {
    throw new StrataError(
      'server_mismatch',
      `store ${JSON.stringify(options.name)} in this browser syncs with ${known}, not ${server}; mixing two servers' logs would corrupt it. Open it with its server, or use another store name`,
      { server: known },
    );
  }
  if (server && !known) e.setMeta('server', server);
  e.setMeta('epoch', Number(e.meta('epoch') ?? 0) + 1);
  engine = e;
  role = 'leader';
  leaderId = me;
  clearTimeout(ownerTimer);
  bcast({ kind: 'leader', id: me });
  if (options.url) {
    sync = new Sync(e, {
      url: options.url,
      token: options.token,
      online: e.meta('online') !== '0',
      onChange: () => changed(),
      onStatus: () => statusSoon(),
    });
    sync.start();
  }
  // Requests this page made while another tab owned the database.
  const waiting = [...forwarded.entries()];
  forwarded.clear();
  for (const [id, r] of waiting) request(id, r.op, r.args);
  sendStatus(true);
  markReady();
  changed();
}

/** The page's `openStore` resolves on this: this tab owns the database,
 *  or heard from the tab that does, or waited OWNER_WAIT_MS for it. */
function markReady() {
  if (ready) return;
  ready = true;
  post({ kind: 'ready' });
}

/** The server a database belongs to: its /ws URL without credentials. @param {string} url */
function serverIdentity(url) {
  const u = new URL(url);
  u.searchParams.delete('token');
  u.username = '';
  u.password = '';
  return u.toString();
}

function closeDatabase() {
  sync?.stop();
  sync = null;
  try {
    engine?.close();
    db?.close();
  } catch {
    // Closing is best effort; the files stay consistent (journal).
  }
  engine = null;
  db = null;
  try {
    pool?.pauseVfs();
  } catch {
    // An open file would make pausing throw; nothing is open any more.
  }
}

/** Gives the database up to the next tab in the lock's queue (this tab is
 *  being frozen or hidden in the back/forward cache), then queues again. */
function release() {
  if (role !== 'leader' || options.storage === 'memory') return;
  closeDatabase();
  role = 'follower';
  leaderId = null;
  bcast({ kind: 'bye', id: me });
  const r = releaseLock;
  releaseLock = null;
  r?.();
  sendStatus(true);
  queueForLock();
}

// --- requests ----------------------------------------------------------------

/** @param {number} id @param {string} op @param {any} args */
function request(id, op, args) {
  if (role === 'leader') {
    handle(op, args, schemaKey).then((r) => post({ kind: 'res', id, ...r }));
    return;
  }
  forwarded.set(id, { op, args });
  if (leaderId) bcast({ kind: 'req', to: leaderId, id, op, args, schema: schemaKey });
}

/**
 * Runs a request on the database this tab owns.
 * @param {string} op @param {any} args @param {string} schema the projections of the asking tab
 * @returns {Promise<{ok: true, value: any} | {ok: false, error: any}>}
 */
async function handle(op, args, schema) {
  try {
    const e = /** @type {Engine} */ (engine);
    if (schema !== schemaKey && op !== 'status' && op !== 'setOnline') {
      throw new StrataError(
        'schema_mismatch',
        `the tab that owns this store runs projections [${schemaKey}], this one [${schema}]; reload the older tabs (or close them) so that all run the same code`,
      );
    }
    switch (op) {
      case 'append':
        return await new Promise((done) => {
          appendQueue.push({ req: args, done });
          if (!flushScheduled) {
            flushScheduled = true;
            // After the requests already queued, so that they share one
            // transaction (one OPFS flush).
            setTimeout(flushAppends, 0);
          }
        });
      case 'query':
        return { ok: true, value: e.query(args.sql, args.params) };
      case 'status':
        return { ok: true, value: leaderStatus() };
      case 'inspect':
        return { ok: true, value: e.inspect(args?.limit) };
      case 'setOnline':
        e.setMeta('online', args.online ? '1' : '0');
        sync?.setOnline(Boolean(args.online));
        sendStatus(true);
        return { ok: true, value: null };
      default:
        throw new StrataError('invalid', `unknown request ${JSON.stringify(op)}`);
    }
  } catch (error) {
    return { ok: false, error: toWire(error) };
  }
}

function flushAppends() {
  flushScheduled = false;
  const batch = appendQueue;
  appendQueue = [];
  if (batch.length === 0) return;
  let results;
  try {
    results = /** @type {Engine} */ (engine).append(batch.map((b) => b.req));
  } catch (error) {
    for (const b of batch) b.done({ ok: false, error: toWire(error) });
    return;
  }
  batch.forEach((b, i) => {
    const r = results[i];
    b.done(r.ok ? r : { ok: false, error: toWire(r.error) });
  });
  changed();
  sync?.kick();
}

/** @param {any} m */
function onChannel(m) {
  if (!m || m.from === me) return;
  switch (m.kind) {
    case 'who':
      if (role === 'leader') {
        bcast({ kind: 'leader', id: me });
        sendStatus(true);
      }
      break;
    case 'leader':
      leaderId = m.id;
      clearTimeout(ownerTimer);
      // Everything not answered goes to the new owner, in order.
      for (const [id, r] of forwarded) bcast({ kind: 'req', to: leaderId, id, op: r.op, args: r.args, schema: schemaKey });
      break;
    case 'bye':
      if (leaderId === m.id) leaderId = null;
      break;
    case 'req':
      if (m.to === me && role === 'leader') {
        handle(m.op, m.args, m.schema).then((r) => bcast({ kind: 'res', to: m.from, id: m.id, ...r }));
      }
      break;
    case 'res':
      if (m.to === me && forwarded.has(m.id)) {
        forwarded.delete(m.id);
        post({ kind: 'res', id: m.id, ok: m.ok, value: m.value, error: m.error });
      }
      break;
    case 'status':
      if (role !== 'leader' && m.from === leaderId) {
        lastStatus = { ...m.status, owner: 'another-tab' };
        post({ kind: 'status', status: lastStatus });
        markReady();
      }
      break;
    case 'changed':
      if (role !== 'leader') post({ kind: 'changed' });
      break;
    default:
      break;
  }
}

// --- status and change notifications -----------------------------------------

function leaderStatus() {
  const e = /** @type {Engine} */ (engine);
  return {
    store: options.name,
    owner: 'this-tab',
    storage: options.storage,
    persistent: options.storage === 'opfs',
    connection: sync ? sync.connection : 'offline',
    online: sync ? sync.wantOnline : false,
    ...e.counts(),
    lastSyncMs: sync?.lastSyncMs ?? null,
    error: sync?.error ?? e.hookError ?? null,
    projections: projections.map((p) => ({ name: p.name, version: p.version, failed: e.failed.get(p.name) ?? null })),
    rebuilding,
    note: storageNote,
    node: e.hlc.node,
  };
}

function followerStatus() {
  return {
    ...(lastStatus ?? {
      store: options.name,
      storage: options.storage,
      persistent: true,
      connection: 'offline',
      online: true,
      pending: 0,
      oldestPendingMs: null,
      rejections: 0,
      position: 0,
      lastSyncMs: null,
      error: null,
      projections: [],
      rebuilding: null,
      node: null,
    }),
    owner: leaderId ? 'another-tab' : 'none',
    note: leaderId ? storageNote : storageNote ?? 'waiting for the tab that owns the database',
  };
}

function statusSoon() {
  if (statusTimer !== undefined) return;
  statusTimer = setTimeout(() => {
    statusTimer = undefined;
    sendStatus(false);
  }, 20);
}

/** @param {boolean} [now] */
function sendStatus(now) {
  if (now && statusTimer !== undefined) {
    clearTimeout(statusTimer);
    statusTimer = undefined;
  }
  if (role === 'leader' && engine) {
    const s = leaderStatus();
    post({ kind: 'status', status: s });
    bcast({ kind: 'status', status: s });
  } else {
    post({ kind: 'status', status: followerStatus() });
  }
}

function changed() {
  // Status first: a page that re-reads its views on `changed` then never
  // shows new values beside an old pending count.
  sendStatus(true);
  post({ kind: 'changed' });
  bcast({ kind: 'changed' });
}
