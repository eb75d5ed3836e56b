// The admin console: the set-up wizard and the Connectors page, on the admin API.
//
// Plain DOM, no framework and no build step. Every value that comes from outside reaches the
// page through text nodes and attribute values (`h` below), never as markup, and the page is
// served with a Content-Security-Policy that allows only its own script and style.
'use strict';

const app = document.getElementById('app');
const nav = document.getElementById('nav');
const DEFAULT_FOLDER = 'AT&T SMS/MMS Network Archiver';
const POLL_MS = 2000;

/** The session's CSRF token, sent with every request that changes something. */
let csrf = null;
/** Ends the current page's polling when the page changes. */
let leavePage = () => {};

// ---------------------------------------------------------------------------------------------
// Elements

const SVG_TAGS = new Set(['svg', 'g', 'rect', 'line', 'text', 'title']);

/** An element with attributes (`on…` are listeners) and children (strings become text). */
function h(tag, attrs, ...children) {
  const e = SVG_TAGS.has(tag)
    ? document.createElementNS('http://www.w3.org/2000/svg', tag)
    : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith('on')) e.addEventListener(name.slice(2), value);
    else e.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    e.append(child instanceof Node ? child : String(child));
  }
  return e;
}

/** Replaces a container's children. */
function fill(container, ...children) {
  container.replaceChildren();
  for (const child of children.flat(Infinity)) {
    if (child !== null && child !== undefined && child !== false) {
      container.append(child instanceof Node ? child : String(child));
    }
  }
}

/** Shows a page: its title, then its content; focus goes to the heading for screen readers. */
function page(title, ...content) {
  document.title = `${title} · SMS/MMS Archiver`;
  const heading = h('h1', { tabindex: '-1' }, title);
  fill(app, heading, content);
  heading.focus();
}

function when(value) {
  if (!value) return '—';
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

function field(label, input, hint) {
  return h('label', {}, label, hint ? h('span', { class: 'hint' }, hint) : null, input);
}

function table(headers, rows, numeric = []) {
  return h('div', { class: 'scroll' }, h('table', {},
    h('thead', {}, h('tr', {}, headers.map((name, i) =>
      h('th', { scope: 'col', class: numeric.includes(i) ? 'number' : null }, name)))),
    h('tbody', {}, rows.map((cells) => h('tr', {}, cells.map((cell, i) =>
      h('td', { class: numeric.includes(i) ? 'number' : null }, cell)))))));
}

// ---------------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, body) {
    super(body && typeof body === 'object' && body.error ? body.error
      : typeof body === 'string' && body ? body : `The server answered ${status}.`);
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body, contentType) {
  const headers = {};
  if (method !== 'GET') headers['X-CSRF-Token'] = csrf || '';
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = contentType || 'application/json';
    payload = contentType ? body : JSON.stringify(body);
  }
  const response = await fetch(`/api${path}`, {
    method, headers, body: payload, credentials: 'same-origin', cache: 'no-store',
  });
  const type = response.headers.get('content-type') || '';
  const data = response.status === 204 ? null
    : type.includes('json') ? await response.json() : await response.text();
  if (response.status === 401 && path !== '/session') {
    csrf = null;
    signIn('Your session ended. Sign in again.');
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

const connectorPath = (id) => `/connectors/${encodeURIComponent(id)}`;

// ---------------------------------------------------------------------------------------------
// Sign-in

function signIn(message) {
  leavePage();
  nav.hidden = true;
  const token = h('input', { type: 'password', id: 'admin-token', name: 'token', autocomplete: 'off', required: true });
  const alert = h('p', { class: 'alert', role: 'alert' }, message || '');
  const form = h('form', { class: 'stack', onsubmit: async (event) => {
    event.preventDefault();
    try {
      const session = await api('POST', '/session', { token: token.value });
      token.value = '';
      csrf = session.csrf;
      route();
    } catch (error) {
      token.value = '';
      fill(alert, error.status === 401 ? 'That is not the admin token.' : error.message);
    }
  } },
  field('Admin token', token, 'The deployment\'s admin_token. It is sent once; the console then works on a session cookie.'),
  alert,
  h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Sign in')));
  page('Sign in', form);
  token.focus();
}

document.getElementById('sign-out').addEventListener('click', async () => {
  try { await api('DELETE', '/session'); } catch (_) { /* signed out either way */ }
  csrf = null;
  signIn('Signed out.');
});

// ---------------------------------------------------------------------------------------------
// Routing

async function route() {
  leavePage();
  leavePage = () => {};
  if (!csrf) {
    try {
      csrf = (await api('GET', '/session')).csrf;
    } catch (error) {
      if (error.status === 401) return signIn();
      return page('The console cannot reach the app', h('p', { class: 'alert', role: 'alert' }, error.message));
    }
  }
  nav.hidden = false;
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  try {
    if (parts[0] === 'new') return wizard(Number(parts[1]) || 1);
    if (parts[0] === 'connectors' && parts[1] && parts[2] === 'edit') return await editPage(parts[1]);
    if (parts[0] === 'connectors' && parts[1]) return await connectorPage(parts[1]);
    return await connectorsPage();
  } catch (error) {
    if (error.status !== 401) page('Something went wrong', h('p', { class: 'alert', role: 'alert' }, error.message));
  }
}

window.addEventListener('hashchange', route);

// ---------------------------------------------------------------------------------------------
// Health flags, in words an admin can act on

function healthFlags(health) {
  const flags = [];
  if (!health) return flags;
  if (health.source_login_failure) {
    flags.push(`The archive refused this connector's credentials (${when(health.source_login_failure.at)}): ${health.source_login_failure.reason}. Edit the connector and enter the current password.`);
  }
  if (health.destination_login_failure) {
    flags.push(`The mail destination refused the app's credentials (${when(health.destination_login_failure.at)}): ${health.destination_login_failure.reason}. Run the destination check and correct the deployment's destination settings.`);
  }
  if (health.timer_failure) {
    flags.push(`The timer could not start runs (${when(health.timer_failure.at)}): ${health.timer_failure.reason}. Check the app_origin and timer_token variables; the next good event catches up.`);
  }
  if (health.no_items_alert) {
    flags.push(`No texts for ${health.days_without_items} days. Check that the archive account still receives the staff's texts.`);
  }
  return flags;
}

function flagList(flags) {
  return flags.length
    ? h('ul', { class: 'flags', 'aria-label': 'Health' }, flags.map((text) => h('li', { class: 'flag' }, text)))
    : h('p', { class: 'ok' }, 'Healthy');
}

// ---------------------------------------------------------------------------------------------
// Connectors page

async function connectorsPage() {
  const { connectors } = await api('GET', '/connectors');
  const statuses = await Promise.all(connectors.map((c) =>
    api('GET', `${connectorPath(c.id)}/status`).catch(() => null)));
  const cards = connectors.map((connector, i) => {
    const health = statuses[i] && statuses[i].health;
    return h('article', { class: 'card' },
      h('h2', {}, h('a', { href: `#/connectors/${encodeURIComponent(connector.id)}` }, connector.display_name)),
      h('p', {}, `${connector.network} · ${connector.enabled ? 'Enabled' : 'Disabled'} · last successful run: ${when(health && health.last_successful_run)}`),
      flagList(healthFlags(health)));
  });
  page('Connectors',
    h('div', { class: 'actions' }, h('a', { class: 'button', href: '#/new/1' }, 'New connector')),
    cards.length ? h('div', { class: 'cards' }, cards)
      : h('p', {}, 'No connector yet. Create one to start archiving.'));
}

const FIGURES = [
  ['fetched', 'Fetched'], ['invalid', 'Invalid'], ['unmapped', 'Unmapped'],
  ['available_for_import', 'Available'], ['imported', 'Imported'],
  ['partially_imported', 'Partially imported'], ['skipped_duplicate', 'Duplicates'], ['failed', 'Failed'],
];

async function connectorPage(id) {
  const connector = await api('GET', connectorPath(id));
  const notice = h('p', { class: 'notice', role: 'status' });
  const alert = h('p', { class: 'alert', role: 'alert' });
  const flags = h('div');
  const progress = h('div', { 'aria-live': 'polite' });
  const chart = h('div', { class: 'chart' });
  const days = h('div');
  const runs = h('div');
  const notImported = h('div');
  const filter = h('input', { type: 'search', id: 'not-imported-filter', placeholder: 'participant, user, reason…' });
  const reason = h('select', { id: 'not-imported-reason' }, h('option', { value: '' }, 'every reason'));
  let status = null;

  const act = async (what, action) => {
    fill(alert); fill(notice);
    try {
      fill(notice, await action());
      await refresh();
    } catch (error) {
      if (error.status !== 401) fill(alert, `${what}: ${error.message}`);
    }
  };

  const filtered = () => {
    const words = filter.value.trim().toLowerCase();
    return (status ? status.not_imported : []).filter((item) =>
      (!reason.value || item.reason === reason.value)
      && (!words || [item.item_id, item.participant, item.target_user, item.reason, item.detail, item.run]
        .some((v) => v && String(v).toLowerCase().includes(words))));
  };
  const drawNotImported = () => {
    const items = filtered();
    fill(notImported,
      h('p', {}, `${items.length} of ${status ? status.not_imported.length : 0} items`),
      table(['Item', 'Participant', 'Target user', 'Reason', 'Detail', 'Run', 'At'],
        items.map((i) => [i.item_id, i.participant || '—', i.target_user || '—', i.reason, i.detail, i.run, when(i.at)])));
  };
  filter.addEventListener('input', drawNotImported);
  reason.addEventListener('change', drawNotImported);

  const refresh = async () => {
    status = await api('GET', `${connectorPath(id)}/status`);
    fill(flags, flagList(healthFlags(status.health)));
    const active = status.runs.find((r) => r.state === 'running' || r.state === 'queued');
    fill(progress, active ? runProgress(active) : h('p', {}, 'No run is in progress.'));
    fill(chart, dayChart(status.days));
    fill(days, table(['Day', ...FIGURES.map(([, name]) => name), 'Invariant'],
      status.days.map((d) => [d.day, ...FIGURES.map(([key]) => d[key] ?? 0),
        d.invariant_holds ? h('span', { class: 'ok' }, 'holds') : h('span', { class: 'bad' }, 'does not hold')]),
      FIGURES.map((_, i) => i + 1)));
    fill(runs, table(['Run', 'Trigger', 'State', 'Window', 'Fetched', 'Imported', 'Failed', 'Error'],
      status.runs.slice(0, 20).map((r) => [r.id, r.trigger, r.state,
        `${when(r.since)} – ${when(r.until)}`, r.figures.fetched, r.figures.imported, r.figures.failed, r.error || '']),
      [4, 5, 6]));
    const reasons = [...new Set(status.not_imported.map((i) => i.reason))].sort();
    const chosen = reason.value;
    fill(reason, h('option', { value: '' }, 'every reason'),
      reasons.map((r) => h('option', { value: r, selected: r === chosen }, r)));
    drawNotImported();
  };

  const backfillSince = h('input', { type: 'date', id: 'backfill-since', required: true });
  const backfillUntil = h('input', { type: 'date', id: 'backfill-until', required: true });
  const destination = h('div', { 'aria-live': 'polite' });
  const deleteDialog = h('dialog', { 'aria-labelledby': 'delete-title' },
    h('h2', { id: 'delete-title' }, `Delete ${connector.display_name}?`),
    h('p', {}, 'The connector, its mapping and its password are removed; its run history is kept. Archived mail stays in the mailboxes.'),
    h('form', { method: 'dialog', class: 'actions' },
      h('button', { value: 'cancel', class: 'secondary' }, 'Cancel'),
      h('button', { value: 'delete', class: 'danger', id: 'confirm-delete' }, 'Delete')));
  deleteDialog.addEventListener('close', async () => {
    if (deleteDialog.returnValue !== 'delete') return;
    try {
      await api('DELETE', connectorPath(id));
      location.hash = '#/connectors';
    } catch (error) {
      fill(alert, `Delete: ${error.message}`);
    }
  });

  page(connector.display_name,
    h('p', {}, `${connector.network} · ${connector.enabled ? 'Enabled' : 'Disabled'} · folder “${connector.folder}” · automatic mapping ${connector.automatic_mapping ? 'on' : 'off'} · archive ${connector.source_url} as ${connector.username}`),
    notice, alert,
    h('h2', {}, 'Health'), flags,
    h('div', { class: 'actions' },
      h('button', { type: 'button', onclick: () => act('Run', async () => {
        const run = await api('POST', `${connectorPath(id)}/runs`, {});
        return `Run ${run.id} is ${run.state}.`;
      }) }, 'Run now'),
      h('a', { class: 'button secondary', href: `#/connectors/${encodeURIComponent(id)}/edit` }, 'Edit'),
      h('button', { type: 'button', class: 'secondary', onclick: () => act(connector.enabled ? 'Disable' : 'Enable', async () => {
        await api('PUT', connectorPath(id), { ...editable(connector), enabled: !connector.enabled });
        connector.enabled = !connector.enabled;
        route();
        return '';
      }) }, connector.enabled ? 'Disable' : 'Enable'),
      h('button', { type: 'button', class: 'danger', onclick: () => deleteDialog.showModal() }, 'Delete')),
    deleteDialog,
    h('h2', {}, 'Run in progress'), progress,
    h('h2', {}, 'Backfill'),
    h('form', { class: 'actions', onsubmit: (event) => {
      event.preventDefault();
      act('Backfill', async () => {
        const run = await api('POST', `${connectorPath(id)}/runs`, dayWindow(backfillSince.value, backfillUntil.value));
        return `Backfill ${run.id} is ${run.state}.`;
      });
    } },
    field('From', backfillSince), field('To (inclusive)', backfillUntil),
    h('button', { type: 'submit' }, 'Backfill these days')),
    h('h2', {}, 'Items per day'), chart,
    h('h2', {}, 'Per day'), days,
    h('h2', {}, 'Items not imported'),
    h('div', { class: 'actions' }, field('Filter', filter), field('Reason', reason),
      h('button', { type: 'button', class: 'secondary', onclick: () => exportCsv(`not-imported-${id}.csv`, filtered()) }, 'Export as CSV')),
    notImported,
    h('h2', {}, 'Runs'), runs,
    h('h2', {}, 'User mapping'), mappingReplacer(id, (message) => { fill(notice, message); }),
    h('h2', {}, 'Destination'),
    h('div', { class: 'actions' }, h('button', { type: 'button', class: 'secondary', onclick: async () => {
      fill(destination, h('p', {}, 'Checking…'));
      try {
        fill(destination, destinationReport(await api('GET', '/destination')));
      } catch (error) {
        fill(destination, h('p', { class: 'alert', role: 'alert' }, error.message));
      }
    } }, 'Check the destination')),
    destination);

  await refresh();
  const timer = setInterval(() => { refresh().catch(() => {}); }, POLL_MS);
  leavePage = () => clearInterval(timer);
}

function runProgress(run) {
  const f = run.figures;
  return h('div', { class: 'panel', id: 'run-progress' },
    h('p', {}, `Run ${run.id} (${run.trigger}) is ${run.state}${run.progress ? `, ${run.progress.phase} phase, step ${run.progress.steps}` : ''}.`),
    h('p', {}, `Fetched ${f.fetched}, available ${f.available_for_import}, imported ${f.imported}, duplicates ${f.skipped_duplicate}, unmapped ${f.unmapped}, failed ${f.failed}.`));
}

function destinationReport(report) {
  return h('div', { class: 'panel' },
    h('p', { class: report.ok ? 'ok' : 'bad' }, `${report.destination}: ${report.ok ? 'every check passed' : 'a check failed'}`),
    h('ul', {}, report.checks.map((c) => h('li', {},
      h('span', { class: c.ok ? 'ok' : 'bad' }, c.ok ? 'OK' : 'Not OK'), ` ${c.check}: ${c.detail}`))));
}

/** The connector's fields as `PUT /api/connectors/{id}` takes them, without the password. */
function editable(c) {
  return {
    display_name: c.display_name, network: c.network, source_url: c.source_url,
    username: c.username, automatic_mapping: c.automatic_mapping, folder: c.folder, enabled: c.enabled,
  };
}

/** Whole UTC days from `since` to `until` inclusive, as a run's window. */
function dayWindow(since, until) {
  const end = new Date(`${until}T00:00:00Z`);
  end.setUTCDate(end.getUTCDate() + 1);
  return { since: `${since}T00:00:00Z`, until: end.toISOString().replace('.000Z', 'Z') };
}

/** A bar chart of fetched and imported items per day (a day's figures are its own fields),
 * drawn as SVG. */
function dayChart(days) {
  const shown = days.slice(-31);
  if (!shown.length) return h('p', {}, 'No day has texts yet.');
  const width = 720, height = 220, left = 44, bottom = 28, top = 10;
  const max = Math.max(1, ...shown.map((d) => d.fetched));
  const slot = (width - left) / shown.length;
  const bar = Math.min(28, Math.max(2, slot / 2 - 2));
  const y = (v) => top + (height - top - bottom) * (1 - v / max);
  const label = `Items per day: ${shown.map((d) => `${d.day} fetched ${d.fetched}, imported ${d.imported}`).join('; ')}`;
  const every = Math.ceil(shown.length / 8);
  return h('div', {},
    h('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': label },
      h('line', { x1: left, y1: y(0), x2: width, y2: y(0), stroke: '#57606a' }),
      h('text', { x: left - 6, y: y(max) + 4, 'text-anchor': 'end', 'font-size': 11 }, max),
      h('text', { x: left - 6, y: y(0), 'text-anchor': 'end', 'font-size': 11 }, 0),
      shown.map((d, i) => {
        const x = left + i * slot + 2;
        return h('g', {},
          h('rect', { x, y: y(d.fetched), width: bar, height: y(0) - y(d.fetched), fill: '#8fb8de' },
            h('title', {}, `${d.day}: fetched ${d.fetched}`)),
          h('rect', { x: x + bar, y: y(d.imported), width: bar, height: y(0) - y(d.imported), fill: '#1a7f37' },
            h('title', {}, `${d.day}: imported ${d.imported}`)),
          i % every === 0 ? h('text', { x, y: height - 8, 'font-size': 11 }, d.day.slice(5)) : null);
      })),
    h('p', { class: 'legend' }, h('span', {}, h('span', { class: 'swatch fetched' }), 'fetched'),
      h('span', {}, h('span', { class: 'swatch imported' }), 'imported')));
}

/** Downloads rows as CSV; a cell a spreadsheet would run as a formula is quoted as text. */
function exportCsv(name, items) {
  const columns = ['item_id', 'participant', 'target_user', 'reason', 'detail', 'run', 'at'];
  const cell = (value) => {
    let text = value === null || value === undefined ? '' : String(value);
    if (/^[=+\-@\t\r]/.test(text)) text = `'${text}`;
    return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
  };
  const lines = [columns.join(','), ...items.map((item) => columns.map((c) => cell(item[c])).join(','))];
  const link = h('a', { href: URL.createObjectURL(new Blob([`${lines.join('\r\n')}\r\n`], { type: 'text/csv' })), download: name });
  document.body.append(link);
  link.click();
  link.remove();
}

// ---------------------------------------------------------------------------------------------
// Mapping files: checked (errors by line and column) before anything is saved

function mappingErrors(error) {
  const rows = error.body && Array.isArray(error.body.rows) ? error.body.rows : [];
  return h('div', { class: 'alert', role: 'alert', id: 'mapping-errors' },
    h('p', {}, `The file was not accepted, and nothing was saved: ${error.message}`),
    rows.length ? table(['Line', 'Column', 'Problem'], rows.map((r) => [r.line, r.column, r.reason]), [0, 1]) : null);
}

function mappingPreview(check) {
  return h('div', { class: 'panel', id: 'mapping-preview' },
    h('p', {}, `${check.rows} ${check.rows === 1 ? 'row' : 'rows'} will apply.`),
    table(['Mobile number', 'Email', 'Valid from', 'Valid to'],
      check.preview.map((r) => [r.phone, r.email, r.valid_from || '—', r.valid_to || '—'])),
    check.rows > check.preview.length ? h('p', { class: 'hint' }, `The first ${check.preview.length} are shown.`) : null);
}

/** A file input that checks the chosen CSV and calls `accepted(text, check)` or `refused()`. */
function mappingInput(id, accepted, refused, result) {
  return h('input', { type: 'file', id, accept: '.csv,text/csv', onchange: async (event) => {
    const file = event.target.files[0];
    if (!file) return refused();
    const text = await file.text();
    try {
      const check = await api('POST', '/mapping/check', text, 'text/csv');
      fill(result, mappingPreview(check));
      accepted(text, check, file.name);
    } catch (error) {
      fill(result, mappingErrors(error));
      refused();
    }
  } });
}

function mappingReplacer(id, saved) {
  const result = h('div');
  let csv = null;
  const replace = h('button', { type: 'button', disabled: true, onclick: async () => {
    try {
      await api('PUT', `${connectorPath(id)}/mapping`, csv, 'text/csv');
      fill(result);
      saved('The mapping was replaced.');
    } catch (error) {
      fill(result, mappingErrors(error));
    }
  } }, 'Replace the mapping');
  const input = mappingInput('replace-mapping',
    (text) => { csv = text; replace.disabled = false; },
    () => { csv = null; replace.disabled = true; }, result);
  return h('div', { class: 'stack' },
    h('p', {}, h('a', { href: `/api${connectorPath(id)}/mapping`, download: `mapping-${id}.csv` }, 'Download the mapping in effect')),
    field('New mapping file (CSV)', input, 'Checked before anything is saved; it replaces the whole mapping.'),
    result, h('div', { class: 'actions' }, replace));
}

// ---------------------------------------------------------------------------------------------
// Edit

async function editPage(id) {
  const c = await api('GET', connectorPath(id));
  const inputs = connectorInputs(c);
  const password = h('input', { type: 'password', id: 'password', autocomplete: 'new-password' });
  const folder = h('input', { id: 'folder', value: c.folder, required: true });
  const automatic = h('input', { type: 'checkbox', id: 'automatic-mapping', checked: c.automatic_mapping });
  const enabled = h('input', { type: 'checkbox', id: 'enabled', checked: c.enabled });
  const alert = h('p', { class: 'alert', role: 'alert' });
  page(`Edit ${c.display_name}`, h('form', { class: 'stack', onsubmit: async (event) => {
    event.preventDefault();
    fill(alert, 'Checking the credentials with the archive…');
    const body = {
      display_name: inputs.display_name.value, network: inputs.network.value,
      source_url: inputs.source_url.value, username: inputs.username.value,
      automatic_mapping: automatic.checked, folder: folder.value, enabled: enabled.checked,
    };
    if (password.value) body.password = password.value;
    try {
      await api('PUT', connectorPath(id), body);
      password.value = '';
      location.hash = `#/connectors/${encodeURIComponent(id)}`;
    } catch (error) {
      fill(alert, error.message);
    }
  } },
  field('Name', inputs.display_name), field('Network', inputs.network),
  field('Archive URL', inputs.source_url), field('Archive user name', inputs.username),
  field('Archive password', password, 'Leave empty to keep the stored one.'),
  field('Folder', folder),
  h('label', { class: 'check' }, automatic, 'Automatic mapping: a participant\'s email from the archive when the mapping has no row for their number'),
  h('label', { class: 'check' }, enabled, 'Enabled: the daily timer runs it'),
  alert,
  h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Save'),
    h('a', { class: 'button secondary', href: `#/connectors/${encodeURIComponent(id)}` }, 'Cancel'))));
}

function connectorInputs(c) {
  return {
    display_name: h('input', { id: 'display-name', value: c.display_name, required: true }),
    network: h('input', { id: 'network', value: c.network, required: true }),
    source_url: h('input', { id: 'source-url', type: 'url', value: c.source_url, required: true }),
    username: h('input', { id: 'username', value: c.username, required: true, autocomplete: 'off' }),
  };
}

// ---------------------------------------------------------------------------------------------
// The set-up wizard, one step per page

const STEPS = ['Terms of service', 'Log in to the archive', 'User mapping', 'Review', 'Finish'];
let draft = freshDraft();

function freshDraft() {
  return {
    accepted: false, checked: false, created: false, id: '', display_name: '', network: 'AT&T',
    source_url: '', username: '', password: '', account: null, automatic_mapping: true,
    csv: null, csv_name: '', csv_rows: 0, folder: DEFAULT_FOLDER,
  };
}

function steps(current) {
  return h('ol', { class: 'steps', 'aria-label': 'Set-up steps' },
    STEPS.map((name, i) => h('li', { 'aria-current': i + 1 === current ? 'step' : null }, name)));
}

function go(step) { location.hash = `#/new/${step}`; }

function wizard(step) {
  if (step === 1 && draft.created) draft = freshDraft();
  const reached = draft.created ? 5 : !draft.accepted ? 1 : !draft.checked ? 2 : 4;
  if (step > reached) return go(reached);
  [termsStep, loginStep, mappingStep, reviewStep, finishStep][step - 1]();
}

function termsStep() {
  const accept = h('input', { type: 'checkbox', id: 'accept-terms', checked: draft.accepted });
  const next = h('button', { type: 'submit', disabled: !draft.accepted }, 'Next');
  accept.addEventListener('change', () => { next.disabled = !accept.checked; });
  page('New connector: terms of service', steps(1),
    h('div', { class: 'panel terms', tabindex: '0', 'aria-label': 'Terms of service' },
      h('p', {}, 'This connector copies every SMS and MMS that the carrier\'s archive service holds for your organisation\'s mobile numbers into your users\' mailboxes, so that retention, legal hold and eDiscovery apply to them.'),
      h('p', {}, 'You confirm that your organisation is entitled to archive these messages, that the people whose numbers are mapped have been told their business texts are archived, and that the mapping you upload names the right mailbox for each number.'),
      h('p', {}, 'Messages are kept sealed in the app\'s store only until they are delivered, and never longer than the retention the deployment sets.')),
    h('form', { class: 'stack', onsubmit: (event) => {
      event.preventDefault();
      draft.accepted = accept.checked;
      if (draft.accepted) go(2);
    } }, h('label', { class: 'check' }, accept, 'I accept the terms of service'),
    h('div', { class: 'actions' }, next)));
}

function slug(name) {
  return name.toLowerCase().normalize('NFKD').replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 64);
}

function loginStep() {
  const inputs = connectorInputs(draft);
  const id = h('input', { id: 'connector-id', value: draft.id, required: true, pattern: '[a-z0-9-]{1,64}' });
  const password = h('input', { type: 'password', id: 'password', value: draft.password, required: true, autocomplete: 'new-password' });
  let idEdited = Boolean(draft.id);
  id.addEventListener('input', () => { idEdited = true; });
  inputs.display_name.addEventListener('input', () => { if (!idEdited) id.value = slug(inputs.display_name.value); });
  const alert = h('p', { class: 'alert', role: 'alert' });
  const next = h('button', { type: 'submit' }, 'Check and continue');
  page('New connector: log in to the archive', steps(2), h('form', { class: 'stack', onsubmit: async (event) => {
    event.preventDefault();
    Object.assign(draft, {
      display_name: inputs.display_name.value, id: id.value, network: inputs.network.value,
      source_url: inputs.source_url.value, username: inputs.username.value, password: password.value,
      checked: false,
    });
    fill(alert);
    next.disabled = true;
    try {
      const taken = await api('GET', connectorPath(draft.id)).then(() => true, (error) => {
        if (error.status === 404) return false;
        throw error;
      });
      if (taken) throw new Error(`A connector with the id “${draft.id}” exists already. Choose another id, or edit that connector.`);
      draft.account = await api('POST', '/source/check', {
        source_url: draft.source_url, username: draft.username, password: draft.password,
      });
      draft.checked = true;
      go(3);
    } catch (error) {
      fill(alert, error.status === 422 || error.status === 502 ? `The archive did not accept these details: ${error.message}` : error.message);
    } finally {
      next.disabled = false;
    }
  } },
  field('Name', inputs.display_name, 'Shown on the Connectors page, e.g. “AT&T Network”.'),
  field('Connector id', id, 'Lower-case letters, digits and dashes; part of the API\'s paths.'),
  field('Network', inputs.network),
  field('Archive URL', inputs.source_url, 'The archive service\'s API address.'),
  field('Archive user name', inputs.username),
  field('Archive password', password),
  alert,
  h('div', { class: 'actions' }, h('a', { class: 'button secondary', href: '#/new/1' }, 'Back'), next)));
}

function mappingStep() {
  const automatic = h('input', { type: 'checkbox', id: 'automatic-mapping', role: 'switch', checked: draft.automatic_mapping });
  const folder = h('input', { id: 'folder', value: draft.folder, required: true });
  const result = h('div');
  const next = h('button', { type: 'submit' }, 'Next');
  if (draft.csv) fill(result, h('p', { class: 'panel' }, `${draft.csv_name}: ${draft.csv_rows} rows will apply.`));
  let pending = false;
  const input = mappingInput('mapping-file',
    (text, check, name) => { pending = false; Object.assign(draft, { csv: text, csv_name: name, csv_rows: check.rows }); next.disabled = false; },
    () => { pending = true; Object.assign(draft, { csv: null, csv_name: '', csv_rows: 0 }); next.disabled = true; }, result);
  input.addEventListener('change', () => { if (!input.files.length) { pending = false; next.disabled = false; } });
  page('New connector: user mapping', steps(3), h('form', { class: 'stack', onsubmit: (event) => {
    event.preventDefault();
    if (pending) return;
    draft.automatic_mapping = automatic.checked;
    draft.folder = folder.value;
    go(4);
  } },
  h('label', { class: 'check' }, automatic, 'Automatic mapping: when the mapping has no row for a number, use the participant\'s email from the archive'),
  field('Mapping file (CSV)', input, 'Mobile number and mailbox per row (“External User ID,Microsoft 365 User Mailbox”, or phone,email[,valid_from][,valid_to]). Checked here; saved only when the connector is created.'),
  result,
  field('Folder', folder, 'The folder each copy goes in, in every mapped mailbox.'),
  h('div', { class: 'actions' }, h('a', { class: 'button secondary', href: '#/new/2' }, 'Back'), next)));
}

function reviewStep() {
  const alert = h('p', { class: 'alert', role: 'alert' });
  const create = h('button', { type: 'button', id: 'create-connector', onclick: async () => {
    create.disabled = true;
    fill(alert);
    try {
      await api('PUT', connectorPath(draft.id), {
        display_name: draft.display_name, network: draft.network, source_url: draft.source_url,
        username: draft.username, password: draft.password, automatic_mapping: draft.automatic_mapping,
        folder: draft.folder,
      });
      if (draft.csv) await api('PUT', `${connectorPath(draft.id)}/mapping`, draft.csv, 'text/csv');
      draft.created = true;
      draft.password = '';
      go(5);
    } catch (error) {
      fill(alert, error.message);
      create.disabled = false;
    }
  } }, 'Create the connector');
  const rows = [
    ['Name', draft.display_name], ['Connector id', draft.id], ['Network', draft.network],
    ['Archive', `${draft.source_url} as ${draft.username}`],
    ['Archive account', draft.account ? `${draft.account.organization || ''} (${draft.account.account_id || ''})` : '—'],
    ['Password', 'checked with the archive; stored sealed, never shown'],
    ['Mapping file', draft.csv ? `${draft.csv_name}: ${draft.csv_rows} rows` : 'none'],
    ['Automatic mapping', draft.automatic_mapping ? 'on' : 'off'],
    ['Folder', draft.folder],
  ];
  page('New connector: review', steps(4),
    h('dl', { class: 'review' }, rows.map(([name, value]) => [h('dt', {}, name), h('dd', {}, value)])),
    !draft.csv && !draft.automatic_mapping
      ? h('p', { class: 'alert' }, 'With no mapping file and automatic mapping off, no text can be delivered: every item will be reported unmapped.')
      : null,
    alert,
    h('div', { class: 'actions' }, h('a', { class: 'button secondary', href: '#/new/3' }, 'Back'), create));
}

function finishStep() {
  const id = draft.id;
  const since = h('input', { type: 'date', id: 'backfill-since', required: true });
  const until = h('input', { type: 'date', id: 'backfill-until', required: true });
  const alert = h('p', { class: 'alert', role: 'alert' });
  const start = (body) => {
    // The run goes on after the page moves to the connector, where its progress shows.
    api('POST', `${connectorPath(id)}/runs`, body).catch((error) => fill(alert, error.message));
    location.hash = `#/connectors/${encodeURIComponent(id)}`;
  };
  page('New connector: finish', steps(5),
    h('p', { class: 'notice', role: 'status' }, `The connector “${draft.display_name}” is created. The daily timer runs it from now on.`),
    h('div', { class: 'actions' },
      h('button', { type: 'button', id: 'first-run', onclick: () => start({}) }, 'Start a first run now'),
      h('a', { class: 'button secondary', href: `#/connectors/${encodeURIComponent(id)}` }, 'Open the connector')),
    h('h2', {}, 'Or backfill a date range'),
    h('form', { class: 'actions', onsubmit: (event) => {
      event.preventDefault();
      start(dayWindow(since.value, until.value));
    } }, field('From', since), field('To (inclusive)', until), h('button', { type: 'submit', id: 'backfill' }, 'Backfill')),
    alert);
}

route();
