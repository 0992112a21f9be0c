// Agent updates: start a rollout of a stored release over a selector, a saved group or hosts,
// watch each agent's progress live (the feed's `bulk_progress` for the rollout, and a reread
// while it runs), cancel it, and list past rollouts.
import { html, useState, useEffect, useRef, Loading, useLoad, Field, Badge, act } from './ui.js';
import { api, ago, can } from './api.js';
import { useFeed } from './bulk.js';

const enc = encodeURIComponent;
// How often a running rollout is read again, besides the feed's nudges.
const REREAD_MS = 1000;
// The steps of one agent's update, in order, for its progress bar.
const STEPS = ['pending', 'downloading', 'verifying', 'restarting', 'succeeded'];

const targetOf = (d) => d.selector || d.group || 'chosen hosts';
const FINAL = ['succeeded', 'failed', 'cancelled'];

function Start({ releases, groups, feedOpen, onStarted }) {
  const versions = [...new Set(releases.map((r) => r.version))];
  const [f, setF] = useState({ version: '', target: 'selector', selector: '', group: '', host_ids: '', max_parallel: '5', max_failures: '0' });
  const set = (k) => (e) => setF({ ...f, [k]: e.target.value });
  const version = f.version || versions[0] || '';
  const start = (e) => {
    e.preventDefault();
    act(`update agents to ${version}`, async () => {
      const body = { version, max_parallel: Number(f.max_parallel), max_failures: Number(f.max_failures) };
      if (f.target === 'selector') body.selector = f.selector;
      else if (f.target === 'group') body.group = f.group;
      else body.host_ids = f.host_ids.split(/[\s,]+/).filter(Boolean);
      const r = await api.post('/agent-updates', body);
      onStarted(r.id);
    });
  };
  const targets = (v) => releases.filter((r) => r.version === v).map((r) => r.target).join(', ');
  return html`<form class="card form wide" onSubmit=${start} aria-label="Start agent update">
    <div class="bar">
      <${Field} label="Release"><select id="update-version" required value=${version} onChange=${set('version')}>
        ${versions.length === 0 && html`<option value="">no release stored</option>`}
        ${versions.map((v) => html`<option value=${v}>${v} (${targets(v)})</option>`)}</select></${Field}>
      <${Field} label="Agents of"><select id="update-target" value=${f.target} onChange=${set('target')}>
        <option value="selector">hosts by selector</option><option value="group">a saved group</option><option value="hosts">host ids</option></select></${Field}>
      ${f.target === 'selector' && html`<${Field} label="Selector"><input id="update-selector" required placeholder="site=berlin" value=${f.selector} onInput=${set('selector')} /></${Field}>`}
      ${f.target === 'group' && html`<${Field} label="Group"><select id="update-group" required value=${f.group} onChange=${set('group')}><option value="">—</option>
        ${groups.map((g) => html`<option value=${g.name}>${g.name} (${g.selector})</option>`)}</select></${Field}>`}
      ${f.target === 'hosts' && html`<${Field} label="Host ids (comma separated)"><input id="update-host-ids" required value=${f.host_ids} onInput=${set('host_ids')} /></${Field}>`}
      <${Field} label="Max parallel"><input type="number" min="1" max="1000" value=${f.max_parallel} onInput=${set('max_parallel')} /></${Field}>
      <${Field} label="Max failures"><input type="number" min="0" value=${f.max_failures} onInput=${set('max_failures')} /></${Field}>
    </div>
    <p class="muted">Each agent downloads the release for its CPU, checks its signature, restarts into it, and rolls back by itself when the new version does not come up.</p>
    <button type="submit" class="primary" disabled=${!feedOpen || !version}>${feedOpen ? 'Start update' : 'Connecting…'}</button></form>`;
}

function Progress({ state }) {
  const i = STEPS.indexOf(state);
  const pct = state === 'succeeded' ? 100 : i < 0 ? 100 : Math.round((i / (STEPS.length - 1)) * 100);
  return html`<span class="progress" title=${state}><span style=${{ width: `${pct}%` }}></span></span>`;
}

// One rollout: read again while it runs, and whenever the feed says one of its agents moved.
function Detail({ id, nudge, onCancel }) {
  const [log, setLog] = useState([]);
  const s = useLoad(() => api.get(`/agent-updates/${enc(id)}`), [id, nudge]);
  const d = s.data;
  const running = d && !FINAL.includes(d.state);
  // Each agent's progress as it is seen to change, in order.
  const seen = useRef({});
  useEffect(() => { seen.current = {}; setLog([]); }, [id]);
  useEffect(() => {
    if (!d || d.id !== id) return;
    const moved = (d.targets || []).filter((t) => seen.current[t.host_id] !== t.state);
    moved.forEach((t) => { seen.current[t.host_id] = t.state; });
    const at = new Date().toISOString();
    if (moved.length) setLog((x) => [...x.slice(-199), ...moved.map((t) => `${at} ${t.host_name || t.host_id}: ${t.state}`)]);
  }, [d]);
  useEffect(() => {
    if (!running) return undefined;
    const t = setTimeout(s.reload, REREAD_MS);
    return () => clearTimeout(t);
  }, [d, running]);
  return html`<${Loading} s=${s}>${d && html`<div class="card" id="update-detail" data-update=${d.id}>
    <div class="bar"><h2>Update to ${d.version}</h2><span class="grow"></span>
      <span id="update-state"><${Badge} v=${d.state} /></span>
      ${running && !d.cancel_requested && can('admin') && html`<button class="danger" onClick=${() => onCancel(d.id)}>Cancel</button>`}</div>
    <p class="muted">${targetOf(d)} · max ${d.max_parallel ?? '—'} at a time, ${d.max_failures ?? 0} failure(s) allowed · by ${d.created_by || '—'} ${ago(d.created_at)}</p>
    ${d.reason && html`<p class="muted">${d.reason}</p>`}
    <table class="grid" id="update-agents"><thead><tr><th>Host</th><th>Agent</th><th>From</th><th>Progress</th><th></th><th>Host state</th><th>Error</th><th>Finished</th></tr></thead>
      <tbody>${(d.targets || []).map((t) => html`<tr data-agent=${t.agent_id || ''} data-host=${t.host_id}><td>${t.host_name || t.host_id}</td><td>${t.agent_id || '—'}</td>
          <td>${t.from_version || '—'}</td><td class="progress-state"><${Badge} v=${t.state} /></td><td><${Progress} state=${t.state} /></td>
          <td class="host-state">${t.host_state}</td><td>${t.error ? `${t.error.code}: ${t.error.message}` : ''}</td><td>${ago(t.finished_at)}</td></tr>`)}</tbody></table>
    <h3>Live progress</h3><ol id="update-log" class="muted">${log.map((l) => html`<li>${l}</li>`)}</ol></div>`}</${Loading}>`;
}

export function Updates() {
  const list = useLoad(() => api.get('/agent-updates?limit=50'), []);
  const releases = useLoad(() => api.get('/releases'), []);
  const groups = useLoad(() => api.get('/groups?limit=100'), []);
  const [current, setCurrent] = useState(null);
  const [nudge, setNudge] = useState(0);
  const feedOpen = useFeed((ev) => {
    if ((ev.type === 'bulk_progress' || ev.type === 'bulk_done') && ev.bulk_id === current) setNudge((n) => n + 1);
    if (ev.type === 'bulk_done') list.reload();
  });
  const cancel = (id) => act('cancel the update', async () => { await api.post(`/agent-updates/${enc(id)}/cancel`); setNudge((n) => n + 1); });
  const rollouts = list.data ? list.data.agent_updates : [];
  return html`<section id="updates"><h1>Agent updates</h1>
    ${can('admin') && html`<${Loading} s=${releases}>${releases.data && html`<${Start} releases=${releases.data.releases || []}
      groups=${(groups.data && groups.data.groups) || []} feedOpen=${feedOpen}
      onStarted=${(id) => { setCurrent(id); list.reload(); }} />`}</${Loading}>`}
    ${current && html`<${Detail} id=${current} nudge=${nudge} onCancel=${cancel} />`}
    <h2>Rollouts</h2>
    <${Loading} s=${list}>${list.data && (rollouts.length === 0
      ? html`<p class="muted" id="updates-none">No agent update rollouts yet.</p>`
      : html`<table class="grid" id="update-list"><thead><tr><th>Version</th><th>Agents of</th><th>Agents</th><th>State</th><th>By</th><th>Started</th><th></th></tr></thead>
      <tbody>${rollouts.map((u) => html`<tr data-update=${u.id}><td>${u.version}</td><td><code>${targetOf(u)}</code></td>
        <td>${u.hosts}</td><td><${Badge} v=${u.state} /></td><td>${u.created_by || '—'}</td><td>${ago(u.created_at)}</td>
        <td><button onClick=${() => setCurrent(u.id)}>Show</button></td></tr>`)}</tbody></table>`)}</${Loading}>
  </section>`;
}
