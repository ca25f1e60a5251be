// The counter page on the Strata browser client: several counters named by
// the user, the store's status, and an inspector (latest local events with
// their HLC and position, the outbox, rejections, projections, and the
// sync status over time as this tab saw it).

import { openStore, StrataError } from './client/src/index.js';

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
/** The seed's counter, always shown. */
const DEFAULT_COUNTER = 'counter';
const TIMELINE_ROWS_MAX = 100;
const INSPECT_ROWS = 20;

/** The ws origin of a URL (http and ws share one). @param {URL} u */
const wsOrigin = (u) => `${u.protocol === 'https:' || u.protocol === 'wss:' ? 'wss' : 'ws'}://${u.host}`;

/**
 * The sync server: the page's own origin, or what the host put in
 * <meta name="strata-server">. A `?server=` link is honoured only for this
 * page's own origin or a server the host listed in
 * <meta name="strata-allowed-servers">: otherwise a crafted link could send
 * the user's pending events elsewhere and store another server's events.
 */
function chooseServer() {
  const hostServer = document.querySelector('meta[name="strata-server"]')?.getAttribute('content') || '/ws';
  const asked = new URLSearchParams(location.search).get('server');
  if (!asked) return hostServer;
  let u;
  try {
    u = new URL(asked, location.href);
  } catch {
    throw new StrataError('invalid', `?server=${asked} is not a URL`);
  }
  const allowed = new Set([
    wsOrigin(new URL(location.href)),
    wsOrigin(new URL(hostServer, location.href)),
    ...(document.querySelector('meta[name="strata-allowed-servers"]')?.getAttribute('content') ?? '')
      .split(/\s+/)
      .filter(Boolean)
      .map((s) => wsOrigin(new URL(s))),
  ]);
  if (!allowed.has(wsOrigin(u))) {
    throw new StrataError(
      'invalid',
      `?server=${asked} is neither this page's server nor one its host allows; refusing to send your events there (a host lists servers in <meta name="strata-allowed-servers">)`,
    );
  }
  return u.toString();
}

/** Where this origin's browser keeps the server's token. */
const TOKEN_KEY = 'strata-token';

/**
 * The server's token, if it asks for one. Given once as `#token=…` (a
 * fragment never goes to the server, into its logs or into a Referer), it is
 * kept in this origin's localStorage and taken out of the address bar;
 * `#token=` with nothing forgets it. Only this page's scripts can read it:
 * the CSP allows no other.
 */
function chooseToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.has('token')) {
    const given = hash.get('token') ?? '';
    if (given) localStorage.setItem(TOKEN_KEY, given);
    else localStorage.removeItem(TOKEN_KEY);
    hash.delete('token');
    const rest = hash.toString();
    history.replaceState(null, '', `${location.pathname}${location.search}${rest ? `#${rest}` : ''}`);
  }
  return localStorage.getItem(TOKEN_KEY) ?? undefined;
}

function showError(/** @type {string} */ message) {
  $('error').hidden = false;
  $('error').textContent = message;
}

/** @param {HTMLElement} tbody @param {(string | number | null)[][]} rows @param {(i: number) => string} [cls] */
function fill(tbody, rows, cls) {
  tbody.replaceChildren(
    ...rows.map((cells, i) => {
      const tr = document.createElement('tr');
      if (cls) tr.className = cls(i);
      for (const c of cells) {
        const td = document.createElement('td');
        td.textContent = c == null ? '' : String(c);
        if (typeof c === 'string' && c.length > 40) td.className = 'wrap';
        tr.append(td);
      }
      return tr;
    }),
  );
}

const time = (/** @type {number} */ ms) => new Date(ms).toLocaleTimeString([], { hour12: false });
const age = (/** @type {number} */ ms) => (ms < 1000 ? `${ms} ms` : ms < 120_000 ? `${Math.round(ms / 1000)} s` : `${Math.round(ms / 60_000)} min`);

async function main() {
  let server;
  try {
    server = chooseServer();
  } catch (e) {
    showError(`Could not start: ${/** @type {Error} */ (e).message}`);
    document.body.dataset.ready = 'error';
    return;
  }
  const name = new URL(server, location.href).searchParams.get('store') ?? 'default';
  let store;
  try {
    store = await openStore({ name, server, token: chooseToken(), schema: new URL('./counter-views.js', import.meta.url) });
  } catch (e) {
    showError(`Could not start: ${/** @type {Error} */ (e).message}`);
    $('storage').textContent = e instanceof StrataError && e.code === 'no_opfs' ? 'not available in this browser' : 'unavailable';
    document.body.dataset.ready = 'error';
    return;
  }
  // For tests and the curious: the store from the console.
  /** @type {any} */ (globalThis).strataStore = store;

  /** @type {Map<string, number>} */
  let counters = new Map();
  const renderCounters = () => {
    const names = [...new Set([DEFAULT_COUNTER, ...counters.keys()])];
    $('counters').replaceChildren(
      ...names.map((id) => {
        const li = document.createElement('li');
        li.dataset.counter = id;
        const label = document.createElement('span');
        label.className = 'name';
        label.textContent = id;
        const value = document.createElement('span');
        value.className = 'value';
        value.textContent = String(counters.get(id) ?? 0);
        const decr = document.createElement('button');
        decr.textContent = '−1';
        decr.dataset.op = 'decr';
        decr.setAttribute('aria-label', `decrement ${id}`);
        const incr = document.createElement('button');
        incr.textContent = '+1';
        incr.dataset.op = 'incr';
        incr.setAttribute('aria-label', `increment ${id}`);
        li.append(label, value, decr, incr);
        return li;
      }),
    );
  };
  store.watch('SELECT id, value FROM counters ORDER BY id', [], (rows) => {
    counters = new Map(rows.map((r) => [String(r.id), Number(r.value)]));
    renderCounters();
    if (document.body.dataset.ready !== 'true') {
      // Time to first render, for tests/browser/bench.mjs.
      performance.mark('strata-first-render');
      document.body.dataset.ready = 'true';
    }
  });
  renderCounters();

  $('counters').addEventListener('click', (ev) => {
    const button = /** @type {HTMLElement} */ (ev.target).closest('button');
    const id = button?.closest('li')?.dataset.counter;
    if (!button || !id) return;
    const type = button.dataset.op === 'incr' ? 'CounterIncremented' : 'CounterDecremented';
    store.append(id, type, { value: 1 }).catch((e) => showError(e.message));
  });
  $('new-counter').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const input = /** @type {HTMLInputElement} */ ($('counter-name'));
    const id = input.value.trim();
    if (!id) return;
    if (counters.has(id) || id === DEFAULT_COUNTER) {
      input.value = '';
      return;
    }
    store
      .append(id, 'CounterCreated', { value: 0 }, { expectedVersion: 0 })
      .then(() => {
        input.value = '';
      })
      .catch((e) => showError(e.code === 'conflict' ? `a counter named ${id} exists already` : e.message));
  });
  $('offline').addEventListener('change', (ev) => {
    store.setOnline(!(/** @type {HTMLInputElement} */ (ev.target).checked)).catch((e) => showError(e.message));
  });

  // Status, and the timeline of its changes as this tab saw them.
  /** @type {(string | number | null)[][]} */
  const timeline = [];
  let lastKey = '';
  const renderStatus = () => {
    const s = store.status();
    $('conn').textContent = s.connection === 'connecting' ? 'offline (reconnecting)' : s.connection;
    $('conn').dataset.state = s.connection;
    $('pending').textContent = s.pending > 0 && s.oldestPendingAgeMs != null ? `${s.pending} (oldest ${age(s.oldestPendingAgeMs)})` : String(s.pending);
    $('pending').dataset.count = String(s.pending);
    $('rejected').textContent = String(s.rejections ?? 0);
    $('position').textContent = String(s.position ?? 0);
    $('last-sync').textContent = s.lastSyncMs ? time(s.lastSyncMs) : 'never';
    const owner = s.owner === 'this-tab' ? 'this tab' : s.owner === 'another-tab' ? 'another tab of this browser' : 'no tab yet';
    $('storage').textContent = s.persistent ? `persistent (OPFS, held by ${owner})` : 'in memory only';
    $('storage').dataset.owner = s.owner;
    /** @type {HTMLInputElement} */ ($('offline')).checked = !s.online;
    const problem = s.error ?? (s.rebuilding ? `rebuilding ${s.rebuilding.projection}: ${s.rebuilding.done} of ${s.rebuilding.total}` : s.note);
    $('error').hidden = !problem;
    $('error').textContent = problem ?? '';
    const key = `${s.connection} ${s.pending} ${s.position} ${s.owner}`;
    if (key !== lastKey) {
      lastKey = key;
      timeline.unshift([time(Date.now()), s.connection, s.pending, s.position, s.owner]);
      timeline.length = Math.min(timeline.length, TIMELINE_ROWS_MAX);
      fill($('timeline'), timeline);
    }
  };
  store.on('status', renderStatus);
  renderStatus();

  // The inspector follows changes, at most a few times a second.
  let inspecting = false;
  let inspectAgain = false;
  const inspect = async () => {
    if (inspecting) {
      inspectAgain = true;
      return;
    }
    inspecting = true;
    try {
      do {
        inspectAgain = false;
        const i = await store.inspect(INSPECT_ROWS);
        const now = Date.now();
        $('outbox-count').textContent = `(${store.status().pending})`;
        fill($('outbox'), i.outbox.map((/** @type {any} */ e) => [e.seq, e.aggregate_id, e.version, e.event_type, e.timestamp, age(now - e.created_ms)]));
        fill($('rejections'), i.rejections.map((/** @type {any} */ r) => [r.aggregate_id, r.event_type, r.reason, time(r.rejected_ms)]));
        const pending = i.outbox.map((/** @type {any} */ e, /** @type {number} */ k) => [`${i.position + k + 1} (pending)`, e.aggregate_id, e.version, e.event_type, e.event_data, e.timestamp]);
        const committed = i.events.map((/** @type {any} */ e) => [e.position, e.aggregate_id, e.version, e.event_type, e.event_data, e.timestamp]);
        fill($('events'), [...pending.reverse(), ...committed].slice(0, INSPECT_ROWS), (k) => (k < pending.length ? 'pending' : ''));
        fill($('projections'), i.projections.map((/** @type {any} */ p) => [p.name, p.version, p.failed ?? `built ${time(p.built_ms)}`]));
        await new Promise((r) => setTimeout(r, 200));
      } while (inspectAgain);
    } catch (e) {
      showError(`inspector: ${/** @type {Error} */ (e).message}`);
    } finally {
      inspecting = false;
    }
  };
  store.on('change', inspect);
  store.on('status', inspect);
  inspect();
}

main();
