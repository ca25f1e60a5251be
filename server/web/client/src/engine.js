// The local store: one SQLite database holding the committed log (the
// seed's `events` table, at the server's positions), the durable outbox of
// pending events, rejection records, and the views that projections keep.
// No sockets and no tabs here: sync.js moves bytes, worker.js decides which
// tab owns the database. Time comes from `now`, so tests can drive it.
//
// The rules are the Rust replica's (engine/src/sync/local.rs, DESIGN.md Y1-Y6):
// * `events` holds committed events only, exactly as the server's log has
//   them; the cursor is a position, never an HLC (Y6).
// * A local append is durable in `strata_outbox` and visible in the views
//   at once, in the same transaction (Y2).
// * Views are the committed events applied in position order, then the
//   pending events applied on top, in outbox order, at provisional
//   positions after the committed head. Every change a pending event makes
//   to a view table is recorded as an inverse statement in `strata_undo`
//   (triggers, as in sqlite.org/undoredo.html), so the pending part can be
//   taken off again. When the server sends back our own outbox head, the
//   views are already right and only the bookkeeping moves (the fast path).
//   When anything else arrives, the pending part is undone, the committed
//   events are applied, the outbox is rebased (versions renumbered,
//   re-stamped, the rebase hook asked) and applied again, so any
//   deterministic projection converges (Y3), not only commutative ones.
// * Events the server refuses for good, or the hook drops, move to
//   `strata_rejections`: kept, never pushed again, never silent.

import { Hlc, formatHlc, parseHlc, compareHlc } from './hlc.js';
import { StrataError } from './errors.js';

/** Bounds checked at `append`, before anything is written. The server's
 *  defaults (docs/PROTOCOL.md section 2); an event the server finds too
 *  large anyway becomes a rejection. */
export const AGGREGATE_ID_BYTES_MAX = 256;
export const EVENT_TYPE_BYTES_MAX = 256;
export const EVENT_DATA_BYTES_MAX = 1 << 20;
export const METADATA_BYTES_MAX = 64 << 10;
/** Most events in one `appendEvents` call (one atomic group). */
export const APPEND_EVENTS_MAX = 1000;
/** Projection names: they prefix nothing, but show in errors and status. */
const PROJECTION_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;
/** Progress is reported every this many events of a rebuild. */
const REBUILD_PROGRESS_EVERY = 1000;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS events (            -- the seed's table: committed events only
    event_id        TEXT PRIMARY KEY,
    aggregate_id    TEXT NOT NULL,
    version         INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    event_data      BLOB NOT NULL,              -- JSON text
    timestamp       TEXT NOT NULL,              -- fixed-width HLC text
    metadata        BLOB,                       -- JSON text or NULL
    position        INTEGER NOT NULL UNIQUE,    -- the server's log position
    CONSTRAINT ux_aggregate_version UNIQUE (aggregate_id, version)
);
CREATE TABLE IF NOT EXISTS strata_outbox (     -- pending events, in push order
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT NOT NULL UNIQUE,
    aggregate_id    TEXT NOT NULL,
    version         INTEGER NOT NULL,           -- provisional
    event_type      TEXT NOT NULL,
    event_data      BLOB NOT NULL,
    metadata        BLOB,
    timestamp       TEXT NOT NULL,
    created_ms      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS strata_outbox_aggregate ON strata_outbox (aggregate_id, version);
CREATE TABLE IF NOT EXISTS strata_rejections (
    event_id        TEXT PRIMARY KEY,
    aggregate_id    TEXT NOT NULL,
    version         INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    event_data      BLOB NOT NULL,
    metadata        BLOB,
    timestamp       TEXT NOT NULL,
    reason          TEXT NOT NULL,
    rejected_ms     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS strata_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS strata_projections (
    name            TEXT PRIMARY KEY,
    version         INTEGER NOT NULL,
    objects         TEXT NOT NULL,              -- JSON [[type, name], ...] its schema created
    failed          TEXT,                       -- why it stopped, if it did
    built_ms        INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS strata_undo (       -- inverse statements of pending events' view changes
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_seq      INTEGER NOT NULL,
    sql             TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS strata_undo_seq ON strata_undo (outbox_seq);
`;

/** Tables of the library; projections may read them, never write them. */
export const INTERNAL_TABLES = ['events', 'strata_outbox', 'strata_rejections', 'strata_meta', 'strata_projections', 'strata_undo'];

/**
 * An event as projections and the rebase hook see it.
 * @typedef {object} StrataEvent
 * @property {number} position log position (provisional, after the committed head, while pending)
 * @property {string} eventId
 * @property {string} aggregateId
 * @property {number} version
 * @property {string} type
 * @property {any} data the event_data JSON value
 * @property {any} metadata the metadata JSON value, or null
 * @property {string} timestamp fixed-width HLC text
 */

/**
 * What `apply` and the rebase hook get to work with: the database, inside
 * the store's transaction. Statements are prepared once and cached.
 * @typedef {object} ProjectionDb
 * @property {(sql: string, params?: unknown[]) => number} exec runs a statement; returns the rows changed
 * @property {(sql: string, params?: unknown[]) => Record<string, unknown>[]} query rows as objects
 * @property {(sql: string, params?: unknown[]) => unknown} value the first column of the first row, or undefined
 */

/**
 * A projection: a view of the events, kept in SQLite tables.
 * @typedef {object} Projection
 * @property {string} name
 * @property {number} version bump it when `schema` or `apply` changes: the view is rebuilt by replay
 * @property {string} schema SQL creating its tables (rowid tables; not WITHOUT ROWID, not virtual)
 * @property {(db: ProjectionDb, event: StrataEvent) => void} apply synchronous and deterministic
 */

/**
 * What the rebase hook decides for a pending event whose aggregate moved.
 * @typedef {undefined | 'keep' | {drop: string} | {replace: {type: string, data: any, metadata?: any}}} RebaseDecision
 */

/**
 * Called for each pending event whose aggregate changed under it (events
 * from other devices arrived, or an earlier pending event of the same
 * aggregate was rejected), before it is applied again. The views hold the
 * committed state plus the pending events kept so far.
 * @typedef {(event: StrataEvent, ctx: {db: ProjectionDb, committedVersion: number}) => RebaseDecision} RebaseHook
 */

/**
 * One append request: events for one aggregate, all or nothing.
 * @typedef {object} AppendRequest
 * @property {string} aggregateId
 * @property {{eventId: string, type: string, data: string, metadata: string | null}[]} events data and metadata as JSON text
 * @property {number | null} [expectedVersion] the aggregate's version counting pending events; 0 = no events yet
 */

/**
 * @typedef {object} AppendResult
 * @property {{eventId: string, version: number, position: number}[]} events where each landed, for now (provisional while pending)
 * @property {boolean} existed every id was already here (a retry): nothing was written
 */

const utf8 = new TextEncoder();
export const byteLength = (/** @type {string} */ s) => utf8.encode(s).length;

const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/** A version 7 UUID (time-ordered), as the Rust engine makes. */
export function uuidv7(now = Date.now()) {
  const b = crypto.getRandomValues(new Uint8Array(16));
  let ms = now;
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/**
 * JSON text of a value, refusing what JSON.stringify would silently change
 * or drop (undefined, functions, symbols, NaN, Infinity, BigInt).
 * @param {unknown} value
 * @param {string} what names the value in the error
 */
export function jsonText(value, what) {
  let text;
  try {
    text = JSON.stringify(value, (key, v) => {
      const t = typeof v;
      if (t === 'undefined' || t === 'function' || t === 'symbol') throw new Error(`${key ? `member ${JSON.stringify(key)}` : 'the value'} is ${t}`);
      if (t === 'number' && !Number.isFinite(v)) throw new Error(`${key ? `member ${JSON.stringify(key)}` : 'the value'} is ${v}`);
      return v;
    });
  } catch (e) {
    throw new StrataError('invalid', `${what} is not JSON: ${/** @type {Error} */ (e).message}`);
  }
  return /** @type {string} */ (text);
}

/** Checks a name (aggregate id, event type). */
function checkName(/** @type {unknown} */ s, /** @type {string} */ what, /** @type {number} */ max) {
  if (typeof s !== 'string' || s.length === 0) throw new StrataError('invalid', `${what} must be a non-empty string`);
  const n = byteLength(s);
  if (n > max) throw new StrataError('invalid', `${what} is ${n} bytes, more than ${max}`);
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(s)) throw new StrataError('invalid', `${what} ${JSON.stringify(s)} has control characters`);
}

/**
 * Validates an append before it leaves the page: clear errors, nothing written.
 * @param {string} aggregateId
 * @param {{type: string, data: unknown, metadata?: unknown, eventId?: string}[]} events
 * @param {number | null | undefined} expectedVersion
 * @returns {AppendRequest}
 */
export function prepareAppend(aggregateId, events, expectedVersion) {
  checkName(aggregateId, 'aggregateId', AGGREGATE_ID_BYTES_MAX);
  if (!Array.isArray(events) || events.length === 0) throw new StrataError('invalid', 'append needs at least one event');
  if (events.length > APPEND_EVENTS_MAX) throw new StrataError('invalid', `one append holds at most ${APPEND_EVENTS_MAX} events, not ${events.length}`);
  if (expectedVersion != null && !(Number.isSafeInteger(expectedVersion) && expectedVersion >= 0)) {
    throw new StrataError('invalid', `expectedVersion must be an integer >= 0 (0: no events yet), not ${String(expectedVersion)}`);
  }
  const out = events.map((e, i) => {
    const at = events.length > 1 ? `event ${i}: ` : '';
    checkName(e.type, `${at}type`, EVENT_TYPE_BYTES_MAX);
    if (e.data === undefined) throw new StrataError('invalid', `${at}data is missing (use null for none)`);
    const data = jsonText(e.data, `${at}data`);
    const dataBytes = byteLength(data);
    if (dataBytes > EVENT_DATA_BYTES_MAX) throw new StrataError('invalid', `${at}data is ${dataBytes} bytes of JSON, more than ${EVENT_DATA_BYTES_MAX}`);
    const metadata = e.metadata == null ? null : jsonText(e.metadata, `${at}metadata`);
    if (metadata != null && byteLength(metadata) > METADATA_BYTES_MAX) {
      throw new StrataError('invalid', `${at}metadata is ${byteLength(metadata)} bytes of JSON, more than ${METADATA_BYTES_MAX}`);
    }
    const eventId = e.eventId ?? uuidv7();
    if (typeof eventId !== 'string' || !UUID.test(eventId)) throw new StrataError('invalid', `${at}eventId ${JSON.stringify(eventId)} is not a UUID`);
    return { eventId: eventId.toLowerCase(), type: e.type, data, metadata };
  });
  if (new Set(out.map((e) => e.eventId)).size !== out.length) throw new StrataError('invalid', 'two events of one append have the same eventId');
  return { aggregateId, events: out, expectedVersion: expectedVersion ?? null };
}

const ident = (/** @type {string} */ s) => `"${s.replaceAll('"', '""')}"`;
const literal = (/** @type {string} */ s) => `'${s.replaceAll("'", "''")}'`;

/**
 * Prepares, binds and runs statements for projections, caching them.
 */
class Statements {
  /** @param {any} db */
  constructor(db) {
    this.db = db;
    /** @type {Map<string, any>} */
    this.cache = new Map();
  }

  /** @param {string} sql */
  get(sql) {
    let s = this.cache.get(sql);
    if (!s) {
      s = this.db.prepare(sql);
      this.cache.set(sql, s);
    }
    return s;
  }

  /** @param {string} sql @param {unknown[]} [params] */
  exec(sql, params) {
    const s = this.get(sql);
    try {
      if (params && params.length) s.bind(params);
      s.step();
    } finally {
      s.reset(true);
    }
    return this.db.changes();
  }

  /** @param {string} sql @param {unknown[]} [params] */
  query(sql, params) {
    const s = this.get(sql);
    /** @type {Record<string, unknown>[]} */
    const rows = [];
    try {
      if (params && params.length) s.bind(params);
      while (s.step()) rows.push(s.get({}));
    } finally {
      s.reset(true);
    }
    return rows;
  }

  /** @param {string} sql @param {unknown[]} [params] */
  value(sql, params) {
    const s = this.get(sql);
    try {
      if (params && params.length) s.bind(params);
      return s.step() ? s.get(0) : undefined;
    } finally {
      s.reset(true);
    }
  }

  clear() {
    for (const s of this.cache.values()) s.finalize();
    this.cache.clear();
  }
}

/** One row of `strata_outbox`. */
/**
 * @typedef {object} OutboxRow
 * @property {number} seq
 * @property {string} event_id
 * @property {string} aggregate_id
 * @property {number} version
 * @property {string} event_type
 * @property {string} event_data
 * @property {string | null} metadata
 * @property {string} timestamp
 * @property {number} created_ms
 */

export class Engine {
  /**
   * @param {any} sqlite3 the initialised SQLite Wasm module
   * @param {any} db an open oo1 database
   * @param {object} options
   * @param {Projection[]} [options.projections]
   * @param {RebaseHook} [options.rebase]
   * @param {() => number} [options.now] wall clock, ms since the Unix epoch
   * @param {(p: {projection: string, done: number, total: number}) => void} [options.onProgress] rebuild progress
   */
  constructor(sqlite3, db, options = {}) {
    this.sqlite3 = sqlite3;
    this.db = db;
    this.projections = options.projections ?? [];
    this.rebaseHook = options.rebase;
    this.now = options.now ?? (() => Date.now());
    this.onProgress = options.onProgress ?? (() => {});
    this.stmts = new Statements(db);
    /** @type {ProjectionDb} */
    this.api = {
      exec: (sql, params) => this.stmts.exec(sql, params),
      query: (sql, params) => this.stmts.query(sql, params),
      value: (sql, params) => this.stmts.value(sql, params),
    };
    /** Projections that stopped, by name: why. */
    /** @type {Map<string, string>} */
    this.failed = new Map();
    /** @type {string[]} what open() rebuilt, for status and tests */
    this.rebuilt = [];
    this.position = 0;
    this.pendingCount = 0;
    /** @type {Hlc} */
    this.hlc = new Hlc('unset', this.now);
  }

  /** Creates or checks the schema, builds views that need it. */
  open() {
    for (const p of this.projections) {
      if (!p || typeof p !== 'object') throw new StrataError('invalid', 'a projection must be an object {name, version, schema, apply}');
      if (typeof p.name !== 'string' || !PROJECTION_NAME.test(p.name)) throw new StrataError('invalid', `projection name ${JSON.stringify(p.name)} must match ${PROJECTION_NAME}`);
      if (!Number.isSafeInteger(p.version) || p.version < 1) throw new StrataError('invalid', `projection ${p.name}: version must be an integer >= 1`);
      if (typeof p.schema !== 'string' || !p.schema.trim()) throw new StrataError('invalid', `projection ${p.name}: schema must be SQL text`);
      if (typeof p.apply !== 'function') throw new StrataError('invalid', `projection ${p.name}: apply must be a function`);
    }
    if (new Set(this.projections.map((p) => p.name)).size !== this.projections.length) throw new StrataError('invalid', 'two projections have the same name');
    const db = this.db;
    // WAL, synced at every commit (synchronous FULL), so an acknowledged
    // append survives a crash of the tab or the browser. The SAH-pool VFS
    // has no shared memory; with the exclusive locking mode SQLite keeps
    // the WAL index in heap memory instead, which is right here: one
    // connection, in the tab that owns the database. Measured: one durable
    // append takes about a third of the time it takes with a rollback
    // journal (docs/BENCHMARKS.md). recursive_triggers makes REPLACE's
    // deletions fire the undo triggers.
    db.exec('PRAGMA locking_mode = EXCLUSIVE; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY; PRAGMA recursive_triggers = ON;');
    db.exec(SCHEMA);
    db.exec('CREATE TEMP TABLE IF NOT EXISTS strata_undo_state (recording INTEGER NOT NULL, seq INTEGER NOT NULL); DELETE FROM temp.strata_undo_state; INSERT INTO temp.strata_undo_state VALUES (0, 0);');
    let node = this.meta('node');
    if (!node) {
      node = `web-${uuidv7().slice(-12)}`;
      this.setMeta('node', node);
    }
    this.hlc = new Hlc(node, this.now);
    // After a reload the clock goes on after everything it stamped or saw.
    for (const table of ['events', 'strata_outbox', 'strata_rejections']) {
      const t = db.selectValue(`SELECT max(timestamp) FROM ${table}`);
      if (t) this.hlc.restore(parseHlc(t));
    }
    this.position = Number(db.selectValue('SELECT max(position) FROM events') ?? 0);
    this.pendingCount = Number(db.selectValue('SELECT count(*) FROM strata_outbox'));
    // A crash between storing a committed event and retiring its outbox
    // row cannot happen (one transaction), but a database written by an
    // older client might hold both: the committed copy wins.
    this.setupProjections();
  }

  close() {
    this.stmts.clear();
  }

  /** @param {string} key @returns {string | undefined} */
  meta(key) {
    return this.db.selectValue('SELECT value FROM strata_meta WHERE key = ?', [key]);
  }

  /** @param {string} key @param {string | number} value */
  setMeta(key, value) {
    this.stmts.exec('INSERT OR REPLACE INTO strata_meta (key, value) VALUES (?, ?)', [key, String(value)]);
  }

  /** A key for the projections this engine runs; tabs compare them. */
  static schemaKey(/** @type {Projection[]} */ projections) {
    return projections.map((p) => `${p.name}@${p.version}`).join(',');
  }

  // --- projections -----------------------------------------------------------

  setupProjections() {
    const db = this.db;
    /** @type {Map<string, {version: number, objects: string, failed: string | null}>} */
    const stored = new Map(db.selectObjects('SELECT name, version, objects, failed FROM strata_projections').map((r) => [r.name, r]));
    const need = this.projections.filter((p) => {
      const s = stored.get(p.name);
      return !s || s.version !== p.version || s.failed != null;
    });
    const removed = [...stored.keys()].filter((n) => !this.projections.some((p) => p.name === n));
    if (need.length === 0 && removed.length === 0) {
      this.installUndoTriggers();
      this.checkOverlay();
      return;
    }
    db.transaction(() => {
      // The pending part comes off first: the rebuilt views start from the
      // committed log, and the undo records of dropped tables must not outlive them.
      this.undoAll();
      for (const name of [...removed, ...need.map((p) => p.name).filter((n) => stored.has(n))]) {
        this.dropObjects(/** @type {[string, string][]} */ (JSON.parse(stored.get(name)?.objects ?? '[]')));
        db.exec({ sql: 'DELETE FROM strata_projections WHERE name = ?', bind: [name] });
      }
      this.stmts.clear();
      for (const p of need) this.createProjection(p);
      this.installUndoTriggers();
      const total = this.position;
      for (const p of need) {
        this.failed.delete(p.name);
        let done = 0;
        this.onProgress({ projection: p.name, done, total });
        const stmt = db.prepare('SELECT * FROM events ORDER BY position');
        try {
          while (stmt.step()) {
            this.applyOne(p, eventFromRow(stmt.get({}), null), false);
            done++;
            if (done % REBUILD_PROGRESS_EVERY === 0) this.onProgress({ projection: p.name, done, total });
            if (this.failed.has(p.name)) break;
          }
        } finally {
          stmt.finalize();
        }
        this.onProgress({ projection: p.name, done: total, total });
        this.rebuilt.push(p.name);
      }
      this.reapplyPending(new Set());
    });
  }

  /** @param {Projection} p */
  createProjection(p) {
    const db = this.db;
    const objects = () => new Set(db.selectObjects("SELECT type, name FROM sqlite_schema WHERE type IN ('table', 'index', 'view', 'trigger')").map((r) => `${r.type}\u0000${r.name}`));
    const before = objects();
    try {
      db.exec(p.schema);
    } catch (e) {
      throw new StrataError('projection', `projection ${p.name}: its schema failed: ${/** @type {Error} */ (e).message}`, { projection: p.name });
    }
    const created = [...objects()].filter((o) => !before.has(o)).map((o) => /** @type {[string, string]} */ (o.split('\u0000')));
    const tables = created.filter(([t]) => t === 'table').map(([, n]) => n);
    if (tables.length === 0) throw new StrataError('projection', `projection ${p.name}: its schema created no table (does a table of that name exist already?)`, { projection: p.name });
    for (const t of tables) {
      if (INTERNAL_TABLES.includes(t) || t.startsWith('strata_')) throw new StrataError('projection', `projection ${p.name}: table names starting with strata_ (and events) belong to the library`, { projection: p.name });
      const info = db.selectObject('SELECT type, wr FROM pragma_table_list WHERE schema = ? AND name = ?', ['main', t]);
      if (info && (info.wr || info.type !== 'table')) {
        throw new StrataError('projection', `projection ${p.name}: table ${t} is ${info.wr ? 'WITHOUT ROWID' : info.type}; views need rowid tables, so that pending events can be undone`, { projection: p.name });
      }
    }
    db.exec({
      sql: 'INSERT INTO strata_projections (name, version, objects, failed, built_ms) VALUES (?, ?, ?, NULL, ?)',
      bind: [p.name, p.version, JSON.stringify(created), this.now()],
    });
  }

  /** @param {[string, string][]} objects */
  dropObjects(objects) {
    // Tables take their own indexes and triggers with them (and an
    // index behind a UNIQUE constraint can only go that way).
    const order = ['view', 'trigger', 'table', 'index'];
    for (const type of order) {
      for (const [t, name] of objects) if (t === type) this.db.exec(`DROP ${type.toUpperCase()} IF EXISTS main.${ident(name)}`);
    }
  }

  /** Temporary triggers that record, while a pending event is applied, the
   *  statement undoing each row change of each view table. */
  installUndoTriggers() {
    const db = this.db;
    const rows = db.selectObjects('SELECT name, objects FROM strata_projections');
    const flag = 'WHEN (SELECT recording FROM temp.strata_undo_state)';
    for (const r of rows) {
      for (const [type, t] of /** @type {[string, string][]} */ (JSON.parse(r.objects))) {
        if (type !== 'table') continue;
        const cols = db.selectObjects('SELECT name FROM pragma_table_xinfo(?) WHERE hidden = 0', [t]).map((c) => /** @type {string} */ (c.name));
        const T = `main.${ident(t)}`;
        const tr = (/** @type {string} */ kind) => ident(`strata_undo_${t}_${kind}`);
        const record = (/** @type {string} */ expr) => `INSERT INTO main.strata_undo (outbox_seq, sql) SELECT seq, ${expr} FROM temp.strata_undo_state;`;
        const set = cols.map((c) => `${literal(`, ${ident(c)}=`)} || quote(old.${ident(c)})`).join(' || ');
        const values = cols.map((c) => `${literal(', ')} || quote(old.${ident(c)})`).join(' || ');
        db.exec(`
          DROP TRIGGER IF EXISTS temp.${tr('i')}; DROP TRIGGER IF EXISTS temp.${tr('u')}; DROP TRIGGER IF EXISTS temp.${tr('d')};
          CREATE TEMP TRIGGER ${tr('i')} AFTER INSERT ON ${T} ${flag} BEGIN
            ${record(`${literal(`DELETE FROM ${T} WHERE rowid=`)} || new.rowid`)}
          END;
          CREATE TEMP TRIGGER ${tr('u')} AFTER UPDATE ON ${T} ${flag} BEGIN
            ${record(`${literal(`UPDATE ${T} SET rowid=`)} || old.rowid${set ? ` || ${set}` : ''} || ${literal(' WHERE rowid=')} || new.rowid`)}
          END;
          CREATE TEMP TRIGGER ${tr('d')} AFTER DELETE ON ${T} ${flag} BEGIN
            ${record(`${literal(`INSERT INTO ${T} (rowid${cols.map((c) => `, ${ident(c)}`).join('')}) VALUES (`)} || old.rowid${values ? ` || ${values}` : ''} || ')'`)}
          END;`);
      }
    }
  }

  /** Takes the pending events' changes off the views. */
  undoAll() {
    const undo = this.db.selectValues('SELECT sql FROM strata_undo ORDER BY id DESC');
    for (const sql of undo) this.db.exec(sql);
    this.db.exec('DELETE FROM strata_undo');
  }

  /**
   * Applies one event to one projection inside a savepoint. `strict`
   * (a local append) throws on failure; otherwise the projection stops,
   * saying why, and the others go on.
   * @param {Projection} p @param {StrataEvent} e @param {boolean} strict
   */
  applyOne(p, e, strict) {
    if (this.failed.has(p.name)) return;
    const db = this.db;
    db.exec('SAVEPOINT strata_apply');
    try {
      const r = /** @type {any} */ (p.apply(this.api, e));
      if (r && typeof r.then === 'function') throw new Error('apply returned a Promise; it must be synchronous');
      db.exec('RELEASE strata_apply');
    } catch (err) {
      db.exec('ROLLBACK TO strata_apply; RELEASE strata_apply');
      const why = `projection ${p.name} failed at position ${e.position} (event ${e.eventId}, ${e.type}): ${/** @type {Error} */ (err)?.message ?? err}`;
      if (strict) throw new StrataError('projection', why, { projection: p.name });
      this.failed.set(p.name, why);
      db.exec({ sql: 'UPDATE strata_projections SET failed = ? WHERE name = ?', bind: [why, p.name] });
    }
  }

  /** @param {StrataEvent} e @param {number | null} pendingSeq @param {boolean} strict */
  apply(e, pendingSeq, strict) {
    if (pendingSeq != null) this.stmts.exec('UPDATE temp.strata_undo_state SET recording = 1, seq = ?', [pendingSeq]);
    try {
      for (const p of this.projections) this.applyOne(p, e, strict);
    } finally {
      if (pendingSeq != null) this.stmts.exec('UPDATE temp.strata_undo_state SET recording = 0');
    }
  }

  // --- local appends -------------------------------------------------------

  /** The aggregate's version counting pending events. @param {string} aggregateId */
  localVersion(aggregateId) {
    const pending = this.stmts.value('SELECT max(version) FROM strata_outbox WHERE aggregate_id = ?', [aggregateId]);
    if (pending != null) return Number(pending);
    return this.committedVersion(aggregateId);
  }

  /** @param {string} aggregateId */
  committedVersion(aggregateId) {
    return Number(this.stmts.value('SELECT max(version) FROM events WHERE aggregate_id = ?', [aggregateId]) ?? 0);
  }

  /**
   * Appends each request in one transaction (group commit); each request is
   * all or nothing on its own.
   * @param {AppendRequest[]} requests
   * @returns {({ok: true, value: AppendResult} | {ok: false, error: unknown})[]}
   */
  append(requests) {
    /** @type {({ok: true, value: AppendResult} | {ok: false, error: unknown})[]} */
    const results = [];
    this.db.transaction(() => {
      for (const r of requests) {
        this.db.exec('SAVEPOINT strata_append');
        const pendingBefore = this.pendingCount;
        try {
          results.push({ ok: true, value: this.appendOne(r) });
          this.db.exec('RELEASE strata_append');
        } catch (error) {
          this.db.exec('ROLLBACK TO strata_append; RELEASE strata_append');
          this.pendingCount = pendingBefore;
          results.push({ ok: false, error });
        }
      }
    });
    return results;
  }

  /** @param {AppendRequest} r @returns {AppendResult} */
  appendOne(r) {
    // A retry (the tab that owned the database went away before it
    // answered) carries the same ids: answer it without writing twice.
    const existing = r.events.map((e) => this.findEvent(e.eventId));
    if (existing.some((x) => x)) {
      const out = [];
      for (let i = 0; i < r.events.length; i++) {
        const e = r.events[i];
        const x = existing[i];
        if (!x || x.aggregate_id !== r.aggregateId || x.event_type !== e.type || x.event_data !== e.data || (x.metadata ?? null) !== e.metadata) {
          throw new StrataError('duplicate_id', `event id ${e.eventId} is already used${x ? ` by another event (${x.aggregate_id} v${x.version} ${x.event_type})` : ' by another event of this append'}; use a new id`, { eventId: e.eventId });
        }
        out.push({ eventId: e.eventId, version: Number(x.version), position: Number(x.position ?? 0) });
      }
      return { events: out, existed: true };
    }
    const current = this.localVersion(r.aggregateId);
    if (r.expectedVersion != null && r.expectedVersion !== current) {
      throw new StrataError('conflict', `conflict on aggregate ${JSON.stringify(r.aggregateId)}: expected version ${r.expectedVersion}, but its current version is ${current}; read it again and retry`, {
        aggregateId: r.aggregateId,
        expectedVersion: r.expectedVersion,
        currentVersion: current,
      });
    }
    const created = this.now();
    const out = [];
    for (let i = 0; i < r.events.length; i++) {
      const e = r.events[i];
      const version = current + 1 + i;
      const timestamp = formatHlc(this.hlc.now());
      this.stmts.exec(
        `INSERT INTO strata_outbox (event_id, aggregate_id, version, event_type, event_data, metadata, timestamp, created_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
        [e.eventId, r.aggregateId, version, e.type, e.data, e.metadata, timestamp, created],
      );
      const seq = Number(this.db.selectValue('SELECT last_insert_rowid()'));
      const position = this.position + 1 + this.pendingCount;
      this.pendingCount++;
      this.apply(
        { position, eventId: e.eventId, aggregateId: r.aggregateId, version, type: e.type, data: JSON.parse(e.data), metadata: e.metadata == null ? null : JSON.parse(e.metadata), timestamp },
        seq,
        true,
      );
      out.push({ eventId: e.eventId, version, position });
    }
    return { events: out, existed: false };
  }

  /** An event by id: committed, pending or rejected. @param {string} id */
  findEvent(id) {
    return (
      this.stmts.query('SELECT aggregate_id, version, event_type, event_data, metadata, position FROM events WHERE event_id = ?', [id])[0] ??
      this.stmts.query('SELECT aggregate_id, version, event_type, event_data, metadata, NULL AS position FROM strata_outbox WHERE event_id = ?', [id])[0] ??
      this.stmts.query('SELECT aggregate_id, version, event_type, event_data, metadata, NULL AS position FROM strata_rejections WHERE event_id = ?', [id])[0]
    );
  }

  // --- committed events from the server -----------------------------------------

  /**
   * Stores the server's events (in position order) as committed and brings
   * the views along. Returns how many were new.
   * @param {any[]} events seed event objects with `position`
   */
  receive(events) {
    if (!Array.isArray(events) || events.length === 0) return 0;
    let stored = 0;
    this.db.transaction(() => {
      let overlayDown = false;
      /** @type {Set<string>} */
      const touched = new Set();
      for (const e of events) {
        const p = Number(e?.position);
        if (!Number.isSafeInteger(p) || p < 1) throw new StrataError('internal', `the server sent an event without a valid position: ${JSON.stringify(e).slice(0, 200)}`);
        if (p <= this.position) continue; // a resend
        if (p !== this.position + 1) throw new StrataError('internal', `the server skipped from position ${this.position} to ${p}`);
        if (typeof e.event_id !== 'string' || typeof e.aggregate_id !== 'string' || typeof e.event_type !== 'string' || !Number.isSafeInteger(e.version)) {
          throw new StrataError('internal', `the server sent a malformed event at position ${p}`);
        }
        const ts = parseHlc(e.timestamp);
        const data = JSON.stringify(e.event_data ?? null);
        const metadata = e.metadata == null ? null : JSON.stringify(e.metadata);
        /** @type {OutboxRow | undefined} */
        const head = overlayDown || this.pendingCount === 0 ? undefined : /** @type {any} */ (this.stmts.query('SELECT * FROM strata_outbox ORDER BY seq LIMIT 1')[0]);
        this.stmts.exec(
          `INSERT INTO events (event_id, aggregate_id, version, event_type, event_data, timestamp, metadata, position)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
          [e.event_id, e.aggregate_id, e.version, e.event_type, data, formatHlc(ts), metadata, p],
        );
        if (head && head.event_id === e.event_id && head.aggregate_id === e.aggregate_id && Number(head.version) === e.version && compareHlc(parseHlc(head.timestamp), ts) === 0) {
          // Our oldest pending event, accepted as it was applied: the
          // views already hold it at this very position.
          this.stmts.exec('DELETE FROM strata_outbox WHERE seq = ?', [head.seq]);
          this.stmts.exec('DELETE FROM strata_undo WHERE outbox_seq = ?', [head.seq]);
          this.pendingCount--;
        } else {
          if (!overlayDown && this.pendingCount > 0) {
            this.undoAll();
            overlayDown = true;
          }
          if (this.stmts.exec('DELETE FROM strata_outbox WHERE event_id = ?', [e.event_id]) > 0) this.pendingCount--;
          this.apply(eventFromRow({ ...e, event_data: data, metadata, position: p, timestamp: formatHlc(ts) }, null), null, false);
          touched.add(e.aggregate_id);
        }
        this.hlc.restore(ts);
        this.position = p;
        stored++;
      }
      if (stored > 0) this.setMeta('position', this.position);
      if (overlayDown) this.reapplyPending(touched);
    });
    return stored;
  }

  /**
   * Applies the outbox again on top of the committed views (which must hold
   * no pending changes), renumbering versions after the committed ones.
   * Events of `touched` aggregates are re-stamped after everything seen and
   * offered to the rebase hook.
   * @param {Set<string>} touched
   */
  reapplyPending(touched) {
    /** @type {OutboxRow[]} */
    const pending = /** @type {any} */ (this.db.selectObjects('SELECT * FROM strata_outbox ORDER BY seq'));
    /** @type {Map<string, number>} */
    const next = new Map();
    let position = this.position;
    for (const row of pending) {
      const committed = next.has(row.aggregate_id) ? /** @type {number} */ (next.get(row.aggregate_id)) : this.committedVersion(row.aggregate_id);
      const version = committed + 1;
      let { event_type: type, event_data: data, metadata, timestamp } = row;
      if (touched.has(row.aggregate_id) || version !== Number(row.version)) {
        timestamp = formatHlc(this.hlc.now());
        const decision = this.askHook(row, version, position + 1, this.committedVersion(row.aggregate_id));
        if (decision && typeof decision === 'object' && 'drop' in decision) {
          this.moveToRejections(row, `dropped by the rebase hook: ${String(decision.drop)}`);
          continue;
        }
        if (decision && typeof decision === 'object' && 'replace' in decision) {
          const r = decision.replace;
          try {
            const prepared = prepareAppend(row.aggregate_id, [{ type: r.type, data: r.data, metadata: r.metadata, eventId: row.event_id }], null).events[0];
            ({ type, data, metadata } = prepared);
          } catch (e) {
            this.moveToRejections(row, `the rebase hook replaced it with an invalid event: ${/** @type {Error} */ (e).message}`);
            continue;
          }
        }
        this.stmts.exec('UPDATE strata_outbox SET version = ?, timestamp = ?, event_type = ?, event_data = ?, metadata = ? WHERE seq = ?', [version, timestamp, type, data, metadata, row.seq]);
      }
      next.set(row.aggregate_id, version);
      position++;
      this.apply(
        { position, eventId: row.event_id, aggregateId: row.aggregate_id, version, type, data: JSON.parse(data), metadata: metadata == null ? null : JSON.parse(metadata), timestamp },
        row.seq,
        false,
      );
    }
    this.pendingCount = Number(this.db.selectValue('SELECT count(*) FROM strata_outbox'));
  }

  /** @param {OutboxRow} row @param {number} version @param {number} position @param {number} committed */
  askHook(row, version, position, committed) {
    if (!this.rebaseHook) return undefined;
    const event = eventFromRow({ ...row, version, position }, null);
    try {
      const d = this.rebaseHook(event, { db: this.api, committedVersion: committed });
      if (d && typeof (/** @type {any} */ (d).then) === 'function') throw new Error('the rebase hook returned a Promise; it must be synchronous');
      return d;
    } catch (e) {
      // Keeping it loses nothing; the error shows in status.
      this.hookError = `rebase hook failed on ${row.event_id}; kept it: ${/** @type {Error} */ (e).message}`;
      return undefined;
    }
  }

  /** @param {OutboxRow} row @param {string} reason */
  moveToRejections(row, reason) {
    this.stmts.exec(
      `INSERT OR REPLACE INTO strata_rejections (event_id, aggregate_id, version, event_type, event_data, metadata, timestamp, reason, rejected_ms)
       SELECT event_id, aggregate_id, version, event_type, event_data, metadata, timestamp, ?, ? FROM strata_outbox WHERE seq = ?`,
      [reason, this.now(), row.seq],
    );
    this.stmts.exec('DELETE FROM strata_outbox WHERE seq = ?', [row.seq]);
  }

  /**
   * The server refused these pending events for good: they become
   * rejection records and the views drop them. Returns how many were pending.
   * @param {{eventId: string, reason: string}[]} refused
   */
  reject(refused) {
    let n = 0;
    this.db.transaction(() => {
      this.undoAll();
      /** @type {Set<string>} */
      const touched = new Set();
      for (const { eventId, reason } of refused) {
        const row = /** @type {OutboxRow | undefined} */ (this.stmts.query('SELECT * FROM strata_outbox WHERE event_id = ?', [eventId])[0]);
        if (!row) continue;
        this.moveToRejections(row, reason);
        touched.add(row.aggregate_id);
        n++;
      }
      this.reapplyPending(touched);
    });
    return n;
  }

  /** Checks that the outbox follows the committed log (versions in a row
   *  per aggregate); rebases if not. A database that another client
   *  version wrote, or an interrupted older build, could leave a gap. */
  checkOverlay() {
    // One pass in push order (a correlated count would be quadratic in
    // the outbox, and an offline tab may hold many thousands).
    /** @type {Map<string, number>} */
    const next = new Map();
    /** @type {Set<string>} */
    const off = new Set();
    const stmt = this.db.prepare('SELECT aggregate_id, version FROM strata_outbox ORDER BY seq');
    try {
      while (stmt.step()) {
        const id = /** @type {string} */ (stmt.get(0));
        const version = Number(stmt.get(1));
        const expected = (next.get(id) ?? this.committedVersion(id)) + 1;
        if (version !== expected) off.add(id);
        next.set(id, version);
      }
    } finally {
      stmt.finalize();
    }
    if (off.size > 0) {
      this.db.transaction(() => {
        this.undoAll();
        this.reapplyPending(off);
      });
    }
  }

  // --- reading -------------------------------------------------------------

  /**
   * Runs one read-only statement over the views (pending events included).
   * @param {string} sql @param {unknown[]} [params]
   */
  query(sql, params = []) {
    if (typeof sql !== 'string') throw new StrataError('invalid', 'query needs SQL text');
    if (!Array.isArray(params)) throw new StrataError('invalid', 'query params must be an array');
    this.checkOneStatement(sql);
    let stmt;
    try {
      stmt = this.db.prepare(sql);
    } catch (e) {
      throw new StrataError('invalid', `query: ${/** @type {Error} */ (e).message}`);
    }
    try {
      if (!stmt.isReadOnly()) throw new StrataError('invalid', 'query runs read-only statements only; change data with append');
      if (params.length) stmt.bind(params);
      const rows = [];
      while (stmt.step()) rows.push(stmt.get({}));
      return rows;
    } catch (e) {
      if (e instanceof StrataError) throw e;
      throw new StrataError('invalid', `query: ${/** @type {Error} */ (e).message}`);
    } finally {
      stmt.finalize();
    }
  }

  /** Refuses SQL with a second statement after the first (prepare would
   *  ignore it without a word). @param {string} sql */
  checkOneStatement(sql) {
    const { capi, wasm } = this.sqlite3;
    const pSql = wasm.allocCString(sql);
    const stack = wasm.pstack.pointer;
    try {
      const ppStmt = wasm.pstack.allocPtr();
      const pzTail = wasm.pstack.allocPtr();
      if (capi.sqlite3_prepare_v2(this.db.pointer, pSql, -1, ppStmt, pzTail) !== 0) {
        throw new StrataError('invalid', `query: ${capi.sqlite3_errmsg(this.db.pointer)}`);
      }
      capi.sqlite3_finalize(wasm.peekPtr(ppStmt));
      const tail = wasm.peekPtr(pzTail);
      if (capi.sqlite3_prepare_v2(this.db.pointer, tail, -1, ppStmt, null) !== 0) {
        throw new StrataError('invalid', `query: ${capi.sqlite3_errmsg(this.db.pointer)}`);
      }
      const second = wasm.peekPtr(ppStmt);
      if (second) {
        capi.sqlite3_finalize(second);
        throw new StrataError('invalid', 'query takes one SQL statement; this text holds more');
      }
    } finally {
      wasm.pstack.restore(stack);
      wasm.dealloc(pSql);
    }
  }

  /**
   * Pending events to push, oldest first, as seed event objects in JSON
   * text: event_data and metadata go out exactly as stored.
   * @param {number} limit
   * @returns {{ids: string[], json: string[]}}
   */
  outboxForPush(limit) {
    /** @type {OutboxRow[]} */
    const rows = /** @type {any} */ (this.stmts.query('SELECT * FROM strata_outbox ORDER BY seq LIMIT ?', [limit]));
    return {
      ids: rows.map((r) => r.event_id),
      json: rows.map(
        (r) =>
          `{"event_id":${JSON.stringify(r.event_id)},"aggregate_id":${JSON.stringify(r.aggregate_id)},"version":${Number(r.version)},` +
          `"event_type":${JSON.stringify(r.event_type)},"event_data":${r.event_data},"timestamp":${JSON.stringify(r.timestamp)},"metadata":${r.metadata ?? 'null'}}`,
      ),
    };
  }

  /** Counts for status. */
  counts() {
    // The oldest in push order: one row by the primary key, where min()
    // would read the whole outbox after every append.
    const oldest = this.stmts.value('SELECT created_ms FROM strata_outbox ORDER BY seq LIMIT 1');
    return {
      pending: this.pendingCount,
      oldestPendingMs: oldest == null ? null : Number(oldest),
      rejections: Number(this.stmts.value('SELECT count(*) FROM strata_rejections')),
      position: this.position,
    };
  }

  /** What the inspector shows. @param {number} limit */
  inspect(limit = 50) {
    const q = (/** @type {string} */ sql) => this.stmts.query(sql, [limit]);
    return {
      node: this.hlc.node,
      position: this.position,
      events: q('SELECT position, event_id, aggregate_id, version, event_type, event_data, metadata, timestamp FROM events ORDER BY position DESC LIMIT ?'),
      outbox: q('SELECT seq, event_id, aggregate_id, version, event_type, event_data, metadata, timestamp, created_ms FROM strata_outbox ORDER BY seq LIMIT ?'),
      rejections: q('SELECT event_id, aggregate_id, version, event_type, event_data, reason, rejected_ms FROM strata_rejections ORDER BY rejected_ms DESC, event_id LIMIT ?'),
      projections: this.stmts.query('SELECT name, version, failed, built_ms FROM strata_projections ORDER BY name'),
    };
  }
}

/**
 * @param {Record<string, any>} row a row of `events` or `strata_outbox` (JSON text columns)
 * @param {number | null} position overrides row.position
 * @returns {StrataEvent}
 */
function eventFromRow(row, position) {
  return {
    position: Number(position ?? row.position),
    eventId: row.event_id,
    aggregateId: row.aggregate_id,
    version: Number(row.version),
    type: row.event_type,
    data: JSON.parse(row.event_data),
    metadata: row.metadata == null ? null : JSON.parse(row.metadata),
    timestamp: row.timestamp,
  };
}
