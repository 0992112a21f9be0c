// Fleet: every host, paged, searched and filtered on the server; live status from the feed.
import { html, useState, useEffect, useRef, Link, Loading, Badge, Field } from './ui.js';
import { api, wsUrl, ago, bytes } from './api.js';

const PAGE = 50;

function health(h) {
  const x = h.health || {};
  const mem = x.mem_total_bytes ? `${bytes(x.mem_total_bytes - (x.mem_available_bytes || 0))} / ${bytes(x.mem_total_bytes)}` : '—';
  const load = x.load_average ? x.load_average[0].toFixed(2) : '—';
  const cont = x.containers_total != null ? `${x.containers_running ?? 0} / ${x.containers_total}` : '—';
  return { mem, load, cont, docker: x.docker_version || h.api_version || '—' };
}

// Live changes of the listed hosts: agent online/offline and health.
function useLive(onEvent) {
  const cb = useRef(onEvent);
  cb.current = onEvent;
  useEffect(() => {
    let ws; let stop = false; let timer;
    const open = () => {
      ws = new WebSocket(wsUrl('/api/v1/stream'));
      ws.onmessage = (m) => { try { cb.current(JSON.parse(m.data)); } catch (_) { /* ignore */ } };
      ws.onclose = () => { if (!stop) timer = setTimeout(open, 3000); };
    };
    open();
    return () => { stop = true; clearTimeout(timer); ws && ws.close(); };
  }, []);
}

export function Fleet() {
  const [q, setQ] = useState('');
  const [status, setStatus] = useState('');
  const [offset, setOffset] = useState(0);
  const [s, set] = useState({ data: null, error: null, loading: true });
  const load = () => {
    const p = new URLSearchParams({ limit: PAGE, offset });
    if (q) p.set('q', q);
    if (status) p.set('status', status);
    api.get('/hosts?' + p).then((data) => set({ data, error: null, loading: false }),
      (error) => set((o) => ({ ...o, error, loading: false })));
  };
  useEffect(() => { const t = setTimeout(load, 200); return () => clearTimeout(t); }, [q, status, offset]);
  useLive((ev) => {
    if (!s.data || !ev.host_id) return;
    const change = { agent_online: { status: 'online' }, agent_offline: { status: 'offline' } }[ev.type];
    const hb = ev.type === 'health' ? { health: ev.health, last_heartbeat: ev.at, status: 'online' } : null;
    if (!change && !hb) return;
    set((o) => ({ ...o, data: { ...o.data, hosts: o.data.hosts.map((h) => (h.id === ev.host_id ? { ...h, ...change, ...hb } : h)) } }));
  });
  const d = s.data;
  return html`<section>
    <div class="bar">
      <h1>Fleet</h1><span class="grow"></span>
      <${Field} label="Search"><input type="search" value=${q} placeholder="host name"
        onInput=${(e) => { setQ(e.target.value); setOffset(0); }} /></${Field}>
      <${Field} label="Status"><select value=${status} onChange=${(e) => { setStatus(e.target.value); setOffset(0); }}>
        <option value="">any</option><option value="online">online</option><option value="offline">offline</option>
      </select></${Field}>
    </div>
    <${Loading} s=${s}>${d && html`
      <table class="grid" id="fleet">
        <thead><tr><th>Host</th><th>Status</th><th>Mode</th><th>Last heartbeat</th><th>Agent</th><th>Docker</th><th>Load</th><th>Memory</th><th>Containers</th></tr></thead>
        <tbody>${d.hosts.map((h) => {
          const x = health(h);
          return html`<tr data-host=${h.id}>
            <td><${Link} href=${'/hosts/' + encodeURIComponent(h.id)}>${h.name}</${Link}></td>
            <td class="status"><${Badge} v=${h.status} /></td><td>${h.connection_mode}</td>
            <td>${ago(h.last_heartbeat)}</td><td>${h.version || '—'}</td><td>${x.docker}</td>
            <td>${x.load}</td><td>${x.mem}</td><td>${x.cont}</td></tr>`;
        })}</tbody></table>
      <div class="bar">
        <span class="muted">${d.total ? `${d.offset + 1}–${d.offset + d.hosts.length} of ${d.total}` : 'No hosts'}</span>
        <span class="grow"></span>
        <button disabled=${offset === 0} onClick=${() => setOffset(Math.max(0, offset - PAGE))}>Previous</button>
        <button disabled=${offset + PAGE >= d.total} onClick=${() => setOffset(offset + PAGE)}>Next</button>
      </div>`}</${Loading}>
  </section>`;
}

export { useLive };
