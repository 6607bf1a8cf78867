// One render function per section: data in (proto3 JSON, as the hub's gRPC
// API answers it), elements out. Actions are buttons with data-method and
// data-request; app.js sends them.

import { h, short, time, duration, span, bar, pill, table } from './dom.js';

const HEALTH_KIND = {
  HEALTHY: 'good', DEGRADED: 'warn', UNHEALTHY: 'bad', STARTING: 'info', UNSPECIFIED: 'none',
};
const CIRCUIT_KIND = {
  CLOSED: 'good', HALF_OPEN: 'warn', OPEN: 'bad', FORCED_OPEN: 'bad', FORCED_CLOSED: 'warn',
};
const DEPLOYMENT_KIND = {
  PENDING: 'none', RUNNING: 'info', PAUSED: 'warn', SUCCEEDED: 'good', FAILED: 'bad',
  ABORTED: 'bad', ROLLING_BACK: 'warn', ROLLED_BACK: 'warn',
};
const TIER_KIND = { FREE: 'none', PRO: 'info', ENTERPRISE: 'good' };

function empty(text) {
  return h('p', { class: 'empty' }, text);
}

function action(label, method, request, { kind = '', disabled = false, title } = {}) {
  return h('button', {
    type: 'button',
    class: `action ${kind}`,
    disabled,
    title,
    dataset: { method, request: JSON.stringify(request), label },
  }, label);
}

function health(status) {
  const name = short(status) || 'UNSPECIFIED';
  return pill(name === 'UNSPECIFIED' ? 'NOT PROBED' : name, `health ${HEALTH_KIND[name] ?? 'none'}`);
}

// -- overview ----------------------------------------------------------------

export function overview(state) {
  const services = state.services?.services ?? [];
  const instances = services.flatMap((s) => s.instances);
  const count = (status) => instances.filter((i) => short(i.health?.status) === status).length;
  const active = state.alerts?.active ?? [];
  const deployments = (state.deployments?.deployments ?? [])
    .filter((d) => ['PENDING', 'RUNNING', 'PAUSED', 'ROLLING_BACK'].includes(short(d.deployment.state)));
  const metrics = state.overview?.metrics;
  const cluster = state.overview?.cluster;
  const tile = (label, value, kind = '', detail = '') =>
    h('div', { class: `tile ${kind}`, dataset: { tile: label.toLowerCase() } },
      h('div', { class: 'value' }, value), h('div', { class: 'label' }, label),
      detail ? h('div', { class: 'detail' }, detail) : null);
  return [
    tile('Services', services.length),
    tile('Instances', instances.length, '',
      `${count('HEALTHY')} healthy · ${count('DEGRADED')} degraded`),
    tile('Unhealthy', count('UNHEALTHY'), count('UNHEALTHY') ? 'bad' : 'good'),
    tile('Active alerts', active.length, active.length ? 'bad' : 'good'),
    tile('Deployments', deployments.length, deployments.length ? 'info' : '', 'in progress'),
    tile('Replicas', cluster?.replicas?.length ?? '—', '',
      cluster?.leaderId ? `leader ${cluster.leaderId}` : 'no leader'),
    tile('Watch streams', metrics?.watchStreams ?? '—', '',
      metrics ? `hub up ${span(metrics.uptimeSeconds)}` : ''),
  ];
}

export function hubInfo(state) {
  const m = state.overview?.metrics;
  if (!m) return [];
  return [
    h('span', { class: 'hubid', title: 'this replica' }, m.hubId),
    m.leader ? pill('leader', 'info') : pill('follower', 'none'),
    h('span', { class: 'revision' }, `rev ${state.services?.revision ?? '—'}`),
    h('span', { class: 'version', title: 'this replica\'s build' },
      state.overview?.cluster?.version || ''),
  ];
}

// -- services ----------------------------------------------------------------

function healthBar(instances) {
  const n = instances.length || 1;
  const part = (status, kind) => {
    const k = instances.filter((i) => (short(i.health?.status) || 'UNSPECIFIED') === status).length;
    return k ? h('span', { class: `seg ${kind}`, style: { flexGrow: String(k) }, title: `${k} ${status.toLowerCase()}` }) : null;
  };
  return h('span', { class: 'stack', title: `${n} instances` },
    part('HEALTHY', 'good'), part('DEGRADED', 'warn'), part('UNHEALTHY', 'bad'),
    part('STARTING', 'info'), part('UNSPECIFIED', 'none'));
}

function instanceRow(i) {
  const status = short(i.health?.status) || 'UNSPECIFIED';
  const load = Number(i.loadFactor) || 0;
  return h('tr', {
    class: `instance ${HEALTH_KIND[status] ?? 'none'}`,
    dataset: { service: i.service, instance: i.instanceId, status, draining: String(!!i.draining) },
  },
  h('td', {}, health(i.health?.status)),
  h('td', { class: 'mono' }, i.instanceId),
  h('td', { class: 'mono' }, `${i.host}:${i.port}`),
  h('td', {}, i.version || '—'),
  h('td', { class: 'num' }, i.health?.lastCheck ? `${Number(i.health.latencyMs).toFixed(1)} ms` : '—'),
  h('td', {}, i.health?.lastCheck ? time(i.health.lastCheck) : h('span', { class: 'muted' }, i.health?.check === 'lease' ? 'lease only' : 'not yet')),
  h('td', {}, bar(load, load.toFixed(2), { warn: 0.8 })),
  h('td', {},
    i.draining ? pill('DRAINING', 'warn') : null,
    h('span', { class: 'muted' }, ` ${i.health?.check || ''}`)),
  h('td', { class: 'message' }, i.health?.message || ''));
}

export function services(data) {
  const list = data?.services ?? [];
  if (!list.length) return empty('No service is registered.');
  return list.map((s) => {
    const m = s.metrics ?? {};
    const circuit = short(s.circuit?.state);
    return h('article', { class: 'service', dataset: { service: s.name } },
      h('header', {},
        h('h3', {}, s.name),
        healthBar(s.instances),
        h('span', { class: 'counts' },
          `${s.instances.length} instance${s.instances.length === 1 ? '' : 's'}`,
          m.healthy ? ` · ${m.healthy} healthy` : '',
          m.degraded ? ` · ${m.degraded} degraded` : '',
          m.unhealthy ? ` · ${m.unhealthy} unhealthy` : ''),
        h('span', { class: 'spacer' }),
        h('span', { class: 'muted' }, 'circuit '), pill(circuit, CIRCUIT_KIND[circuit])),
      table(['Health', 'Instance', 'Address', 'Version', 'Latency', 'Last check', 'Load', 'State', 'Message'],
        s.instances.map(instanceRow), { class: 'instances' }));
  });
}

// -- circuits ----------------------------------------------------------------

const OVERRIDE = 'CircuitBreakerService/OverrideCircuit';

export function circuits(data) {
  const list = data?.circuits ?? [];
  if (!list.length) return empty('No circuit yet: services report call outcomes to open one.');
  return table(['Circuit', 'State', 'Failure rate', 'Calls', 'Since', 'Operator'],
    list.map((c) => {
      const state = short(c.state);
      const target = { service: c.service, instanceId: c.instanceId };
      return h('tr', { class: 'circuit', dataset: { service: c.service, instance: c.instanceId, state } },
        h('td', { class: 'mono' }, c.service, c.instanceId ? h('span', { class: 'muted' }, ` / ${c.instanceId}`) : null),
        h('td', {}, pill(state, CIRCUIT_KIND[state], c.reason || undefined)),
        // Rates are in percent; the bar is full at the threshold that opens the circuit.
        h('td', {}, bar(c.failureRate / (c.settings?.failureRateThreshold || 100),
          `${Number(c.failureRate).toFixed(0)}%`, { warn: 0.5 }),
        c.slowCallRate > 0 ? h('div', { class: 'muted small' }, `slow ${Number(c.slowCallRate).toFixed(0)}%`) : null),
        h('td', { class: 'num' }, c.calls),
        h('td', {}, time(c.stateSince)),
        h('td', { class: 'ops' },
          action('Open', OVERRIDE, { ...target, action: 'CIRCUIT_OVERRIDE_FORCE_OPEN' }, { kind: 'danger', title: 'hold the circuit open' }),
          action('Close', OVERRIDE, { ...target, action: 'CIRCUIT_OVERRIDE_FORCE_CLOSED' }, { title: 'hold the circuit closed' }),
          action('Reset', OVERRIDE, { ...target, action: 'CIRCUIT_OVERRIDE_RESET' }, { title: 'back to automatic' })));
    }), { class: 'circuits' });
}

// -- alerts ------------------------------------------------------------------

function severity(value) {
  const s = short(value);
  return pill(s, s === 'CRITICAL' ? 'bad' : s === 'WARNING' ? 'warn' : 'info');
}

export function alerts(data) {
  const active = data?.active ?? [];
  const history = data?.history ?? [];
  return [
    h('h4', {}, `Active (${active.length})`),
    active.length
      ? h('ul', { class: 'alerts', id: 'alerts-active' }, active.map((a) =>
        h('li', { class: 'alert', dataset: { id: a.id, rule: a.rule } },
          severity(a.severity), h('strong', {}, a.rule), h('span', { class: 'summary' }, a.summary),
          h('span', { class: 'muted' }, 'raised ', time(a.raisedAt)))))
      : h('p', { class: 'empty good', id: 'alerts-active' }, 'All clear.'),
    h('h4', {}, 'History'),
    history.length
      ? table(['When', 'Event', 'Alert'], history.map((a) => h('tr', {
        class: `history ${a.active ? 'raised' : 'resolved'}`, dataset: { id: a.id, rule: a.rule },
      },
      h('td', {}, time(a.active ? a.raisedAt : a.resolvedAt)),
      h('td', {}, a.active ? pill('RAISED', 'bad') : pill('RESOLVED', 'good'),
        a.active ? null : h('div', { class: 'muted small' }, `after ${duration(a.raisedAt, a.resolvedAt)}`)),
      h('td', {}, h('strong', {}, a.rule), ' ', a.summary))), { id: 'alerts-history', class: 'history' })
      : empty('Nothing raised yet.'),
  ];
}

// -- deployments -------------------------------------------------------------

const ACTIVE_STATES = ['PENDING', 'RUNNING', 'PAUSED', 'ROLLING_BACK'];

export function deployments(data) {
  const list = data?.deployments ?? [];
  if (!list.length) return empty('No deployment yet.');
  return list.map(({ deployment: d, progress: p }) => {
    const state = short(d.state);
    const counts = p.instances ?? {};
    const total = Object.values(counts).reduce((a, b) => a + b, 0) || 1;
    const done = counts.replaced ?? 0;
    const active = ACTIVE_STATES.includes(state);
    const request = { id: d.id };
    return h('article', { class: `deployment ${active ? 'active' : ''}`, dataset: { id: d.id, state, batch: String(p.batch) } },
      h('header', {},
        h('h3', {}, d.service, h('span', { class: 'muted' }, ' → '), d.targetVersion),
        pill(state, DEPLOYMENT_KIND[state]),
        h('span', { class: 'muted' }, short(d.strategy).toLowerCase()),
        d.previousVersion ? h('span', { class: 'muted' }, ` from ${d.previousVersion}`) : null,
        h('span', { class: 'spacer' }),
        h('span', { class: 'muted mono small' }, d.id)),
      h('div', { class: 'progress' },
        bar(done / total, `${done} of ${total} replaced`, { warn: 2 }),
        h('span', { class: 'progress-label' },
          `batch ${p.batch} of ${p.batches}`, p.phase ? ` · ${p.phase}` : '',
          counts.draining ? ` · ${counts.draining} draining` : '',
          counts.cancelled ? ` · ${counts.cancelled} cancelled` : '')),
      h('ol', { class: 'batches' }, (d.batches ?? []).map((b) => {
        const bs = short(b.state);
        return h('li', { class: `batch ${bs.toLowerCase()}`, title: `${bs}: ${b.instanceIds.join(', ')}` },
          b.canary ? 'canary' : `#${b.index + 1}`);
      })),
      d.reason ? h('p', { class: 'reason' }, d.reason) : null,
      h('footer', {},
        h('span', { class: 'muted' }, 'started ', time(d.createdAt),
          d.finishedAt ? [' · finished ', time(d.finishedAt)] : null),
        h('span', { class: 'spacer' }),
        action('Pause', 'DeploymentService/PauseDeployment', { ...request, reason: 'paused from the dashboard' },
          { disabled: !active || state === 'PAUSED' }),
        action('Resume', 'DeploymentService/ResumeDeployment', request, { disabled: state !== 'PAUSED' }),
        action('Abort', 'DeploymentService/AbortDeployment', { ...request, reason: 'aborted from the dashboard' },
          { kind: 'danger', disabled: !active }),
        // Whatever its state: the way back when a deployment left instances drained.
        action('Release drains', 'DeploymentService/ReleaseDeploymentDrains',
          { ...request, reason: 'released from the dashboard' },
          { title: 'put every instance this deployment left drained back into use' })));
  });
}

// -- tenants -----------------------------------------------------------------

function usageCell(u) {
  if (!u) return h('td', {}, '—');
  const used = Number(u.used) || 0;
  const limit = Number(u.limit) || 0;
  return h('td', {}, limit > 0 ? bar(used / limit, `${used} / ${limit}`) : h('span', { class: 'muted' }, `${used} / no limit`));
}

export function tenants(data, openConfigs) {
  const list = data?.tenants ?? [];
  if (!list.length) return empty('No tenant yet.');
  const resources = [...new Set(list.flatMap((t) => t.usage.map((u) => u.resource)))];
  const rows = list.flatMap(({ tenant: t, usage, config }) => {
    const byResource = Object.fromEntries(usage.map((u) => [u.resource, u]));
    const tier = short(t.tier);
    const open = openConfigs.has(t.tenantId);
    return [
      h('tr', { class: 'tenant', dataset: { tenant: t.tenantId } },
        h('td', {}, h('strong', {}, t.tenantId), t.displayName ? h('div', { class: 'muted small' }, t.displayName) : null),
        h('td', {}, pill(tier, TIER_KIND[tier])),
        resources.map((r) => usageCell(byResource[r])),
        h('td', {}, h('button', {
          type: 'button', class: 'link', dataset: { toggleConfig: t.tenantId },
        }, open ? 'hide' : 'show'))),
      open ? h('tr', { class: 'config' }, h('td', { colspan: String(3 + resources.length) },
        h('div', { class: 'muted small' },
          `tier from ${short(config.tierSource).toLowerCase().replace('_', ' ')} · versions: tier defaults ${config.tierDefaultsVersion}, global ${config.globalVersion}, tenant ${config.tenantVersion}`),
        h('pre', {}, JSON.stringify(config.values, null, 2)))) : null,
    ];
  });
  return [
    table(['Tenant', 'Tier', ...resources.map((r) => short(r).toLowerCase().replaceAll('_', ' ')), 'Merged config'], rows, { class: 'tenants' }),
    data.more ? h('p', { class: 'muted' }, 'More tenants exist: hubctl tenants list shows them all.') : null,
  ];
}

// -- audit -------------------------------------------------------------------

export function audit(data) {
  const events = data?.events ?? [];
  if (!events.length) return empty('No audit record matches.');
  return table(['When', 'Caller', 'Method', 'Target', 'Outcome', 'Change'], events.map((e) => {
    const ok = e.outcome === 'OK';
    const change = e.versionBefore || e.versionAfter ? `${e.versionBefore || '∅'} → ${e.versionAfter || '∅'}` : '';
    return h('tr', { class: 'audit', dataset: { method: e.method, outcome: e.outcome } },
      h('td', {}, time(e.time)),
      h('td', { class: 'mono small' }, e.caller, e.tenantId ? h('div', { class: 'muted' }, `tenant ${e.tenantId}`) : null),
      h('td', { class: 'mono small', title: e.method }, e.method.split('/').slice(-2).join('/').replace('aitrading.hub.v1.', '')),
      h('td', { class: 'mono small' }, e.target),
      h('td', {}, pill(e.outcome, ok ? 'good' : 'bad')),
      h('td', { class: 'small' }, change, e.details?.via ? h('span', { class: 'muted' }, ` (${e.details.via})`) : null));
  }), { class: 'audit' });
}

// -- error patterns ----------------------------------------------------------

export function errors(data) {
  const patterns = data?.patterns ?? [];
  if (!patterns.length) return empty('No error pattern reported.');
  return table(['Count', 'Service', 'Category', 'Pattern', 'Last seen'], patterns.map((p) =>
    h('tr', { class: 'pattern', dataset: { fingerprint: p.fingerprint } },
      h('td', { class: 'num' }, p.count),
      h('td', { class: 'mono' }, p.service, p.tenantId ? h('div', { class: 'muted small' }, p.tenantId) : null),
      h('td', {}, pill(p.category, 'none'), p.severity ? h('div', { class: 'muted small' }, p.severity) : null),
      h('td', { class: 'message' }, p.exceptionType ? h('strong', {}, `${p.exceptionType}: `) : null,
        p.normalizedMessage || p.sample),
      h('td', {}, time(p.lastSeen)))), { class: 'errors' });
}

// -- xDS clients ---------------------------------------------------------------

function typeName(typeUrl) {
  return typeUrl.split('.').pop();
}

export function xdsClients(data) {
  const clients = data?.clients ?? [];
  if (!clients.length) return empty('No xDS client is connected to this replica.');
  return table(['Node', 'Tenant', 'Peer', 'Connected', 'Subscribed (ACKed version)', 'Last NACK'],
    clients.map((c) => h('tr', { class: 'xds-client', dataset: { node: c.nodeId } },
      h('td', { class: 'mono' }, c.nodeId || '—'),
      h('td', {}, c.tenantId || '—', ' ', c.tier && short(c.tier) !== 'UNSPECIFIED'
        ? pill(short(c.tier), TIER_KIND[short(c.tier)] ?? 'none') : null),
      h('td', { class: 'mono small' }, c.peer),
      h('td', {}, time(c.connectedAt)),
      h('td', {}, (c.subscriptions ?? []).map((s) => h('div', { class: 'small' },
        h('strong', {}, typeName(s.typeUrl)), ' ',
        h('span', { class: 'mono' }, (s.resourceNames ?? []).join(', ') || '*'), ' ',
        s.ackedVersion ? pill(`v${s.ackedVersion}`, 'good') : pill('not ACKed', 'warn')))),
      h('td', { class: 'nack' }, c.lastNack
        ? [pill('NACK', 'bad'), ' ', h('strong', {}, `${typeName(c.lastNack.typeUrl)} v${c.lastNack.version}`),
          h('div', { class: 'small' }, c.lastNack.error), h('div', { class: 'muted small' }, time(c.lastNack.at))]
        : h('span', { class: 'muted' }, 'none')))), { class: 'xds', id: 'xds-clients' });
}
