//! Fetching a release from the server the agent is connected to: one blocking HTTP/1.1
//! `GET` per link over the agent's own link ([`crate::connection::open`]: the CA, pin and
//! client certificate of its WebSocket), authenticated with its agent id and token (HTTP
//! Basic); the response head is parsed with httparse (which the WebSocket handshake already
//! links) and the body must have a `Content-Length`. ureq cost 104 KB of the aarch64 size
//! budget and its sans-IO engine alone 40 KB, more than the budget left (see
//! docs/benchmarks.md).
//!
//! The binary is streamed to a file next to the running one and fed to the caller's sink
//! (the minisign verifier) as it arrives, in 64 KiB pieces: memory stays flat whatever the
//! size. A dropped link, a stalled read or a server error is retried with a `Range` request
//! from the last byte written, up to [`MAX_ATTEMPTS`] times within the download's deadline.
//!
//! Owns: the HTTP requests, resuming, and what a response must look like. Must not: decide
//! whether a release may run (the caller verifies what it was fed).

use super::Refusal;
use crate::config::ServerUrl;
use crate::connection::Stream;
use crate::stats::Stats;
use protocol::Secret;
use rustls::ClientConfig;
use std::fmt;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Attempts at most per file (the first one and the resumptions).
pub const MAX_ATTEMPTS: u32 = 8;
/// A read that brings nothing for this long counts as a dropped link.
pub const STALL: Duration = Duration::from_secs(30);
/// The largest signature file taken.
const MAX_SIGNATURE: u64 = protocol::minisign::MAX_SIGNATURE_FILE_LEN as u64;
/// Bytes read and written at a time.
const CHUNK: usize = 64 * 1024;

/// Where releases come from, and who asks.
#[derive(Clone)]
pub struct Source {
    /// The `Authorization` header value (Basic, agent id and token).
    authorization: Secret,
    tls: Option<Arc<ClientConfig>>,
    /// `server.url`'s servers: a download goes to the one the link last connected to.
    urls: Vec<ServerUrl>,
    connect_timeout: Duration,
    /// The agent's byte counters (downloads count as traffic of the link), and which server
    /// the link uses.
    stats: Arc<Stats>,
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("base", &self.base())
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Source {
    /// The servers of `urls` (the agent's WebSocket URLs), asked as `agent_id` with `token`,
    /// over `tls` for `wss://`.
    pub fn new(
        urls: &[ServerUrl],
        agent_id: &str,
        token: &Secret,
        tls: Option<Arc<ClientConfig>>,
        connect_timeout: Duration,
        stats: Arc<Stats>,
    ) -> Source {
        use base64::Engine as _;
        let pair = format!("{agent_id}:{}", token.expose());
        let basic = base64::engine::general_purpose::STANDARD.encode(pair);
        Source {
            authorization: Secret::new(format!("Basic {basic}")),
            tls,
            urls: urls.to_vec(),
            connect_timeout,
            stats,
        }
    }

    fn url(&self) -> &ServerUrl {
        let i = self.stats.server.load(std::sync::atomic::Ordering::Relaxed);
        &self.urls[i % self.urls.len()]
    }

    /// `http(s)://host:port/base` of the server downloads go to now.
    pub fn base(&self) -> String {
        let u = self.url();
        let scheme = if u.tls { "https" } else { "http" };
        format!("{scheme}://{}{}", u.authority(), u.base)
    }

    /// `GET {path}` on a new link, with `headers` (our own values: no line breaks): the
    /// response's status and headers, and its body as a reader. No redirects, no pooling.
    fn get(&self, path: &str, headers: &[(&'static str, &str)]) -> Result<Response, String> {
        use std::fmt::Write as _;
        let url = self.url();
        let mut req = format!(
            "GET {}{path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nUser-Agent: docker-ctl-agent/{}\r\nConnection: close\r\n",
            url.base,
            url.authority(),
            self.authorization.expose(),
            env!("CARGO_PKG_VERSION"),
        );
        for (k, v) in headers {
            let _ = write!(req, "{k}: {v}\r\n");
        }
        req.push_str("\r\n");
        let mut stream = crate::connection::open(
            url,
            self.tls.as_ref(),
            self.connect_timeout,
            self.stats.clone(),
        )?;
        stream
            .tcp()
            .set_read_timeout(Some(STALL))
            .map_err(|e| format!("socket setup: {e}"))?;
        stream
            .write_all(req.as_bytes())
            .and_then(|()| stream.flush())
            .map_err(|e| format!("sending the request: {e}"))?;
        read_head(stream)
    }

    /// `GET {path}/signature`: the release's `.minisig`, bounded.
    pub fn signature(&self, path: &str) -> Result<Vec<u8>, Refusal> {
        let mut last = String::new();
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_secs(1 << attempt));
            }
            let resp = match self.get(&format!("{path}/signature"), &[]) {
                Ok(r) => r,
                Err(e) => {
                    last = format!("fetching the signature: {e}");
                    continue;
                }
            };
            let status = resp.status;
            if status != 200 {
                let e = status_refusal(status, "the signature");
                if e.retryable {
                    last = e.refusal.message;
                    continue;
                }
                return Err(e.refusal);
            }
            let mut out = Vec::new();
            let read = resp.body.take(MAX_SIGNATURE + 1).read_to_end(&mut out);
            match read {
                Ok(_) if out.len() as u64 > MAX_SIGNATURE => {
                    return Err(Refusal::invalid(
                        "signature",
                        format!("the signature is larger than {MAX_SIGNATURE} bytes"),
                    ))
                }
                Ok(_) => return Ok(out),
                Err(e) => last = format!("reading the signature: {e}"),
            }
        }
        Err(Refusal::download(last))
    }

    /// `GET {path}/binary` into `to`, from `to.written()` on: every byte also goes to
    /// `to.sink`. Resumes with `Range` after a dropped link or a stall, until `size` bytes
    /// arrived or `deadline` passes.
    pub fn binary(
        &self,
        path: &str,
        size: u64,
        deadline: Instant,
        to: &mut dyn Target,
    ) -> Result<(), Refusal> {
        let mut last = String::from("no attempt");
        let mut etag: Option<String> = None;
        for attempt in 0..MAX_ATTEMPTS {
            if to.written() == size {
                return Ok(());
            }
            if attempt > 0 {
                let pause = Duration::from_secs((1u64 << attempt.min(5)).min(30));
                if Instant::now() + pause >= deadline {
                    break;
                }
                log::info!(
                    "update download: resuming at byte {} of {size} in {}s ({last})",
                    to.written(),
                    pause.as_secs()
                );
                std::thread::sleep(pause);
            }
            match self.fetch_once(path, size, &mut etag, to) {
                Ok(()) if to.written() == size => return Ok(()),
                Ok(()) => last = format!("the link closed at byte {}", to.written()),
                Err(Step::Retry(why)) => last = why,
                Err(Step::Stop(r)) => return Err(r),
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(Refusal::download(format!(
            "the download stopped at byte {} of {size}: {last}",
            to.written()
        )))
    }

    /// One request: from the start, or from where `to` stands with `Range` (and `If-Range`
    /// naming the release the earlier bytes came from).
    fn fetch_once(
        &self,
        path: &str,
        size: u64,
        etag: &mut Option<String>,
        to: &mut dyn Target,
    ) -> Result<(), Step> {
        let from = to.written();
        let range = format!("bytes={from}-");
        let mut headers = Vec::new();
        if from > 0 {
            headers.push(("range", range.as_str()));
            if let Some(tag) = etag.as_deref() {
                headers.push(("if-range", tag));
            }
        }
        let resp = self
            .get(&format!("{path}/binary"), &headers)
            .map_err(|e| Step::Retry(format!("request failed: {e}")))?;
        let status = resp.status;
        let header = |n: &str| resp.header(n).map(str::to_owned);
        match status {
            200 => {
                if from > 0 {
                    // The server sent the whole file again: start over.
                    to.restart().map_err(Step::Stop)?;
                }
            }
            206 => {
                let range = header("content-range").unwrap_or_default();
                if parse_content_range(&range) != Some((from, size)) {
                    to.restart().map_err(Step::Stop)?;
                    return Err(Step::Retry(format!(
                        "the server answered Range bytes={from}- with Content-Range {range:?}"
                    )));
                }
            }
            416 => {
                to.restart().map_err(Step::Stop)?;
                return Err(Step::Retry("the server refused the range".into()));
            }
            s => {
                let e = status_refusal(s, "the binary");
                return Err(if e.retryable {
                    Step::Retry(e.refusal.message)
                } else {
                    Step::Stop(e.refusal)
                });
            }
        }
        if let Some(tag) = header("etag") {
            *etag = Some(tag);
        }
        let expected = size - to.written();
        if let Some(len) = header("content-length").and_then(|v| v.parse::<u64>().ok()) {
            if len != expected {
                return Err(Step::Stop(Refusal::invalid(
                    "size",
                    format!("the server sends {len} bytes where {expected} are missing of the announced {size}"),
                )));
            }
        }
        let mut body = resp.body.take(expected);
        copy(&mut body, to)
    }
}

/// Copies `body` into `to` in [`CHUNK`] pieces; a read error is a dropped link (retry).
fn copy(body: &mut dyn Read, to: &mut dyn Target) -> Result<(), Step> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match body.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => to.append(&buf[..n]).map_err(Step::Stop)?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Step::Retry(format!("reading the body: {e}"))),
        }
    }
}

/// Where downloaded bytes go.
pub trait Target {
    /// Bytes kept so far.
    fn written(&self) -> u64;
    /// Keeps the next bytes.
    fn append(&mut self, bytes: &[u8]) -> Result<(), Refusal>;
    /// Forgets everything kept: the download starts from the first byte again.
    fn restart(&mut self) -> Result<(), Refusal>;
}

/// A file that downloaded bytes are appended to, also fed to `sink`, reporting progress.
pub struct FileTarget<'a> {
    pub file: std::fs::File,
    pub written: u64,
    pub sink: &'a mut dyn FnMut(Option<&[u8]>),
    pub progress: &'a mut dyn FnMut(u64),
}

impl Target for FileTarget<'_> {
    fn written(&self) -> u64 {
        self.written
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), Refusal> {
        self.file
            .write_all(bytes)
            .map_err(|e| Refusal::io(format!("writing the new binary: {e}")))?;
        (self.sink)(Some(bytes));
        self.written += bytes.len() as u64;
        (self.progress)(self.written);
        Ok(())
    }

    fn restart(&mut self) -> Result<(), Refusal> {
        use std::io::Seek;
        self.file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .map_err(|e| Refusal::io(format!("truncating the new binary: {e}")))?;
        (self.sink)(None);
        self.written = 0;
        Ok(())
    }
}

/// How one request ended when it did not complete the file.
enum Step {
    /// Try again from where the file stands.
    Retry(String),
    /// Give up: retrying cannot help.
    Stop(Refusal),
}

struct StatusRefusal {
    refusal: Refusal,
    retryable: bool,
}

/// What an unexpected status means.
fn status_refusal(status: u16, what: &str) -> StatusRefusal {
    let (refusal, retryable) = match status {
        401 | 403 => (
            Refusal::new(
                protocol::ErrorCode::Unauthorized,
                "download",
                format!("the server refused this agent's credentials for {what} (HTTP {status})"),
            ),
            false,
        ),
        404 => (
            Refusal::new(
                protocol::ErrorCode::NotFound,
                "download",
                format!("the server has no such release ({what}: HTTP 404)"),
            ),
            false,
        ),
        s => (
            Refusal::download(format!("the server answered HTTP {s} for {what}")),
            s == 408 || s == 429 || s >= 500,
        ),
    };
    StatusRefusal { refusal, retryable }
}

/// `bytes START-END/TOTAL` as (START, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let (start, end, total) = (
        start.parse::<u64>().ok()?,
        end.parse::<u64>().ok()?,
        total.parse::<u64>().ok()?,
    );
    (start <= end && end < total).then_some((start, total))
}

/// The most response-head bytes read.
const MAX_HEAD: usize = 16 * 1024;

/// A response: its status, the headers we read (names lower-case), and its body.
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the response head (at most [`MAX_HEAD`] bytes) and hands back the body, which must
/// have a `Content-Length`, as a reader.
fn read_head(mut stream: Stream) -> Result<Response, String> {
    let mut buf = vec![0u8; CHUNK];
    let mut end = 0;
    loop {
        match stream.read(&mut buf[end..MAX_HEAD]) {
            Ok(0) => return Err("the link closed during the response head".into()),
            Ok(n) => end += n,
            Err(e) => return Err(format!("reading the response head: {e}")),
        }
        let mut slots = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut slots);
        let head_len = match r.parse(&buf[..end]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if end < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(format!("the response head is larger than {MAX_HEAD} bytes"))
            }
            Err(e) => return Err(format!("HTTP: {e}")),
        };
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                let v = String::from_utf8_lossy(h.value).trim().to_string();
                (h.name.to_ascii_lowercase(), v)
            })
            .collect();
        let status = r.code.unwrap_or(0);
        let length = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .ok_or_else(|| format!("HTTP {status} without a Content-Length"))?;
        return Ok(Response {
            status,
            headers,
            body: Body {
                stream,
                buf,
                start: head_len,
                end,
                left: length,
            },
        });
    }
}

/// A response body of known length: what came with the head (`buf[start..end]`), then the
/// link.
struct Body {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    left: u64,
}

impl Read for Body {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let want = out.len().min(self.left.min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = if self.start < self.end {
            let n = want.min(self.end - self.start);
            out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            n
        } else {
            match self.stream.read(&mut out[..want])? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => n,
            }
        };
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("bytes 100-199/200"), Some((100, 200)));
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0, 1)));
        for bad in [
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes */10",
            "items 0-1/2",
            "",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_source_speaks_http_for_ws_and_https_for_wss() {
        let token = Secret::new("tok");
        let u = ServerUrl::parse("ws://127.0.0.1:8080/base").unwrap();
        let stats = Arc::new(Stats::default());
        let s = Source::new(
            &[u],
            "a1",
            &token,
            None,
            Duration::from_secs(5),
            stats.clone(),
        );
        assert_eq!(s.base(), "http://127.0.0.1:8080/base");
        assert_eq!(s.authorization.expose(), "Basic YTE6dG9r");
        assert!(
            !format!("{s:?}").contains("YTE6"),
            "no credentials in Debug"
        );
        let u = ServerUrl::parse("wss://[::1]:9443").unwrap();
        let s = Source::new(
            std::slice::from_ref(&u),
            "a1",
            &token,
            None,
            Duration::from_secs(5),
            stats.clone(),
        );
        assert_eq!(s.base(), "https://[::1]:9443");
        // Several servers: downloads go to the one the link uses.
        let first = ServerUrl::parse("ws://10.0.0.1:8080").unwrap();
        let s = Source::new(
            &[first, u],
            "a1",
            &token,
            None,
            Duration::from_secs(5),
            stats.clone(),
        );
        assert_eq!(s.base(), "http://10.0.0.1:8080");
        stats.server.store(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(s.base(), "https://[::1]:9443");
    }
}
