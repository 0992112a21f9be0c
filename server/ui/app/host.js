// Host: its containers (with actions and create), images, volumes, networks, live events and
// its agent. Everything goes through the host's Docker API passthrough and the REST API.
import { html, useState, useEffect, useRef, Link, Loading, Badge, Tabs, Field, useLoad, act, toast } from './ui.js';
import { api, docker, wsUrl, can, ago, bytes } from './api.js';

const enc = encodeURIComponent;

// The host's live feed (events, health, agent changes).
function useHostFeed(host, onEvent) {
  const cb = useRef(onEvent);
  cb.current = onEvent;
  useEffect(() => {
    let ws; let stop = false; let timer;
    const open = () => {
      ws = new WebSocket(wsUrl('/api/v1/stream?host_id=' + enc(host)));
      ws.onmessage = (m) => { try { cb.current(JSON.parse(m.data)); } catch (_) { /* ignore */ } };
      ws.onclose = () => { if (!stop) timer = setTimeout(open, 3000); };
    };
    open();
    return () => { stop = true; clearTimeout(timer); ws && ws.close(); };
  }, [host]);
}

function Containers({ host, tick }) {
  const s = useLoad(() => docker(host, 'GET', '/containers/json?all=1'), [host, tick]);
  const op = (c, what) => act(`${what} ${c.Names[0].slice(1)}`, async () => {
    if (what === 'remove') await docker(host, 'DELETE', `/containers/${c.Id}?force=1`);
    else await docker(host, 'POST', `/containers/${c.Id}/${what}`);
    s.reload();
  });
  return html`<${Loading} s=${s}>${s.data && html`
    ${can('operator') && html`<${Create} host=${host} done=${s.reload} />`}
    <table class="grid" id="containers"><thead><tr><th>Name</th><th>State</th><th>Image</th><th>Status</th><th>Ports</th>${can('operator') && html`<th>Actions</th>`}</tr></thead>
    <tbody>${s.data.map((c) => {
      const name = c.Names[0].slice(1);
      return html`<tr data-name=${name}>
        <td><${Link} href=${`/hosts/${enc(host)}/containers/${enc(c.Id)}`}>${name}</${Link}></td>
        <td class="state"><${Badge} v=${c.State} /></td><td>${c.Image}</td><td>${c.Status}</td>
        <td>${(c.Ports || []).filter((p) => p.PublicPort).map((p) => `${p.PublicPort}→${p.PrivatePort}`).join(', ')}</td>
        ${can('operator') && html`<td class="actions">
          ${c.State === 'running'
            ? html`<button onClick=${() => op(c, 'stop')}>Stop</button><button onClick=${() => op(c, 'restart')}>Restart</button>`
            : html`<button onClick=${() => op(c, 'start')}>Start</button>`}
          <button class="danger" onClick=${() => confirm(`Remove ${name}?`) && op(c, 'remove')}>Remove</button></td>`}
      </tr>`;
    })}</tbody></table>`}</${Loading}>`;
}

function lines(s) { return s.split('\n').map((x) => x.trim()).filter(Boolean); }

function Create({ host, done }) {
  const [open, setOpen] = useState(false);
  const [f, setF] = useState({ image: '', name: '', cmd: '', ports: '', env: '', volumes: '' });
  const upd = (k) => (e) => setF({ ...f, [k]: e.target.value });
  const submit = (e) => {
    e.preventDefault();
    act(`create ${f.name || f.image}`, async () => {
      const ExposedPorts = {}; const PortBindings = {};
      for (const p of lines(f.ports.replace(/,/g, '\n'))) {
        const [pub, priv] = p.split(':');
        const key = `${priv || pub}${(priv || pub).includes('/') ? '' : '/tcp'}`;
        ExposedPorts[key] = {};
        PortBindings[key] = [{ HostPort: priv ? pub : '' }];
      }
      const body = {
        Image: f.image, Env: lines(f.env), ExposedPorts,
        HostConfig: { PortBindings, Binds: lines(f.volumes) },
        Labels: { 'docker-ctl.created-by': 'web-ui' },
      };
      if (f.cmd.trim()) body.Cmd = ['sh', '-c', f.cmd];
      const q = f.name ? `?name=${enc(f.name)}` : '';
      const r = await docker(host, 'POST', `/containers/create${q}`, body);
      await docker(host, 'POST', `/containers/${r.Id}/start`);
      setOpen(false);
      done();
    });
  };
  if (!open) return html`<p><button class="primary" onClick=${() => setOpen(true)}>Create container</button></p>`;
  return html`<form class="card form" onSubmit=${submit} aria-label="Create container">
    <${Field} label="Image"><input required value=${f.image} onInput=${upd('image')} placeholder="busybox:latest" /></${Field}>
    <${Field} label="Name"><input value=${f.name} onInput=${upd('name')} /></${Field}>
    <${Field} label="Command (sh -c)"><input value=${f.cmd} onInput=${upd('cmd')} /></${Field}>
    <${Field} label="Ports (host:container, one per line)"><textarea value=${f.ports} onInput=${upd('ports')} /></${Field}>
    <${Field} label="Environment (KEY=value, one per line)"><textarea value=${f.env} onInput=${upd('env')} /></${Field}>
    <${Field} label="Volumes (name-or-path:/path, one per line)"><textarea value=${f.volumes} onInput=${upd('volumes')} /></${Field}>
    <div class="bar"><button type="submit" class="primary">Create and start</button><button type="button" onClick=${() => setOpen(false)}>Cancel</button></div>
  </form>`;
}

function Simple({ host, path, cols, pick }) {
  const s = useLoad(() => docker(host, 'GET', path), [host, path]);
  return html`<${Loading} s=${s}>${s.data && html`<table class="grid"><thead><tr>${cols.map((c) => html`<th>${c}</th>`)}</tr></thead>
    <tbody>${pick(s.data).map((row) => html`<tr>${row.map((v) => html`<td>${v}</td>`)}</tr>`)}</tbody></table>`}</${Loading}>`;
}

const images = (d) => d.map((i) => [(i.RepoTags || ['<none>']).join(', '), i.Id.slice(7, 19), bytes(i.Size), new Date(i.Created * 1000).toLocaleString()]);
const volumes = (d) => (d.Volumes || []).map((v) => [v.Name, v.Driver, v.Mountpoint]);
const networks = (d) => d.map((n) => [n.Name, n.Driver, n.Scope, n.Id.slice(0, 12)]);

function Events({ host, live }) {
  const s = useLoad(() => api.get(`/hosts/${enc(host)}/events?limit=100`), [host]);
  const past = ((s.data && s.data.events) || []).slice().sort((a, b) => b.seq - a.seq);
  const rows = [...live, ...past.map((e) => ({ kind: e.kind, action: e.action, actor: e.actor_id, attrs: e.attributes, at: e.received_at }))];
  return html`<${Loading} s=${s}><table class="grid" id="events"><thead><tr><th>When</th><th>Kind</th><th>Action</th><th>Object</th></tr></thead>
    <tbody>${rows.slice(0, 300).map((e) => html`<tr><td>${ago(e.at)}</td><td>${e.kind}</td><td>${e.action}</td>
      <td>${(e.attrs && e.attrs.name) || (e.actor || '').slice(0, 12)}</td></tr>`)}</tbody></table></${Loading}>`;
}

function Agent({ host }) {
  const s = useLoad(() => api.get(`/hosts/${enc(host)}`), [host]);
  const a = s.data && s.data.agent;
  const ev = useLoad(() => (a ? api.get(`/agents/${enc(a.agent_id)}/events?limit=50`) : Promise.resolve(null)), [a && a.agent_id]);
  const rotate = () => act('rotate the agent token', async () => {
    const r = await api.post(`/agents/${enc(a.agent_id)}/rotate-token`, {});
    toast(`New agent token (shown once): ${r.token}`);
  });
  const revoke = () => confirm('Revoke this agent?') && act('revoke the agent', async () => { await api.del(`/agents/${enc(a.agent_id)}`); s.reload(); });
  return html`<${Loading} s=${s}>${s.data && (!a ? html`<p class="muted">This host is reached directly (${s.data.docker_url}); it has no agent.</p>` : html`
    <dl class="kv"><dt>Agent</dt><dd>${a.agent_id}</dd><dt>Status</dt><dd><${Badge} v=${a.status} /></dd>
      <dt>Version</dt><dd>${a.version || '—'}</dd><dt>Last heartbeat</dt><dd>${ago(a.last_heartbeat)}</dd>
      <dt>Round trip</dt><dd>${a.rtt_ms != null ? a.rtt_ms.toFixed(1) + ' ms' : '—'}</dd></dl>
    ${can('admin') && html`<div class="bar"><button onClick=${rotate}>Rotate token</button><button class="danger" onClick=${revoke}>Revoke</button></div>`}
    <h3>Connection history</h3>
    <${Loading} s=${ev}>${ev.data && html`<table class="grid"><thead><tr><th>When</th><th>Event</th><th>Detail</th></tr></thead>
      <tbody>${ev.data.events.map((e) => html`<tr><td>${ago(e.created_at)}</td><td>${e.event_type}</td><td><code>${JSON.stringify(e.event_data)}</code></td></tr>`)}</tbody></table>`}</${Loading}>`)}</${Loading}>`;
}

export function HostPage({ host }) {
  const [tab, setTab] = useState('Containers');
  const [tick, setTick] = useState(0);
  const [live, setLive] = useState([]);
  const info = useLoad(() => api.get(`/hosts/${enc(host)}`), [host]);
  useHostFeed(host, (ev) => {
    if (ev.type !== 'docker_event' || !ev.event) return;
    const e = ev.event;
    setLive((xs) => [{ kind: e.kind, action: e.action, actor: e.actor_id, attrs: e.attributes, at: ev.at }, ...xs].slice(0, 300));
    if (e.kind === 'container') setTick((t) => t + 1);
  });
  const h = info.data;
  return html`<section>
    <div class="bar"><h1>${h ? h.name : host}</h1>${h && html`<${Badge} v=${h.status} />`}<span class="grow"></span>
      <span class="muted">${h && h.connection_mode}</span></div>
    <${Tabs} tabs=${['Containers', 'Images', 'Volumes', 'Networks', 'Events', 'Agent']} current=${tab} onChange=${setTab} />
    ${tab === 'Containers' && html`<${Containers} host=${host} tick=${tick} />`}
    ${tab === 'Images' && html`<${Simple} host=${host} path="/images/json" cols=${['Tags', 'Id', 'Size', 'Created']} pick=${images} />`}
    ${tab === 'Volumes' && html`<${Simple} host=${host} path="/volumes" cols=${['Name', 'Driver', 'Mountpoint']} pick=${volumes} />`}
    ${tab === 'Networks' && html`<${Simple} host=${host} path="/networks" cols=${['Name', 'Driver', 'Scope', 'Id']} pick=${networks} />`}
    ${tab === 'Events' && html`<${Events} host=${host} live=${live} />`}
    ${tab === 'Agent' && html`<${Agent} host=${host} />`}
  </section>`;
}
