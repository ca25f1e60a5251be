// The engine over in-memory SQLite in Node: appends, the fast and slow
// paths of receiving the server's events, rejections, the rebase hook,
// projection rebuilds, and Y3 (views after any interleaving equal a fresh
// replay of the final log). Run: node --test server/web/client/test/engine.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import init from '../sqlite/index.mjs';
import { Engine, prepareAppend } from '../src/engine.js';
import { StrataError } from '../src/errors.js';

// Node 18 has Web Crypto only as a module; SQLite and uuidv7 want the global.
if (!globalThis.crypto) globalThis.crypto = (await import('node:crypto')).webcrypto;

const wasm = readFileSync(new URL('../sqlite/sqlite3.wasm', import.meta.url));
const sqlite3 = await init({
  instantiateWasm(imports, done) {
    WebAssembly.instantiate(wasm, imports).then((r) => done(r.instance, r.module));
    return {};
  },
  print: () => {},
  printErr: () => {},
});

// A projection that is not commutative: each counter keeps its history as text.
const history = (version = 1) => ({
  name: 'history',
  version,
  schema: `CREATE TABLE history (id TEXT PRIMARY KEY, trail TEXT NOT NULL, n INTEGER NOT NULL${version > 1 ? ', last_position INTEGER' : ''})`,
  apply(db, e) {
    db.exec(
      `INSERT INTO history (id, trail, n${version > 1 ? ', last_position' : ''}) VALUES (?, ?, 1${version > 1 ? ', ?' : ''})
       ON CONFLICT (id) DO UPDATE SET trail = trail || ',' || excluded.trail, n = n + 1${version > 1 ? ', last_position = excluded.last_position' : ''}`,
      version > 1 ? [e.aggregateId, `${e.data.v}@${e.version}`, e.position] : [e.aggregateId, `${e.data.v}@${e.version}`],
    );
  },
});

function open(options = {}) {
  const db = new sqlite3.oo1.DB(':memory:');
  let clock = 1_700_000_000_000;
  const engine = new Engine(sqlite3, db, { projections: [history()], now: () => clock++, ...options });
  engine.open();
  return engine;
}

const add = (engine, id, v, expectedVersion) => {
  const [r] = engine.append([prepareAppend(id, [{ type: 'Added', data: { v } }], expectedVersion)]);
  if (!r.ok) throw r.error;
  return r.value;
};

/** What a server would send back: the outbox as committed, from position `from`. */
function serverCopy(engine, from, n = 1000) {
  const { json } = engine.outboxForPush(n);
  return json.map((t, i) => ({ ...JSON.parse(t), position: from + i }));
}

const trails = (engine) => engine.query('SELECT id, trail, n FROM history ORDER BY id');

test('Y2: an append is in the outbox and the views at once', () => {
  const e = open();
  const r = add(e, 'a', 1);
  assert.equal(r.events[0].version, 1);
  assert.equal(e.counts().pending, 1);
  assert.deepEqual(trails(e), [{ id: 'a', trail: '1@1', n: 1 }]);
});

test('S6: expectedVersion conflicts name the current version; a retry with the same id writes nothing', () => {
  const e = open();
  add(e, 'a', 1, 0);
  assert.throws(() => add(e, 'a', 2, 0), (err) => err instanceof StrataError && err.code === 'conflict' && err.currentVersion === 1);
  const req = prepareAppend('a', [{ type: 'Added', data: { v: 2 } }], 1);
  const [first] = e.append([req]);
  const [again] = e.append([req]);
  assert.equal(again.ok && again.value.existed, true);
  assert.deepEqual(again.value.events, first.value.events.map((x) => ({ ...x, position: 0 })));
  const other = prepareAppend('a', [{ type: 'Added', data: { v: 3 }, eventId: req.events[0].eventId }], null);
  const [dup] = e.append([other]);
  assert.equal(dup.ok, false);
  assert.equal(dup.error.code, 'duplicate_id');
  assert.equal(e.counts().pending, 2);
});

test('bad input is refused with a clear error before anything is written', () => {
  assert.throws(() => prepareAppend('', [{ type: 'X', data: 1 }]), /aggregateId/);
  assert.throws(() => prepareAppend('a', [{ type: 'X', data: { n: NaN } }]), /"n" is NaN/);
  assert.throws(() => prepareAppend('a', [{ type: 'X', data: { f() {} } }]), /function/);
  assert.throws(() => prepareAppend('a', [{ type: 'X', data: 'x'.repeat(1 << 20) }]), /more than/);
  assert.throws(() => prepareAppend('a', [{ type: 'X', data: 1 }], -1), /expectedVersion/);
  const e = open();
  assert.throws(() => e.query('DELETE FROM history'), /read-only/);
  assert.throws(() => e.query('SELECT 1; DELETE FROM history'), /one SQL statement/);
  assert.throws(() => e.query('SELEC 1'), /syntax error/);
});

test('fast path: our own events coming back leave the views as they are', () => {
  const e = open();
  add(e, 'a', 1);
  add(e, 'a', 2);
  const before = trails(e);
  assert.equal(e.receive(serverCopy(e, 1)), 2);
  assert.equal(e.counts().pending, 0);
  assert.equal(e.db.selectValue('SELECT count(*) FROM strata_undo'), 0);
  assert.deepEqual(trails(e), before);
});

test('Y3: foreign events undo the pending part, apply, rebase and re-apply', () => {
  const a = open();
  const b = open();
  add(a, 'x', 1);
  add(b, 'x', 10);
  add(b, 'y', 20);
  // The server takes B's first; A's pending x=1 must move after it.
  const server = serverCopy(b, 1, 1);
  b.receive(server);
  a.receive(server);
  assert.deepEqual(trails(a), [{ id: 'x', trail: '10@1,1@2', n: 2 }]);
  const pushed = JSON.parse(a.outboxForPush(10).json[0]);
  assert.equal(pushed.version, 2, 'renumbered after the committed version');
  // A fresh replica given the final log agrees (views are a function of the log).
  const log = [...server, ...serverCopy(a, 2)];
  a.receive(log.slice(1));
  const c = open();
  c.receive(log);
  assert.deepEqual(trails(a), trails(c));
});

test('rejections leave the outbox and the views; later events of that aggregate are renumbered', () => {
  const e = open();
  const r1 = add(e, 'a', 1);
  add(e, 'a', 2);
  e.reject([{ eventId: r1.events[0].eventId, reason: 'refused for the test' }]);
  assert.deepEqual(trails(e), [{ id: 'a', trail: '2@1', n: 1 }]);
  const i = e.inspect();
  assert.equal(i.rejections.length, 1);
  assert.equal(i.rejections[0].reason, 'refused for the test');
  assert.equal(i.outbox[0].version, 1);
});

test('the rebase hook can keep, replace or drop a pending event', () => {
  const seen = [];
  const e = open({
    rebase(ev, ctx) {
      seen.push([ev.data.v, ctx.committedVersion]);
      if (ev.data.v === 2) return { drop: 'two is out' };
      if (ev.data.v === 3) return { replace: { type: 'Added', data: { v: 33 } } };
      return 'keep';
    },
  });
  add(e, 'a', 1);
  add(e, 'a', 2);
  add(e, 'a', 3);
  const other = open();
  add(other, 'a', 100);
  e.receive(serverCopy(other, 1));
  assert.deepEqual(seen, [[1, 1], [2, 1], [3, 1]]);
  assert.deepEqual(trails(e), [{ id: 'a', trail: '100@1,1@2,33@3', n: 3 }]);
  assert.equal(e.inspect().rejections[0].reason, 'dropped by the rebase hook: two is out');
});

test('S8: a projection version bump rebuilds its view by replay, pending events on top', () => {
  const db = new sqlite3.oo1.DB(':memory:');
  let e = new Engine(sqlite3, db, { projections: [history(1)] });
  e.open();
  add(e, 'a', 1);
  e.receive(serverCopy(e, 1));
  add(e, 'a', 2);
  const progress = [];
  e = new Engine(sqlite3, db, { projections: [history(2)], onProgress: (p) => progress.push(p) });
  e.open();
  assert.deepEqual(e.rebuilt, ['history']);
  assert.deepEqual(e.query('SELECT trail, n, last_position FROM history'), [{ trail: '1@1,2@2', n: 2, last_position: 2 }]);
  assert.ok(progress.some((p) => p.done === p.total));
  // The same version again: nothing rebuilt.
  e = new Engine(sqlite3, db, { projections: [history(2)] });
  e.open();
  assert.deepEqual(e.rebuilt, []);
  assert.equal(e.counts().pending, 1);
});

test('a failing projection stops alone on server events, and refuses a local append', () => {
  const bad = { name: 'bad', version: 1, schema: 'CREATE TABLE bad (x)', apply(db, ev) { if (ev.data.v === 13) throw new Error('unlucky'); db.exec('INSERT INTO bad VALUES (?)', [ev.data.v]); } };
  const e = open({ projections: [history(), bad] });
  assert.throws(() => add(e, 'a', 13), (err) => err.code === 'projection' && /unlucky/.test(err.message));
  assert.equal(e.counts().pending, 0);
  const other = open();
  add(other, 'a', 13);
  e.receive(serverCopy(other, 1));
  assert.match(e.failed.get('bad'), /position 1.*unlucky/);
  assert.deepEqual(trails(e), [{ id: 'a', trail: '13@1', n: 1 }]);
});

test('Y3 under random interleavings of three replicas', () => {
  for (let seed = 1; seed <= 30; seed++) {
    let s = seed;
    const rand = (n) => ((s = (s * 1103515245 + 12345) % 2147483648), s % n);
    const replicas = [open(), open(), open()];
    const log = [];
    for (let step = 0; step < 40; step++) {
      const r = replicas[rand(3)];
      if (rand(3) > 0) add(r, ['p', 'q'][rand(2)], step);
      else {
        // Sync r: take its missing events, then push what still follows.
        r.receive(log.filter((x) => x.position > r.position));
        const mine = serverCopy(r, log.length + 1, rand(3) + 1);
        const ok = mine.every((m) => {
          const last = [...log].reverse().find((x) => x.aggregate_id === m.aggregate_id);
          return (last?.version ?? 0) + 1 === m.version || mine.some((o) => o.aggregate_id === m.aggregate_id && o.version === m.version - 1);
        });
        if (ok) log.push(...mine);
        r.receive(log.filter((x) => x.position > r.position));
      }
    }
    // Everyone syncs until nothing is pending.
    for (let round = 0; round < 10; round++) {
      for (const r of replicas) {
        r.receive(log.filter((x) => x.position > r.position));
        if (r.counts().pending) log.push(...serverCopy(r, log.length + 1));
        r.receive(log.filter((x) => x.position > r.position));
      }
    }
    const fresh = open();
    fresh.receive(log);
    for (const r of replicas) {
      assert.equal(r.counts().pending, 0, `seed ${seed}`);
      assert.deepEqual(trails(r), trails(fresh), `seed ${seed}`);
    }
  }
});
