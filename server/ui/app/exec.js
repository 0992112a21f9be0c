// The exec terminal: xterm.js over a WebSocket to the server, which starts the exec as the
// docker CLI does. Loaded only on the exec tab.
import { Terminal } from '../vendor/xterm/xterm.mjs';
import { FitAddon } from '../vendor/xterm-addon-fit/addon-fit.mjs';
import { docker, wsUrl } from './api.js';

// xterm.js writes <style> elements; the page's policy admits them with the page's nonce.
const nonce = (document.getElementById('nonce-carrier') || {}).nonce || '';
const create = document.createElement.bind(document);
document.createElement = (tag, opts) => {
  const el = create(tag, opts);
  if (String(tag).toLowerCase() === 'style') el.nonce = nonce;
  return el;
};

function loadCss() {
  if (document.getElementById('xterm-css')) return;
  const l = document.createElement('link');
  l.id = 'xterm-css';
  l.rel = 'stylesheet';
  l.href = new URL('../vendor/xterm/xterm.css', import.meta.url).href;
  document.head.appendChild(l);
}

export async function openTerminal(el, host, container) {
  loadCss();
  const ex = await docker(host, 'POST', `/containers/${container}/exec`, {
    AttachStdin: true, AttachStdout: true, AttachStderr: true, Tty: true,
    Cmd: ['/bin/sh', '-c', 'command -v bash >/dev/null && exec bash || exec sh'],
  });
  const term = new Terminal({ cursorBlink: true, fontSize: 13, convertEol: false });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(el);
  const ws = new WebSocket(wsUrl(`/api/v1/hosts/${encodeURIComponent(host)}/exec/${ex.Id}/terminal`));
  ws.binaryType = 'arraybuffer';
  const enc = new TextEncoder();
  const resize = () => {
    try { fit.fit(); } catch (_) { return; }
    docker(host, 'POST', `/exec/${ex.Id}/resize?h=${term.rows}&w=${term.cols}`).catch(() => {});
  };
  ws.onopen = () => { resize(); term.focus(); };
  ws.onmessage = (m) => term.write(new Uint8Array(m.data));
  ws.onclose = (e) => term.write(`\r\n[${e.reason || 'the terminal closed'}]\r\n`);
  term.onData((d) => ws.readyState === 1 && ws.send(enc.encode(d)));
  const ro = new ResizeObserver(() => resize());
  ro.observe(el);
  window.__term = term;
  return () => { ro.disconnect(); ws.close(); term.dispose(); };
}
