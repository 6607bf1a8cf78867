// Small DOM helpers: elements are built, never parsed from strings, so data
// from the fleet (names, messages) can never become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'style') Object.assign(el.style, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

// "HEALTH_STATUS_HEALTHY" -> "HEALTHY": enum values as proto3 JSON names them.
const ENUM_PREFIXES = [
  'HEALTH_STATUS_', 'CIRCUIT_STATE_', 'ALERT_SEVERITY_', 'DEPLOYMENT_STATE_',
  'DEPLOYMENT_STRATEGY_', 'BATCH_STATE_', 'SUBSCRIPTION_TIER_', 'QUOTA_RESOURCE_',
  'PROTOCOL_', 'RESOURCE_TIER_', 'TIER_SOURCE_',
];

export function short(value) {
  const text = String(value ?? '');
  for (const prefix of ENUM_PREFIXES) {
    if (text.startsWith(prefix)) return text.slice(prefix.length);
  }
  return text;
}

export function seconds(timestamp) {
  if (!timestamp) return 0;
  const ms = Date.parse(timestamp);
  return Number.isNaN(ms) ? 0 : ms / 1000;
}

export function ago(timestamp, now = Date.now() / 1000) {
  const t = seconds(timestamp);
  if (!t) return '—';
  const d = Math.max(0, now - t);
  if (d < 1) return 'just now';
  if (d < 60) return `${Math.floor(d)}s ago`;
  if (d < 3600) return `${Math.floor(d / 60)}m ago`;
  if (d < 86400) return `${Math.floor(d / 3600)}h ago`;
  return `${Math.floor(d / 86400)}d ago`;
}

// A relative time that the page keeps current (see tickTimes).
export function time(timestamp) {
  const t = seconds(timestamp);
  return h('time', {
    datetime: timestamp || undefined,
    title: t ? new Date(t * 1000).toLocaleString() : undefined,
    dataset: t ? { ts: String(t) } : undefined,
  }, ago(timestamp));
}

export function tickTimes(root = document) {
  const now = Date.now() / 1000;
  for (const el of root.querySelectorAll('time[data-ts]')) {
    el.textContent = ago(new Date(Number(el.dataset.ts) * 1000).toISOString(), now);
  }
}

// A number of seconds, readably.
export function span(d) {
  if (!(d >= 0)) return '';
  if (d < 60) return `${d.toFixed(d < 10 ? 1 : 0)}s`;
  if (d < 3600) return `${Math.round(d / 60)}m`;
  if (d < 86400) return `${(d / 3600).toFixed(1)}h`;
  return `${(d / 86400).toFixed(1)}d`;
}

export function duration(from, to) {
  return span(seconds(to) - seconds(from));
}

// A horizontal bar for a share in [0, 1] (beyond 1 shows as full and "over").
export function bar(ratio, label, { warn = 0.8 } = {}) {
  const r = Math.max(0, Number(ratio) || 0);
  const level = r > 1 ? 'over' : r >= warn ? 'warn' : 'ok';
  const fill = h('span', { class: 'fill', style: { width: `${Math.min(r, 1) * 100}%` } });
  return h('span', { class: `bar ${level}`, title: label }, fill, h('span', { class: 'label' }, label));
}

export function pill(text, kind, title) {
  return h('span', { class: `pill ${kind ?? ''}`, title }, text);
}

export function table(headings, rows, attrs = {}) {
  return h('table', attrs,
    h('thead', {}, h('tr', {}, headings.map((t) => h('th', {}, t)))),
    h('tbody', {}, rows));
}
