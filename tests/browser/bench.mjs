// Size and speed of the Strata browser client (docs/BENCHMARKS.md), in
// Debian's headless Chromium against a running strata-server:
//   * bytes the page loads: the library's JS, SQLite's JS glue and Wasm
//     (as served, and gzip -9 for reference);
//   * time to first render (navigation start to the first counters drawn
//     from the database), cold (new profile, empty OPFS) and warm (reload,
//     with the events of this run in OPFS);
//   * local append throughput over N events (default 10,000), offline so
//     that only the browser is measured: the library alone, awaited one by
//     one and all issued at once (they share transactions), and one by one
//     from a second tab (through the owner tab, at most 2,000); then the
//     same on the counter page, whose live query and inspector re-read
//     after every change;
//   * the time to push the page's events to the server once online.
// Usage: node bench.mjs <server-url> [events]

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { chromium } from 'playwright-core';

const [url, eventsArg] = process.argv.slice(2);
if (!url) {
  console.error('usage: node bench.mjs <server-url> [events]');
  process.exit(2);
}
const N = Number(eventsArg ?? 10_000);
const executablePath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic'];
const TIMEOUT_MS = 300_000;

const out = { events: N, chromium: '', bytes: {}, first_render_ms: {}, append: {} };

// Bytes, as served.
const files = {
  library_js: ['client/src/index.js', 'client/src/worker.js', 'client/src/engine.js', 'client/src/sync.js', 'client/src/errors.js', 'client/src/hlc.js'],
  sqlite_js: ['client/sqlite/index.mjs'],
  sqlite_wasm: ['client/sqlite/sqlite3.wasm'],
  page: ['index.html', 'app.js', 'counter-views.js', 'style.css'],
};
for (const [k, list] of Object.entries(files)) {
  let raw = 0;
  let gz = 0;
  for (const f of list) {
    const b = Buffer.from(await (await fetch(new URL(f, url))).arrayBuffer());
    raw += b.length;
    gz += gzipSync(b, { level: 9 }).length;
  }
  out.bytes[k] = { raw, gzip: gz };
}

const dir = mkdtempSync(join(tmpdir(), 'strata-bench-'));
const context = await chromium.launchPersistentContext(dir, { executablePath, headless: true, args: FLAGS });
const rate = (n, ms) => ({ events: n, ms: Math.round(ms), events_per_s: Math.round((n / ms) * 1000) });
try {
  out.chromium = context.browser()?.version() ?? '';
  const page = context.pages()[0] ?? (await context.newPage());
  const firstRender = async () => {
    await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: TIMEOUT_MS });
    return page.evaluate(() => Math.round(performance.getEntriesByName('strata-first-render')[0].startTime));
  };

  // The library alone: a same-origin document without the app (the
  // stylesheet), importing the library, offline so that only the browser
  // is measured.
  await page.goto(new URL('style.css', url).toString());
  const lib = await page.evaluate(async (n) => {
    const { openStore } = await import('/client/src/index.js');
    const s = await openStore({ name: 'bench-lib', server: null });
    globalThis.benchStore = s;
    let t0 = performance.now();
    for (let i = 0; i < n; i++) await s.append('seq', 'CounterIncremented', { value: 1 });
    const seq = performance.now() - t0;
    t0 = performance.now();
    await Promise.all(Array.from({ length: n }, () => s.append('all', 'CounterIncremented', { value: 1 })));
    const all = performance.now() - t0;
    return { seq, all };
  }, N);
  out.append.library_sequential = rate(N, lib.seq);
  out.append.library_concurrent = rate(N, lib.all);
  // From a second tab, through the first.
  const other = await context.newPage();
  await other.goto(new URL('style.css', url).toString());
  const n2 = Math.min(N, 2000);
  const viaTab = await other.evaluate(async (n) => {
    const { openStore } = await import('/client/src/index.js');
    const s = await openStore({ name: 'bench-lib', server: null });
    if (s.status().owner !== 'another-tab') throw new Error(`the second tab should go through the first: ${JSON.stringify(s.status())}`);
    const t0 = performance.now();
    for (let i = 0; i < n; i++) await s.append('tab', 'CounterIncremented', { value: 1 });
    return performance.now() - t0;
  }, n2);
  out.append.library_other_tab_sequential = rate(n2, viaTab);
  await other.close();

  // The counter page: cold first render, then appends with its live query
  // and inspector running, then the push of all of them, then a warm reload.
  await page.goto(url);
  out.first_render_ms.cold = await firstRender();
  await page.evaluate(() => globalThis.strataStore.setOnline(false));
  const pageSeq = await page.evaluate(async (n) => {
    const s = globalThis.strataStore;
    const t0 = performance.now();
    for (let i = 0; i < n; i++) await s.append('counter', 'CounterIncremented', { value: 1 });
    return performance.now() - t0;
  }, N);
  out.append.counter_page_sequential = rate(N, pageSeq);
  const pageAll = await page.evaluate(async (n) => {
    const s = globalThis.strataStore;
    const t0 = performance.now();
    await Promise.all(Array.from({ length: n }, () => s.append('likes', 'CounterIncremented', { value: 1 })));
    return performance.now() - t0;
  }, N);
  out.append.counter_page_concurrent = rate(N, pageAll);
  const pending = await page.evaluate(() => globalThis.strataStore.status().pending);
  if (pending !== 2 * N) throw new Error(`expected ${2 * N} pending, found ${pending}`);

  out.push = await page.evaluate(async () => {
    const s = globalThis.strataStore;
    const n = s.status().pending;
    const t0 = performance.now();
    await s.setOnline(true);
    await new Promise((resolve) => {
      const off = s.on('status', (st) => {
        if (st.pending === 0 && st.connection === 'online') {
          off();
          resolve(undefined);
        }
      });
    });
    const ms = performance.now() - t0;
    return { events: n, ms: Math.round(ms), events_per_s: Math.round((n / ms) * 1000) };
  });

  await page.reload();
  out.first_render_ms.warm = await firstRender();
  out.first_render_ms.warm_events_in_store = await page.evaluate(() => globalThis.strataStore.status().position);
  console.log(JSON.stringify(out));
} finally {
  await context.close();
  rmSync(dir, { recursive: true, force: true });
}
