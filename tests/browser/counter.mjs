// The seed's counter flow in two real browsers (Debian's Chromium, driven
// by playwright-core), against a running strata-server:
//   A +1; B sees 1; A goes offline and adds 2; B adds 1; A comes back:
//   both pages show 4. A reload keeps the value (OPFS). A screenshot is
//   saved. Prints a JSON summary on stdout; exits non-zero on any failure.
//
// Usage: node counter.mjs <server-url> <screenshot.png>
// With IGNORE_HTTPS_ERRORS=1 the browsers accept the server's self-signed
// certificate (as a user who clicked through the warning).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error('usage: node counter.mjs <server-url> <screenshot.png>');
  process.exit(2);
}
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

const profiles = [];
async function browser(name) {
  // A fresh user-data-dir per browser: separate OPFS, like two devices.
  const dir = mkdtempSync(join(tmpdir(), `strata-${name}-`));
  profiles.push(dir);
  const ignoreHTTPSErrors = process.env.IGNORE_HTTPS_ERRORS === '1';
  const context = await chromium.launchPersistentContext(dir, { executablePath, headless: true, args: FLAGS, ignoreHTTPSErrors });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (m) => console.error(`[${name}] ${m.text()}`));
  page.on('pageerror', (e) => console.error(`[${name}] page error: ${e.message}`));
  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: TIMEOUT_MS });
  return { name, context, page };
}

async function read(b) {
  return b.page.evaluate(() => ({
    value: Number(document.querySelector('[data-counter="counter"] .value').textContent),
    pending: Number(document.getElementById('pending').dataset.count),
    conn: document.getElementById('conn').dataset.state,
    storage: document.getElementById('storage').textContent,
    error: document.getElementById('error').textContent,
  }));
}

/** Waits until the page shows `value` with nothing pending (and online,
 *  unless it is meant to be offline). */
async function settle(b, value, { online = true } = {}) {
  try {
    await b.page.waitForFunction(
      ([v, on]) => {
        const s = (id) => document.getElementById(id);
        const value = Number(document.querySelector('[data-counter="counter"] .value')?.textContent);
        return value === v && (!on || (Number(s('pending').dataset.count) === 0 && s('conn').dataset.state === 'online'));
      },
      [value, online],
      { timeout: TIMEOUT_MS },
    );
  } catch (e) {
    throw new Error(`${b.name} did not settle at ${value}: ${JSON.stringify(await read(b))}`);
  }
}

const click = (b, id) =>
  b.page.click(id === 'offline' ? '#offline' : `[data-counter="counter"] button[data-op="${id}"]`);

let a;
let bb;
try {
  a = await browser('A');
  bb = await browser('B');
  await settle(a, 0);
  await settle(bb, 0);

  await click(a, 'incr');
  await settle(a, 1);
  await settle(bb, 1); // B sees A's event (server_new_events)

  await click(a, 'offline');
  await click(a, 'incr');
  await click(a, 'incr');
  await settle(a, 3, { online: false });
  await a.page.waitForFunction(() => document.getElementById('pending').dataset.count === '2', null, { timeout: TIMEOUT_MS }).catch(() => {});
  const offline = await read(a);
  if (offline.pending !== 2 || offline.conn !== 'offline') throw new Error(`A offline: ${JSON.stringify(offline)}`);

  await click(bb, 'incr');
  await settle(bb, 2);

  await click(a, 'offline'); // back online: PULL_REQUIRED, rebase, push
  await settle(a, 4);
  await settle(bb, 4);

  // State survives a reload (OPFS), and stays in sync.
  await a.page.reload();
  await a.page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: TIMEOUT_MS });
  await settle(a, 4);
  const after = await read(a);
  if (!after.storage.includes('persistent')) throw new Error(`A is not persistent: ${JSON.stringify(after)}`);

  await a.page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({ ok: true, a: await read(a), b: await read(bb) }));
} catch (e) {
  console.error(`browser test failed: ${e.stack ?? e}`);
  if (a) await a.page.screenshot({ path: screenshot.replace(/\.png$/, '-failure-A.png') }).catch(() => {});
  if (bb) await bb.page.screenshot({ path: screenshot.replace(/\.png$/, '-failure-B.png') }).catch(() => {});
  process.exitCode = 1;
} finally {
  for (const b of [a, bb]) if (b) await b.context.close().catch(() => {});
  for (const dir of profiles) rmSync(dir, { recursive: true, force: true });
}
