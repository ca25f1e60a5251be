// The page: renders the worker's state and forwards clicks. All data and
// sync live in worker.js.

// The sync server: the page's own origin by default; a host such as a VS Code
// webview names it with <meta name="strata-server" content="ws://…/ws"> or
// `?server=` (see docs/WEBVIEW.md).
const server = new URLSearchParams(location.search).get('server') ?? document.querySelector('meta[name="strata-server"]')?.content;
const workerUrl = new URL('./worker.js', import.meta.url);
if (server) workerUrl.searchParams.set('server', server);
const worker = new Worker(workerUrl, { type: 'module' });
const $ = (id) => document.getElementById(id);

worker.onmessage = (ev) => {
  const s = ev.data;
  if (s.type === 'fatal') {
    $('error').hidden = false;
    $('error').textContent = `Could not start: ${s.message}`;
    return;
  }
  if (s.type !== 'state') return;
  $('value').textContent = String(s.value);
  $('conn').textContent = s.conn === 'connecting' ? 'offline (reconnecting)' : s.conn;
  $('conn').dataset.state = s.conn;
  $('pending').textContent = String(s.pending);
  $('rejected').textContent = String(s.rejected);
  $('position').textContent = String(s.position);
  $('storage').textContent = s.persistent ? 'persistent (OPFS)' : 'in memory only';
  $('offline').checked = !s.wantOnline;
  $('error').hidden = !s.error;
  $('error').textContent = s.error ?? '';
  document.body.dataset.ready = 'true';
};

$('incr').onclick = () => worker.postMessage({ type: 'incr' });
$('decr').onclick = () => worker.postMessage({ type: 'decr' });
$('offline').onchange = (e) => worker.postMessage({ type: e.target.checked ? 'offline' : 'online' });
