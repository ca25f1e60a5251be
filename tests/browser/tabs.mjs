// The browser client as a user meets it (issue 17): Debian's Chromium driven
// by playwright-core against a running strata-server.
//   1. Two tabs of one profile are both persistent: one owns the database,
//      the other goes through it, and each sees the other's clicks.
//   2. Offline clicks in both tabs; the owning tab closes while they are
//      pending; the other tab takes over (nothing lost, same order) and
//      pushes them when back online.
//   3. Appends in flight while their owner tab closes are answered by the
//      next owner, each exactly once.
//   4. A frozen owner tab hands the database over.
//   5. A second profile (another device) converges with the first.
//   6. A reload keeps everything.
//   7. A projection version bump rebuilds the view by replay.
//   8. An event the server refuses shows in the page and its inspector.
//   9. A browser without OPFS says so instead of running in memory.
//  10. A ?server= link to another server is refused by the page.
// Screenshots of the page and its inspector go to <artifacts dir>. Prints
// a JSON summary on its last stdout line; exits non-zero on any failure.
//
// Usage: node tabs.mjs <server-url> <artifacts-dir>

import { mkdtempSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, artifacts] = process.argv.slice(2);
if (!url || !artifacts) {
  console.error('usage: node tabs.mjs <server-url> <artifacts-dir>');
  process.exit(2);
}
mkdirSync(artifacts, { recursive: true });
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
];
const TIMEOUT_MS = 30_000;
const log = (...a) => console.error('[tabs]', ...a);

const dirs = [];
const contexts = [];
async function profile(name) {
  // One user-data-dir is one browser profile: its tabs share OPFS.
  const dir = mkdtempSync(join(tmpdir(), `strata-${name}-`));
  dirs.push(dir);
  const context = await chromium.launchPersistentContext(dir, { executablePath, headless: true, args: FLAGS });
  contexts.push(context);
  return { name, context, tabs: 0 };
}

async function tab(p, { init } = {}) {
  const name = `${p.name}.${++p.tabs}`;
  const page = p.tabs === 1 && p.context.pages()[0] ? p.context.pages()[0] : await p.context.newPage();
  page.on('console', (m) => console.error(`[${name}] ${m.text()}`));
  page.on('pageerror', (e) => console.error(`[${name}] page error: ${e.message}`));
  if (init) await page.addInitScript(init);
  await page.goto(url);
  const t = { name, page };
  if (!init) await ready(t);
  return t;
}

const ready = (t) => t.page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: TIMEOUT_MS });

async function read(t) {
  return t.page.evaluate(() => {
    const counters = {};
    for (const li of document.querySelectorAll('[data-counter]')) counters[li.dataset.counter] = Number(li.querySelector('.value').textContent);
    const s = globalThis.strataStore?.status();
    return {
      counters,
      pending: Number(document.getElementById('pending').dataset.count),
      rejected: Number(document.getElementById('rejected').textContent),
      conn: document.getElementById('conn').dataset.state,
      owner: document.getElementById('storage').dataset.owner,
      storage: document.getElementById('storage').textContent,
      persistent: s?.persistent,
      position: s?.position,
      error: document.getElementById('error').textContent,
    };
  });
}

/** Waits until `check(state)` holds, or fails showing the state. */
async function until(t, what, check, timeout = TIMEOUT_MS) {
  const started = Date.now();
  let s;
  for (;;) {
    s = await read(t);
    if (check(s)) return s;
    if (Date.now() - started > timeout) throw new Error(`${t.name}: ${what}; state ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const click = (t, counter, op) => t.page.click(`[data-counter="${counter}"] button[data-op="${op}"]`);
async function addCounter(t, name) {
  await t.page.fill('#counter-name', name);
  await t.page.click('#new-counter button');
  await until(t, `counter ${name} appears`, (s) => name in s.counters);
}
async function setOffline(t, offline) {
  const checked = await t.page.isChecked('#offline');
  if (checked !== offline) await t.page.click('#offline');
}
const settled = (s) => s.pending === 0 && s.conn === 'online';
const same = (x, y) => JSON.stringify(Object.entries(x).sort()) === JSON.stringify(Object.entries(y).sort());

async function shot(t, file) {
  // Let the inspector catch up with the last change before the picture.
  await new Promise((r) => setTimeout(r, 400));
  await t.page.screenshot({ path: join(artifacts, file), fullPage: true });
}

const summary = { ok: false };
try {
  // --- 1. two tabs of one profile, both persistent ---------------------------
  const p1 = await profile('P1');
  const a = await tab(p1);
  const b = await tab(p1);
  let sa = await until(a, 'A owns the database', (s) => s.owner === 'this-tab' && settled(s));
  let sb = await until(b, 'B goes through A', (s) => s.owner === 'another-tab');
  if (!sa.persistent || !sb.persistent) throw new Error(`both tabs must be persistent: ${JSON.stringify({ sa, sb })}`);
  await click(a, 'counter', 'incr');
  await until(b, 'B sees A\'s click', (s) => s.counters.counter === 1);
  await click(b, 'counter', 'incr');
  await until(a, 'A sees B\'s click', (s) => s.counters.counter === 2 && settled(s));
  log('1. two persistent tabs: ok');

  // --- 2. offline clicks in both tabs; the owner closes; the other pushes -----
  await setOffline(a, true);
  await until(b, 'B shows the store offline', (s) => s.conn === 'offline');
  await click(a, 'counter', 'incr');
  await click(a, 'counter', 'incr');
  await addCounter(b, 'likes');
  await click(b, 'likes', 'incr');
  await click(b, 'counter', 'decr');
  sb = await until(b, 'B counts 5 pending', (s) => s.pending === 5 && s.counters.counter === 3 && s.counters.likes === 1);
  await shot(a, 'tabs-offline-owner.png');
  await a.page.close();
  sb = await until(b, 'B takes the database over', (s) => s.owner === 'this-tab');
  if (sb.pending !== 5 || sb.counters.counter !== 3 || sb.counters.likes !== 1) throw new Error(`B lost something: ${JSON.stringify(sb)}`);
  const outbox = await b.page.evaluate(() => globalThis.strataStore.inspect(10).then((i) => i.outbox.map((e) => `${e.aggregate_id}:${e.event_type}`)));
  const order = ['counter:CounterIncremented', 'counter:CounterIncremented', 'likes:CounterCreated', 'likes:CounterIncremented', 'counter:CounterDecremented'];
  if (JSON.stringify(outbox) !== JSON.stringify(order)) throw new Error(`outbox order changed: ${JSON.stringify(outbox)}`);
  await setOffline(b, false);
  sb = await until(b, 'B pushes them', (s) => settled(s) && s.position === 7);
  log('2. owner closed with 5 pending; the other tab pushed them in order: ok');

  // --- 3. appends in flight while their owner closes -----------------------
  const c = await tab(p1);
  await until(c, 'C goes through B', (s) => s.owner === 'another-tab');
  const N = 60;
  const inFlight = c.page.evaluate(async (n) => {
    const results = await Promise.allSettled(Array.from({ length: n }, () => globalThis.strataStore.append('burst', 'CounterIncremented', { value: 1 })));
    return results.map((r) => (r.status === 'fulfilled' ? r.value.eventId : `error: ${r.reason?.message}`));
  }, N);
  await new Promise((r) => setTimeout(r, 30));
  await b.page.close();
  const ids = await inFlight;
  const errors = ids.filter((x) => x.startsWith('error'));
  if (errors.length || new Set(ids).size !== N) throw new Error(`appends in flight: ${JSON.stringify(errors.slice(0, 3))} (${new Set(ids).size} distinct of ${N})`);
  let sc = await until(c, 'C owns the database and pushed the burst', (s) => s.owner === 'this-tab' && settled(s) && s.counters.burst === N);
  log(`3. ${N} appends in flight across a change of owner, each once: ok`);

  // --- 4. an owner about to be frozen hands the database over -----------------
  // Headless Chromium does not freeze pages (CDP Page.setWebLifecycleState
  // has no effect there), so the page gets the `freeze` event the browser
  // would send before freezing it; the library must give the database up.
  const d = await tab(p1);
  await until(d, 'D goes through C', (s) => s.owner === 'another-tab');
  await c.page.evaluate(() => document.dispatchEvent(new Event('freeze')));
  let sd = await until(d, 'D takes over from C, which is being frozen', (s) => s.owner === 'this-tab' && settled(s));
  await click(d, 'counter', 'incr');
  sd = await until(d, 'D syncs', (s) => s.counters.counter === 4 && settled(s));
  sc = await until(c, 'C goes through D and follows', (s) => s.owner === 'another-tab' && s.counters.counter === 4);
  log('4. an owner being frozen handed over: ok');

  // --- 5. a second profile converges ----------------------------------------
  const p2 = await profile('P2');
  const e = await tab(p2);
  const want = { counter: 4, likes: 1, burst: N };
  let se = await until(e, 'profile 2 catches up', (s) => settled(s) && same(s.counters, want));
  await click(e, 'likes', 'incr');
  await until(e, 'profile 2 pushes', (s) => settled(s) && s.counters.likes === 2);
  sd = await until(d, 'profile 1 sees profile 2', (s) => s.counters.likes === 2 && settled(s));
  log('5. two profiles converge: ok');

  // --- 6. a reload keeps everything -----------------------------------------
  await setOffline(e, true);
  await click(e, 'counter', 'incr');
  await until(e, 'one pending offline', (s) => s.pending === 1 && s.counters.counter === 5);
  await e.page.reload();
  await ready(e);
  se = await until(e, 'after a reload', (s) => s.owner === 'this-tab' && s.pending === 1 && s.counters.counter === 5 && s.conn === 'offline');
  await setOffline(e, false);
  se = await until(e, 'the reloaded tab pushes', (s) => settled(s) && s.counters.counter === 5);
  await until(d, 'profile 1 sees it', (s) => s.counters.counter === 5);
  log('6. reload keeps pending and committed events: ok');

  // --- 7. a projection version bump rebuilds by replay --------------------------
  await p2.context.route('**/counter-views.js', async (route) => {
    const res = await route.fetch();
    const body = (await res.text())
      .replace('version: 1,', 'version: 2,')
      .replace('events INTEGER NOT NULL)', 'events INTEGER NOT NULL, last_position INTEGER)')
      .replace('VALUES (?, ?, 1)', 'VALUES (?, ?, 1, ?)')
      .replace('(id, value, events)', '(id, value, events, last_position)')
      .replace('events = events + 1`', 'events = events + 1, last_position = excluded.last_position`')
      .replace('sign * Number(e.data?.value ?? 0)]', 'sign * Number(e.data?.value ?? 0), e.position]');
    if (!body.includes('last_position = excluded.last_position')) throw new Error('the v2 rewrite of counter-views.js did not apply');
    await route.fulfill({ response: res, body });
  });
  await e.page.reload();
  await ready(e);
  const rebuilt = await e.page.evaluate(async () => {
    const s = globalThis.strataStore;
    return { rows: await s.query('SELECT id, value, events, last_position FROM counters ORDER BY id'), inspect: (await s.inspect(1)).projections };
  });
  const last = await e.page.evaluate(() => globalThis.strataStore.query("SELECT max(position) AS p FROM events WHERE aggregate_id = 'counter'"));
  const counterRow = rebuilt.rows.find((r) => r.id === 'counter');
  if (rebuilt.inspect[0]?.version !== 2 || counterRow?.value !== 5 || counterRow?.last_position !== last[0].p || rebuilt.rows.length !== 3) {
    throw new Error(`the view was not rebuilt by replay: ${JSON.stringify(rebuilt)} (last position ${JSON.stringify(last)})`);
  }
  log('7. projection v2 rebuilt by replay: ok');

  // --- 8. a rejection shows in the page --------------------------------------
  // Profile 2, offline, appends an event whose id profile 1 gives to another
  // event meanwhile: the server refuses the second use for good.
  await setOffline(e, true);
  await until(e, 'profile 2 offline', (s) => s.conn === 'offline');
  const taken = await d.page.evaluate(() => globalThis.strataStore.append('counter', 'CounterIncremented', { value: 1 }));
  await until(d, 'profile 1 pushed', (s) => settled(s) && s.counters.counter === 6);
  await e.page.evaluate((id) => globalThis.strataStore.append('thief', 'CounterIncremented', { value: 1 }, { eventId: id }), taken.eventId);
  await until(e, 'the thief counts locally', (s) => s.counters.thief === 1 && s.pending === 1);
  await setOffline(e, false);
  se = await until(e, 'the page shows the rejection', (s) => s.rejected === 1 && settled(s) && s.counters.counter === 6 && !('thief' in s.counters && s.counters.thief !== 0));
  const reason = await e.page.waitForFunction(() => document.querySelector('#rejections td:nth-child(3)')?.textContent, null, { timeout: TIMEOUT_MS });
  summary.rejection = await reason.jsonValue();
  await shot(e, 'tabs-rejection-inspector.png');
  log(`8. rejection shown: ${summary.rejection}`);

  // --- 9. no OPFS: said, not hidden -----------------------------------------------
  const f = await tab(p2, { init: () => { delete StorageManager.prototype.getDirectory; } });
  await f.page.waitForFunction(() => document.body.dataset.ready === 'error', null, { timeout: TIMEOUT_MS });
  const nopfs = await read(f);
  if (!/OPFS/.test(nopfs.error) || !/not available/.test(nopfs.storage)) throw new Error(`no-OPFS page: ${JSON.stringify(nopfs)}`);
  await f.page.close();
  log('9. no OPFS is said: ok');

  // --- 10. a crafted ?server= link is refused (issue 13, item 5) -----------------
  const g = await p2.context.newPage();
  await g.goto(`${url}?server=${encodeURIComponent('ws://127.0.0.1:9/ws')}`);
  await g.waitForFunction(() => document.body.dataset.ready === 'error', null, { timeout: TIMEOUT_MS });
  const refused = await g.evaluate(() => document.getElementById('error').textContent);
  if (!/refusing to send your events there/.test(refused)) throw new Error(`?server= to another origin: ${refused}`);
  await g.close();
  log('10. ?server= to another server refused: ok');

  await shot(d, 'tabs-profile1.png');
  Object.assign(summary, { ok: true, profile1: await read(d), profile2: await read(e), burst: N });
  console.log(JSON.stringify(summary));
} catch (err) {
  console.error(`tabs test failed: ${err.stack ?? err}`);
  for (const ctx of contexts) {
    for (const [i, pg] of ctx.pages().entries()) await pg.screenshot({ path: join(artifacts, `tabs-failure-${contexts.indexOf(ctx)}-${i}.png`) }).catch(() => {});
  }
  process.exitCode = 1;
} finally {
  for (const ctx of contexts) await ctx.close().catch(() => {});
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
}
