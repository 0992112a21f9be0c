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
  const [selector, setSelector] = useState('');
  const [status, setStatus] = useState('');
  // The cursors of the pages before this one, and this page's.
  const [cursors, setCursors] = useState([null]);
  const [s, set] = useState({ data: null, error: null, loading: true });
  const cursor = cursors[cursors.length - 1];
  const load = () => {
    const p = new URLSearchParams({ limit: PAGE });
    if (selector) p.set('selector', selector);
    if (status) p.set('status', status);
    if (q.trim()) p.set('q', q.trim());
    if (cursor) p.set('next', cursor);
    api.get('/hosts?' + p).then((data) => set({ data, error: null, loading: false }),
      (error) => set((o) => ({ ...o, error, loading: false })));
  };
  useEffect(() => { const t = setTimeout(load, 250); return () => clearTimeout(t); }, [q, selector, status, cursor]);
  useLive((ev) => {
    if (!s.data || !ev.host_id) return;
    const change = { agent_online: { status: 'online' }, agent_offline: { status: 'offline' } }[ev.type];
    const hb = ev.type === 'health' ? { health: ev.health, last_heartbeat: ev.at, status: 'online' } : null;
    if (!change && !hb) return;
    set((o) => ({ ...o, data: { ...o.data, hosts: o.data.hosts.map((h) => (h.id === ev.host_id ? { ...h, ...change, ...hb } : h)) } }));
  });
  const d = s.data;
  const restart = (f) => (e) => { f(e.target.value); setCursors([null]); };
  const shown = d ? d.hosts : [];
  const labels = (h) => Object.entries({ ...(h.agent_labels || {}), ...(h.labels || {}) }).map(([k, v]) => html`<span class="badge neutral">${k}=${v}</span> `);
  return html`<section>
    <div class="bar">
      <h1>Fleet</h1><span class="grow"></span>
      <${Field} label="Selector"><input value=${selector} placeholder="site=berlin,env!=dev" onInput=${restart(setSelector)} /></${Field}>
      <${Field} label="Status"><select value=${status} onChange=${restart(setStatus)}>
        <option value="">any</option><option value="online">online</option><option value="offline">offline</option><option value="pending">pending</option>
      </select></${Field}>
      <${Field} label="Name"><input id="fleet-q" type="search" value=${q} placeholder="part of a host name" onInput=${restart(setQ)} /></${Field}>
    </div>
    <${Loading} s=${s}>${d && html`
      <table class="grid" id="fleet">
        <thead><tr><th>Host</th><th>Status</th><th>Mode</th><th>Last heartbeat</th><th>Agent</th><th>Docker</th><th>Load</th><th>Memory</th><th>Containers</th><th>Labels</th></tr></thead>
        <tbody>${shown.length === 0 && html`<tr><td colspan="10" class="muted" id="fleet-none">No hosts match.</td></tr>`}${shown.map((h) => {
          const x = health(h);
          return html`<tr data-host=${h.id}>
            <td><${Link} href=${'/hosts/' + encodeURIComponent(h.id)}>${h.name}</${Link}></td>
            <td class="status"><${Badge} v=${h.status} /></td><td>${h.connection_mode}</td>
            <td>${ago(h.last_heartbeat)}</td><td>${h.version || '—'}</td><td>${x.docker}</td>
            <td>${x.load}</td><td>${x.mem}</td><td>${x.cont}</td><td>${labels(h)}</td></tr>`;
        })}</tbody></table>
      <div class="bar">
        <span class="muted">Page ${cursors.length}, ${d.hosts.length} hosts</span>
        <span class="grow"></span>
        <button disabled=${cursors.length === 1} onClick=${() => setCursors(cursors.slice(0, -1))}>Previous</button>
        <button disabled=${!d.next} onClick=${() => setCursors([...cursors, d.next])}>Next</button>
      </div>`}</${Loading}>
  </section>`;
}

export { useLive };
