// Container: inspect (summary and raw JSON), followed logs, the exec terminal (loaded only
// here, on demand) and live stats.
import { html, useState, useEffect, useRef, Link, Loading, Badge, Tabs, useLoad, act } from './ui.js';
import { docker, can, bytes } from './api.js';

const enc = encodeURIComponent;
const KEEP = 2000;

function Inspect({ c }) {
  const net = Object.entries((c.NetworkSettings && c.NetworkSettings.Networks) || {});
  return html`<dl class="kv">
    <dt>Id</dt><dd><code>${c.Id.slice(0, 12)}</code></dd><dt>Image</dt><dd>${c.Config.Image}</dd>
    <dt>State</dt><dd><${Badge} v=${c.State.Status} /> since ${c.State.StartedAt}</dd>
    <dt>Command</dt><dd><code>${[...(c.Config.Entrypoint || []), ...(c.Config.Cmd || [])].join(' ')}</code></dd>
    <dt>Restart policy</dt><dd>${c.HostConfig.RestartPolicy && c.HostConfig.RestartPolicy.Name || 'no'}</dd>
    <dt>Networks</dt><dd>${net.map(([n, v]) => `${n} ${v.IPAddress || ''}`).join(', ') || '—'}</dd>
    <dt>Mounts</dt><dd>${(c.Mounts || []).map((m) => `${m.Name || m.Source}:${m.Destination}`).join(', ') || '—'}</dd>
    <dt>Environment</dt><dd>${(c.Config.Env || []).length} variables</dd>
  </dl>
  <details><summary>Raw JSON</summary><pre class="raw">${JSON.stringify(c, null, 2)}</pre></details>`;
}

// Docker's multiplexed log stream: 8-byte frame headers unless the container has a TTY.
function demux(tty) {
  let buf = new Uint8Array(0);
  const dec = new TextDecoder();
  return (chunk) => {
    if (tty) return dec.decode(chunk, { stream: true });
    const all = new Uint8Array(buf.length + chunk.length);
    all.set(buf); all.set(chunk, buf.length);
    let out = ''; let i = 0;
    while (all.length - i >= 8) {
      const n = (all[i + 4] << 24 >>> 0) + (all[i + 5] << 16) + (all[i + 6] << 8) + all[i + 7];
      if (all.length - i - 8 < n) break;
      out += dec.decode(all.subarray(i + 8, i + 8 + n));
      i += 8 + n;
    }
    buf = all.slice(i);
    return out;
  };
}

function Logs({ host, c }) {
  const [lines, setLines] = useState([]);
  const [q, setQ] = useState('');
  const [err, setErr] = useState(null);
  const box = useRef(null);
  useEffect(() => {
    const ctl = new AbortController();
    let partial = '';
    (async () => {
      const r = await fetch(`/api/v1/hosts/${enc(host)}/docker/containers/${c.Id}/logs?follow=1&stdout=1&stderr=1&tail=1000`,
        { signal: ctl.signal, credentials: 'same-origin' });
      if (!r.ok) { setErr((await r.json().catch(() => ({}))).message || `HTTP ${r.status}`); return; }
      const rd = r.body.getReader();
      const parse = demux(c.Config.Tty);
      for (;;) {
        const { done, value } = await rd.read();
        if (done) break;
        const text = partial + parse(value);
        const parts = text.split('\n');
        partial = parts.pop();
        if (parts.length) setLines((xs) => { const n = xs.concat(parts); return n.length > KEEP ? n.slice(n.length - KEEP) : n; });
      }
    })().catch((e) => { if (e.name !== 'AbortError') setErr(e.message); });
    return () => ctl.abort();
  }, [host, c.Id]);
  useEffect(() => { const b = box.current; if (b && !q) b.scrollTop = b.scrollHeight; }, [lines, q]);
  const shown = q ? lines.filter((l) => l.toLowerCase().includes(q.toLowerCase())) : lines;
  const download = () => {
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([lines.join('\n') + '\n'], { type: 'text/plain' }));
    a.download = `${c.Name.slice(1)}.log`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 1000);
  };
  return html`<div class="bar fields"><label class="field"><span>Search</span><input type="search" id="log-search" value=${q} onInput=${(e) => setQ(e.target.value)} /></label>
      <span class="muted">${shown.length} of ${lines.length} lines (following)</span><span class="grow"></span>
      <button onClick=${download}>Download</button></div>
    ${err && html`<p class="error" role="alert">${err}</p>`}
    <pre class="logs" id="logs" ref=${box} aria-label="Logs">${shown.join('\n')}</pre>`;
}

function Chart({ label, values, fmt }) {
  const w = 240; const hgt = 60;
  const max = Math.max(1e-9, ...values);
  const pts = values.map((v, i) => `${(i / Math.max(1, values.length - 1)) * w},${hgt - (v / max) * (hgt - 4)}`).join(' ');
  const last = values.length ? values[values.length - 1] : null;
  return html`<figure class="chart"><figcaption>${label}: <strong>${last == null ? '—' : fmt(last)}</strong></figcaption>
    <svg viewBox="0 0 ${w} ${hgt}" width=${w} height=${hgt} role="img" aria-label=${label}><polyline points=${pts} /></svg></figure>`;
}

function Stats({ host, c }) {
  const [s, set] = useState({ cpu: [], mem: [], rx: [], tx: [], err: null });
  useEffect(() => {
    const ctl = new AbortController();
    let prev = null;
    (async () => {
      const r = await fetch(`/api/v1/hosts/${enc(host)}/docker/containers/${c.Id}/stats?stream=1`, { signal: ctl.signal, credentials: 'same-origin' });
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const rd = r.body.getReader(); const dec = new TextDecoder(); let buf = '';
      for (;;) {
        const { done, value } = await rd.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i); buf = buf.slice(i + 1);
          if (!line.trim()) continue;
          const x = JSON.parse(line);
          const cpuD = x.cpu_stats.cpu_usage.total_usage - x.precpu_stats.cpu_usage.total_usage;
          const sysD = (x.cpu_stats.system_cpu_usage || 0) - (x.precpu_stats.system_cpu_usage || 0);
          const cpu = sysD > 0 ? (cpuD / sysD) * (x.cpu_stats.online_cpus || 1) * 100 : 0;
          const mem = (x.memory_stats.usage || 0) - ((x.memory_stats.stats || {}).inactive_file || (x.memory_stats.stats || {}).cache || 0);
          const net = Object.values(x.networks || {}).reduce((a, n) => [a[0] + n.rx_bytes, a[1] + n.tx_bytes], [0, 0]);
          const rate = prev ? [(net[0] - prev[0]) / 1, (net[1] - prev[1]) / 1] : [0, 0];
          prev = net;
          const push = (xs, v) => xs.concat([v]).slice(-60);
          set((o) => ({ ...o, cpu: push(o.cpu, cpu), mem: push(o.mem, mem), rx: push(o.rx, Math.max(0, rate[0])), tx: push(o.tx, Math.max(0, rate[1])) }));
        }
      }
    })().catch((e) => { if (e.name !== 'AbortError') set((o) => ({ ...o, err: e.message })); });
    return () => ctl.abort();
  }, [host, c.Id]);
  return html`${s.err && html`<p class="error">${s.err}</p>`}<div class="charts" id="stats">
    <${Chart} label="CPU" values=${s.cpu} fmt=${(v) => v.toFixed(1) + ' %'} />
    <${Chart} label="Memory" values=${s.mem} fmt=${bytes} />
    <${Chart} label="Network in" values=${s.rx} fmt=${(v) => bytes(v) + '/s'} />
    <${Chart} label="Network out" values=${s.tx} fmt=${(v) => bytes(v) + '/s'} /></div>`;
}

function Exec({ host, c }) {
  const el = useRef(null);
  const [err, setErr] = useState(null);
  useEffect(() => {
    let stop = null;
    import('./exec.js').then((m) => m.openTerminal(el.current, host, c.Id))
      .then((s) => { stop = s; }, (e) => setErr(e.message));
    return () => stop && stop();
  }, [host, c.Id]);
  return html`${err && html`<p class="error" role="alert">${err}</p>`}<div class="terminal" id="terminal" ref=${el}></div>`;
}

export function ContainerPage({ host, id }) {
  const [tab, setTab] = useState('Logs');
  const s = useLoad(() => docker(host, 'GET', `/containers/${enc(id)}/json`), [host, id]);
  const c = s.data;
  const tabs = ['Inspect', 'Logs', ...(can('operator') && c && c.State.Running ? ['Exec'] : []), 'Stats'];
  const op = (what) => act(`${what} ${c.Name.slice(1)}`, async () => { await docker(host, 'POST', `/containers/${c.Id}/${what}`); s.reload(); });
  return html`<section><${Loading} s=${s}>${c && html`
    <div class="bar"><${Link} href=${'/hosts/' + enc(host)}>← host</${Link}><h1>${c.Name.slice(1)}</h1><${Badge} v=${c.State.Status} />
      <span class="grow"></span>
      ${can('operator') && (c.State.Running
        ? html`<button onClick=${() => op('stop')}>Stop</button><button onClick=${() => op('restart')}>Restart</button>`
        : html`<button onClick=${() => op('start')}>Start</button>`)}</div>
    <${Tabs} tabs=${tabs} current=${tab} onChange=${setTab} />
    ${tab === 'Inspect' && html`<${Inspect} c=${c} />`}
    ${tab === 'Logs' && html`<${Logs} host=${host} c=${c} />`}
    ${tab === 'Exec' && html`<${Exec} host=${host} c=${c} />`}
    ${tab === 'Stats' && html`<${Stats} host=${host} c=${c} />`}`}</${Loading}></section>`;
}
