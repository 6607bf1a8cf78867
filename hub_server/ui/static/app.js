// The dashboard: loads every section, follows the hub's change feed and
// reloads what changed, sends operator actions.

import * as api from './api.js';
import * as views from './views.js';
import { h, replace, tickTimes } from './dom.js';

const SECTIONS = ['overview', 'services', 'alerts', 'circuits', 'deployments', 'tenants', 'audit', 'errors', 'xds'];
// Sections the overview tiles are computed from.
const TILE_SOURCES = new Set(['overview', 'services', 'alerts', 'deployments']);

const state = {};
const openConfigs = new Set();
const loading = new Map(); // section -> whether another load is wanted after this one
let feed = null;

function formParams(id) {
  const form = document.getElementById(id);
  return Object.fromEntries(new FormData(form).entries());
}

function params(section) {
  if (section === 'audit') return formParams('audit-filter');
  if (section === 'errors') return formParams('errors-filter');
  return {};
}

function body(section) {
  return document.querySelector(`#${section} > .body`);
}

function render(section) {
  const data = state[section];
  switch (section) {
    case 'overview': break;
    case 'services': replace(body(section), views.services(data)); break;
    case 'alerts': replace(body(section), views.alerts(data)); break;
    case 'circuits': replace(body(section), views.circuits(data)); break;
    case 'deployments': replace(body(section), views.deployments(data)); break;
    case 'tenants': replace(body(section), views.tenants(data, openConfigs)); break;
    case 'audit': replace(body(section), views.audit(data)); break;
    case 'errors': replace(body(section), views.errors(data)); break;
    case 'xds': replace(body(section), views.xdsClients(data)); break;
    default: break;
  }
  if (TILE_SOURCES.has(section)) {
    replace(document.getElementById('overview'), views.overview(state));
    replace(document.getElementById('hubinfo'), views.hubInfo(state));
  }
}

function renderError(section, error) {
  const text = error instanceof api.ApiError
    ? `${error.status} ${error.code}: ${error.message}`
    : `cannot reach the hub (${error.message})`;
  const target = section === 'overview' ? document.getElementById('overview') : body(section);
  replace(target, h('p', { class: 'error', dataset: { status: String(error.status ?? 0) } }, text));
}

async function load(section) {
  if (loading.has(section)) {
    loading.set(section, true); // changed again while loading: load once more after
    return;
  }
  loading.set(section, false);
  try {
    do {
      loading.set(section, false);
      try {
        state[section] = await api.get(section, params(section));
        render(section);
      } catch (e) {
        renderError(section, e);
      }
    } while (loading.get(section));
  } finally {
    loading.delete(section);
  }
}

function loadAll() {
  for (const section of SECTIONS) load(section);
}

// -- feedback ----------------------------------------------------------------

let toastTimer = null;

function toast(text, kind, status = 0) {
  const el = document.getElementById('toast');
  el.textContent = text;
  el.className = `toast ${kind}`;
  el.dataset.status = String(status);
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, kind === 'error' ? 15000 : 5000);
}

function setLive(status, detail = '') {
  const el = document.getElementById('live');
  el.dataset.state = status;
  const text = { live: 'live', down: 'reconnecting…', denied: 'token required', connecting: 'connecting' }[status];
  el.querySelector('.text').textContent = text ?? status;
  el.title = detail;
}

async function whoami() {
  const el = document.getElementById('whoami');
  try {
    const me = await api.get('whoami');
    el.textContent = `${me.name} · ${me.role}`;
    el.dataset.role = me.role;
  } catch (e) {
    el.textContent = e instanceof api.ApiError ? `${e.status}: ${e.message}` : 'hub unreachable';
    el.dataset.role = '';
  }
}

// -- actions -----------------------------------------------------------------

const ACTION_SECTIONS = {
  CircuitBreakerService: ['circuits', 'services'],
  DeploymentService: ['deployments'],
};

async function runAction(button) {
  const { method, request, label } = button.dataset;
  button.disabled = true;
  try {
    await api.act(method, JSON.parse(request));
    toast(`${label}: done`, 'ok', 200);
    for (const section of ACTION_SECTIONS[method.split('/')[0]] ?? []) load(section);
    load('audit');
  } catch (e) {
    if (e instanceof api.ApiError) {
      const hint = e.status === 401 ? ' — enter an admin token above'
        : e.status === 403 ? ' — this needs an admin token' : '';
      toast(`${label} refused: ${e.status} ${e.code}: ${e.message}${hint}`, 'error', e.status);
    } else {
      toast(`${label} failed: ${e.message}`, 'error');
    }
  } finally {
    button.disabled = false;
  }
}

// -- wiring ------------------------------------------------------------------

function start() {
  document.addEventListener('click', (event) => {
    const button = event.target.closest('button');
    if (!button) return;
    if (button.classList.contains('action')) runAction(button);
    const tenant = button.dataset.toggleConfig;
    if (tenant) {
      if (openConfigs.has(tenant)) openConfigs.delete(tenant);
      else openConfigs.add(tenant);
      render('tenants');
    }
  });

  for (const [form, section] of [['audit-filter', 'audit'], ['errors-filter', 'errors']]) {
    const el = document.getElementById(form);
    el.addEventListener('submit', (event) => { event.preventDefault(); load(section); });
    el.addEventListener('change', () => load(section));
    let timer = null;
    el.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(() => load(section), 300); });
  }

  document.getElementById('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = document.getElementById('token');
    api.setToken(input.value.trim());
    input.value = '';
    input.placeholder = api.token() ? 'token set (submit empty to clear)' : 'bearer token (for actions)';
    restartFeed();
    whoami();
    loadAll();
  });
  if (api.token()) document.getElementById('token').placeholder = 'token set (submit empty to clear)';

  setInterval(() => tickTimes(), 1000);
  whoami();
  loadAll();
  restartFeed();
}

function restartFeed() {
  feed?.stop();
  setLive('connecting');
  feed = api.follow((sections) => {
    for (const section of sections ?? SECTIONS) load(section);
  }, setLive);
}

start();
