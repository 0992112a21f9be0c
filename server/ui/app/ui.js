// Shared view parts: the html tag, navigation, feedback, tables and tabs.
import { h, render } from '../vendor/preact/preact.module.js';
import { useState, useEffect, useCallback, useRef } from '../vendor/preact/hooks.module.js';
import htm from '../vendor/htm/htm.module.js';

export const html = htm.bind(h);
export { h, render, useState, useEffect, useCallback, useRef };

const listeners = new Set();
export function navigate(path, replace) {
  if (replace) history.replaceState(null, '', path); else history.pushState(null, '', path);
  listeners.forEach((f) => f());
}
addEventListener('popstate', () => listeners.forEach((f) => f()));
export function usePath() {
  const [p, set] = useState(location.pathname);
  useEffect(() => {
    const f = () => set(location.pathname);
    listeners.add(f);
    return () => listeners.delete(f);
  }, []);
  return p;
}

export function Link({ href, children, ...rest }) {
  const click = (e) => {
    if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
    e.preventDefault();
    navigate(href);
  };
  return html`<a href=${href} onClick=${click} ...${rest}>${children}</a>`;
}

// Feedback for every action: a status line that says what happened, or the server's error.
const toastListeners = new Set();
export function toast(text, kind) { toastListeners.forEach((f) => f({ text, kind: kind || 'ok', at: Date.now() })); }
export function Toasts() {
  const [items, set] = useState([]);
  useEffect(() => {
    const f = (t) => {
      set((xs) => [...xs.slice(-3), t]);
      setTimeout(() => set((xs) => xs.filter((x) => x !== t)), t.kind === 'error' ? 8000 : 4000);
    };
    toastListeners.add(f);
    return () => toastListeners.delete(f);
  }, []);
  return html`<div class="toasts" role="status" aria-live="polite">
    ${items.map((t) => html`<div class=${'toast ' + t.kind}>${t.text}</div>`)}</div>`;
}

// Runs an action with feedback; returns its result or undefined on error.
export async function act(label, f) {
  try {
    const r = await f();
    toast(`${label}: done`);
    return r;
  } catch (e) {
    toast(`${label}: ${e.message}`, 'error');
    return undefined;
  }
}

// Loads data with `load` whenever `deps` change; `reload` runs it again.
export function useLoad(load, deps) {
  const [state, set] = useState({ data: null, error: null, loading: true });
  const run = useCallback(() => {
    let live = true;
    load().then((data) => live && set({ data, error: null, loading: false }),
      (error) => live && set((s) => ({ data: s.data, error, loading: false })));
    return () => { live = false; };
  }, deps);
  useEffect(run, [run]);
  return { ...state, reload: run };
}

export function Loading({ s, children }) {
  if (s.error) return html`<p class="error" role="alert">${s.error.message}</p>`;
  if (s.loading && !s.data) return html`<p class="muted">Loading…</p>`;
  return children;
}

export function Tabs({ tabs, current, onChange }) {
  return html`<div class="tabs" role="tablist">${tabs.map((t) => html`
    <button role="tab" aria-selected=${t === current} class=${t === current ? 'tab on' : 'tab'}
      onClick=${() => onChange(t)}>${t}</button>`)}</div>`;
}

export function Field({ label, children }) {
  return html`<label class="field"><span>${label}</span>${children}</label>`;
}

const BADGE = {
  online: 'ok', running: 'ok', offline: 'bad', exited: 'bad', dead: 'bad', success: 'ok', denied: 'bad', error: 'bad',
  succeeded: 'ok', failed: 'bad', rolled_back: 'bad', cancelled: 'bad', deployed: 'ok', 'in sync': 'ok', drift: 'bad',
};
export function Badge({ v }) {
  const cls = BADGE[v] || 'neutral';
  return html`<span class=${'badge ' + cls}>${v || '—'}</span>`;
}
