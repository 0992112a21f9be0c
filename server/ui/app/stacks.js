// Stacks: the list with each host's state and drift, a compose editor that marks the lines the
// server refuses, deploy (new or a new version) to a selector or hosts with each host's
// progress live from the feed, redeploy, and delete with or without volumes.
import { html, useState, useRef, useEffect, Loading, useLoad, Field, Badge, act, toast } from './ui.js';
import { api, ago, can } from './api.js';
import { useProgress, Detail } from './bulk.js';

const enc = encodeURIComponent;
const EXAMPLE = 'services:\n  web:\n    image: nginx:1.27\n    ports:\n      - "8080:80"\n    restart: unless-stopped\n';

// `KEY=value` lines to the env map; blank lines and `#` comments are skipped.
function parseEnv(text) {
  const env = {};
  text.split('\n').forEach((l, i) => {
    const t = l.trim();
    if (!t || t.startsWith('#')) return;
    const eq = t.indexOf('=');
    if (eq < 1) throw new Error(`env line ${i + 1}: write KEY=value`);
    env[t.slice(0, eq).trim()] = t.slice(eq + 1);
  });
  return env;
}

// The problems of a refused compose file, by line (those without a line under 0).
function problemsOf(e) {
  const list = (e && e.details && e.details.errors) || [];
  return list.map((p) => ({ line: p.line || 0, path: p.path, kind: p.kind, message: p.message }));
}

// A textarea with a line-number gutter; lines with a problem are marked in both.
export function ComposeEditor({ value, onInput, problems, taRef }) {
  const [top, setTop] = useState(0);
  const n = Math.max(1, value.split('\n').length);
  const bad = {};
  problems.forEach((p) => { if (p.line) (bad[p.line] = bad[p.line] || []).push(`${p.path}: ${p.message}`); });
  const nums = [];
  for (let i = 1; i <= n; i++) {
    nums.push(html`<div data-line=${i} class=${bad[i] ? 'bad' : ''} title=${bad[i] ? bad[i].join('\n') : undefined}>${i}</div>`);
  }
  const marks = Object.keys(bad).map((l) => html`<div class="mark" data-line=${l} style=${{ top: `${(l - 1) * 18}px` }}></div>`);
  const shift = { transform: `translateY(${-top}px)` };
  return html`<div class="editor">
    <div class="gutter" aria-hidden="true"><div style=${shift}>${nums}</div></div>
    <div class="code"><div class="marks" aria-hidden="true" style=${shift}>${marks}</div>
      <textarea id="stack-compose" ref=${taRef} aria-label="Compose file" spellcheck="false" wrap="off" rows="16"
        value=${value} onInput=${(e) => onInput(e.target.value)} onScroll=${(e) => setTop(e.target.scrollTop)}></textarea></div></div>`;
}

// Puts the caret on line `line` of the textarea and scrolls it into view.
function goToLine(ta, line) {
  if (!ta) return;
  const lines = ta.value.split('\n');
  let at = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) at += lines[i].length + 1;
  ta.focus();
  ta.setSelectionRange(at, at + (lines[line - 1] || '').length);
  ta.scrollTop = Math.max(0, (line - 4) * 18);
}

function Editor({ editing, feedOpen, onDeployed, onClose }) {
  const [f, setF] = useState({ name: editing || '', compose: editing ? '' : EXAMPLE, env: '', target: editing ? 'keep' : 'selector', selector: '', host_ids: '', max_parallel: '10', max_failures: '0' });
  const [problems, setProblems] = useState([]);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const ta = useRef(null);
  const set = (k) => (e) => setF({ ...f, [k]: e.target.value });
  const deploy = async (e) => {
    e.preventDefault();
    setError(null);
    setBusy(true);
    try {
      const body = { compose: f.compose, env: parseEnv(f.env), max_parallel: Number(f.max_parallel), max_failures: Number(f.max_failures) };
      if (f.target === 'selector') body.selector = f.selector;
      if (f.target === 'hosts') body.host_ids = f.host_ids.split(/[\s,]+/).filter(Boolean);
      const r = editing
        ? await api.put(`/stacks/${enc(editing)}`, body)
        : await api.post('/stacks', { ...body, name: f.name.trim() });
      setProblems([]);
      toast(`deploy stack ${r.name}: version ${r.version} started`);
      onDeployed(r);
    } catch (err) {
      const p = problemsOf(err);
      setProblems(p);
      setError(err.message);
      const first = p.find((x) => x.line);
      if (first) goToLine(ta.current, first.line);
    }
    setBusy(false);
  };
  return html`<form class="card form wide" id="stack-editor" onSubmit=${deploy} aria-label=${editing ? `Edit stack ${editing}` : 'New stack'}>
    <div class="bar"><h2>${editing ? `New version of ${editing}` : 'New stack'}</h2><span class="grow"></span>
      <button type="button" onClick=${onClose}>Close</button></div>
    ${editing && html`<p class="muted">The stored file and env are never shown: write the whole new version.</p>`}
    <div class="bar">
      ${!editing && html`<${Field} label="Name"><input id="stack-name" required pattern="[a-z0-9][a-z0-9_-]{0,62}" placeholder="shop" value=${f.name} onInput=${set('name')} /></${Field}>`}
      <${Field} label="Hosts"><select id="stack-target" value=${f.target} onChange=${set('target')}>
        ${editing && html`<option value="keep">keep the stack's hosts</option>`}
        <option value="selector">by selector</option><option value="hosts">host ids</option></select></${Field}>
      ${f.target === 'selector' && html`<${Field} label="Selector"><input id="stack-selector" required placeholder="site=berlin" value=${f.selector} onInput=${set('selector')} /></${Field}>`}
      ${f.target === 'hosts' && html`<${Field} label="Host ids (comma separated)"><input id="stack-hosts-ids" required value=${f.host_ids} onInput=${set('host_ids')} /></${Field}>`}
      <${Field} label="Max parallel"><input type="number" min="1" max="1000" value=${f.max_parallel} onInput=${set('max_parallel')} /></${Field}>
      <${Field} label="Max failures"><input type="number" min="0" value=${f.max_failures} onInput=${set('max_failures')} /></${Field}>
    </div>
    <div class="label">Compose file</div>
    ${error && html`<div class="error" role="alert" id="stack-error"><p>${error}</p>
      ${problems.length > 0 && html`<ul id="compose-errors">${problems.map((p) => html`<li data-line=${p.line || ''}>
        ${p.line ? html`<button type="button" class="link" onClick=${() => goToLine(ta.current, p.line)}>line ${p.line}</button> ` : ''}<code>${p.path || 'file'}</code> ${p.kind}: ${p.message}</li>`)}</ul>`}</div>`}
    <${ComposeEditor} value=${f.compose} onInput=${(v) => setF({ ...f, compose: v })} problems=${problems} taRef=${ta} />
    <${Field} label="Env (KEY=value per line; stored encrypted, never shown)"><textarea id="stack-env" rows="3" spellcheck="false" value=${f.env} onInput=${set('env')}></textarea></${Field}>
    <div class="bar"><button type="submit" class="primary" disabled=${busy || !feedOpen}>${feedOpen ? 'Deploy' : 'Connecting…'}</button></div>
  </form>`;
}

function services(h) {
  return (h.services || []).map((s) => html`<span class=${'badge ' + (s.state === 'in_sync' ? 'ok' : 'bad')} title=${s.detail || ''}>${s.service}: ${s.state}</span> `);
}

// One stack: each host's stored state and what it runs now.
function StackDetail({ name, reloadKey, onAction }) {
  const s = useLoad(() => api.get(`/stacks/${enc(name)}`), [name, reloadKey]);
  const d = s.data;
  return html`<${Loading} s=${s}>${d && html`<div class="card" id="stack-detail" data-stack=${d.name}>
    <div class="bar"><h2>${d.name}</h2><span class="muted">version ${d.version}</span>
      <${Badge} v=${d.removing ? 'removing' : d.in_sync ? 'in sync' : 'drift'} /><span class="grow"></span>
      <button onClick=${s.reload}>Refresh</button>
      ${can('operator') && !d.removing && html`<button onClick=${() => onAction('edit', d.name)}>Edit</button>
        <button onClick=${() => onAction('redeploy', d.name)}>Redeploy</button>
        <button class="danger" onClick=${() => onAction('delete', d.name)}>Delete</button>
        <button class="danger" onClick=${() => onAction('delete-volumes', d.name)}>Delete with volumes</button>`}</div>
    <p class="muted">by ${d.created_by} · updated ${ago(d.updated_at)} · targets <code>${d.targets && d.targets.selector ? d.targets.selector : ((d.targets && d.targets.host_ids) || []).length + ' host(s)'}</code></p>
    <table class="grid" id="stack-hosts"><thead><tr><th>Host</th><th>State</th><th>Version</th><th>Drift</th><th>Services</th><th>Error</th><th>Updated</th></tr></thead>
      <tbody>${d.hosts.map((h) => html`<tr data-host=${h.host_id}><td>${h.host_name}</td><td class="state"><${Badge} v=${h.state} /></td>
        <td>${h.applied_version ?? '—'} / ${h.wanted_version}</td>
        <td class="drift">${h.drift == null ? html`<span class="muted" title=${h.observe_error ? h.observe_error.message || '' : ''}>unknown</span>` : h.drift ? html`<${Badge} v="drift" />` : html`<span class="badge ok">in sync</span>`}</td>
        <td class="services">${services(h)}</td><td>${h.error ? `${h.error.code}: ${h.error.message}` : ''}</td><td>${ago(h.updated_at)}</td></tr>`)}</tbody></table></div>`}</${Loading}>`;
}

export function Stacks() {
  const list = useLoad(() => api.get('/stacks'), []);
  const [editing, setEditing] = useState(null); // null: closed, '': new, name: new version
  const [shown, setShown] = useState(null);
  const [tick, setTick] = useState(0);
  const progress = useProgress(() => { list.reload(); setTick((t) => t + 1); });
  useEffect(() => { if (!shown && list.data && list.data.length) setShown(list.data[0].name); }, [list.data]);
  const started = (r) => { progress.show(r.rollout_id); setShown(r.name); list.reload(); setTick((t) => t + 1); };
  const onAction = (what, name) => {
    if (what === 'edit') { setEditing(name); return; }
    if (what === 'redeploy') { act(`redeploy ${name}`, async () => started(await api.post(`/stacks/${enc(name)}/redeploy`))); return; }
    const volumes = what === 'delete-volumes';
    if (!confirm(`Delete stack ${name} from every host${volumes ? ', with its volumes' : ''}?`)) return;
    act(`delete ${name}`, async () => started(await api.del(`/stacks/${enc(name)}${volumes ? '?volumes=true' : ''}`)));
  };
  const stacks = list.data || [];
  return html`<section id="stacks"><div class="bar"><h1>Stacks</h1><span class="grow"></span>
      ${can('operator') && editing === null && html`<button class="primary" onClick=${() => setEditing('')}>New stack</button>`}</div>
    ${editing !== null && html`<${Editor} key=${editing} editing=${editing} feedOpen=${progress.feedOpen}
      onDeployed=${(r) => { setEditing(null); started(r); }} onClose=${() => setEditing(null)} />`}
    ${progress.current && html`<h2>Rollout</h2><${Detail} id=${progress.current} live=${progress.live} log=${progress.log}
      onCancel=${(id) => act('cancel the rollout', () => api.post(`/bulk-operations/${enc(id)}/cancel`))} />`}
    <${Loading} s=${list}>${list.data && (stacks.length === 0
      ? html`<p class="muted" id="stacks-none">No stacks yet.</p>`
      : html`<table class="grid" id="stack-list"><thead><tr><th>Name</th><th>Version</th><th>Hosts</th><th>State</th><th>By</th><th>Updated</th><th></th></tr></thead>
      <tbody>${stacks.map((x) => html`<tr data-stack=${x.name} class=${x.name === shown ? 'sel' : ''}><td><button class="link" onClick=${() => setShown(x.name)}>${x.name}</button></td>
        <td>${x.version}</td><td>${(x.hosts || []).length}</td>
        <td><${Badge} v=${x.removing ? 'removing' : x.in_sync ? 'in sync' : 'drift'} /></td><td>${x.created_by}</td><td>${ago(x.updated_at)}</td>
        <td><button onClick=${() => setShown(x.name)}>Show</button></td></tr>`)}</tbody></table>`)}</${Loading}>
    ${shown && html`<${StackDetail} name=${shown} reloadKey=${tick} onAction=${onAction} />`}
  </section>`;
}
