// Enrol hosts (admin): enrolment tokens (the token and its install lines shown once, at
// creation), their list and revocation, and the hosts waiting for approval.
import { html, useState, Loading, useLoad, Field, Badge, act } from './ui.js';
import { api, ago } from './api.js';

const enc = encodeURIComponent;

// "site=berlin, role=edge" as an object; a malformed pair is an error the user sees.
export function parseLabels(text) {
  const out = {};
  for (const part of text.split(',').map((p) => p.trim()).filter(Boolean)) {
    const i = part.indexOf('=');
    if (i <= 0) throw new Error(`label ${JSON.stringify(part)}: write key=value`);
    out[part.slice(0, i).trim()] = part.slice(i + 1).trim();
  }
  return out;
}

const labelBadges = (l) => Object.entries(l || {}).map(([k, v]) => html`<span class="badge neutral">${k}=${v}</span> `);

function NewToken({ t }) {
  if (!t) return null;
  return html`<div class="card secret" role="status" id="new-enrolment-token">
    <p><strong>Enrolment token (shown once):</strong> <code id="new-secret">${t.token}</code>
      <button onClick=${() => navigator.clipboard && navigator.clipboard.writeText(t.token)}>Copy</button></p>
    <p class="muted">On each host, next to the agent's release tarball for its CPU, run:</p>
    ${t.install_lines.map((l) => html`<div class="install" data-cpu=${l.cpu}><strong>${l.cpu}</strong>
      <pre><code>${l.line}</code></pre>
      <button onClick=${() => navigator.clipboard && navigator.clipboard.writeText(l.line)}>Copy</button></div>`)}</div>`;
}

function Tokens() {
  const s = useLoad(() => api.get('/enrolment-tokens'), []);
  const blank = { name: '', labels: '', max_uses: '', expires_in: '', require_approval: false };
  const [f, setF] = useState(blank);
  const [created, setCreated] = useState(null);
  const create = (e) => {
    e.preventDefault();
    act(`create enrolment token ${f.name}`, async () => {
      const body = { name: f.name, labels: parseLabels(f.labels), require_approval: f.require_approval };
      if (f.max_uses) body.max_uses = Number(f.max_uses);
      if (f.expires_in) body.expires_in = f.expires_in;
      setCreated(await api.post('/enrolment-tokens', body));
      setF(blank);
      s.reload();
    });
  };
  const revoke = (t) => confirm(`Revoke enrolment token ${t.name}? Hosts it enrolled keep working.`) &&
    act(`revoke enrolment token ${t.name}`, async () => { await api.del(`/enrolment-tokens/${enc(t.id)}`); s.reload(); });
  const set = (k) => (e) => setF({ ...f, [k]: e.target.type === 'checkbox' ? e.target.checked : e.target.value });
  return html`<h2>Enrolment tokens</h2>
    <form class="bar form" onSubmit=${create} aria-label="Create enrolment token">
      <${Field} label="Name"><input id="enrol-name" required value=${f.name} onInput=${set('name')} /></${Field}>
      <${Field} label="Labels"><input id="enrol-labels" placeholder="site=berlin,role=edge" value=${f.labels} onInput=${set('labels')} /></${Field}>
      <${Field} label="Max uses"><input type="number" min="1" placeholder="unlimited" value=${f.max_uses} onInput=${set('max_uses')} /></${Field}>
      <${Field} label="Expires in"><input placeholder="never (e.g. 7d)" value=${f.expires_in} onInput=${set('expires_in')} /></${Field}>
      <${Field} label="Require approval"><input id="enrol-approval" type="checkbox" checked=${f.require_approval} onChange=${set('require_approval')} /></${Field}>
      <button type="submit" class="primary">Create enrolment token</button></form>
    <${NewToken} t=${created} />
    <${Loading} s=${s}>${s.data && html`<table class="grid" id="enrolment-tokens"><thead><tr><th>Name</th><th>Prefix</th><th>Labels</th>
      <th>Approval</th><th>Uses</th><th>Expires</th><th>Last used</th><th>State</th><th></th></tr></thead>
      <tbody>${s.data.enrolment_tokens.map((t) => html`<tr data-token=${t.name}><td>${t.name}</td><td><code>${t.prefix}</code></td>
        <td>${labelBadges(t.labels)}</td><td>${t.require_approval ? 'required' : '—'}</td>
        <td>${t.uses}${t.max_uses != null ? ' / ' + t.max_uses : ''}</td><td>${t.expires_at || 'never'}</td><td>${ago(t.last_used_at)}</td>
        <td class="state"><${Badge} v=${t.state} /></td>
        <td>${t.state === 'active' && html`<button class="danger" onClick=${() => revoke(t)}>Revoke</button>`}</td></tr>`)}</tbody></table>`}</${Loading}>`;
}

function Pending() {
  const s = useLoad(() => api.get('/hosts?status=pending&limit=100'), []);
  const approve = (h) => act(`approve ${h.name}`, async () => { await api.post(`/hosts/${enc(h.id)}/approve`); s.reload(); });
  const reject = (h) => confirm(`Reject ${h.name}? The host is deleted and its agent revoked.`) &&
    act(`reject ${h.name}`, async () => { await api.post(`/hosts/${enc(h.id)}/reject`); s.reload(); });
  return html`<h2>Waiting for approval</h2>
    <p><button onClick=${() => s.reload()}>Refresh</button></p>
    <${Loading} s=${s}>${s.data && (s.data.hosts.length === 0
      ? html`<p class="muted" id="pending-none">No host is waiting.</p>`
      : html`<table class="grid" id="pending-hosts"><thead><tr><th>Host</th><th>Labels</th><th>Waiting since</th><th></th></tr></thead>
      <tbody>${s.data.hosts.map((h) => html`<tr data-host=${h.id}><td>${h.name}</td><td>${labelBadges(h.labels)}</td>
        <td>${ago(h.pending_since)}</td><td class="actions"><button class="primary" onClick=${() => approve(h)}>Approve</button>
        <button class="danger" onClick=${() => reject(h)}>Reject</button></td></tr>`)}</tbody></table>`)}</${Loading}>`;
}

export function Enrol() {
  return html`<section id="enrol"><h1>Enrol a host</h1>
    <p class="muted">An agent presents an enrolment token once; its host gets the token's labels.</p>
    <${Tokens} /><${Pending} /></section>`;
}
