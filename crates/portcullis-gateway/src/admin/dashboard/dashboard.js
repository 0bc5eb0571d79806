// The Portcullis admin dashboard. It reads the admin listener's JSON (/api/summary,
// /api/events, /readyz) and writes every value into the page with textContent: the audit
// log holds what clients sent (paths, user names), which must never become markup here.
'use strict';

const $ = (id) => document.getElementById(id);
let timer = null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement('tr');
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el('td', c));
  return tr;
}

function fill(tableId, rows, emptyText, span) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  if (rows.length === 0) {
    const td = el('td', emptyText, 'empty');
    td.colSpan = span;
    body.appendChild(row([td]));
    return;
  }
  for (const r of rows) body.appendChild(r);
}

function cell(...nodes) {
  const td = document.createElement('td');
  td.append(...nodes);
  return td;
}

function num(n) {
  return el('td', Number(n).toLocaleString('en'), 'num');
}

function ago(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return s + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  if (s < 86400) return Math.round(s / 360) / 10 + ' h ago';
  return Math.round(s / 8640) / 10 + ' d ago';
}

function duration(s) {
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
}

function time(ms) {
  return new Date(ms).toISOString().replace('T', ' ').replace('Z', '');
}

function showError(msg) {
  const p = $('error');
  p.textContent = msg;
  p.hidden = !msg;
}

async function getJson(url) {
  const res = await fetch(url, { cache: 'no-store', credentials: 'same-origin' });
  let body = null;
  try {
    body = await res.json();
  } catch (_) {
    throw new Error(url + ': HTTP ' + res.status);
  }
  if (!res.ok && res.status !== 503) {
    throw new Error(url + ': ' + (body && body.reason ? body.reason : 'HTTP ' + res.status));
  }
  return body;
}

function filterTo(field, value) {
  $(field).value = value;
  loadEvents().catch((e) => showError(e.message));
  $('events').scrollIntoView({ behavior: 'smooth', block: 'start' });
}

// A cell whose text filters the audit log by it.
function filterCell(text, field, cls) {
  const td = cell(link(text, field));
  if (cls) td.className = cls;
  return td;
}

// A link that filters the audit log to `value` in the filter `field`.
function link(value, field) {
  const a = el('a', value);
  a.href = '#events';
  a.addEventListener('click', (ev) => {
    ev.preventDefault();
    filterTo(field, value);
  });
  return a;
}

async function lift(client) {
  if (!window.confirm('Lift the ban on ' + client + ' and forget its offences?')) return;
  const res = await fetch('/bans?client=' + encodeURIComponent(client), {
    method: 'DELETE',
    credentials: 'same-origin',
  });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    showError('Lifting the ban on ' + client + ' failed: ' + (body.reason || 'HTTP ' + res.status));
    return;
  }
  await refresh();
}

function liftButton(client) {
  const b = el('button', 'Lift', 'danger');
  b.type = 'button';
  b.dataset.client = client;
  b.addEventListener('click', () => lift(client).catch((e) => showError(e.message)));
  return b;
}

function renderSummary(data) {
  const now = data.now_ms;
  $('version').textContent = 'v' + data.version;
  $('store').textContent = data.audit_store || 'none (audit off)';
  const c = data.counters;
  $('c-limited').textContent = Number(c.rate_limit.limited).toLocaleString('en');
  $('c-allowed').textContent = Number(c.rate_limit.allowed).toLocaleString('en');
  const errs = c.store_errors;
  $('c-store').textContent = errs.rate_limit + errs.brute_force + errs.ban_list;
  $('c-store-detail').textContent =
    'since start: rate limit ' + errs.rate_limit + ', brute force ' + errs.brute_force + ', bans ' + errs.ban_list;
  if (c.audit) {
    $('c-pending').textContent = c.audit.pending;
    $('c-audit-detail').textContent =
      'waiting in the spool; written ' + c.audit.written + ', spooled ' + c.audit.spooled +
      ', dropped ' + c.audit.dropped;
  } else {
    $('c-pending').textContent = '–';
    $('c-audit-detail').textContent = 'audit off';
  }
  $('c-bans').textContent = data.bans === null ? 'off' : data.bans.length;

  // Bans in force.
  if (data.bans === null) {
    fill('bans', [], 'Bans are off ([ban] in the config).', 3);
  } else {
    fill(
      'bans',
      data.bans.map((b) => row([el('td', b.client, 'mono'), el('td', duration(b.seconds_left), 'num'), cell(liftButton(b.client))])),
      'Nobody is banned.',
      3,
    );
  }

  const s = data.summary;
  if (!s) {
    showError(data.summary_error ? 'The audit log cannot be read: ' + data.summary_error : '');
    $('c-denied').textContent = '–';
    for (const id of ['offenders', 'routes', 'actions', 'users']) fill(id, [], 'No audit log to read.', 5);
    $('timeline').replaceChildren();
    return;
  }
  showError(s.truncated ? 'Counts cover only the newest events of this window (the store could not count them all).' : '');
  $('c-denied').textContent = Number(s.denied).toLocaleString('en');

  fill(
    'offenders',
    s.offenders.map((o) => {
      const what = el('td');
      what.textContent = o.actions.map((a) => a.name + ' ' + a.count).join(', ');
      const ban = el('td');
      if (o.banned_seconds_left !== null && o.banned_seconds_left !== undefined) {
        ban.append('banned, ' + duration(o.banned_seconds_left) + ' ', liftButton(o.client_ip));
      } else {
        ban.textContent = '–';
      }
      const who = filterCell(o.client_ip, 'f-ip', 'mono');
      return row([who, num(o.denied), what, el('td', ago(o.last_ms, now)), ban]);
    }),
    'No refusals in this window.',
    5,
  );
  fill(
    'routes',
    s.rate_limited_routes.map((r) => row([filterCell(r.name, 'f-route', 'mono'), num(r.count)])),
    'No request was rate limited in this window.',
    2,
  );
  fill(
    'actions',
    s.by_action.map((a) => row([filterCell(a.action, 'f-action'), a.outcome, num(a.count)])),
    'No audit events in this window.',
    3,
  );
  fill(
    'users',
    s.denied_users.map((u) => row([filterCell(u.name, 'f-user', 'mono'), num(u.count)])),
    'No authenticated user was refused in this window.',
    2,
  );

  // Timeline: one bar per bucket, its height relative to the busiest bucket.
  const t = $('timeline');
  t.replaceChildren();
  const max = Math.max(1, ...s.denied_timeline);
  s.denied_timeline.forEach((n, i) => {
    const bar = el('div', null, n === 0 ? 'bar zero' : 'bar');
    bar.style.height = (n === 0 ? 1 : Math.max(3, Math.round((n / max) * 100))) + '%';
    const start = s.since_ms + i * s.bucket_ms;
    bar.title = time(start) + ' UTC: ' + n + ' refused';
    t.appendChild(bar);
  });
  $('timeline-range').textContent =
    time(s.since_ms) + ' to ' + time(s.until_ms) + ' UTC, ' + Math.round(s.bucket_ms / 1000) + ' s per bar, peak ' + max;
}

function renderEvents(data) {
  $('events-count').textContent = data.events.length + ' newest';
  fill(
    'events',
    data.events.map((e) => {
      const details = el('td', JSON.stringify(e.metadata), 'details');
      return row([
        el('td', time(e.ts_ms), 'nowrap'),
        el('td', e.action, 'nowrap'),
        el('td', e.outcome, 'nowrap'),
        el('td', e.status, 'num'),
        el('td', e.method, 'nowrap'),
        el('td', e.path, 'mono'),
        el('td', e.route, 'mono'),
        el('td', e.client_ip ?? '', 'mono nowrap'),
        e.principal ?? '',
        el('td', e.request_id, 'mono'),
        details,
      ]);
    }),
    'No events match.',
    11,
  );
}

function eventsUrl() {
  const p = new URLSearchParams({ window: $('window').value, limit: '100' });
  for (const [field, key] of [['f-action', 'action'], ['f-ip', 'ip'], ['f-user', 'user'], ['f-route', 'route']]) {
    const v = $(field).value.trim();
    if (v) p.set(key, v);
  }
  return '/api/events?' + p.toString();
}

async function loadEvents() {
  const data = await getJson(eventsUrl());
  if (data.status && data.status !== 'ok') {
    showError(data.reason || data.status);
    fill('events', [], data.reason || 'The audit log cannot be read.', 11);
    return;
  }
  renderEvents(data);
}

async function loadReady() {
  const pill = $('ready');
  try {
    const r = await getJson('/readyz');
    const parts = ['upstream', 'rate_limit_store', 'audit_store'].map((k) => k.replace(/_/g, ' ') + ' ' + r[k]);
    pill.textContent = (r.status === 'ok' ? 'ready' : 'not ready') + ' · ' + parts.join(' · ');
    pill.className = r.status === 'ok' ? 'pill ok' : 'pill bad';
  } catch (e) {
    pill.textContent = 'readiness unknown';
    pill.className = 'pill bad';
  }
}

async function refresh() {
  try {
    const summary = await getJson('/api/summary?window=' + encodeURIComponent($('window').value));
    renderSummary(summary);
    await loadEvents();
    $('updated').textContent = 'updated ' + new Date().toLocaleTimeString();
    document.body.dataset.loaded = 'true';
  } catch (e) {
    showError(e.message);
  }
  loadReady();
}

// Seconds between refreshes for each window: counting a week reads every event of the week,
// so a long window refreshes less often (its counts change slowly anyway).
const PERIODS = { '15m': 5, '1h': 5, '6h': 15, '24h': 30, '7d': 60 };

function period() {
  return PERIODS[$('window').value] || 5;
}

// The next refresh is set once this one has finished, so a slow store never gets a queue
// of them.
function schedule() {
  if (timer) clearTimeout(timer);
  timer = null;
  $('auto-period').textContent = String(period());
  if (!$('auto').checked) return;
  timer = setTimeout(async () => {
    await refresh();
    schedule();
  }, period() * 1000);
}

async function init() {
  const actions = await getJson('/api/actions').catch(() => ({ actions: [] }));
  for (const a of actions.actions) $('f-action').appendChild(el('option', a));
  $('window').addEventListener('change', async () => {
    await refresh();
    schedule();
  });
  $('refresh').addEventListener('click', refresh);
  $('auto').addEventListener('change', schedule);
  $('filters').addEventListener('submit', (ev) => {
    ev.preventDefault();
    loadEvents().catch((e) => showError(e.message));
  });
  $('filters').addEventListener('reset', () => {
    setTimeout(() => loadEvents().catch((e) => showError(e.message)), 0);
  });
  await refresh();
  schedule();
}

document.addEventListener('DOMContentLoaded', init);
