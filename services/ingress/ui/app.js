// Colony's operations dashboard: one vanilla ES module, no dependencies.
//
// Every string the API returns is untrusted (model output, task input,
// tenant names): the DOM is built with createElement and textContent only,
// never from HTML text. The API key lives in this tab's sessionStorage and
// travels only in the Authorization header.

const SCOPES = ['read', 'submit', 'admin', 'operator'];
const TASK_STATES = ['pending', 'queued', 'running', 'review', 'rework', 'blocked', 'done', 'failed', 'cancelled'];
const GOAL_STATES = ['planning', 'awaiting_approval', 'running', 'delivering', 'paused', 'blocked', 'done', 'failed', 'cancelled'];
const FINAL = new Set(['done', 'failed', 'cancelled']);
const SS_KEY = 'colony.key';
const SS_TENANT = 'colony.tenant';
const FEED_CAP = 500;

const S = { key: null, who: null, tenant: null, page: null };

// ---------------------------------------------------------------- DOM

const SVGNS = 'http://www.w3.org/2000/svg';
const FORBIDDEN = new Set(['innerHTML', 'outerHTML', 'style', 'srcdoc']);

function setProps(el, props, svg) {
  if (!props) return;
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false || FORBIDDEN.has(k)) continue;
    if (k === 'class') el.setAttribute('class', v);
    else if (k === 'testid') el.setAttribute('data-testid', v);
    else if (k === 'text') el.textContent = String(v);
    else if (k === 'data') for (const [dk, dv] of Object.entries(v)) { if (dv != null) el.dataset[dk] = String(dv); }
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (!svg && k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function add(el, ...kids) {
  for (const k of kids.flat(Infinity)) {
    if (k == null || k === false) continue;
    el.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return el;
}

// Replace an element's children; null and false are skipped (the DOM's own
// replaceChildren would write them out as text).
function fill(el, ...kids) {
  el.replaceChildren();
  return add(el, kids);
}

function h(tag, props, ...kids) {
  const el = document.createElement(tag);
  setProps(el, props, false);
  return add(el, kids);
}

function s(tag, props, ...kids) {
  const el = document.createElementNS(SVGNS, tag);
  setProps(el, props, true);
  return add(el, kids);
}

const $ = (sel, root = document) => root.querySelector(sel);

// ---------------------------------------------------------------- formats

function group(str) {
  const [i, f] = str.split('.');
  const g = i.replace(/\B(?=(\d{3})+(?!\d))/g, '\u202f');
  return f != null ? `${g}.${f}` : g;
}
function fmtInt(n) {
  if (n == null || !Number.isFinite(+n)) return '–';
  return group(String(Math.round(+n)));
}
function fmtNum(n, d = 1) {
  if (n == null || !Number.isFinite(+n)) return '–';
  return Number.isInteger(+n) ? fmtInt(n) : group((+n).toFixed(d));
}
function fmtUsd(n) {
  if (n == null || !Number.isFinite(+n)) return '–';
  const v = +n;
  if (v !== 0 && Math.abs(v) < 0.01) return `$${v.toFixed(4)}`;
  return `${v < 0 ? '-' : ''}$${group(Math.abs(v).toFixed(2))}`;
}
function fmtSecs(sec) {
  if (sec == null || !Number.isFinite(+sec)) return '–';
  const a = Math.abs(+sec);
  if (a === 0) return '0 s';
  if (a < 0.001) return `${(a * 1e6).toFixed(0)} µs`;
  if (a < 1) return `${(a * 1000).toFixed(1)} ms`;
  if (a < 60) return `${a.toFixed(1)} s`;
  if (a < 3600) return `${(a / 60).toFixed(1)} min`;
  if (a < 86400) return `${(a / 3600).toFixed(1)} h`;
  return `${(a / 86400).toFixed(1)} d`;
}
const fmtMs = (ms) => (ms == null ? '–' : fmtSecs(ms / 1000));
function fmtBytes(b) {
  if (b == null || !Number.isFinite(+b)) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = +b, i = 0;
  while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${v} B` : `${v.toFixed(1)} ${u[i]}`;
}
function ago(t) {
  const ms = typeof t === 'number' ? t : Date.parse(t);
  if (!Number.isFinite(ms)) return '–';
  const d = (Date.now() - ms) / 1000, a = Math.abs(d);
  if (a < 1) return 'just now';
  const str = a < 60 ? `${Math.floor(a)} s` : a < 3600 ? `${Math.floor(a / 60)} min`
    : a < 86400 ? `${Math.floor(a / 3600)} h` : `${Math.floor(a / 86400)} d`;
  return d >= 0 ? `${str} ago` : `in ${str}`;
}
function fmtTime(t) {
  const d = new Date(t);
  if (Number.isNaN(d.getTime())) return '–';
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}
const trunc = (str, n) => { str = String(str ?? ''); return str.length > n ? `${str.slice(0, n - 1)}…` : str; };
// Ids are UUIDv7: their head is a timestamp shared by everything made in
// the same minute, so the short form is the tail.
const shortId = (id) => String(id ?? '').slice(-8);
const cls = (str) => String(str ?? '').replace(/[^a-z0-9_-]/gi, '');
const label = (str) => String(str ?? '').replace(/_/g, ' ');

// A time that keeps saying how long ago it was (the ticker below).
function when(t, prefix = '') {
  if (t == null) return h('span', { class: 'dim' }, '–');
  return h('time', { datetime: String(t), title: `${fmtTime(t)} (${t})`, data: { ago: String(t), prefix } }, prefix + ago(t));
}
setInterval(() => {
  for (const el of document.querySelectorAll('time[data-ago]')) el.textContent = (el.dataset.prefix || '') + ago(el.dataset.ago);
}, 1000);

const badge = (st, testid) => h('span', { class: `badge st-${cls(st)}`, testid, data: { state: st } }, label(st));
const mono = (txt, title) => h('span', { class: 'mono', title }, txt);
function link(kind, id, text) {
  if (id == null) return h('span', { class: 'dim' }, '–');
  return h('a', { class: 'mono', href: `#/${kind}/${encodeURIComponent(id)}`, title: String(id) }, text ?? shortId(id));
}
function jsonBlock(v, testid) {
  return h('pre', { class: 'json', testid }, v === undefined ? '' : JSON.stringify(v, null, 2));
}

function table(cols, rows, opts = {}) {
  const thead = h('thead', null, h('tr', null, cols.map((c) => h('th', { class: c.num ? 'num' : null, title: c.title }, c.label))));
  const tbody = h('tbody', null, rows.map((r) => {
    const tr = h('tr', { testid: opts.rowTestid, data: opts.rowData?.(r) },
      cols.map((c) => h('td', { class: c.num ? 'num' : c.cls }, c.cell(r))));
    return tr;
  }));
  if (!rows.length) tbody.append(h('tr', null, h('td', { class: 'empty', colSpan: cols.length }, opts.empty || 'Nothing here.')));
  return h('div', { class: 'table-wrap' }, h('table', { class: 'grid', testid: opts.testid }, thead, tbody));
}

function panel(title, ...kids) {
  return h('section', { class: 'panel' }, title ? h('h2', null, title) : null, ...kids);
}

function toast(msg, kind = 'ok') {
  const el = h('div', { class: `toast ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, msg);
  $('#toasts').append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 8000 : 4000);
}

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function headers(extra) {
  const hd = { Authorization: `Bearer ${S.key}`, ...extra };
  if (S.who?.scope === 'operator' && S.tenant) hd['X-Colony-Tenant'] = S.tenant;
  return hd;
}

async function failure(res) {
  let msg = `${res.status} ${res.statusText}`.trim();
  try {
    const j = await res.json();
    if (j && typeof j.error === 'string') msg = j.error;
  } catch { /* not JSON */ }
  if (res.status === 401) logout(msg);
  return new ApiError(res.status, msg);
}

async function api(path, { method, body, signal } = {}) {
  const init = { method: method || (body !== undefined ? 'POST' : 'GET'), headers: headers({ Accept: 'application/json' }), signal, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'Colony does not answer; retrying.');
  }
  if (!res.ok) throw await failure(res);
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

// Server-sent events over fetch (EventSource cannot send the key).
async function readSSE(path, { signal, onOpen, onEvent }) {
  let res;
  try {
    res = await fetch(path, { headers: headers({ Accept: 'text/event-stream' }), signal, cache: 'no-store', credentials: 'omit' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'Colony does not answer.');
  }
  if (!res.ok) throw await failure(res);
  onOpen?.();
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '', event = '', data = [];
  const line = (ln) => {
    if (ln === '') {
      if (data.length) onEvent(event || 'message', data.join('\n'));
      event = ''; data = [];
      return;
    }
    if (ln[0] === ':') return;
    const c = ln.indexOf(':');
    const field = c < 0 ? ln : ln.slice(0, c);
    let val = c < 0 ? '' : ln.slice(c + 1);
    if (val[0] === ' ') val = val.slice(1);
    if (field === 'event') event = val;
    else if (field === 'data') data.push(val);
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    for (;;) {
      const i = buf.search(/[\r\n]/);
      if (i < 0 || (buf[i] === '\r' && i === buf.length - 1)) break;
      const n = buf[i] === '\r' && buf[i + 1] === '\n' ? 2 : 1;
      line(buf.slice(0, i));
      buf = buf.slice(i + n);
    }
  }
}

const rank = (scope) => SCOPES.indexOf(scope);
const can = (scope) => !!S.who && rank(S.who.scope) >= rank(scope);

// ---------------------------------------------------------------- pages

function newCtx(root) {
  const ac = new AbortController();
  const timers = new Set();
  const ctx = {
    root,
    signal: ac.signal,
    get alive() { return !ac.signal.aborted; },
    close() { ac.abort(); for (const t of timers) clearTimeout(t); timers.clear(); },
    sleep(ms) {
      return new Promise((res) => {
        const t = setTimeout(() => { timers.delete(t); res(); }, ms);
        timers.add(t);
        ac.signal.addEventListener('abort', res, { once: true });
      });
    },
    api: (path, opts = {}) => api(path, { ...opts, signal: ac.signal }),
    ready() { if (ctx.alive) root.dataset.ready = '1'; },
    // Run fn now and every ms after it ends, while the page is shown; a
    // failure shows in the page's error line and the loop goes on.
    async poll(ms, fn, errEl) {
      while (ctx.alive) {
        try {
          const more = await fn();
          if (errEl) fill(errEl);
          ctx.ready();
          if (more === false) return;
        } catch (e) {
          if (!ctx.alive || e.name === 'AbortError') return;
          if (errEl) fill(errEl, errorLine(e));
          else toast(e.message, 'error');
        }
        await ctx.sleep(ms);
      }
    },
  };
  return ctx;
}

const errorLine = (e) => h('div', { class: 'error', role: 'alert', testid: 'page-error' }, e.message || String(e));

function needs(ctx, scope) {
  if (can(scope)) return true;
  add(ctx.root, h('div', { class: 'needs', testid: 'needs-scope' },
    h('strong', null, `This page needs an ${scope} key`),
    h('p', null, `The key in use has scope ${S.who.scope}.`)));
  ctx.ready();
  return false;
}

function pageHead(title, ...right) {
  return h('header', { class: 'page-head' }, h('h1', null, title), h('div', { class: 'page-tools' }, ...right));
}

// An action button (it changes something): it exists only for a key that
// may use it, always carries data-action, and shows the API's sentence on
// failure. With confirm, the first click only arms it.
function actionButton(text, action, fn, { confirm, kind } = {}) {
  let armed = null;
  const btn = h('button', { type: 'button', class: `btn ${kind || ''}`.trim(), data: { action } }, text);
  btn.addEventListener('click', async () => {
    if (confirm && !armed) {
      btn.textContent = confirm;
      btn.classList.add('armed');
      armed = setTimeout(() => { armed = null; btn.textContent = text; btn.classList.remove('armed'); }, 4000);
      return;
    }
    clearTimeout(armed); armed = null;
    btn.classList.remove('armed');
    btn.textContent = text;
    btn.disabled = true;
    try {
      await fn();
    } catch (e) {
      if (e.name !== 'AbortError') toast(e.message, 'error');
    } finally {
      btn.disabled = false;
    }
  });
  return btn;
}

// ---------------------------------------------------------------- charts

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function throughputChart(points) {
  const W = 1200, H = 210, L = 44, R = 8, T = 10, B = 22;
  const n = Math.max(points.length, 1), bw = (W - L - R) / n;
  const max = niceMax(Math.max(0, ...points.map((p) => (p.done || 0) + (p.failed || 0))));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const root = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart', testid: 'throughput-chart', role: 'img', 'aria-label': 'Tasks finished per minute, the last hour' });
  for (const v of [0, max / 2, max]) {
    root.append(s('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'gridline' }),
      s('text', { x: L - 6, y: y(v) + 4, class: 'axis', 'text-anchor': 'end' }, fmtNum(v)));
  }
  points.forEach((p, i) => {
    const x = L + i * bw + 1, w = Math.max(bw - 2, 1);
    const t = new Date(p.minute);
    const hhmm = Number.isNaN(t.getTime()) ? '' : `${String(t.getHours()).padStart(2, '0')}:${String(t.getMinutes()).padStart(2, '0')}`;
    const g = s('g', null, s('title', null, `${hhmm}: ${fmtInt(p.done)} done, ${fmtInt(p.failed)} failed`),
      s('rect', { x, width: w, y: T, height: H - T - B, class: 'hover' }));
    if (p.done > 0) g.append(s('rect', { x, width: w, y: y(p.done), height: y(0) - y(p.done), class: 'st-done bar' }));
    if (p.failed > 0) g.append(s('rect', { x, width: w, y: y(p.done + p.failed), height: y(p.done) - y(p.done + p.failed), class: 'st-failed bar' }));
    root.append(g);
  });
  const ticks = [[0, '-60 min'], [n / 2, '-30 min'], [n, 'now']];
  for (const [i, txt] of ticks) {
    root.append(s('text', { x: L + i * bw, y: H - 6, class: 'axis', 'text-anchor': i === 0 ? 'start' : i === n ? 'end' : 'middle' }, txt));
  }
  return root;
}

// Horizontal bars: rows [{label, values: [..], href?}], series [{name, cls}].
function barChart(rows, series, { fmt = fmtInt, testid } = {}) {
  if (!rows.length) return h('p', { class: 'dim' }, 'Nothing to draw yet.');
  if (rows.every((r) => r.values.every((v) => !+v))) return h('p', { class: 'dim', testid }, `Every ${series.map((x) => x.name).join(' and ')} is 0.`);
  const W = 640, LW = 150, RW = 70, bh = 10, rowH = series.length * (bh + 2) + 10;
  const H = rows.length * rowH + 8;
  const vals = rows.flatMap((r) => r.values.map((v) => +v || 0));
  const lo = Math.min(0, ...vals), hi = Math.max(0, ...vals);
  const span = hi - lo || 1;
  const left = LW + (lo < 0 ? 44 : 0); // room for a negative value's label
  const sx = (v) => left + ((v - lo) / span) * (W - left - RW);
  const root = s('svg', { viewBox: `0 0 ${W} ${H}`, class: 'chart bars', testid, role: 'img' });
  rows.forEach((r, i) => {
    const y0 = 6 + i * rowH;
    root.append(s('text', { x: LW - 8, y: y0 + rowH / 2, class: 'axis label', 'text-anchor': 'end' }, s('title', null, r.label), trunc(r.label, 22)));
    r.values.forEach((raw, j) => {
      const v = +raw || 0, a = sx(Math.min(0, v)), b = sx(Math.max(0, v));
      const y = y0 + j * (bh + 2);
      root.append(s('rect', { x: a, y, width: Math.max(b - a, v ? 1.5 : 0), height: bh, rx: 2, class: `bar ${v < 0 ? 'st-failed' : series[j].cls}` },
        s('title', null, `${r.label}, ${series[j].name}: ${fmt(v)}`)));
      root.append(s('text', { x: v < 0 ? a - 4 : b + 4, y: y + bh - 1, class: 'axis value', 'text-anchor': v < 0 ? 'end' : 'start' }, fmt(v)));
    });
  });
  if (lo < 0) root.append(s('line', { x1: sx(0), x2: sx(0), y1: 0, y2: H, class: 'zeroline' }));
  const legend = series.length > 1
    ? h('div', { class: 'legend' }, series.map((se) => h('span', { class: 'chip' }, h('i', { class: `sw ${se.cls}` }), se.name)))
    : null;
  return h('div', null, root, legend);
}

// A stacked bar of counts by state, with a legend of links.
function stateBar(counts, order, hrefOf, testid) {
  const total = order.reduce((a, k) => a + (counts[k] || 0), 0);
  const bar = h('div', { class: 'sbar', testid });
  for (const k of order) {
    const v = counts[k] || 0;
    if (!v) continue;
    const seg = h('span', { class: `seg st-${cls(k)}`, title: `${label(k)}: ${fmtInt(v)}` });
    seg.style.flexGrow = String(v);
    bar.append(seg);
  }
  if (!total) bar.append(h('span', { class: 'seg empty' }));
  const legend = h('div', { class: 'legend' }, order.map((k) => h(hrefOf ? 'a' : 'span', {
    class: 'chip', href: hrefOf ? hrefOf(k) : null, testid: testid ? `${testid}-${k}` : null, data: { value: counts[k] || 0 },
  }, h('i', { class: `sw st-${cls(k)}` }), `${label(k)} `, h('b', null, fmtInt(counts[k] || 0)))));
  return h('div', null, bar, legend);
}

function progressBar(p) {
  const total = p?.total || 0;
  const bar = h('div', { class: 'sbar thin', title: `${p?.done || 0} of ${total} sub-tasks done` });
  const parts = [['done', p?.done], ['review', p?.review], ['running', p?.running], ['blocked', p?.blocked], ['queued', p?.waiting]];
  let used = 0;
  for (const [k, v] of parts) {
    if (!v) continue;
    used += v;
    const seg = h('span', { class: `seg st-${k}` });
    seg.style.flexGrow = String(v);
    bar.append(seg);
  }
  if (total > used) { const rest = h('span', { class: 'seg empty' }); rest.style.flexGrow = String(total - used); bar.append(rest); }
  if (!total) bar.append(h('span', { class: 'seg empty' }));
  return bar;
}

function meter(used, max, testid) {
  const el = h('div', { class: 'meter', testid, title: `${used} of ${max}` });
  const bar = h('span', { class: used >= max && max > 0 ? 'full' : '' });
  bar.style.width = `${max > 0 ? Math.min(100, (used / max) * 100) : 0}%`;
  el.append(bar);
  return el;
}

// ---------------------------------------------------------------- overview

function kpi(title, value, { fmt = fmtInt, testid, href, cls: c, sub } = {}) {
  return h(href ? 'a' : 'div', { class: `kpi ${c || ''}`.trim(), href },
    h('div', { class: 'kpi-label' }, title),
    h('div', { class: 'kpi-value', testid, data: { value } }, fmt(value)),
    sub ? h('div', { class: 'kpi-sub' }, sub) : null);
}

function liveIndicator() {
  const dot = h('i', { class: 'dot' });
  const txt = h('span', null, 'connecting…');
  const el = h('span', { class: 'live', testid: 'live' }, dot, txt);
  return {
    el,
    ok(at) { el.className = 'live ok'; el.dataset.at = at; fill(txt, 'live · updated ', when(at)); },
    bad(msg) { el.className = 'live bad'; fill(txt, `stale: ${msg}`); },
  };
}

function poolRows(st) {
  const lag = new Map();
  for (const sv of st.streams || []) for (const c of sv.consumers || []) if (c.pool) lag.set(c.pool, (lag.get(c.pool) || 0) + (c.lag || 0));
  const pools = new Map((st.pools || []).map((p) => [p.pool, p]));
  for (const k of lag.keys()) if (!pools.has(k)) pools.set(k, { pool: k, backlog: 0, oldest_age_secs: 0 });
  return [...pools.values()].sort((a, b) => a.pool.localeCompare(b.pool)).map((p) => ({ ...p, lag: lag.get(p.pool) || 0 }));
}

function pageOverview(ctx) {
  const live = liveIndicator();
  const err = h('div');
  const body = h('div', { class: 'overview' });
  const ops = can('operator') ? h('div') : null;
  add(ctx.root, pageHead('Overview', live.el), err, body, ops);
  ctx.poll(2000, async () => {
    const streams = ops ? ctx.api('/v1/streams').catch((e) => e) : null;
    let ov;
    try {
      ov = await ctx.api('/v1/overview');
    } catch (e) {
      if (e.name !== 'AbortError') live.bad(e.message);
      throw e;
    }
    live.ok(ov.at || new Date().toISOString());
    const t = ov.tasks || {}, g = ov.goals || {};
    fill(body, 
      h('div', { class: 'kpis' },
        kpi('Queued', t.queued, { testid: 'overview-queued', href: '#/tasks?state=queued' }),
        kpi('Running', t.running, { testid: 'overview-running', href: '#/tasks?state=running', cls: 'c-running' }),
        kpi('Done', t.done, { testid: 'overview-done-total', href: '#/tasks?state=done', cls: 'c-done' }),
        kpi('Failed', t.failed, { testid: 'overview-failed-total', href: '#/tasks?state=failed', cls: t.failed ? 'c-failed' : '' }),
        kpi('Done, last minute', ov.done_last_minute, { testid: 'overview-done-minute' }),
        kpi('Failed, last hour', ov.failed_last_hour, { testid: 'overview-failed-hour', cls: ov.failed_last_hour ? 'c-failed' : '' }),
        kpi('Spend today', ov.spend_today_usd, { fmt: fmtUsd, testid: 'overview-spend', sub: 'UTC day' }),
        kpi('Tokens today', ov.tokens_today, { testid: 'overview-tokens' }),
        kpi('Waiting for a person', ov.waiting_for_person, { testid: 'overview-waiting', href: '#/goals', cls: ov.waiting_for_person ? 'c-blocked' : '' }),
        kpi('Employees', ov.employees, { testid: 'overview-employees', href: '#/employees' }),
        kpi('Schedules', ov.schedules, { testid: 'overview-schedules', href: '#/schedules' })),
      h('div', { class: 'cols2' },
        panel('Tasks by state', stateBar(t, TASK_STATES, (k) => `#/tasks?state=${k}`, 'tasks-by-state')),
        panel('Goals by state', stateBar(g, GOAL_STATES, () => '#/goals', 'goals-by-state'))),
      panel('Throughput: tasks finished per minute, last hour', throughputChart(ov.throughput || []),
        h('div', { class: 'legend' }, h('span', { class: 'chip' }, h('i', { class: 'sw st-done' }), 'done'),
          h('span', { class: 'chip' }, h('i', { class: 'sw st-failed' }), 'failed'))));
    if (ops) {
      const st = await streams;
      if (st instanceof Error) {
        if (st.name === 'AbortError') return;
        fill(ops, panel('Backlog and lag per pool', errorLine(st)));
      } else {
        const rows = poolRows(st);
        fill(ops, panel('Backlog and lag per pool',
          barChart(rows.map((p) => ({ label: p.pool, values: [p.backlog, p.lag] })),
            [{ name: 'backlog', cls: 'st-queued' }, { name: 'consumer lag', cls: 'st-running' }], { testid: 'pool-chart' }),
          table([
            { label: 'pool', cell: (p) => p.pool },
            { label: 'backlog', num: true, cell: (p) => fmtInt(p.backlog) },
            { label: 'lag', num: true, cell: (p) => fmtInt(p.lag) },
            { label: 'oldest', num: true, cell: (p) => (p.oldest_age_secs ? fmtSecs(p.oldest_age_secs) : '–') },
          ], rows, { testid: 'overview-pools', empty: 'No pool has work.' })));
      }
    }
  }, err);
}

// ---------------------------------------------------------------- streams

function pageStreams(ctx) {
  if (!needs(ctx, 'operator')) return;
  const live = liveIndicator();
  const err = h('div'), body = h('div');
  add(ctx.root, pageHead('Streams and consumers', live.el), err, body);
  ctx.poll(3000, async () => {
    const st = await ctx.api('/v1/streams');
    live.ok(st.at || new Date().toISOString());
    const consumers = (st.streams || []).flatMap((sv) => (sv.consumers || []).map((c) => ({ ...c, stream: sv.name })));
    const pools = poolRows(st);
    const dlq = Object.entries(st.dlq || {});
    fill(body, 
      panel('Streams', table([
        { label: 'stream', cell: (r) => h('b', null, r.name) },
        { label: 'messages', num: true, cell: (r) => fmtInt(r.messages) },
        { label: 'bytes', num: true, cell: (r) => fmtBytes(r.bytes) },
        { label: 'oldest message', num: true, cell: (r) => (r.messages ? fmtSecs(r.first_age_secs) : '–') },
        { label: 'newest message', num: true, cell: (r) => (r.messages ? fmtSecs(r.last_age_secs) : '–') },
        { label: 'consumers', num: true, cell: (r) => fmtInt((r.consumers || []).length) },
      ], st.streams || [], { testid: 'streams-table', rowTestid: 'stream-row' })),
      panel('Consumers', table([
        { label: 'stream', cell: (r) => r.stream },
        { label: 'consumer', cell: (r) => mono(r.name) },
        { label: 'pool', cell: (r) => r.pool || h('span', { class: 'dim' }, '–') },
        { label: 'pending', num: true, cell: (r) => fmtInt(r.pending) },
        { label: 'ack pending', num: true, cell: (r) => fmtInt(r.ack_pending) },
        { label: 'redelivered', num: true, cell: (r) => h('span', { class: r.redelivered ? 'warn' : '' }, fmtInt(r.redelivered)) },
        { label: 'waiting pulls', num: true, cell: (r) => fmtInt(r.waiting) },
        { label: 'lag', num: true, cell: (r) => h('span', { class: r.lag ? 'warn' : '' }, fmtInt(r.lag)) },
        { label: 'backlog age', num: true, cell: (r) => h('span', { class: r.backlog_age_secs > 60 ? 'bad' : '' }, r.backlog_age_secs ? fmtSecs(r.backlog_age_secs) : '–') },
      ], consumers, { testid: 'consumers-table', rowTestid: 'consumer-row' })),
      h('div', { class: 'cols2' },
        panel('Pools', barChart(pools.map((p) => ({ label: p.pool, values: [p.backlog, p.lag] })),
          [{ name: 'backlog', cls: 'st-queued' }, { name: 'consumer lag', cls: 'st-running' }]),
        table([
          { label: 'pool', cell: (p) => p.pool },
          { label: 'backlog', num: true, cell: (p) => fmtInt(p.backlog) },
          { label: 'oldest', num: true, cell: (p) => (p.oldest_age_secs ? fmtSecs(p.oldest_age_secs) : '–') },
        ], pools, { testid: 'pools-table' })),
        panel('Dead letters by source', table([
          { label: 'source', cell: ([k]) => (can('admin') ? h('a', { href: `#/dlq?source=${encodeURIComponent(k)}` }, k) : k) },
          { label: 'messages', num: true, cell: ([, v]) => h('span', { class: v ? 'warn' : '' }, fmtInt(v)) },
        ], dlq, { testid: 'dlq-sources' }))));
  }, err);
}

// ---------------------------------------------------------------- fleet

function pageFleet(ctx) {
  if (!needs(ctx, 'operator')) return;
  const live = liveIndicator();
  const err = h('div'), body = h('div');
  add(ctx.root, pageHead('Fleet', live.el), err, body);
  ctx.poll(3000, async () => {
    const ws = await ctx.api('/v1/workers');
    live.ok(new Date().toISOString());
    const slots = ws.reduce((a, w) => a + (w.slots || 0), 0), running = ws.reduce((a, w) => a + (w.running || 0), 0);
    fill(body, 
      h('div', { class: 'kpis' },
        kpi('Workers', ws.length, { testid: 'fleet-workers' }),
        kpi('Runs in flight', running, { testid: 'fleet-running', cls: 'c-running' }),
        kpi('Slots', slots, { testid: 'fleet-slots', sub: `${slots ? Math.round((running / slots) * 100) : 0}% in use` }),
        kpi('Containers active', ws.reduce((a, w) => a + (w.pool?.active || 0), 0)),
        kpi('Containers warm', ws.reduce((a, w) => a + (w.pool?.warm || 0), 0))),
      ws.length ? h('div', { class: 'workers' }, ws.map(workerCard)) : panel(null, h('p', { class: 'dim' }, 'No worker is reporting.')));
  }, err);
}

function workerCard(w) {
  const p = w.pool || {};
  const acq = [['warm', p.acquire_warm, 'st-done'], ['reuse', p.acquire_reuse, 'st-running'], ['cold', p.acquire_cold, 'st-blocked'], ['adopted', p.acquire_adopted, 'st-review']];
  const acqBar = h('div', { class: 'sbar thin' });
  for (const [k, v, c] of acq) if (v) { const seg = h('span', { class: `seg ${c}`, title: `${k}: ${v}` }); seg.style.flexGrow = String(v); acqBar.append(seg); }
  if (!acq.some(([, v]) => v)) acqBar.append(h('span', { class: 'seg empty' }));
  const kv = (k, v) => [h('dt', null, k), h('dd', null, v)];
  return h('article', { class: 'panel worker', testid: 'worker-card', data: { worker: w.worker_id } },
    h('h3', null, mono(w.worker_id), h('span', { class: 'dim small' }, ' reported ', when(w.at))),
    h('div', { class: 'chips' }, (w.pools || []).map((x) => h('span', { class: 'chip' }, x))),
    h('div', { class: 'slots' }, h('span', null, 'slots used ', h('b', null, `${w.running} / ${w.slots}`)), meter(w.running, w.slots, 'slots-meter')),
    h('dl', { class: 'kv' },
      kv('containers', `${fmtInt(p.active)} active, ${fmtInt(p.warm)} warm, ${fmtInt(p.waiting)} waiting`),
      kv('acquires', `${fmtInt(p.acquire_warm)} warm · ${fmtInt(p.acquire_reuse)} reuse · ${fmtInt(p.acquire_cold)} cold · ${fmtInt(p.acquire_adopted)} adopted`),
      kv('', acqBar),
      kv('removed', `${fmtInt(p.evicted)} evicted, ${fmtInt(p.reaped)} reaped`),
      kv('cold start', p.cold_starts ? `p50 ${fmtMs(p.cold_start_p50_ms)} · p99 ${fmtMs(p.cold_start_p99_ms)} · max ${fmtMs(p.cold_start_max_ms)} (${fmtInt(p.cold_starts)})` : '–')));
}

// ---------------------------------------------------------------- goals

function goalCard(g) {
  const pr = g.progress || {};
  return h('a', { class: 'card', href: `#/goals/${encodeURIComponent(g.id)}`, testid: 'goal-card', data: { id: g.id, state: g.state } },
    h('div', { class: 'card-title' }, trunc(g.title, 90)),
    progressBar(pr),
    h('div', { class: 'card-meta' },
      h('span', null, `${fmtInt(pr.done)}/${fmtInt(pr.total)} done`),
      h('span', null, fmtUsd(g.spent?.cost_usd)),
      g.priority ? h('span', null, `p${g.priority}`) : null,
      when(g.updated_at)));
}

function pageGoals(ctx) {
  const err = h('div'), board = h('div', { class: 'board', testid: 'goals-board' });
  const tools = [];
  if (can('submit')) tools.push(newGoalForm());
  add(ctx.root, pageHead('Goals', ...tools), err, board);
  ctx.poll(4000, async () => {
    const goals = await ctx.api('/v1/goals?limit=300');
    const by = Object.fromEntries(GOAL_STATES.map((st) => [st, []]));
    for (const g of goals) (by[g.state] ||= []).push(g);
    const show = GOAL_STATES.filter((st) => by[st].length || ['planning', 'running', 'blocked', 'done'].includes(st));
    fill(board, ...show.map((st) => h('div', { class: 'column', testid: 'goal-column', data: { state: st } },
      h('h2', null, badge(st), h('span', { class: 'count' }, fmtInt(by[st].length))),
      by[st].length ? by[st].map(goalCard) : h('p', { class: 'dim small' }, 'none'))));
  }, err);
}

function newGoalForm() {
  const title = h('input', { name: 'title', required: true, placeholder: 'What is wanted, in one line' });
  const acceptance = h('input', { name: 'acceptance', required: true, placeholder: 'How a person will judge it' });
  const description = h('textarea', { name: 'description', rows: 3, placeholder: 'Everything the planner should know' });
  const usd = h('input', { name: 'budget', type: 'number', min: '0', step: '0.01', placeholder: 'budget USD (optional)' });
  const approve = h('input', { type: 'checkbox', name: 'approval' });
  const submit = actionButton('Submit goal', 'goal-submit', async () => {
    if (!title.value.trim() || !acceptance.value.trim()) throw new Error('A goal needs a title and acceptance criteria.');
    const body = { title: title.value.trim(), acceptance: acceptance.value.trim(), description: description.value, require_plan_approval: approve.checked };
    if (usd.value) body.budget = { cost_usd: +usd.value };
    const r = await api('/v1/goals', { body });
    location.hash = `#/goals/${encodeURIComponent(r.id)}`;
  }, { kind: 'primary' });
  return h('details', { class: 'popover' }, h('summary', { class: 'btn' }, 'New goal…'),
    h('div', { class: 'form' }, title, acceptance, description, usd, h('label', null, approve, ' a person approves the plan first'), submit));
}

// Sub-tasks as a left-to-right graph, layered by dependency depth.
function goalGraph(subtasks) {
  const NW = 172, NH = 54, GX = 48, GY = 14, PAD = 12;
  const byKey = new Map(subtasks.map((t) => [t.key, t]));
  const depth = new Map(), visiting = new Set();
  const d = (k) => {
    if (depth.has(k)) return depth.get(k);
    if (visiting.has(k)) return 0;
    visiting.add(k);
    let v = 0;
    for (const p of byKey.get(k)?.depends_on || []) if (byKey.has(p)) v = Math.max(v, d(p) + 1);
    visiting.delete(k);
    depth.set(k, v);
    return v;
  };
  const cols = [];
  for (const t of subtasks) (cols[d(t.key)] ||= []).push(t);
  const pos = new Map();
  cols.forEach((col = [], c) => {
    if (c > 0) {
      const bary = (t) => {
        const rs = (t.depends_on || []).map((k) => pos.get(k)?.r).filter((r) => r != null);
        return rs.length ? rs.reduce((a, b) => a + b, 0) / rs.length : 0;
      };
      col.sort((a, b) => bary(a) - bary(b));
    }
    col.forEach((t, r) => pos.set(t.key, { c, r }));
  });
  const rowsMax = Math.max(1, ...cols.map((c) => (c ? c.length : 0)));
  const W = PAD * 2 + cols.length * NW + (cols.length - 1) * GX;
  const H = PAD * 2 + rowsMax * NH + (rowsMax - 1) * GY;
  const xy = (k) => {
    const { c, r } = pos.get(k);
    const off = ((rowsMax - cols[c].length) * (NH + GY)) / 2;
    return { x: PAD + c * (NW + GX), y: PAD + off + r * (NH + GY) };
  };
  const mid = `arrow-${Math.random().toString(36).slice(2)}`;
  // Up to ~8 layers shrink to fit the panel; wider plans scroll.
  const root = s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, class: `graph${W > 1800 ? ' wide' : ''}`, testid: 'goal-graph', role: 'img', 'aria-label': 'Sub-task dependency graph' },
    s('defs', null, s('marker', { id: mid, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' },
      s('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrowhead' }))));
  for (const t of subtasks) {
    for (const k of t.depends_on || []) {
      if (!byKey.has(k)) continue;
      const a = xy(k), b = xy(t.key);
      const x1 = a.x + NW, y1 = a.y + NH / 2, x2 = b.x - 2, y2 = b.y + NH / 2;
      root.append(s('path', {
        d: `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}`,
        class: `edge${byKey.get(k).state === 'done' ? ' edge-done' : ''}`, 'marker-end': `url(#${mid})`, testid: 'graph-edge',
      }));
    }
  }
  for (const t of subtasks) {
    const { x, y } = xy(t.key);
    const g = s('g', { class: `graph-node st-${cls(t.state)}`, testid: 'graph-node', transform: `translate(${x},${y})`, tabindex: 0, role: 'link', data: { key: t.key, state: t.state, id: t.id } },
      s('title', null, `${t.key}: ${t.title}\nrole ${t.role} · ${t.state} · attempt ${t.attempt}${t.reworks ? ` · ${t.reworks} reworks` : ''}${(t.depends_on || []).length ? `\nafter ${t.depends_on.join(', ')}` : ''}`),
      s('rect', { width: NW, height: NH, rx: 7 }),
      s('text', { x: 10, y: 19, class: 'n-key' }, trunc(t.key, 14)),
      s('text', { x: NW - 10, y: 19, class: 'n-state', 'text-anchor': 'end' }, label(t.state)),
      s('text', { x: 10, y: 40, class: 'n-title' }, trunc(t.title, 24)));
    const go = () => { if (t.id) location.hash = `#/tasks/${encodeURIComponent(t.id)}`; };
    g.addEventListener('click', go);
    g.addEventListener('keydown', (e) => { if (e.key === 'Enter') go(); });
    root.append(g);
  }
  return root;
}

function pageGoal(ctx, id) {
  const err = h('div');
  const top = h('div'), body = h('div');
  add(ctx.root, err, top, body);
  let topKey = null;
  const note = h('textarea', { rows: 2, placeholder: 'A note (given to the next run; optional)', testid: 'goal-note' });
  const bTokens = h('input', { type: 'number', min: '0', placeholder: 'tokens' });
  const bUsd = h('input', { type: 'number', min: '0', step: '0.01', placeholder: 'USD' });
  const bWall = h('input', { type: 'number', min: '0', placeholder: 'wall seconds' });
  const path = `/v1/goals/${encodeURIComponent(id)}`;
  let view = null;
  const act = async (what, body) => {
    view = await ctx.api(`${path}/${what}`, { method: 'POST', body: body ?? {} });
    toast(`Goal: ${what} done; it is ${label(view.state)} now.`);
    draw(view);
  };
  const budget = () => {
    const b = {};
    if (bTokens.value) b.tokens = +bTokens.value;
    if (bUsd.value) b.cost_usd = +bUsd.value;
    if (bWall.value) b.wall_secs = +bWall.value;
    return Object.keys(b).length ? b : undefined;
  };
  const draw = (g) => {
    const key = `${g.state}|${JSON.stringify(g.blocked)}`;
    if (key !== topKey) {
      topKey = key;
      fill(top, goalTop(g, { act, note, budget, budgetInputs: [bTokens, bUsd, bWall] }));
    }
    fill(body, goalBody(g));
  };
  // Refreshed while the goal is not final.
  ctx.poll(2500, async () => {
    view = await ctx.api(path);
    draw(view);
    return !FINAL.has(view.state);
  }, err);
}

function goalTop(g, { act, note, budget, budgetInputs }) {
  const acts = [];
  if (can('submit') && !FINAL.has(g.state)) {
    if (g.state === 'awaiting_approval') acts.push(actionButton('Approve plan', 'goal-approve', () => act('approve'), { kind: 'primary' }));
    if (g.state === 'running') acts.push(actionButton('Pause', 'goal-pause', () => act('pause')));
    if (g.state === 'paused') acts.push(actionButton('Resume', 'goal-resume', () => act('resume'), { kind: 'primary' }));
    if (['awaiting_approval', 'running', 'paused'].includes(g.state)) acts.push(actionButton('Replan', 'goal-replan', () => act('replan', { note: note.value }), { confirm: 'Replan: sure?' }));
    acts.push(actionButton('Cancel goal', 'goal-cancel', () => act('cancel', { note: note.value }), { confirm: 'Cancel: sure?', kind: 'danger' }));
  }
  const b = g.blocked;
  let blocked = null;
  if (b) {
    const decide = can('submit') && g.state === 'blocked'
      ? h('div', { class: 'decide', testid: 'goal-decide' },
        h('div', { class: 'dim small' }, 'A person decides: the note goes to the next run; a larger budget resumes a goal blocked on its budget.'),
        h('div', { class: 'row' }, ...budgetInputs),
        h('div', { class: 'row' },
          actionButton('Approve the work', 'decide-approve', () => act('decide', { action: 'approve', note: note.value, budget: budget() }), { kind: 'primary' }),
          actionButton('Retry', 'decide-retry', () => act('decide', { action: 'retry', note: note.value, budget: budget() })),
          actionButton('Replan', 'decide-replan', () => act('decide', { action: 'replan', note: note.value })),
          actionButton('Fail it', 'decide-fail', () => act('decide', { action: 'fail', note: note.value }), { confirm: 'Fail: sure?', kind: 'danger' }),
          actionButton('Cancel it', 'decide-cancel', () => act('decide', { action: 'cancel', note: note.value }), { confirm: 'Cancel: sure?', kind: 'danger' })))
      : null;
    blocked = h('section', { class: 'panel blocked', testid: 'goal-blocked' },
      h('h2', null, 'Waits for a person: ', label(b.kind)),
      h('p', { class: 'reason', testid: 'goal-blocked-reason' }, b.reason),
      b.task_id ? h('p', null, 'About sub-task ', link('tasks', b.task_id)) : null,
      (b.details || []).length ? h('ul', { class: 'details' }, b.details.map((x) => h('li', null, x))) : null,
      decide);
  }
  return h('div', null,
    h('header', { class: 'page-head' },
      h('div', null, h('div', { class: 'crumbs' }, h('a', { href: '#/goals' }, 'Goals'), ' / ', mono(shortId(g.id), g.id)),
        h('h1', { testid: 'goal-title' }, g.title, ' ', badge(g.state, 'goal-state'))),
      h('div', { class: 'page-tools' }, ...acts)),
    acts.length ? h('div', { class: 'note-row' }, note) : null,
    blocked);
}

function goalBody(g) {
  const p = g.progress || {};
  const lim = g.budget || {};
  const subs = g.subtasks || [];
  // A plan not yet written out as sub-tasks is drawn from the plan itself.
  const nodes = subs.length ? subs : (g.plan?.subtasks || []).map((t) => ({ ...t, id: null, state: 'pending', attempt: 0, reworks: 0 }));
  return h('div', null,
    h('div', { class: 'kpis' },
      kpi('Sub-tasks done', p.done, { testid: 'goal-done', sub: `of ${fmtInt(p.total)}` }),
      kpi('Running', p.running, { cls: 'c-running' }),
      kpi('In review', p.review),
      kpi('Waiting', p.waiting),
      kpi('Blocked', p.blocked, { cls: p.blocked ? 'c-blocked' : '' }),
      kpi('Spent', g.spent?.cost_usd, { fmt: fmtUsd, testid: 'goal-spent', sub: lim.cost_usd != null ? `of ${fmtUsd(lim.cost_usd)}` : 'no USD budget' }),
      kpi('Tokens', g.spent?.tokens, { sub: lim.tokens != null ? `of ${fmtInt(lim.tokens)}` : 'no token budget' }),
      kpi('Updated', null, { fmt: () => when(g.updated_at) })),
    h('div', { class: 'progress-row' }, progressBar(p)),
    panel('Plan', nodes.length ? h('div', { class: 'graph-wrap' }, goalGraph(nodes)) : h('p', { class: 'dim', testid: 'goal-no-plan' }, g.state === 'planning' ? 'A planner is making the plan…' : 'No plan yet.'),
      g.plan?.summary ? h('p', { class: 'summary' }, g.plan.summary) : null),
    panel('Sub-tasks', table([
      { label: 'key', cell: (t) => h('b', null, t.key) },
      { label: 'title', cell: (t) => trunc(t.title, 80) },
      { label: 'role', cell: (t) => t.role },
      { label: 'state', cell: (t) => badge(t.state) },
      { label: 'attempt', num: true, cell: (t) => fmtInt(t.attempt) },
      { label: 'reworks', num: true, cell: (t) => fmtInt(t.reworks) },
      { label: 'after', cell: (t) => (t.depends_on || []).join(', ') || h('span', { class: 'dim' }, '–') },
      { label: 'reviews', cell: (t) => (t.reviews || []).map((r) => h('span', { class: `badge ${r.approve ? 'st-done' : 'st-failed'}`, title: [r.summary, ...(r.issues || [])].join('\n') }, `${r.score}/10`)) },
      { label: 'task', cell: (t) => link('tasks', t.id) },
      { label: 'error', cell: (t) => (t.error ? h('span', { class: 'bad', title: t.error }, trunc(t.error, 60)) : '') },
    ], subs, { testid: 'subtasks-table', rowTestid: 'subtask-row', empty: 'No sub-tasks yet.' })),
    h('div', { class: 'cols2' },
      panel('Goal', h('dl', { class: 'kv' },
        h('dt', null, 'description'), h('dd', { class: 'prose' }, g.description || '–'),
        h('dt', null, 'acceptance'), h('dd', { class: 'prose' }, g.acceptance || '–'),
        h('dt', null, 'priority'), h('dd', null, String(g.priority ?? 0)),
        h('dt', null, 'budget'), h('dd', null, [lim.cost_usd != null ? fmtUsd(lim.cost_usd) : null, lim.tokens != null ? `${fmtInt(lim.tokens)} tokens` : null, lim.wall_secs != null ? fmtSecs(lim.wall_secs) : null].filter(Boolean).join(' · ') || 'none'),
        h('dt', null, 'tasks'), h('dd', null, h('a', { href: `#/tasks?goal_id=${encodeURIComponent(g.id)}` }, 'every task of this goal')),
        h('dt', null, 'created'), h('dd', null, when(g.created_at)))),
      panel('Deliverable', g.deliverable ? jsonBlock(g.deliverable, 'goal-deliverable') : h('p', { class: 'dim' }, 'Not delivered yet.'))));
}

// ---------------------------------------------------------------- employees

function pageEmployees(ctx) {
  const err = h('div'), body = h('div');
  add(ctx.root, pageHead('Employees'), err, body);
  const reload = async () => {
    const [emps, board] = await Promise.all([ctx.api('/v1/employees'), ctx.api('/v1/leaderboard')]);
    const list = emps.employees || [];
    const actions = (e) => {
      const out = [];
      if (can('submit') && e.state === 'active') out.push(actionButton('Pause', 'employee-pause', async () => { await ctx.api(`/v1/employees/${encodeURIComponent(e.id)}/pause`, { method: 'POST', body: {} }); toast(`${e.name} paused.`); await reload(); }));
      if (can('submit') && e.state === 'paused') out.push(actionButton('Resume', 'employee-resume', async () => { await ctx.api(`/v1/employees/${encodeURIComponent(e.id)}/resume`, { method: 'POST', body: {} }); toast(`${e.name} resumed.`); await reload(); }));
      if (can('admin') && e.state !== 'offboarded') out.push(actionButton('Offboard', 'employee-offboard', async () => { await ctx.api(`/v1/employees/${encodeURIComponent(e.id)}`, { method: 'DELETE' }); toast(`${e.name} offboarded.`); await reload(); }, { confirm: 'Offboard: sure?', kind: 'danger' }));
      return out;
    };
    fill(body, 
      panel('Leaderboard',
        barChart(board.map((r) => ({ label: `${r.name} (${r.role})`, values: [r.score] })), [{ name: 'score', cls: 'st-running' }], { testid: 'leaderboard-chart' }),
        table([
          { label: '#', num: true, cell: (r) => String(board.indexOf(r) + 1) },
          { label: 'employee', cell: (r) => h('a', { href: `#/tasks?employee_id=${encodeURIComponent(r.employee_id)}` }, r.name) },
          { label: 'role', cell: (r) => r.role },
          { label: 'score', num: true, cell: (r) => h('b', null, fmtInt(r.score)) },
          { label: 'approved', num: true, cell: (r) => fmtInt(r.approved) },
          { label: 'rejected', num: true, cell: (r) => fmtInt(r.rejected) },
          { label: 'mean review', num: true, cell: (r) => fmtNum(r.mean_review) },
          { label: 'sub-tasks done', num: true, cell: (r) => fmtInt(r.subtasks_done) },
          { label: 'cost / sub-task', num: true, cell: (r) => fmtUsd(r.cost_usd_per_subtask) },
          { label: 'tokens / sub-task', num: true, cell: (r) => fmtInt(r.tokens_per_subtask) },
          { label: 'time / run', num: true, cell: (r) => fmtSecs(r.secs_per_run) },
        ], board, { testid: 'leaderboard', rowTestid: 'leaderboard-row', empty: 'No employee has a score yet.' })),
      panel('Employees', table([
        { label: 'name', cell: (e) => h('b', null, e.name) },
        { label: 'role', cell: (e) => e.role },
        { label: 'state', cell: (e) => badge(e.state) },
        { label: 'id', cell: (e) => mono(shortId(e.id), e.id) },
        { label: 'quotas', cell: (e) => Object.entries(e.quotas || {}).map(([k, v]) => `${label(k)} ${v}`).join(', ') || h('span', { class: 'dim' }, 'the role’s') },
        { label: 'hired', cell: (e) => when(e.created_at) },
        { label: 'tasks', cell: (e) => h('a', { href: `#/tasks?employee_id=${encodeURIComponent(e.id)}` }, 'tasks') },
        ...(can('submit') ? [{ label: '', cell: actions }] : []),
      ], list, { testid: 'employees', rowTestid: 'employee-row', empty: 'No employee is hired.' })));
  };
  ctx.poll(10000, reload, err);
}

// ---------------------------------------------------------------- feed

function describeTask(ev) {
  switch (ev.kind) {
    case 'state': return [badge(ev.from || 'new'), ' → ', badge(ev.to), ev.reason ? h('span', { class: 'dim' }, ` ${trunc(ev.reason, 160)}`) : null];
    case 'output': return [h('span', { class: 'chip' }, ev.stream), ' ', h('span', { class: 'mono' }, trunc(ev.data, 200))];
    case 'agent': {
      const a = ev.event || {};
      if (a.event === 'message_delta') return [h('span', { class: 'chip' }, 'says'), ' ', h('span', { class: 'msg' }, trunc(a.text, 300))];
      if (a.event === 'tool_call') return [h('span', { class: 'chip' }, 'tool'), ' ', h('b', null, a.name), ' ', h('span', { class: 'mono dim' }, trunc(a.arguments, 160))];
      if (a.event === 'tool_result') return [h('span', { class: `chip ${a.ok ? '' : 'bad'}` }, a.ok ? 'result' : 'tool failed'), ' ', h('b', null, a.name), ' ', h('span', { class: 'mono dim' }, trunc(a.output, 160))];
      if (a.event === 'usage') return [h('span', { class: 'chip' }, 'usage'), ` ${fmtInt(a.prompt_tokens)} prompt + ${fmtInt(a.completion_tokens)} completion tokens`];
      return [h('span', { class: 'chip' }, a.event || 'agent')];
    }
    default: return [h('span', { class: 'chip' }, ev.kind || 'event')];
  }
}

function pageFeed(ctx) {
  const status = h('span', { class: 'live', testid: 'feed-status' }, h('i', { class: 'dot' }), 'connecting…');
  const setStatus = (c, txt) => { status.className = `live ${c}`; fill(status, h('i', { class: 'dot' }), txt); };
  const filter = h('input', { type: 'search', placeholder: 'filter rows', testid: 'feed-filter' });
  const paused = h('input', { type: 'checkbox' });
  const count = h('span', { class: 'dim small', testid: 'feed-count' }, '0 events');
  const rows = h('tbody', { testid: 'feed-rows' });
  const clear = h('button', { type: 'button', class: 'btn', onclick: () => { fill(rows); n = 0; count.textContent = '0 events'; } }, 'Clear');
  add(ctx.root, pageHead('Live activity', status, filter, h('label', { class: 'small' }, paused, ' pause'), clear, count),
    h('div', { class: 'table-wrap' }, h('table', { class: 'grid feed', testid: 'feed-table' },
      h('thead', null, h('tr', null, h('th', null, 'time'), h('th', null, 'kind'), h('th', null, 'task / goal'), h('th', null, 'what'))), rows)));
  let n = 0, last = null;
  const matches = (tr) => !filter.value || tr.textContent.toLowerCase().includes(filter.value.toLowerCase());
  filter.addEventListener('input', () => { for (const tr of rows.children) tr.hidden = !matches(tr); });
  const addRow = (type, ev) => {
    if (paused.checked) return;
    // Streamed model text comes in many small deltas: one row per message.
    const a = ev.event;
    if (type === 'task' && ev.kind === 'agent' && a?.event === 'message_delta' && last && last.key === `${ev.task_id}|${ev.attempt}` && last.tr === rows.firstChild) {
      last.text += a.text || '';
      last.msg.textContent = trunc(last.text, 300);
      return;
    }
    const who = type === 'goal'
      ? [link('goals', ev.goal_id), ev.task_id ? [' ', link('tasks', ev.task_id)] : null]
      : [link('tasks', ev.task_id), ev.goal_id ? [' ', h('span', { class: 'dim' }, 'of '), link('goals', ev.goal_id)] : null];
    const what = type === 'goal'
      ? [h('span', { class: 'chip' }, ev.kind), ' ', ev.to ? [badge(ev.from || 'new'), ' → ', badge(ev.to), ' '] : null, ev.reason ? trunc(ev.reason, 200) : null]
      : type === 'lagged' ? [h('span', { class: 'warn' }, ev.text)] : describeTask(ev);
    const tr = h('tr', { testid: 'feed-row', data: { type, kind: ev.kind, task: ev.task_id, goal: ev.goal_id } },
      h('td', { class: 'nowrap' }, ev.at ? when(ev.at) : ''),
      h('td', null, h('span', { class: `chip k-${cls(type)}` }, type === 'task' ? `task ${ev.kind || ''}` : type)),
      h('td', { class: 'nowrap' }, who),
      h('td', null, what));
    tr.hidden = !matches(tr);
    rows.prepend(tr);
    last = type === 'task' && ev.kind === 'agent' && a?.event === 'message_delta'
      ? { key: `${ev.task_id}|${ev.attempt}`, tr, text: a.text || '', msg: tr.querySelector('.msg') } : null;
    while (rows.children.length > FEED_CAP) rows.lastChild.remove();
    n++;
    count.textContent = `${fmtInt(n)} events${n > FEED_CAP ? `, newest ${FEED_CAP} shown` : ''}`;
  };
  (async () => {
    let backoff = 1000;
    ctx.ready();
    while (ctx.alive) {
      try {
        await readSSE('/v1/feed', {
          signal: ctx.signal,
          onOpen: () => setStatus('ok', 'live'),
          onEvent: (type, data) => {
            backoff = 1000;
            if (type === 'lagged') return addRow('lagged', { text: data, at: new Date().toISOString() });
            if (type !== 'task' && type !== 'goal') return;
            let ev;
            try { ev = JSON.parse(data); } catch { return; }
            if (ev && typeof ev === 'object') addRow(type, ev);
          },
        });
        if (!ctx.alive) return;
        setStatus('bad', 'the feed ended; reconnecting…');
        await ctx.sleep(300);
      } catch (e) {
        if (!ctx.alive || e.name === 'AbortError') return;
        setStatus('bad', `${e.message} Reconnecting in ${Math.round(backoff / 1000)} s.`);
        await ctx.sleep(backoff);
        backoff = Math.min(backoff * 2, 30000);
      }
    }
  })();
}

// ---------------------------------------------------------------- schedules

function pageSchedules(ctx) {
  const err = h('div'), body = h('div');
  add(ctx.root, pageHead('Schedules'), err, body);
  ctx.poll(10000, async () => {
    const list = await ctx.api('/v1/schedules?limit=500');
    fill(body, panel(null, table([
      { label: 'name', cell: (r) => h('a', { href: `#/schedules/${encodeURIComponent(r.id)}` }, r.name) },
      { label: 'cron', cell: (r) => mono(r.cron) },
      { label: 'zone', cell: (r) => r.timezone },
      { label: 'starts', cell: (r) => (r.goal ? 'goal' : r.task ? `task ${r.task.role ?? ''}` : '–') },
      { label: 'state', cell: (r) => badge(r.paused ? 'paused' : 'active') },
      { label: 'next fire', cell: (r) => (r.next_fires?.[0] ? when(r.next_fires[0].utc) : h('span', { class: 'dim' }, 'none left')) },
      { label: 'fired', num: true, cell: (r) => fmtInt(r.stats?.fired) },
      { label: 'skipped', num: true, cell: (r) => fmtInt(r.stats?.skipped) },
      { label: 'missed', num: true, cell: (r) => h('span', { class: r.stats?.missed ? 'warn' : '' }, fmtInt(r.stats?.missed)) },
      { label: 'failed', num: true, cell: (r) => h('span', { class: r.stats?.failed ? 'bad' : '' }, fmtInt(r.stats?.failed)) },
      { label: 'lateness p50 / p99', num: true, cell: (r) => `${fmtMs(r.stats?.lateness_p50_ms)} / ${fmtMs(r.stats?.lateness_p99_ms)}` },
    ], list, { testid: 'schedules', rowTestid: 'schedule-row', rowData: (r) => ({ id: r.id }), empty: 'No schedule yet.' })));
  }, err);
}

function pageSchedule(ctx, id) {
  const err = h('div'), top = h('div'), body = h('div');
  const outcome = h('select', null, ['', 'fired', 'skipped', 'missed', 'buffered', 'failed'].map((o) => h('option', { value: o }, o || 'every outcome')));
  const fires = h('div');
  add(ctx.root, err, top, body, panel('Fires', h('div', { class: 'filters' }, outcome), fires));
  const path = `/v1/schedules/${encodeURIComponent(id)}`;
  const act = async (what) => {
    const r = await ctx.api(`${path}/${what}`, { method: 'POST', body: {} });
    toast(what === 'trigger' ? `Triggered: ${(r?.fires || []).map((f) => f.outcome).join(', ') || 'nothing'}.` : `Schedule ${what}d.`);
    await load();
  };
  const load = async () => {
    const q = outcome.value ? `?outcome=${encodeURIComponent(outcome.value)}&limit=200` : '?limit=200';
    const [sc, fr] = await Promise.all([ctx.api(path), ctx.api(`${path}/fires${q}`)]);
    const acts = can('submit') ? [
      sc.paused ? actionButton('Resume', 'schedule-resume', () => act('resume'), { kind: 'primary' }) : actionButton('Pause', 'schedule-pause', () => act('pause')),
      actionButton('Trigger now', 'schedule-trigger', () => act('trigger'), { confirm: 'Fire now: sure?' }),
    ] : [];
    fill(top, h('header', { class: 'page-head' },
      h('div', null, h('div', { class: 'crumbs' }, h('a', { href: '#/schedules' }, 'Schedules'), ' / ', mono(shortId(sc.id), sc.id)),
        h('h1', { testid: 'schedule-name' }, sc.name, ' ', badge(sc.paused ? 'paused' : 'active'))),
      h('div', { class: 'page-tools' }, ...acts)));
    const st = sc.stats || {};
    fill(body, 
      h('div', { class: 'kpis' },
        kpi('Fired', st.fired, { cls: 'c-done' }), kpi('Skipped', st.skipped), kpi('Missed', st.missed, { cls: st.missed ? 'c-blocked' : '' }),
        kpi('Buffered', st.buffered), kpi('Failed', st.failed, { cls: st.failed ? 'c-failed' : '' }),
        kpi('Lateness p50', st.lateness_p50_ms, { fmt: fmtMs }), kpi('Lateness p99', st.lateness_p99_ms, { fmt: fmtMs })),
      h('div', { class: 'cols2' },
        panel('Schedule', h('dl', { class: 'kv' },
          h('dt', null, 'cron'), h('dd', null, mono(sc.cron)),
          h('dt', null, 'zone'), h('dd', null, sc.timezone),
          h('dt', null, 'overlap'), h('dd', null, label(sc.overlap)),
          h('dt', null, 'catch-up'), h('dd', null, `${sc.catchup}, window ${fmtSecs(sc.catchup_window_secs)}`),
          h('dt', null, 'jitter'), h('dd', null, sc.jitter_ms ? `${fmtMs(sc.jitter_ms)} (this one: +${fmtMs(sc.offset_ms)})` : 'none'),
          h('dt', null, 'window'), h('dd', null, sc.start_at ? fmtTime(sc.start_at) : 'now', ' → ', sc.end_at ? fmtTime(sc.end_at) : 'open'),
          h('dt', null, 'starts a'), h('dd', null, sc.goal ? 'goal' : 'task'),
          h('dt', null, 'template'), h('dd', null, jsonBlock(sc.goal ?? sc.task)))),
        panel('Next fires', table([
          { label: `in ${sc.timezone}`, cell: (f) => mono(f.local) },
          { label: 'UTC', cell: (f) => mono(f.utc) },
          { label: '', cell: (f) => when(f.utc) },
        ], sc.next_fires || [], { testid: 'next-fires', empty: 'No fire time is left.' }))));
    fill(fires, table([
      { label: 'fire time', cell: (f) => h('span', { title: f.fire_at }, fmtTime(f.fire_at)) },
      { label: 'kind', cell: (f) => f.kind },
      { label: 'outcome', cell: (f) => badge(f.outcome) },
      { label: 'started', cell: (f) => (f.task_id ? link('tasks', f.task_id) : f.goal_id ? link('goals', f.goal_id) : '') },
      { label: 'lateness', num: true, cell: (f) => fmtMs(f.lateness_ms) },
      { label: 'reason', cell: (f) => f.reason || '' },
      { label: 'decided', cell: (f) => when(f.decided_at) },
    ], fr.fires || [], { testid: 'fires', rowTestid: 'fire-row', empty: 'No fire yet.' }));
  };
  outcome.addEventListener('change', () => load().catch((e) => fill(err, errorLine(e))));
  ctx.poll(5000, load, err);
}

// ---------------------------------------------------------------- dead letters

function isoOf(input) {
  if (!input.value) return undefined;
  const d = new Date(input.value);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
}

// Follow a task until it is final, showing its state in el.
async function followTask(ctx, id, el) {
  for (;;) {
    try {
      const t = await ctx.api(`/v1/tasks/${encodeURIComponent(id)}?wait=15`);
      fill(el, badge(t.state));
      el.dataset.state = t.state;
      if (FINAL.has(t.state)) return;
    } catch (e) {
      if (!ctx.alive || e.name === 'AbortError') return;
      fill(el, h('span', { class: 'bad', title: e.message }, 'unknown'));
      await ctx.sleep(2000);
    }
    if (!ctx.alive) return;
  }
}

function pageDlq(ctx, params) {
  if (!needs(ctx, 'admin')) return;
  const source = h('select', { testid: 'dlq-source' }, ['', 'intake', 'work', 'loop'].map((x) => h('option', { value: x }, x || 'every source')));
  const status = h('select', { testid: 'dlq-status' }, ['open', 'replayed', 'discarded', ''].map((x) => h('option', { value: x }, x || 'any status')));
  const since = h('input', { type: 'datetime-local', step: 1, title: 'since' });
  const until = h('input', { type: 'datetime-local', step: 1, title: 'until' });
  source.value = params.get('source') || '';
  status.value = params.get('status') ?? 'open';
  const err = h('div'), body = h('div'), bulkOut = h('div');
  const filter = () => ({ source: source.value || undefined, since: isoOf(since), until: isoOf(until) });
  const bulk = (what) => async () => {
    const r = await ctx.api(`/v1/dlq/${what}`, { method: 'POST', body: filter() });
    const refused = r.refused || [];
    fill(bulkOut, h('div', { class: refused.length ? 'error' : 'okline' },
      `${fmtInt((r.done || []).length)} ${what === 'replay' ? 'replayed' : 'discarded'}, ${fmtInt(refused.length)} refused.`,
      refused.length ? h('ul', null, refused.map((x) => h('li', null, `#${x.id}: ${x.error}`))) : null));
    await load();
  };
  const tools = [h('button', { type: 'button', class: 'btn', onclick: () => load().catch(show) }, 'Refresh')];
  if (can('admin')) {
    tools.push(actionButton('Replay all matching', 'dlq-replay-all', bulk('replay'), { confirm: 'Replay every open one: sure?' }),
      actionButton('Discard all matching', 'dlq-discard-all', bulk('discard'), { confirm: 'Discard every open one: sure?', kind: 'danger' }));
  }
  add(ctx.root, pageHead('Dead letters', ...tools),
    h('div', { class: 'filters' }, h('label', null, 'source ', source), h('label', null, 'status ', status), h('label', null, 'since ', since), h('label', null, 'until ', until)),
    err, bulkOut, body);
  const show = (e) => { if (e.name !== 'AbortError') fill(err, errorLine(e)); };
  const following = new Map();
  const resultCell = (e) => {
    if (e.goal_id) return link('goals', e.goal_id);
    if (!e.task_id) return '';
    let el = following.get(e.task_id);
    if (!el) {
      el = h('span', { testid: 'dlq-task-state', data: { task: e.task_id } }, h('span', { class: 'dim' }, '…'));
      following.set(e.task_id, el);
      followTask(ctx, e.task_id, el);
    }
    return h('span', { class: 'nowrap' }, link('tasks', e.task_id), ' ', el);
  };
  const rowOf = (e) => {
    const statusCell = h('td', null, badge(e.status, 'dlq-entry-status'));
    const result = h('td', null, resultCell(e));
    const actions = h('td', { class: 'nowrap' });
    const done = (out) => {
      Object.assign(e, out);
      fill(statusCell, badge(e.status, 'dlq-entry-status'));
      fill(result, resultCell(e));
      fill(actions);
    };
    if (can('admin') && e.status === 'open') {
      actions.append(
        actionButton('Replay', 'dlq-replay', async () => { done(await ctx.api(`/v1/dlq/${e.id}/replay`, { method: 'POST', body: {} })); toast(`Dead letter ${e.id} replayed.`); }, { kind: 'primary' }),
        actionButton('Discard', 'dlq-discard', async () => { done(await ctx.api(`/v1/dlq/${e.id}/discard`, { method: 'POST', body: {} })); toast(`Dead letter ${e.id} discarded.`); }, { confirm: 'Discard: sure?', kind: 'danger' }));
    }
    return h('tr', { testid: 'dlq-row', data: { id: e.id, status: e.status } },
      h('td', { class: 'num' }, mono(String(e.id))),
      h('td', { class: 'nowrap' }, when(e.at)),
      h('td', null, h('span', { class: 'chip' }, e.source)),
      h('td', null, mono(trunc(e.subject, 48), e.subject)),
      h('td', { class: 'reason' }, e.reason),
      statusCell, result,
      h('td', null, h('details', null, h('summary', null, 'payload'), jsonBlock(e.payload), h('div', { class: 'dim small' }, 'headers'), jsonBlock(e.headers))),
      actions);
  };
  const load = async () => {
    const q = new URLSearchParams();
    const f = filter();
    for (const [k, v] of Object.entries(f)) if (v) q.set(k, v);
    if (status.value) q.set('status', status.value);
    q.set('limit', '200');
    const r = await ctx.api(`/v1/dlq?${q}`);
    fill(err);
    const entries = r.entries || [];
    fill(body, h('div', { class: 'table-wrap' }, h('table', { class: 'grid', testid: 'dlq-table' },
      h('thead', null, h('tr', null, ['id', 'when', 'source', 'subject', 'reason', 'status', 'became', 'message', ''].map((x) => h('th', null, x)))),
      h('tbody', null, entries.length ? entries.map(rowOf) : h('tr', null, h('td', { class: 'empty', colSpan: 9 }, 'No dead letter matches.'))))));
    ctx.ready();
  };
  for (const el of [source, status, since, until]) el.addEventListener('change', () => load().catch(show));
  load().catch(show);
}

// ---------------------------------------------------------------- audit

function pageAudit(ctx) {
  if (!needs(ctx, 'admin')) return;
  const f = {
    action: h('input', { placeholder: 'action, e.g. memory.set', testid: 'audit-action' }),
    employee: h('input', { placeholder: 'employee id' }),
    outcome: h('select', null, ['', 'allowed', 'denied', 'failed'].map((o) => h('option', { value: o }, o || 'any outcome'))),
    since: h('input', { type: 'datetime-local', step: 1 }),
    until: h('input', { type: 'datetime-local', step: 1 }),
  };
  const err = h('div'), rows = h('tbody'), more = h('div');
  let seen = new Set(), oldest = null;
  const query = (until) => {
    const q = new URLSearchParams({ limit: '100' });
    if (f.action.value.trim()) q.set('action', f.action.value.trim());
    if (f.employee.value.trim()) q.set('employee', f.employee.value.trim());
    if (f.outcome.value) q.set('outcome', f.outcome.value);
    const si = isoOf(f.since), un = until || isoOf(f.until);
    if (si) q.set('since', si);
    if (un) q.set('until', un);
    return `/v1/audit?${q}`;
  };
  const row = (a) => h('tr', { testid: 'audit-row' },
    h('td', { class: 'nowrap' }, h('span', { title: a.at }, fmtTime(a.at))),
    h('td', null, mono(a.action)),
    h('td', null, badge(a.outcome)),
    h('td', null, a.target || ''),
    h('td', null, a.employee_id ? mono(shortId(a.employee_id), a.employee_id) : ''),
    h('td', null, a.task_id ? link('tasks', a.task_id) : ''),
    h('td', { class: 'reason' }, a.detail || ''));
  const load = async (older) => {
    const r = await ctx.api(query(older ? oldest : undefined));
    fill(err);
    if (!older) { fill(rows); seen = new Set(); }
    const fresh = (r.entries || []).filter((a) => !seen.has(a.id));
    for (const a of fresh) { seen.add(a.id); rows.append(row(a)); }
    if (!rows.children.length) rows.append(h('tr', null, h('td', { class: 'empty', colSpan: 7 }, 'No audit row matches.')));
    oldest = (r.entries || []).at(-1)?.at ?? oldest;
    fill(more, (r.entries || []).length >= 100 && fresh.length
      ? h('button', { type: 'button', class: 'btn', onclick: () => load(true).catch(show) }, 'Older…') : null);
    ctx.ready();
  };
  const show = (e) => { if (e.name !== 'AbortError') fill(err, errorLine(e)); };
  const form = h('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); load(false).catch(show); } },
    f.action, f.employee, f.outcome, h('label', null, 'since ', f.since), h('label', null, 'until ', f.until),
    h('button', { type: 'submit', class: 'btn' }, 'Search'));
  add(ctx.root, pageHead('Audit log'), form, err,
    h('div', { class: 'table-wrap' }, h('table', { class: 'grid', testid: 'audit-table' },
      h('thead', null, h('tr', null, ['when', 'action', 'outcome', 'target', 'employee', 'task', 'detail'].map((x) => h('th', null, x)))), rows)), more);
  load(false).catch(show);
}

// ---------------------------------------------------------------- tasks

function pageTasks(ctx, params) {
  const f = {
    state: h('select', { name: 'state', testid: 'tasks-state' }, ['', ...TASK_STATES].map((x) => h('option', { value: x }, x || 'any state'))),
    role: h('input', { name: 'role', placeholder: 'role' }),
    q: h('input', { name: 'q', type: 'search', placeholder: 'id or text in the input', testid: 'tasks-q' }),
    goal_id: h('input', { name: 'goal_id', placeholder: 'goal id' }),
    employee_id: h('input', { name: 'employee_id', placeholder: 'employee id' }),
  };
  for (const [k, el] of Object.entries(f)) el.value = params.get(k) || '';
  const err = h('div'), rows = h('tbody'), more = h('div');
  let next = null;
  const row = (t) => h('tr', { testid: 'task-row', data: { id: t.id, state: t.state } },
    h('td', null, link('tasks', t.id)),
    h('td', null, t.role),
    h('td', null, badge(t.state)),
    h('td', { class: 'num' }, `${t.attempt}/${t.max_attempts}`),
    h('td', null, t.kind && t.kind !== 'work' ? t.kind : ''),
    h('td', null, t.goal_id ? link('goals', t.goal_id) : ''),
    h('td', null, t.employee_id ? mono(shortId(t.employee_id), t.employee_id) : ''),
    h('td', { class: 'dim' }, trunc(JSON.stringify(t.input), 70)),
    h('td', { class: 'nowrap' }, when(t.created_at)),
    h('td', { class: 'nowrap' }, when(t.updated_at)));
  const load = async (page) => {
    const q = new URLSearchParams({ limit: '50' });
    for (const [k, el] of Object.entries(f)) if (el.value.trim()) q.set(k, el.value.trim());
    if (page && next) q.set('before', next);
    const r = await ctx.api(`/v1/tasks?${q}`);
    fill(err);
    if (!page) fill(rows);
    for (const t of r.tasks || []) rows.append(row(t));
    if (!rows.children.length) rows.append(h('tr', null, h('td', { class: 'empty', colSpan: 10 }, 'No task matches.')));
    next = r.next || null;
    fill(more, next ? h('button', { type: 'button', class: 'btn', testid: 'tasks-more', onclick: () => load(true).catch(show) }, 'Next page…') : null);
    ctx.ready();
  };
  const show = (e) => { if (e.name !== 'AbortError') fill(err, errorLine(e)); };
  const form = h('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); load(false).catch(show); } },
    ...Object.values(f), h('button', { type: 'submit', class: 'btn', testid: 'tasks-search' }, 'Search'));
  f.state.addEventListener('change', () => load(false).catch(show));
  add(ctx.root, pageHead('Tasks', can('submit') ? newTaskForm() : null), form, err,
    h('div', { class: 'table-wrap' }, h('table', { class: 'grid', testid: 'tasks-table' },
      h('thead', null, h('tr', null, ['task', 'role', 'state', 'attempt', 'kind', 'goal', 'employee', 'input', 'created', 'updated'].map((x) => h('th', null, x)))), rows)), more);
  load(false).catch(show);
}

function newTaskForm() {
  const role = h('input', { placeholder: 'role', value: 'shell' });
  const input = h('textarea', { rows: 4, placeholder: '{"command": "echo hi"}' });
  input.value = '{"command": "echo hi"}';
  const submit = actionButton('Submit task', 'task-submit', async () => {
    let parsed;
    try { parsed = JSON.parse(input.value); } catch { throw new Error('The input is not valid JSON.'); }
    const r = await api('/v1/tasks', { body: { role: role.value.trim(), input: parsed } });
    location.hash = `#/tasks/${encodeURIComponent(r.id)}`;
  }, { kind: 'primary' });
  return h('details', { class: 'popover' }, h('summary', { class: 'btn' }, 'New task…'), h('div', { class: 'form' }, role, input, submit));
}

function resultView(r) {
  if (r == null) return h('p', { class: 'dim' }, 'No result yet.');
  const parts = [];
  if (typeof r === 'object' && 'exit_code' in r) {
    parts.push(h('p', null, 'exit code ', h('b', { class: r.exit_code === 0 ? 'ok' : 'bad', testid: 'task-exit-code' }, String(r.exit_code))));
    for (const k of ['stdout', 'stderr']) {
      if (r[k]) parts.push(h('div', { class: 'dim small' }, k, r[`${k}_truncated`] ? ' (truncated)' : '', r[`${k}_escaped`] ? ' (escaped)' : ''), h('pre', { class: `out ${k}` }, r[k]));
    }
  } else if (typeof r === 'object' && 'message' in r) {
    parts.push(h('pre', { class: 'out prose' }, String(r.message ?? '')),
      h('p', { class: 'dim small' }, `${fmtInt(r.turns)} turns · stop ${r.stop ?? '–'} · ${fmtInt(r.usage?.prompt_tokens)} + ${fmtInt(r.usage?.completion_tokens)} tokens`));
    if ((r.files || []).length) parts.push(table([{ label: 'file', cell: (x) => mono(x.path) }, { label: 'size', num: true, cell: (x) => fmtBytes(x.size) }], r.files));
  }
  parts.push(h('details', null, h('summary', null, 'raw JSON'), jsonBlock(r, 'task-result')));
  return h('div', null, parts);
}

function pageTask(ctx, id) {
  const err = h('div'), top = h('div'), body = h('div');
  const evRows = h('tbody');
  add(ctx.root, err, top, body, panel('Events', h('div', { class: 'table-wrap' }, h('table', { class: 'grid feed', testid: 'task-events' },
    h('thead', null, h('tr', null, h('th', null, 'time'), h('th', null, 'attempt'), h('th', null, 'what'))), evRows))));
  const path = `/v1/tasks/${encodeURIComponent(id)}`;
  let shownState = null;
  const draw = (t) => {
    if (t.state !== shownState) {
      shownState = t.state;
      const acts = can('submit') && !FINAL.has(t.state)
        ? [actionButton('Cancel task', 'task-cancel', async () => { draw(await ctx.api(`${path}/cancel`, { method: 'POST', body: {} })); toast('Task cancelled.'); }, { confirm: 'Cancel: sure?', kind: 'danger' })] : [];
      fill(top, h('header', { class: 'page-head' },
        h('div', null, h('div', { class: 'crumbs' }, h('a', { href: '#/tasks' }, 'Tasks'), ' / ', mono(t.id)),
          h('h1', null, `${t.role} task `, badge(t.state, 'task-state'))),
        h('div', { class: 'page-tools' }, ...acts)));
    }
    fill(body, 
      h('div', { class: 'kpis' },
        kpi('Attempt', t.attempt, { fmt: () => `${t.attempt} of ${t.max_attempts}` }),
        kpi('Kind', t.kind || 'work', { fmt: String }),
        kpi('Created', null, { fmt: () => when(t.created_at) }),
        kpi('Updated', null, { fmt: () => when(t.updated_at) })),
      h('dl', { class: 'kv panel' },
        h('dt', null, 'goal'), h('dd', null, t.goal_id ? link('goals', t.goal_id, t.goal_id) : '–'),
        h('dt', null, 'employee'), h('dd', null, t.employee_id ? h('a', { href: `#/tasks?employee_id=${encodeURIComponent(t.employee_id)}` }, t.employee_id) : '–')),
      t.error ? panel('Error', h('pre', { class: 'out bad', testid: 'task-error' }, t.error)) : null,
      h('div', { class: 'cols2' }, panel('Input', jsonBlock(t.input, 'task-input')), panel('Result', resultView(t.result))));
  };
  (async () => {
    let wait = 0;
    while (ctx.alive) {
      try {
        const t = await ctx.api(`${path}?wait=${wait}`);
        fill(err);
        draw(t);
        ctx.ready();
        if (FINAL.has(t.state)) return;
        wait = 20;
      } catch (e) {
        if (!ctx.alive || e.name === 'AbortError') return;
        fill(err, errorLine(e));
        if (e.status === 404 || e.status === 400) return;
        await ctx.sleep(3000);
      }
    }
  })();
  (async () => {
    try {
      await readSSE(`${path}/events`, {
        signal: ctx.signal,
        onEvent: (type, data) => {
          let ev;
          try { ev = JSON.parse(data); } catch { return; }
          if (type === 'end' || !ev) return;
          const last = evRows.lastChild;
          if (ev.kind === 'agent' && ev.event?.event === 'message_delta' && last?.dataset.delta === `${ev.attempt}`) {
            const m = last.querySelector('.msg');
            m.dataset.full = (m.dataset.full || '') + (ev.event.text || '');
            m.textContent = trunc(m.dataset.full, 2000);
            return;
          }
          const tr = h('tr', { data: { delta: ev.kind === 'agent' && ev.event?.event === 'message_delta' ? `${ev.attempt}` : null } },
            h('td', { class: 'nowrap' }, h('span', { title: ev.at }, fmtTime(ev.at))), h('td', { class: 'num' }, String(ev.attempt ?? '')), h('td', null, describeTask(ev)));
          const m = tr.querySelector('.msg');
          if (m) m.dataset.full = ev.event.text || '';
          evRows.append(tr);
          if (evRows.children.length > 2000) evRows.firstChild.remove();
        },
      });
    } catch { /* the task view above shows errors */ }
  })();
}

// ---------------------------------------------------------------- shell

const NAV = [
  ['overview', 'Overview'], ['tasks', 'Tasks'], ['goals', 'Goals'], ['feed', 'Live'], ['employees', 'Employees'],
  ['schedules', 'Schedules'], ['dlq', 'Dead letters', 'admin'], ['audit', 'Audit', 'admin'],
  ['streams', 'Streams', 'operator'], ['fleet', 'Fleet', 'operator'],
];

const ROUTES = [
  [/^overview$/, pageOverview, 'overview'],
  [/^streams$/, pageStreams, 'streams'],
  [/^fleet$/, pageFleet, 'fleet'],
  [/^goals$/, pageGoals, 'goals'],
  [/^goals\/([^/]+)$/, pageGoal, 'goals'],
  [/^employees$/, pageEmployees, 'employees'],
  [/^feed$/, pageFeed, 'feed'],
  [/^schedules$/, pageSchedules, 'schedules'],
  [/^schedules\/([^/]+)$/, pageSchedule, 'schedules'],
  [/^dlq$/, pageDlq, 'dlq'],
  [/^audit$/, pageAudit, 'audit'],
  [/^tasks$/, pageTasks, 'tasks'],
  [/^tasks\/([^/]+)$/, pageTask, 'tasks'],
];

function shell() {
  const nav = h('nav', { class: 'nav', testid: 'nav' }, NAV.map(([k, text, scope]) => h('a', {
    href: `#/${k}`, testid: `nav-${k}`, class: scope && !can(scope) ? 'restricted' : null,
    title: scope && !can(scope) ? `needs an ${scope} key` : null, data: { page: k },
  }, text)));
  const who = h('div', { class: 'who', testid: 'whoami' },
    h('span', { class: 'tenant', title: `key ${S.who.key_id}` }, S.who.tenant),
    h('span', { class: `badge scope-${cls(S.who.scope)}`, testid: 'scope' }, S.who.scope));
  if (S.who.scope === 'operator') {
    const tenant = h('input', { class: 'tenant-input', value: S.tenant || S.who.tenant, title: 'the tenant this operator key looks at (X-Colony-Tenant)', testid: 'tenant-input', size: 10 });
    tenant.addEventListener('change', async () => {
      S.tenant = tenant.value.trim() || null;
      if (S.tenant) sessionStorage.setItem(SS_TENANT, S.tenant); else sessionStorage.removeItem(SS_TENANT);
      await start();
    });
    who.append(tenant);
  }
  who.append(h('button', { type: 'button', class: 'btn', testid: 'logout', onclick: () => logout() }, 'Log out'));
  const main = h('main', { id: 'main', testid: 'main' });
  $('#app').replaceChildren(h('div', { class: 'topbar' }, h('a', { class: 'brand', href: '#/overview' }, h('i', { class: 'logo' }), 'Colony'), nav, who), main);
  return main;
}

function route() {
  if (!S.who) return;
  const main = $('#main') || shell();
  const raw = location.hash.replace(/^#\/?/, '');
  const at = raw.indexOf('?');
  let path = at < 0 ? raw : raw.slice(0, at);
  const qs = at < 0 ? '' : raw.slice(at + 1);
  try { path = decodeURIComponent(path); } catch { /* leave it as it is */ }
  if (!path) { location.replace('#/overview'); return; }
  S.page?.close();
  main.dataset.ready = '0';
  fill(main);
  const ctx = newCtx(main);
  S.page = ctx;
  for (const [re, fn, key] of ROUTES) {
    const m = path.match(re);
    if (!m) continue;
    for (const a of document.querySelectorAll('.nav a')) a.classList.toggle('active', a.dataset.page === key);
    main.dataset.page = key;
    fn(ctx, ...(m.length > 1 ? m.slice(1) : []), new URLSearchParams(qs || ''));
    return;
  }
  main.append(h('div', { class: 'needs' }, h('strong', null, 'No such page.'), ' ', h('a', { href: '#/overview' }, 'Back to the overview')));
}

function loginForm(message) {
  S.page?.close();
  S.page = null;
  const key = h('input', { type: 'password', name: 'key', autocomplete: 'off', placeholder: 'API key', testid: 'login-key', required: true, autofocus: true });
  const error = h('p', { class: 'error', role: 'alert', testid: 'login-error', hidden: !message }, message || '');
  const form = h('form', { class: 'login', testid: 'login-form' },
    h('div', { class: 'brand big' }, h('i', { class: 'logo' }), 'Colony'),
    h('p', { class: 'dim' }, 'Operations dashboard. The key stays in this tab only.'),
    key, h('button', { type: 'submit', class: 'btn primary', testid: 'login-submit' }, 'Log in'), error);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const v = key.value.trim();
    if (!v) return;
    S.key = v;
    sessionStorage.setItem(SS_KEY, v);
    await start();
  });
  $('#app').replaceChildren(form);
  key.focus();
}

function logout(message) {
  fill($('#toasts'));
  sessionStorage.removeItem(SS_KEY);
  sessionStorage.removeItem(SS_TENANT);
  S.key = null; S.who = null; S.tenant = null;
  loginForm(message);
}

async function start() {
  S.key = sessionStorage.getItem(SS_KEY);
  S.tenant = sessionStorage.getItem(SS_TENANT);
  if (!S.key) return loginForm();
  try {
    S.who = null;
    const who = await api('/v1/whoami');
    if (!S.key) return; // a 401 logged out meanwhile
    S.who = who;
    if (!SCOPES.includes(S.who.scope)) S.who.scope = 'read';
  } catch (e) {
    if (S.key) logout(e.message);
    return;
  }
  shell();
  route();
}

window.addEventListener('hashchange', route);
start();
