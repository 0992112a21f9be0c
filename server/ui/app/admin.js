// Admin (users, all API tokens, agents' signing keys) and Account (one's password and tokens).
import { html, useState, Loading, useLoad, Field, Badge, Tabs, act } from './ui.js';
import { api, ago } from './api.js';

const enc = encodeURIComponent;

function Secret({ label, value }) {
  if (!value) return null;
  return html`<div class="card secret" role="status"><strong>${label} (shown once):</strong> <code id="new-secret">${value}</code>
    <button onClick=${() => navigator.clipboard && navigator.clipboard.writeText(value)}>Copy</button></div>`;
}

function Users() {
  const s = useLoad(() => api.get('/users'), []);
  const [f, setF] = useState({ name: '', role: 'viewer', password: '' });
  const create = (e) => {
    e.preventDefault();
    act(`create user ${f.name}`, async () => {
      await api.post('/users', { name: f.name, role: f.role, password: f.password || undefined });
      setF({ name: '', role: 'viewer', password: '' });
      s.reload();
    });
  };
  const role = (u, r) => act(`set ${u.name}'s role to ${r}`, async () => { await api.patch(`/users/${enc(u.name)}`, { role: r }); s.reload(); });
  const reset = (u) => {
    const p = prompt(`New password for ${u.name}`);
    if (p) act(`reset ${u.name}'s password`, async () => { await api.patch(`/users/${enc(u.name)}`, { password: p }); s.reload(); });
  };
  const ends = (u) => act(`end ${u.name}'s sessions`, async () => { await api.del(`/users/${enc(u.name)}/sessions`); s.reload(); });
  const del = (u) => confirm(`Delete ${u.name}?`) && act(`delete ${u.name}`, async () => { await api.del(`/users/${enc(u.name)}`); s.reload(); });
  return html`<form class="bar form" onSubmit=${create} aria-label="Create user">
      <${Field} label="Name"><input required value=${f.name} onInput=${(e) => setF({ ...f, name: e.target.value })} /></${Field}>
      <${Field} label="Role"><select value=${f.role} onChange=${(e) => setF({ ...f, role: e.target.value })}>
        <option>viewer</option><option>operator</option><option>admin</option></select></${Field}>
      <${Field} label="Password"><input type="password" autocomplete="new-password" value=${f.password} onInput=${(e) => setF({ ...f, password: e.target.value })} /></${Field}>
      <button type="submit" class="primary">Create user</button></form>
    <${Loading} s=${s}>${s.data && html`<table class="grid" id="users"><thead><tr><th>Name</th><th>Role</th><th>Password</th><th>Sessions</th><th>Created</th><th>Actions</th></tr></thead>
      <tbody>${s.data.users.map((u) => html`<tr data-user=${u.name}><td>${u.name}</td>
        <td><select aria-label=${'Role of ' + u.name} value=${u.role} onChange=${(e) => role(u, e.target.value)}>
          <option>viewer</option><option>operator</option><option>admin</option></select></td>
        <td>${u.has_password ? 'set' : '—'}</td><td>${u.sessions}</td><td>${ago(u.created_at)}</td>
        <td class="actions"><button onClick=${() => reset(u)}>Reset password</button><button onClick=${() => ends(u)}>End sessions</button>
          <button class="danger" onClick=${() => del(u)}>Delete</button></td></tr>`)}</tbody></table>`}</${Loading}>`;
}

function TokenTable({ tokens, revoke }) {
  return html`<table class="grid"><thead><tr><th>User</th><th>Role</th><th>Prefix</th><th>Created</th><th>Last used</th><th>Expires</th><th>State</th><th></th></tr></thead>
    <tbody>${tokens.map((t) => html`<tr><td>${t.name}</td><td>${t.role}</td><td><code>${t.prefix}</code></td><td>${ago(t.created_at)}</td>
      <td>${ago(t.last_used_at)}</td><td>${t.expires_at || 'never'}</td><td><${Badge} v=${t.revoked_at ? 'revoked' : 'active'} /></td>
      <td>${!t.revoked_at && html`<button class="danger" onClick=${() => revoke(t)}>Revoke</button>`}</td></tr>`)}</tbody></table>`;
}

function Tokens() {
  const s = useLoad(() => api.get('/tokens'), []);
  const [f, setF] = useState({ name: '', role: 'viewer' });
  const [secret, setSecret] = useState(null);
  const create = (e) => {
    e.preventDefault();
    act(`create a token for ${f.name}`, async () => { const r = await api.post('/tokens', f); setSecret(r.token); s.reload(); });
  };
  const revoke = (t) => act(`revoke token ${t.prefix}`, async () => { await api.del(`/tokens/${enc(t.id)}`); s.reload(); });
  return html`<form class="bar form" onSubmit=${create} aria-label="Create token">
      <${Field} label="User"><input required value=${f.name} onInput=${(e) => setF({ ...f, name: e.target.value })} /></${Field}>
      <${Field} label="Role"><select value=${f.role} onChange=${(e) => setF({ ...f, role: e.target.value })}>
        <option>viewer</option><option>operator</option><option>admin</option></select></${Field}>
      <button type="submit" class="primary">Create token</button></form>
    <${Secret} label="Token" value=${secret} />
    <${Loading} s=${s}>${s.data && html`<${TokenTable} tokens=${s.data.tokens} revoke=${revoke} />`}</${Loading}>`;
}

function SigningKeys() {
  const s = useLoad(() => api.get('/agents'), []);
  const [secret, setSecret] = useState(null);
  const rotate = (a) => confirm(`Rotate the signing key of ${a.agent_id}? The agent must be given the new key.`) &&
    act(`rotate the signing key of ${a.agent_id}`, async () => { const r = await api.post(`/agents/${enc(a.agent_id)}/rotate-signing-key`, {}); setSecret(r.signing_key); s.reload(); });
  return html`<p class="muted">Agents verify each command's signature with their signing key.</p>
    <${Secret} label="Signing key" value=${secret} />
    <${Loading} s=${s}>${s.data && html`<table class="grid"><thead><tr><th>Agent</th><th>Host</th><th>Status</th><th>Signing</th><th></th></tr></thead>
      <tbody>${s.data.agents.map((a) => html`<tr><td>${a.agent_id}</td><td>${a.host_id || '—'}</td><td><${Badge} v=${a.status} /></td>
        <td>${a.signing ? 'on' : 'off'}</td><td><button onClick=${() => rotate(a)}>Rotate signing key</button></td></tr>`)}</tbody></table>`}</${Loading}>`;
}

export function Admin() {
  const [tab, setTab] = useState('Users');
  return html`<section><h1>Admin</h1><${Tabs} tabs=${['Users', 'Tokens', 'Signing keys']} current=${tab} onChange=${setTab} />
    ${tab === 'Users' && html`<${Users} />`}${tab === 'Tokens' && html`<${Tokens} />`}${tab === 'Signing keys' && html`<${SigningKeys} />`}</section>`;
}

export function Account() {
  const s = useLoad(() => api.get('/me/tokens'), []);
  const [secret, setSecret] = useState(null);
  const [pw, setPw] = useState({ old_password: '', new_password: '' });
  const [pwState, setPwState] = useState(null);
  const create = () => act('create a token', async () => { const r = await api.post('/me/tokens', {}); setSecret(r.token); s.reload(); });
  const revoke = (t) => act(`revoke token ${t.prefix}`, async () => { await api.del(`/me/tokens/${enc(t.id)}`); s.reload(); });
  const change = (e) => {
    e.preventDefault();
    setPwState(null);
    api.put('/me/password', pw).then((r) => {
      setPw({ old_password: '', new_password: '' });
      setPwState({ ok: true, text: `Password changed${r && r.sessions_ended ? `; ${r.sessions_ended} other session(s) ended` : ''}.` });
    }, (err) => setPwState({ ok: false, text: err.message }));
  };
  return html`<section><h1>Account</h1>
    <h2>API tokens</h2><p><button class="primary" onClick=${create}>Create token</button></p>
    <${Secret} label="Token" value=${secret} />
    <${Loading} s=${s}>${s.data && html`<${TokenTable} tokens=${s.data.tokens} revoke=${revoke} />`}</${Loading}>
    <h2>Password</h2>
    <form class="card form" onSubmit=${change} aria-label="Change password">
      <${Field} label="Current password"><input id="pw-old" type="password" autocomplete="current-password" value=${pw.old_password} onInput=${(e) => setPw({ ...pw, old_password: e.target.value })} /></${Field}>
      <${Field} label="New password"><input id="pw-new" type="password" autocomplete="new-password" required value=${pw.new_password} onInput=${(e) => setPw({ ...pw, new_password: e.target.value })} /></${Field}>
      ${pwState && html`<p id="pw-result" class=${pwState.ok ? 'okline' : 'error'} role="status">${pwState.text}</p>`}
      <button type="submit" class="primary">Change password</button></form></section>`;
}
