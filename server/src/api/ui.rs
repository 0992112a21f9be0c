//! The web UI, embedded in the binary (`server/ui/`, see `build.rs`): the page at `/` (and at
//! every UI route: `/signin`, `/hosts/...`, ...) and its assets at `/assets/VERSION/...`, plus
//! the security headers of every response.
//!
//! The page is `index.html` with a fresh nonce per response: the Content-Security-Policy
//! allows scripts only from this server (`script-src 'self'`, no inline script), styles from
//! this server and `<style>` elements that carry the nonce (the terminal's renderer writes its
//! own), connections only to this server (`connect-src 'self'`, which covers its WebSockets),
//! and no framing. Assets are served with their media type, `nosniff`, gzip when the client
//! takes it, and a year's `immutable` cache: their URL changes with every build of the UI.
//!
//! Owns: these routes and headers. Must not: hold any logic of the UI (it is a client of the
//! public API like any other).

use axum::extract::{Path, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rand::{RngCore, SeedableRng};

use crate::error::ApiError;

/// One embedded file.
pub struct Asset {
    pub path: &'static str,
    pub mime: &'static str,
    pub raw: &'static [u8],
    pub gzip: Option<&'static [u8]>,
}

include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// The policy of responses other than the page (API answers, assets): nothing may load.
const CSP_DEFAULT: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The page's policy with its style nonce.
pub fn page_csp(nonce: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; \
         img-src 'self'; font-src 'self'; connect-src 'self'; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'; worker-src 'none'; \
         manifest-src 'none'"
    )
}

/// Adds the security headers every response carries (the page sets its own policy first).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP_DEFAULT),
        );
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    res
}

/// The page: `index.html` with this build's version and a fresh nonce.
fn page() -> Response {
    let mut n = [0u8; 16];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut n);
    let nonce = base64::engine::general_purpose::STANDARD.encode(n);
    let html = INDEX_HTML
        .replace("{{VERSION}}", UI_VERSION)
        .replace("{{NONCE}}", &nonce);
    let mut r = (StatusCode::OK, html).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&page_csp(&nonce)) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r
}

/// `GET /assets/{version}/{*path}`.
pub async fn asset(Path((version, path)): Path<(String, String)>, headers: HeaderMap) -> Response {
    let found = (version == UI_VERSION)
        .then(|| ASSETS.iter().find(|a| a.path == path))
        .flatten();
    let Some(a) = found else {
        return (StatusCode::NOT_FOUND, "no such asset in this build").into_response();
    };
    let takes_gzip = headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.split(';').next().is_some_and(|t| t.trim() == "gzip"));
    let (body, gz) = match a.gzip {
        Some(g) if takes_gzip => (g, true),
        _ => (a.raw, false),
    };
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.mime));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if gz {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    r
}

/// Every path the router does not know: the page for a UI route (`GET`/`HEAD` outside
/// `/api/`, `/ws/` and `/assets/`), else a JSON `404`.
pub async fn fallback(method: Method, uri: axum::http::Uri) -> Response {
    let p = uri.path();
    let api = p.starts_with("/api/") || p.starts_with("/ws/") || p.starts_with("/assets/");
    if !api && (method == Method::GET || method == Method::HEAD) {
        return page();
    }
    ApiError::not_found(format!("no route for {method} {p}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(path: &str) -> &'static Asset {
        ASSETS
            .iter()
            .find(|a| a.path == path)
            .unwrap_or_else(|| panic!("{path} is not embedded"))
    }

    /// The app's modules the first page loads: `main.js` and its static imports, followed.
    fn first_page_modules() -> Vec<&'static str> {
        let mut seen = vec!["app/main.js"];
        let mut i = 0;
        while i < seen.len() {
            let text = std::str::from_utf8(asset(seen[i]).raw).expect("utf8");
            let dir = seen[i].rsplit_once('/').map_or("", |(d, _)| d);
            for part in text.split("from '").skip(1) {
                let Some((rel, _)) = part.split_once('\'') else {
                    continue;
                };
                let mut segs: Vec<&str> = dir.split('/').collect();
                for s in rel.split('/') {
                    match s {
                        "." => {}
                        ".." => {
                            segs.pop();
                        }
                        s => segs.push(s),
                    }
                }
                let path = ASSETS
                    .iter()
                    .find(|a| a.path == segs.join("/"))
                    .map(|a| a.path);
                let path = path.unwrap_or_else(|| panic!("{} imports missing {rel}", seen[i]));
                if !seen.contains(&path) {
                    seen.push(path);
                }
            }
            i += 1;
        }
        seen
    }

    #[test]
    fn the_first_page_is_at_most_150_kb_compressed_without_the_terminal() {
        let modules = first_page_modules();
        assert!(
            modules
                .iter()
                .all(|m| !m.contains("xterm") && *m != "app/exec.js"),
            "the terminal loads only on the exec page: {modules:?}"
        );
        let mut total = INDEX_HTML.len();
        for m in modules.iter().chain(["app/app.css"].iter()) {
            let a = asset(m);
            total += a.gzip.map_or(a.raw.len(), <[u8]>::len);
        }
        assert!(
            total <= 150 * 1024,
            "the first page transfers {total} bytes"
        );
    }

    #[test]
    fn vendored_modules_are_the_lockfile_versions() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
        let read = |p: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(dir.join(p)).expect(p)).expect(p)
        };
        let lock = read("npm/package-lock.json");
        for (pkg, vendored) in [
            ("preact", "preact"),
            ("htm", "htm"),
            ("@xterm/xterm", "xterm"),
            ("@xterm/addon-fit", "xterm-addon-fit"),
        ] {
            let want = &lock["packages"][format!("node_modules/{pkg}")]["version"];
            let have = &read(&format!("vendor/{vendored}/package.json"))["version"];
            assert!(want.is_string(), "{pkg} is not in the lockfile");
            assert_eq!(
                want, have,
                "{pkg}: vendored {have} but the lockfile pins {want}"
            );
        }
    }

    #[test]
    fn the_page_policy_loads_nothing_from_elsewhere() {
        let csp = page_csp("abc");
        for d in csp.split(';') {
            let d = d.trim();
            assert!(
                !d.contains("http") && !d.contains('*') && !d.contains("unsafe"),
                "{d}"
            );
        }
        assert!(csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"));
        let html = INDEX_HTML;
        assert!(
            !html.contains("http:") && !html.contains("https:"),
            "{html}"
        );
    }
}
