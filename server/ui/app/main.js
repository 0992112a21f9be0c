// The web UI's shell: sign-in, navigation, theme, and the route table.
import { html, render, useState, useEffect, usePath, navigate, Link, Toasts, Field } from './ui.js';
import { session, loadMe, signIn, signOut, can } from './api.js';
import { Fleet } from './fleet.js';
import { HostPage } from './host.js';
import { ContainerPage } from './container.js';
import { Audit } from './audit.js';
import { Admin, Account } from './admin.js';
import { Enrol } from './enrol.js';
import { Bulk } from './bulk.js';
import { Stacks } from './stacks.js';
import { Updates } from './updates.js';

function applyTheme(t) { document.documentElement.dataset.theme = t; }
applyTheme(localStorage.getItem('theme') || (matchMedia('(prefers-color-scheme: light)').matches ? 'light' : 'dark'));

function SignIn({ onDone }) {
  const [name, setName] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => {
    const m = location.hash.match(/link=([^&]+)/);
    if (!m) return;
    history.replaceState(null, '', '/signin');
    signIn({ link: decodeURIComponent(m[1]) }).then(onDone, (e) => setError(e.message));
  }, []);
  const submit = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try { await signIn({ name, password }); onDone(); } catch (err) { setError(err.message); }
    setBusy(false);
  };
  return html`<main class="signin">
    <form class="card" onSubmit=${submit} aria-label="Sign in">
      <h1>docker-ctl</h1>
      <${Field} label="User name"><input id="signin-name" name="username" autocomplete="username" required
        value=${name} onInput=${(e) => setName(e.target.value)} autofocus /></${Field}>
      <${Field} label="Password"><input id="signin-password" type="password" name="password"
        autocomplete="current-password" required value=${password}
        onInput=${(e) => setPassword(e.target.value)} /></${Field}>
      ${error && html`<p class="error" role="alert" id="signin-error">${error}</p>`}
      <button type="submit" class="primary" disabled=${busy}>Sign in</button>
    </form></main>`;
}

function Nav({ onOut }) {
  const [theme, setTheme] = useState(document.documentElement.dataset.theme);
  const flip = () => {
    const t = theme === 'dark' ? 'light' : 'dark';
    localStorage.setItem('theme', t); applyTheme(t); setTheme(t);
  };
  const out = async () => { await signOut().catch(() => {}); onOut(); };
  return html`<header class="top">
    <${Link} href="/" class="brand">docker-ctl</${Link}>
    <nav aria-label="Main">
      <${Link} href="/">Fleet</${Link}>
      <${Link} href="/bulk">Bulk</${Link}>
      <${Link} href="/stacks">Stacks</${Link}>
      <${Link} href="/updates">Updates</${Link}>
      ${can('admin') && html`<${Link} href="/enrol">Enrol</${Link}><${Link} href="/audit">Audit</${Link}><${Link} href="/admin">Admin</${Link}>`}
      <${Link} href="/account">Account</${Link}>
    </nav>
    <span class="grow"></span>
    <span class="who" id="whoami">${session.user} · ${session.role}</span>
    <button onClick=${flip} aria-label="Switch to ${theme === 'dark' ? 'light' : 'dark'} theme">${theme === 'dark' ? '☀' : '☾'}</button>
    <button onClick=${out}>Sign out</button>
  </header>`;
}

function route(path) {
  let m;
  if ((m = path.match(/^\/hosts\/([^/]+)\/containers\/([^/]+)$/))) return html`<${ContainerPage} host=${decodeURIComponent(m[1])} id=${decodeURIComponent(m[2])} />`;
  if ((m = path.match(/^\/hosts\/([^/]+)$/))) return html`<${HostPage} host=${decodeURIComponent(m[1])} />`;
  if (path === '/bulk') return html`<${Bulk} />`;
  if (path === '/stacks') return html`<${Stacks} />`;
  if (path === '/updates') return html`<${Updates} />`;
  if (path === '/enrol') return html`<${Enrol} />`;
  if (path === '/audit') return html`<${Audit} />`;
  if (path === '/admin') return html`<${Admin} />`;
  if (path === '/account') return html`<${Account} />`;
  return html`<${Fleet} />`;
}

function App() {
  const path = usePath();
  const [ready, setReady] = useState(false);
  const [signed, setSigned] = useState(false);
  useEffect(() => { loadMe().then((ok) => { setSigned(ok); setReady(true); }, () => setReady(true)); }, []);
  if (!ready) return html`<p class="muted pad">Loading…</p>`;
  if (!signed) {
    return html`<${SignIn} onDone=${() => { setSigned(true); navigate('/', true); }} /><${Toasts} />`;
  }
  if (path === '/signin') navigate('/', true);
  return html`<${Nav} onOut=${() => { setSigned(false); navigate('/signin', true); }} />
    <main class="page">${route(path)}</main><${Toasts} />`;
}

render(html`<${App} />`, document.getElementById('app'));
