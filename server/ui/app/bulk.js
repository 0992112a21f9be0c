// Bulk operations (start one over a selector or a saved group, watch each host's progress
// live from the feed's `bulk_progress` messages, cancel) and saved groups.
import { html, useState, useEffect, useRef, Loading, useLoad, Field, Badge, Tabs, act } from './ui.js';
import { api, wsUrl, ago, can } from './api.js';

const enc = encodeURIComponent;
// A host's state only moves forward; a late answer never takes it back.
// What ran: the steps' operations (a stack rollout has none: its kind).
// A rollout's title: its operations; a stack's rollout names the stack and what it does.
const what = (b) => {
  if (b.kind === 'stack_rollout') {
    const act = (b.action && b.action.action) === 'remove' ? 'remove' : 'deploy';
    return `Stack ${b.stack || ''} · ${act}${b.version ? ' v' + b.version : ''}`;
  }
  if (b.kind === 'agent_update') return `Agent update to ${b.version || '?'}`;
  return (b.operations || []).join(' → ') || b.kind;
};
const RANK = { pending: 0, running: 1, queued: 2, succeeded: 3, failed: 3, skipped: 3, cancelled: 3 };

// The feed, with whether it is open: progress is only watched once it is.
export function useFeed(onEvent) {
  const cb = useRef(onEvent);
  cb.current = onEvent;
  const [open, setOpen] = useState(false);
  useEffect(() => {
    let ws; let stop = false; let timer;
    const connect = () => {
      ws = new WebSocket(wsUrl('/api/v1/stream'));
      ws.onopen = () => setOpen(true);
      ws.onmessage = (m) => { try { cb.current(JSON.parse(m.data)); } catch (_) { /* ignore */ } };
      ws.onclose = () => { setOpen(false); if (!stop) timer = setTimeout(connect, 3000); };
    };
    connect();
    return () => { stop = true; clearTimeout(timer); ws && ws.close(); };
  }, []);
  return open;
}

// Watching one rollout (a bulk operation, a stack's deploy): its hosts' states and a log,
// moved on by the feed's `bulk_progress` and `bulk_done` messages. `onDone` runs at the end.
export function useProgress(onDone) {
  const [current, setCurrent] = useState(null);
  const [live, setLive] = useState({ hosts: {}, done: null });
  const [log, setLog] = useState([]);
  const cur = useRef(null);
  cur.current = current;
  const done = useRef(onDone);
  done.current = onDone;
  // A rollout's first messages can come before its POST answers with the id: keep recent
  // ones and replay them when the id is known.
  const early = useRef([]);
  const apply = (ev) => {
    if (ev.type === 'bulk_progress') {
      setLive((l) => ({ ...l, hosts: { ...l.hosts, [ev.host_id]: RANK[l.hosts[ev.host_id]] > RANK[ev.state] ? l.hosts[ev.host_id] : ev.state } }));
      setLog((x) => [...x.slice(-199), `${ev.at} ${ev.host_id}: ${ev.state}`]);
    } else if (ev.type === 'bulk_done') {
      setLive((l) => ({ ...l, done: ev.state }));
      setLog((x) => [...x, `${ev.at} done: ${ev.state}`]);
      if (done.current) done.current(ev);
    }
  };
  const feedOpen = useFeed((ev) => {
    if (ev.type !== 'bulk_progress' && ev.type !== 'bulk_done') return;
    if (ev.bulk_id === cur.current) apply(ev);
    else early.current = [...early.current.slice(-499), ev];
  });
  const show = (id) => {
    setLive({ hosts: {}, done: null }); setLog([]); setCurrent(id);
    cur.current = id;
    const mine = early.current.filter((ev) => ev.bulk_id === id);
    early.current = early.current.filter((ev) => ev.bulk_id !== id);
    mine.forEach(apply);
  };
  return { current, live, log, show, feedOpen };
}

function Start({ groups, feedOpen, onStarted }) {
  const [f, setF] = useState({ target: 'selector', selector: '', group: '', operation: '', params: '{}', max_parallel: '10', max_failures: '0', queue_offline: true });
  const set = (k) => (e) => setF({ ...f, [k]: e.target.type === 'checkbox' ? e.target.checked : e.target.value });
  const start = (e) => {
    e.preventDefault();
    act('start the bulk operation', async () => {
      let params;
      try { params = JSON.parse(f.params || '{}'); } catch (err) { throw new Error(`params: ${err.message}`); }
      const body = { operation: f.operation.trim(), params, max_parallel: Number(f.max_parallel), max_failures: Number(f.max_failures), queue_offline: f.queue_offline };
      if (f.target === 'group') body.group = f.group; else body.selector = f.selector;
      const r = await api.post('/bulk-operations', body);
      onStarted(r.id);
    });
  };
  return html`<form class="card form" onSubmit=${start} aria-label="Start bulk operation">
    <div class="bar">
      <${Field} label="Hosts"><select value=${f.target} onChange=${set('target')}><option value="selector">by selector</option><option value="group">saved group</option></select></${Field}>
      ${f.target === 'selector'
        ? html`<${Field} label="Selector"><input id="bulk-selector" required placeholder="site=berlin,role!=gateway" value=${f.selector} onInput=${set('selector')} /></${Field}>`
        : html`<${Field} label="Group"><select id="bulk-group" required value=${f.group} onChange=${set('group')}><option value="">—</option>
            ${groups.map((g) => html`<option value=${g.id}>${g.name} (${g.selector})</option>`)}</select></${Field}>`}
      <${Field} label="Operation"><input id="bulk-operation" required placeholder="container.restart" value=${f.operation} onInput=${set('operation')} /></${Field}>
      <${Field} label="Max parallel"><input type="number" min="1" max="1000" value=${f.max_parallel} onInput=${set('max_parallel')} /></${Field}>
      <${Field} label="Max failures"><input type="number" min="0" value=${f.max_failures} onInput=${set('max_failures')} /></${Field}>
      <${Field} label="Queue for offline hosts"><input type="checkbox" checked=${f.queue_offline} onChange=${set('queue_offline')} /></${Field}>
    </div>
    <${Field} label="Params (JSON; {{host.name}} and {{host.id}} stand for each host's)"><textarea id="bulk-params" rows="4" value=${f.params} onInput=${set('params')}></textarea></${Field}>
    <button type="submit" class="primary" disabled=${!feedOpen}>${feedOpen ? 'Start' : 'Connecting…'}</button></form>`;
}

// One operation: its document, with each host's state moved on by the feed.
export function Detail({ id, live, log, onCancel }) {
  const s = useLoad(() => api.get(`/bulk-operations/${enc(id)}?limit=1000`), [id, live.done]);
  const d = s.data;
  const state = (t) => {
    const l = live.hosts[t.host_id];
    return l && RANK[l] >= RANK[t.state] ? l : t.state;
  };
  return html`<${Loading} s=${s}>${d && html`<div class="card" id="bulk-detail" data-bulk=${d.id}>
    <div class="bar"><h2>${what(d)}</h2><span class="grow"></span>
      <span id="bulk-state"><${Badge} v=${live.done || d.state} /></span>
      ${d.state === 'running' && !d.cancel_requested && can('operator') && html`<button class="danger" onClick=${() => onCancel(d.id)}>Cancel</button>`}</div>
    <p class="muted">${d.selector || d.group || 'chosen hosts'} · ${d.hosts} host${d.hosts === 1 ? '' : 's'} · by ${d.created_by} ${ago(d.created_at)}${d.reason ? ' · ' + d.reason : ''}</p>
    <table class="grid" id="bulk-hosts"><thead><tr><th>Host</th><th>State</th><th>Error</th><th>Finished</th></tr></thead>
      <tbody>${d.targets.map((t) => html`<tr data-host=${t.host_id}><td>${t.host_name}</td><td class="state"><${Badge} v=${state(t)} /></td>
        <td>${t.error ? `${t.error.code}: ${t.error.message}` : ''}</td><td>${ago(t.finished_at)}</td></tr>`)}</tbody></table>
    <h3>Live progress</h3><ol id="bulk-log" class="muted">${log.map((l) => html`<li>${l}</li>`)}</ol></div>`}</${Loading}>`;
}

function Operations() {
  const list = useLoad(() => api.get('/bulk-operations?limit=50'), []);
  const groups = useLoad(() => api.get('/groups?limit=100'), []);
  const { current, live, log, show, feedOpen } = useProgress(() => list.reload());
  const cancel = (id) => act('cancel the bulk operation', async () => { await api.post(`/bulk-operations/${enc(id)}/cancel`); list.reload(); });
  return html`${can('operator') && html`<${Start} groups=${(groups.data && groups.data.groups) || []} feedOpen=${feedOpen} onStarted=${(id) => { show(id); list.reload(); }} />`}
    ${current && html`<${Detail} id=${current} live=${live} log=${log} onCancel=${cancel} />`}
    <h2>Recent</h2>
    <${Loading} s=${list}>${list.data && html`<table class="grid" id="bulk-list"><thead><tr><th>Operation</th><th>Hosts</th><th>Selector or group</th><th>State</th><th>By</th><th>Started</th><th></th></tr></thead>
      <tbody>${list.data.bulk_operations.map((b) => html`<tr data-bulk=${b.id}><td>${what(b)}</td><td>${b.hosts}</td>
        <td><code>${b.selector || b.group}</code></td><td><${Badge} v=${b.state} /></td><td>${b.created_by}</td><td>${ago(b.created_at)}</td>
        <td><button onClick=${() => show(b.id)}>Show</button></td></tr>`)}</tbody></table>`}</${Loading}>`;
}

function Groups() {
  const s = useLoad(() => api.get('/groups?limit=100'), []);
  const [f, setF] = useState({ name: '', selector: '', description: '' });
  const create = (e) => {
    e.preventDefault();
    act(`create group ${f.name}`, async () => {
      await api.post('/groups', { name: f.name, selector: f.selector, description: f.description || undefined });
      setF({ name: '', selector: '', description: '' });
      s.reload();
    });
  };
  const del = (g) => confirm(`Delete group ${g.name}?`) && act(`delete group ${g.name}`, async () => { await api.del(`/groups/${enc(g.id)}`); s.reload(); });
  const set = (k) => (e) => setF({ ...f, [k]: e.target.value });
  return html`${can('admin') && html`<form class="bar form" onSubmit=${create} aria-label="Create group">
      <${Field} label="Name"><input id="group-name" required value=${f.name} onInput=${set('name')} /></${Field}>
      <${Field} label="Selector"><input id="group-selector" required placeholder="site=berlin" value=${f.selector} onInput=${set('selector')} /></${Field}>
      <${Field} label="Description"><input value=${f.description} onInput=${set('description')} /></${Field}>
      <button type="submit" class="primary">Create group</button></form>`}
    <${Loading} s=${s}>${s.data && html`<table class="grid" id="groups"><thead><tr><th>Name</th><th>Selector</th><th>Description</th><th>By</th><th>Updated</th><th></th></tr></thead>
      <tbody>${s.data.groups.map((g) => html`<tr data-group=${g.name}><td>${g.name}</td><td><code>${g.selector}</code></td><td>${g.description || ''}</td>
        <td>${g.created_by}</td><td>${ago(g.updated_at)}</td>
        <td class="actions">${can('admin') && html`<button class="danger" onClick=${() => del(g)}>Delete</button>`}</td></tr>`)}</tbody></table>`}</${Loading}>`;
}

export function Bulk() {
  const [tab, setTab] = useState('Operations');
  return html`<section id="bulk"><h1>Bulk operations</h1><${Tabs} tabs=${['Operations', 'Groups']} current=${tab} onChange=${setTab} />
    ${tab === 'Operations' ? html`<${Operations} />` : html`<${Groups} />`}</section>`;
}
