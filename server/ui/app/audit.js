// The audit log (admin): filters, pages by sequence, and the hash chain's verification.
import { html, useState, Loading, useLoad, Field, Badge, act } from './ui.js';
import { api } from './api.js';

export function Audit() {
  const [f, setF] = useState({ actor: '', action: '', outcome: '', host_id: '' });
  const [before, setBefore] = useState(null);
  const [verify, setVerify] = useState(null);
  const s = useLoad(() => {
    const p = new URLSearchParams({ limit: 100 });
    for (const [k, v] of Object.entries(f)) if (v) p.set(k, v);
    if (before) p.set('before_seq', before);
    return api.get('/audit?' + p);
  }, [f, before]);
  const upd = (k) => (e) => { setF({ ...f, [k]: e.target.value }); setBefore(null); };
  const check = () => act('verify the audit chain', async () => setVerify(await api.get('/audit/verify')));
  const rows = (s.data && (s.data.entries || s.data.audit || s.data.events)) || [];
  return html`<section><div class="bar"><h1>Audit log</h1><span class="grow"></span>
      <button onClick=${check} id="verify">Verify chain</button></div>
    ${verify && html`<p class=${verify.ok ? 'okline' : 'error'} id="verify-result">${verify.ok
      ? `Chain intact: ${verify.verified} entries verified up to #${verify.head_seq}.`
      : `Chain broken: ${verify.changed} changed, ${verify.deleted} deleted, ${verify.unchained} unchained. ${(verify.problems || []).slice(0, 3).join('; ')}`}</p>`}
    <div class="bar filters">
      <${Field} label="Actor"><input value=${f.actor} onInput=${upd('actor')} /></${Field}>
      <${Field} label="Action"><input value=${f.action} onInput=${upd('action')} placeholder="docker.container_start" /></${Field}>
      <${Field} label="Host"><input value=${f.host_id} onInput=${upd('host_id')} /></${Field}>
      <${Field} label="Outcome"><select value=${f.outcome} onChange=${upd('outcome')}><option value="">any</option>
        <option>success</option><option>denied</option><option>error</option></select></${Field}>
    </div>
    <${Loading} s=${s}><table class="grid" id="audit"><thead><tr><th>#</th><th>When</th><th>Actor</th><th>Action</th><th>Host</th><th>Target</th><th>Outcome</th><th>Source</th></tr></thead>
      <tbody>${rows.map((e) => html`<tr><td>${e.seq}</td><td>${e.created_at || e.at}</td><td>${e.actor}</td><td>${e.action}</td>
        <td>${e.host_id || ''}</td><td>${e.target || ''}</td><td><${Badge} v=${e.outcome} /></td><td>${e.source_ip || ''}</td></tr>`)}</tbody></table>
    <div class="bar"><button disabled=${!before} onClick=${() => setBefore(null)}>Newest</button>
      <button disabled=${rows.length < 100} onClick=${() => setBefore(rows[rows.length - 1].seq)}>Older</button></div></${Loading}>
  </section>`;
}
