// The one client of the server's public API: REST under /api/v1, the Docker Engine API of a
// host under /api/v1/hosts/ID/docker, and the WebSockets. Every mutating request carries the
// session's CSRF token; every error becomes an Error with the server's message.
export const session = { user: null, role: null, csrf: null };

// The server's error: its message, code and details (e.g. a compose file's problems).
function errorOf(status, text) {
  let j = null;
  try { j = JSON.parse(text); } catch (_) { /* not JSON */ }
  const body = (j && j.error) || j || {};
  const e = new Error(body.message || text || `HTTP ${status}`);
  e.status = status;
  e.code = body.code;
  e.details = body.details;
  return e;
}

export async function request(method, path, body, raw) {
  const headers = {};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && method !== 'HEAD' && session.csrf) headers['X-CSRF-Token'] = session.csrf;
  const r = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (raw) return r;
  const text = await r.text();
  if (!r.ok) throw errorOf(r.status, text);
  return text ? JSON.parse(text) : null;
}

export const api = {
  get: (p) => request('GET', '/api/v1' + p),
  post: (p, b) => request('POST', '/api/v1' + p, b === undefined ? {} : b),
  put: (p, b) => request('PUT', '/api/v1' + p, b),
  patch: (p, b) => request('PATCH', '/api/v1' + p, b),
  del: (p) => request('DELETE', '/api/v1' + p),
};

// The Docker Engine API of one host, as the docker CLI reaches it.
export function docker(host, method, path, body, raw) {
  const p = `/api/v1/hosts/${encodeURIComponent(host)}/docker${path}`;
  return request(method, p, body, raw);
}

export function wsUrl(path) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}${path}`;
}

export async function loadMe() {
  try {
    const me = await api.get('/session');
    Object.assign(session, { user: me.user.name, role: me.user.role, csrf: me.csrf_token });
    return true;
  } catch (e) {
    if (e.status === 401) return false;
    throw e;
  }
}

export async function signIn(body) {
  const me = await request('POST', '/api/v1/session', body);
  Object.assign(session, { user: me.user.name, role: me.user.role, csrf: me.csrf_token });
}

export async function signOut() {
  try { await api.del('/session'); } finally {
    Object.assign(session, { user: null, role: null, csrf: null });
  }
}

const RANK = { viewer: 0, operator: 1, admin: 2 };
export const can = (role) => RANK[session.role] >= RANK[role];

export function ago(t) {
  if (!t) return '—';
  const s = Math.round((Date.now() - Date.parse(t)) / 1000);
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

export function bytes(n) {
  if (n == null) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}
