//! HTTP/1.1 response reading over any `Read`: the head is parsed by `httparse`, bodies are
//! framed by Content-Length, chunked transfer coding (`httparse::parse_chunk_size`), or the
//! end of the stream (raw streams such as `/exec/{id}/start`).
//!
//! Owns: framing and size limits. Must not: know about Docker paths or our error codes, or
//! open sockets (the caller gives a reader, so tests feed canned bytes).

use std::cell::Cell;
use std::io::{self, Read};
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

/// The most header bytes we accept before the blank line.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most headers one response may carry.
const MAX_HEADERS: usize = 64;

/// Why a response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The socket failed or timed out; the caller decides whether that is `timeout` or
    /// `docker_unreachable` (see [`std::io::ErrorKind`]).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection before the response was complete. Retry on a new
    /// connection or report the daemon as unreachable.
    #[error("connection closed before the response was complete ({0})")]
    Truncated(&'static str),
    /// The bytes are not HTTP/1.1. Report a protocol error; do not retry.
    #[error("invalid HTTP response: {0}")]
    Invalid(String),
    /// The body is larger than the caller allows. Report it; do not retry.
    #[error("response body larger than {0} bytes")]
    TooLarge(usize),
}

/// A parsed status line and headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub status: u16,
    /// Names in lower case, values as sent (lossy UTF-8).
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the body of a response ends (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    ToEof,
}

impl Framing {
    /// Decides the framing from the request method and the response head.
    pub fn of(head_request: bool, head: &Head) -> Result<Framing, HttpError> {
        if head_request
            || (100..200).contains(&head.status) && head.status != 101
            || matches!(head.status, 204 | 304)
        {
            return Ok(Framing::None);
        }
        if head.status == 101 {
            // An upgraded (hijacked) connection carries raw bytes until one side closes.
            return Ok(Framing::ToEof);
        }
        if let Some(te) = head.header("transfer-encoding") {
            if te
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("chunked"))
            {
                return Ok(Framing::Chunked);
            }
            return Ok(Framing::ToEof);
        }
        if let Some(cl) = head.header("content-length") {
            let n = cl
                .trim()
                .parse::<u64>()
                .map_err(|_| HttpError::Invalid(format!("bad Content-Length {cl:?}")))?;
            return Ok(Framing::Length(n));
        }
        Ok(Framing::ToEof)
    }
}

/// Whether a source has bytes within a wait (see [`WaitReadable`]).
type Ready<'a, R> = &'a dyn Fn(&R, Duration) -> bool;

/// A byte source that can say whether more bytes arrive within a short wait, so that
/// [`ResponseReader::read_body_coalesced`] can join pieces without delaying them long.
pub trait WaitReadable {
    /// True when bytes can be read (or the end reached) within `timeout` (zero: right now).
    fn wait_readable(&self, timeout: Duration) -> bool;
}

/// The largest read buffer a thread keeps for its next reader (a stream's 32 KiB pieces, plus
/// a piece of the previous read moved to the front).
const KEEP_MAX: usize = 64 * 1024 + 4096;

thread_local! {
    /// The read buffer of this thread's last reader, for its next one.
    static KEPT: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A reader's buffer: taken from the thread's kept one and given back when the reader goes.
/// A stream thread or command worker reads one answer after another; without this, each
/// answer's buffer was a fresh allocation, which musl's allocator maps, the first read zeroes
/// page by page, and the last free unmaps again (a `mmap`, page faults and a `munmap` per
/// call, about 0.1 ms). Its bytes are stale, never shown: a reader reads only what it filled.
struct Scratch(Vec<u8>);

impl Scratch {
    fn take() -> Scratch {
        Scratch(KEPT.try_with(Cell::take).unwrap_or_default())
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if self.0.capacity() <= KEEP_MAX {
            let buf = std::mem::take(&mut self.0);
            // Fails only while the thread exits: the buffer is then freed.
            let _ = KEPT.try_with(|k| k.set(buf));
        }
    }
}

impl Deref for Scratch {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

/// Reads successive responses from one connection, keeping bytes read past the current
/// message for the next one.
pub struct ResponseReader<R> {
    inner: R,
    /// Read bytes are `buf[pos..end]`; `buf` only grows (zeroed once, and kept by the thread
    /// for its next reader), so a read never clears memory it is about to overwrite.
    buf: Scratch,
    /// Start of unconsumed bytes in `buf`.
    pos: usize,
    /// End of read bytes in `buf`.
    end: usize,
    /// Bytes asked for per read.
    read_size: usize,
    /// See [`ResponseReader::read_body_coalesced`].
    hold: Duration,
}

impl<R: Read> ResponseReader<R> {
    pub fn new(inner: R) -> Self {
        ResponseReader {
            inner,
            buf: Scratch::take(),
            pos: 0,
            end: 0,
            read_size: 8 * 1024,
            hold: COALESCE_HOLD,
        }
    }

    /// How long [`ResponseReader::read_body_coalesced`] may hold bytes (default
    /// [`COALESCE_HOLD`]).
    pub fn with_coalesce_hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// Reads up to `n` bytes per call (passthrough streams read in 32 KiB pieces).
    pub fn with_read_size(mut self, n: usize) -> Self {
        self.read_size = n.max(512);
        self
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The source, when every byte read from it was consumed (nothing of a next response is
    /// buffered here): a kept-alive connection can serve the next request.
    pub fn into_inner_if_drained(self) -> Option<R> {
        (self.pos == self.end).then_some(self.inner)
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes into the buffer. Returns 0 at end of stream.
    fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.pos > 32 * 1024 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        // Read straight into the buffer: no stack copy, so small thread stacks suffice.
        let want = self.end + self.read_size;
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        let r = loop {
            match self.inner.read(&mut self.buf[self.end..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        if let Ok(n) = r {
            self.end += n;
        }
        r
    }

    /// Whether the connection has no more bytes at all (clean end between responses).
    pub fn at_eof(&mut self) -> Result<bool, HttpError> {
        if !self.pending().is_empty() {
            return Ok(false);
        }
        Ok(self.fill()? == 0)
    }

    /// Reads the status line and headers. 1xx informational responses other than 101 are
    /// skipped.
    pub fn read_head(&mut self) -> Result<Head, HttpError> {
        loop {
            let head = self.read_one_head()?;
            if (100..200).contains(&head.status) && head.status != 101 {
                continue;
            }
            return Ok(head);
        }
    }

    fn read_one_head(&mut self) -> Result<Head, HttpError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(self.pending()) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp
                        .code
                        .ok_or_else(|| HttpError::Invalid("no status code".into()))?;
                    let headers = resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    self.consume(n);
                    return Ok(Head { status, headers });
                }
                Ok(httparse::Status::Partial) => {
                    if self.pending().len() > MAX_HEAD {
                        return Err(HttpError::Invalid(format!(
                            "response head larger than {MAX_HEAD} bytes"
                        )));
                    }
                }
                Err(e) => return Err(HttpError::Invalid(e.to_string())),
            }
            if self.fill()? == 0 {
                return Err(HttpError::Truncated(if self.pending().is_empty() {
                    "no response"
                } else {
                    "in the response head"
                }));
            }
        }
    }

    /// Reads the body with `framing`, passing each piece of data to `on_data` as it arrives.
    /// Returns the number of body bytes. Fails with [`HttpError::TooLarge`] past `limit`.
    pub fn read_body(
        &mut self,
        framing: Framing,
        limit: usize,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<u64, HttpError> {
        let mut sink = Sink::new(0, limit, on_data);
        self.body_into(framing, &mut sink, None)?;
        sink.flush();
        Ok(sink.total)
    }

    /// Reads more. What the sink collected goes out first unless more bytes arrive before
    /// its oldest byte is `hold` old (a read that could wait never holds data longer).
    fn fill_after(&mut self, sink: &mut Sink<'_>, hold: Option<Ready<'_, R>>) -> io::Result<usize> {
        if let (Some(ready), Some(since)) = (hold, sink.since) {
            // Short naps rather than a wait that wakes at the first byte: a log written a
            // line at a time would otherwise cost a wake-up per line.
            loop {
                if ready(&self.inner, Duration::ZERO) {
                    break;
                }
                let left = self.hold.saturating_sub(since.elapsed());
                if left.is_zero() {
                    sink.flush();
                    break;
                }
                std::thread::sleep(left.min(HOLD_NAP));
            }
        } else {
            sink.flush();
        }
        self.fill()
    }

    fn body_into(
        &mut self,
        framing: Framing,
        sink: &mut Sink<'_>,
        hold: Option<Ready<'_, R>>,
    ) -> Result<(), HttpError> {
        match framing {
            Framing::None => {}
            Framing::Length(mut left) => {
                if left > sink.limit as u64 {
                    return Err(HttpError::TooLarge(sink.limit));
                }
                while left > 0 {
                    if self.pending().is_empty() && self.fill_after(sink, hold)? == 0 {
                        return Err(HttpError::Truncated("in a Content-Length body"));
                    }
                    let take = (self.pending().len() as u64).min(left) as usize;
                    sink.push(&self.buf[self.pos..self.pos + take])?;
                    self.consume(take);
                    left -= take as u64;
                }
            }
            Framing::ToEof => loop {
                if self.pending().is_empty() && self.fill_after(sink, hold)? == 0 {
                    break;
                }
                let n = self.pending().len();
                sink.push(&self.buf[self.pos..self.pos + n])?;
                self.consume(n);
            },
            Framing::Chunked => loop {
                let size = loop {
                    match httparse::parse_chunk_size(self.pending()) {
                        Ok(httparse::Status::Complete((n, size))) => {
                            self.consume(n);
                            break size;
                        }
                        Ok(httparse::Status::Partial) => {
                            if self.pending().len() > 1024 {
                                return Err(HttpError::Invalid("chunk size line too long".into()));
                            }
                            if self.fill_after(sink, hold)? == 0 {
                                return Err(HttpError::Truncated("in a chunk size line"));
                            }
                        }
                        Err(_) => return Err(HttpError::Invalid("invalid chunk size line".into())),
                    }
                };
                if size == 0 {
                    sink.flush();
                    self.skip_trailers()?;
                    break;
                }
                if sink.total + size > sink.limit as u64 {
                    return Err(HttpError::TooLarge(sink.limit));
                }
                let mut left = size;
                while left > 0 {
                    if self.pending().is_empty() && self.fill_after(sink, hold)? == 0 {
                        return Err(HttpError::Truncated("in a chunk"));
                    }
                    let take = (self.pending().len() as u64).min(left) as usize;
                    sink.push(&self.buf[self.pos..self.pos + take])?;
                    self.consume(take);
                    left -= take as u64;
                }
                while self.pending().len() < 2 {
                    if self.fill_after(sink, hold)? == 0 {
                        return Err(HttpError::Truncated("after a chunk"));
                    }
                }
                if &self.pending()[..2] != b"\r\n" {
                    return Err(HttpError::Invalid("chunk not followed by CRLF".into()));
                }
                self.consume(2);
            },
        }
        Ok(())
    }

    /// Skips the trailer section after the last chunk, up to and including the blank line.
    fn skip_trailers(&mut self) -> Result<(), HttpError> {
        loop {
            if let Some(i) = self.pending().windows(2).position(|w| w == b"\r\n") {
                self.consume(i + 2);
                if i == 0 {
                    return Ok(());
                }
                continue;
            }
            if self.pending().len() > MAX_HEAD {
                return Err(HttpError::Invalid("trailers too large".into()));
            }
            if self.fill()? == 0 {
                return Err(HttpError::Truncated("in the chunked trailer"));
            }
        }
    }
}

/// How long body bytes may wait in [`ResponseReader::read_body_coalesced`] for more to join
/// them: the most latency it adds to a followed log or an interactive session.
pub const COALESCE_HOLD: Duration = Duration::from_millis(2);
/// How long one nap within the hold lasts.
const HOLD_NAP: Duration = Duration::from_micros(250);

impl<R: Read + WaitReadable> ResponseReader<R> {
    /// [`ResponseReader::read_body`], joining small pieces into pieces of up to `cap` bytes:
    /// a busy log that dockerd writes as one HTTP chunk per line travels in a few large
    /// pieces instead of one per line. Collected bytes go out when `cap` is reached, at the
    /// end, and whenever the source has nothing more within the hold ([`COALESCE_HOLD`]) of the oldest
    /// collected byte, so `docker logs -f` and an interactive exec stay prompt.
    pub fn read_body_coalesced(
        &mut self,
        framing: Framing,
        limit: usize,
        cap: usize,
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<u64, HttpError> {
        let mut sink = Sink::new(cap, limit, on_data);
        let ready = |r: &R, t: Duration| r.wait_readable(t);
        self.body_into(framing, &mut sink, Some(&ready))?;
        sink.flush();
        Ok(sink.total)
    }
}

/// Where [`ResponseReader::read_body_coalesced`] puts body bytes: straight through, or
/// collected up to `cap` bytes.
struct Sink<'a> {
    out: Vec<u8>,
    /// When the oldest byte in `out` arrived.
    since: Option<Instant>,
    cap: usize,
    total: u64,
    limit: usize,
    on_data: &'a mut dyn FnMut(&[u8]),
}

impl<'a> Sink<'a> {
    fn new(cap: usize, limit: usize, on_data: &'a mut dyn FnMut(&[u8])) -> Self {
        Sink {
            out: Vec::new(),
            since: None,
            cap,
            total: 0,
            limit,
            on_data,
        }
    }

    fn push(&mut self, data: &[u8]) -> Result<(), HttpError> {
        self.total += data.len() as u64;
        if self.total > self.limit as u64 {
            return Err(HttpError::TooLarge(self.limit));
        }
        if data.is_empty() {
            return Ok(());
        }
        if self.out.is_empty() && data.len() >= self.cap {
            (self.on_data)(data);
            return Ok(());
        }
        if self.out.len() + data.len() > self.cap {
            self.flush();
        }
        if data.len() >= self.cap {
            (self.on_data)(data);
        } else {
            if self.out.is_empty() {
                self.since = Some(Instant::now());
            }
            self.out.extend_from_slice(data);
        }
        Ok(())
    }

    fn flush(&mut self) {
        if !self.out.is_empty() {
            (self.on_data)(&self.out);
            self.out.clear();
        }
        self.since = None;
    }
}

/// Splits a byte stream into lines (`\n`-terminated) as pieces arrive.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    /// Feeds bytes; calls `on_line` for each complete line (without the newline).
    pub fn feed(&mut self, data: &[u8], on_line: &mut dyn FnMut(&[u8])) {
        let mut rest = data;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            if self.partial.is_empty() {
                on_line(&rest[..i]);
            } else {
                self.partial.extend_from_slice(&rest[..i]);
                on_line(&self.partial);
                self.partial.clear();
            }
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
    }

    /// Emits a final line without a newline, if any.
    pub fn finish(&mut self, on_line: &mut dyn FnMut(&[u8])) {
        if !self.partial.is_empty() {
            on_line(&self.partial);
            self.partial.clear();
        }
    }

    /// Bytes waiting for their newline.
    pub fn pending_len(&self) -> usize {
        self.partial.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out 1 to 3 bytes per call, cycling.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.step = self.step % 3 + 1;
            let n = self.step.min(out.len()).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn read_all(bytes: &[u8], trickle: bool, head_req: bool) -> Result<(Head, Vec<u8>), HttpError> {
        let reader: Box<dyn Read> = if trickle {
            Box::new(Trickle {
                data: bytes.to_vec(),
                pos: 0,
                step: 0,
            })
        } else {
            Box::new(io::Cursor::new(bytes.to_vec()))
        };
        let mut r = ResponseReader::new(reader);
        let head = r.read_head()?;
        let mut body = Vec::new();
        r.read_body(Framing::of(head_req, &head)?, 1 << 20, &mut |d| {
            body.extend_from_slice(d)
        })?;
        Ok((head, body))
    }

    #[test]
    fn content_length_body() {
        for trickle in [false, true] {
            let (h, b) = read_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nApi-Version: 1.41\r\n\r\nhelloEXTRA",
                trickle,
                false,
            )
            .unwrap();
            assert_eq!(h.status, 200);
            assert_eq!(h.header("API-VERSION"), Some("1.41"));
            assert_eq!(b, b"hello");
        }
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: y\r\n\r\n";
        for trickle in [false, true] {
            let (_, b) = read_all(raw, trickle, false).unwrap();
            assert_eq!(b, b"Wikipedia in\r\n\r\nchunks.");
        }
    }

    #[test]
    fn eof_body_and_no_body_cases() {
        let (_, b) = read_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n\x01\0\0\0\0\0\0\x03out", true, false).unwrap();
        assert_eq!(b, b"\x01\0\0\0\0\0\0\x03out");
        let (h, b) = read_all(b"HTTP/1.1 304 Not Modified\r\n\r\n", false, false).unwrap();
        assert_eq!((h.status, b.len()), (304, 0));
        let (h, b) =
            read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", false, true).unwrap();
        assert_eq!((h.status, b.len()), (200, 0));
        let (h, _) = read_all(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
            true,
            false,
        )
        .unwrap();
        assert_eq!(h.status, 201);
    }

    #[test]
    fn bad_and_truncated_input() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "no response"),
            (b"HTTP/1.1 200 OK\r\nContent-Le", "head"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
                "Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                "in a chunk",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde",
                "after a chunk",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdeXX",
                "CRLF",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
                "chunk size line",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "Content-Length",
            ),
            (b"SSH-2.0-OpenSSH\r\n\r\n", "invalid HTTP"),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "invalid HTTP"),
        ];
        assert!(!cases.is_empty());
        for (raw, want) in cases {
            for trickle in [false, true] {
                match read_all(raw, trickle, false) {
                    Ok(x) => panic!("{:?} parsed as {x:?}", String::from_utf8_lossy(raw)),
                    Err(e) => assert!(
                        e.to_string().contains(want),
                        "{:?}: {e} (want {want})",
                        String::from_utf8_lossy(raw)
                    ),
                }
            }
        }
    }

    #[test]
    fn a_thread_reuses_its_read_buffer_and_never_shows_its_old_bytes() {
        let read = |raw: &[u8]| {
            let mut r = ResponseReader::new(io::Cursor::new(raw.to_vec()));
            let head = r.read_head().unwrap();
            let framing = Framing::of(false, &head).unwrap();
            let mut body = Vec::new();
            r.read_body(framing, 1 << 20, &mut |d| body.extend_from_slice(d))
                .unwrap();
            let at = r.buf.as_ptr();
            (body, at)
        };
        let long = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n{}",
            "A".repeat(3000)
        );
        let (body, first) = read(long.as_bytes());
        assert_eq!(body, vec![b'A'; 3000]);
        let (body, second) = read(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(body, b"ok");
        assert_eq!(
            first, second,
            "the second reader on the thread took the first's buffer"
        );
        // A chunked answer whose end is short: nothing of the 3000 bytes leaks into it.
        let (body, _) =
            read(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n");
        assert_eq!(body, b"z");
        // Two readers at once on one thread: each has its own buffer.
        let a = ResponseReader::new(io::Cursor::new(Vec::new()));
        let mut b = ResponseReader::new(io::Cursor::new(b"x".to_vec()));
        assert_eq!(b.fill().unwrap(), 1);
        assert_ne!(a.buf.as_ptr(), b.buf.as_ptr());
        assert_eq!(b.pending(), b"x");
    }

    #[test]
    fn limits_are_enforced() {
        let mut r = ResponseReader::new(io::Cursor::new(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n".to_vec(),
        ));
        let h = r.read_head().unwrap();
        let e = r
            .read_body(Framing::of(false, &h).unwrap(), 10, &mut |_| {})
            .unwrap_err();
        assert!(matches!(e, HttpError::TooLarge(10)));
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() <= MAX_HEAD {
            huge.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        let e = ResponseReader::new(io::Cursor::new(huge))
            .read_head()
            .unwrap_err();
        assert!(matches!(e, HttpError::Invalid(_)), "{e}");
    }

    #[test]
    fn line_splitter_joins_split_lines() {
        let mut s = LineSplitter::default();
        let mut lines = Vec::new();
        for piece in [&b"{\"a\""[..], b":1}\n{\"b\":2}\n{\"c", b"\":3}"] {
            s.feed(piece, &mut |l| lines.push(l.to_vec()));
        }
        s.finish(&mut |l| lines.push(l.to_vec()));
        assert_eq!(
            lines,
            vec![
                b"{\"a\":1}".to_vec(),
                b"{\"b\":2}".to_vec(),
                b"{\"c\":3}".to_vec()
            ]
        );
    }

    /// A reader that hands out one script entry per call and records, for each call, how
    /// many pieces the body callback had received by then.
    struct Scripted {
        parts: std::collections::VecDeque<Vec<u8>>,
        pieces: std::rc::Rc<std::cell::Cell<usize>>,
        seen_at_read: Vec<usize>,
        ready_within_hold: bool,
    }

    /// Bytes never show up within the hold: every collected piece goes out before a read.
    impl WaitReadable for Scripted {
        fn wait_readable(&self, _: Duration) -> bool {
            self.ready_within_hold
        }
    }

    impl Read for Scripted {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.seen_at_read.push(self.pieces.get());
            let Some(mut p) = self.parts.pop_front() else {
                return Ok(0);
            };
            let n = p.len().min(out.len());
            out[..n].copy_from_slice(&p[..n]);
            if n < p.len() {
                self.parts.push_front(p.split_off(n));
            }
            Ok(n)
        }
    }

    fn chunked(lines: &[&[u8]]) -> Vec<u8> {
        let mut v = Vec::new();
        for l in lines {
            v.extend_from_slice(format!("{:x}\r\n", l.len()).as_bytes());
            v.extend_from_slice(l);
            v.extend_from_slice(b"\r\n");
        }
        v
    }

    /// Reads a chunked body of a 1,000-line burst, then one late line, then the end, each
    /// part in its own read; returns the pieces handed on and, per read, how many pieces
    /// had been handed on before it.
    fn coalesce_run(ready_within_hold: bool) -> (Vec<Vec<u8>>, Vec<usize>) {
        let line = [b'x'; 100];
        let burst: Vec<&[u8]> = (0..1000).map(|_| &line[..]).collect();
        let pieces = std::rc::Rc::new(std::cell::Cell::new(0));
        let mut head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        head.extend_from_slice(&chunked(&burst));
        let parts: std::collections::VecDeque<Vec<u8>> =
            [head, chunked(&[b"late line\n"]), b"0\r\n\r\n".to_vec()]
                .into_iter()
                .collect();
        let mut r = ResponseReader::new(Scripted {
            parts,
            pieces: pieces.clone(),
            seen_at_read: Vec::new(),
            ready_within_hold,
        })
        .with_read_size(1 << 20)
        // Not ready: the hold runs out at once. Ready: it never would.
        .with_coalesce_hold(Duration::from_millis(if ready_within_hold {
            600_000
        } else {
            1
        }));
        let h = r.read_head().unwrap();
        let mut got: Vec<Vec<u8>> = Vec::new();
        let total = r
            .read_body_coalesced(
                Framing::of(false, &h).unwrap(),
                usize::MAX,
                32 * 1024,
                &mut |d| {
                    got.push(d.to_vec());
                    pieces.set(pieces.get() + 1);
                },
            )
            .unwrap();
        assert_eq!(total, 100 * 1000 + 10);
        assert_eq!(got.concat().len(), 100_010);
        let seen = r.get_mut().seen_at_read.clone();
        (got, seen)
    }

    /// Many one-line chunks that arrived together travel as a few large pieces, and when
    /// nothing more comes within the hold, what arrived is handed on before the reader waits
    /// (a followed log's latency).
    #[test]
    fn coalesced_body_joins_small_chunks_and_hands_them_on_before_waiting() {
        let (got, seen) = coalesce_run(false);
        // 100,000 bytes of the burst in pieces of at most 32 KiB: 4, not 1,000.
        let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![32700, 32700, 32700, 1900, 10], "{sizes:?}");
        assert_eq!(got.last().unwrap(), b"late line\n");
        // Reads: the head and burst, the late line, the last chunk. Before the second read
        // every burst byte was out; before the third, the late line was.
        assert_eq!(seen, vec![0, 4, 5], "pieces handed on before each read");
    }

    /// When more bytes arrive within the hold, they join the collected piece.
    #[test]
    fn coalesced_body_holds_a_piece_briefly_when_more_is_arriving() {
        let (got, seen) = coalesce_run(true);
        let sizes: Vec<usize> = got.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![32700, 32700, 32700, 1910], "{sizes:?}");
        assert_eq!(seen, vec![0, 3, 3]);
    }

    #[test]
    fn uncoalesced_body_passes_each_piece() {
        let raw = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            chunked(&[b"a", b"bc", b"def"]),
            b"0\r\n\r\n".to_vec(),
        ]
        .concat();
        let mut r = ResponseReader::new(io::Cursor::new(raw));
        let h = r.read_head().unwrap();
        let mut got = Vec::new();
        r.read_body(Framing::of(false, &h).unwrap(), 100, &mut |d| {
            got.push(d.to_vec())
        })
        .unwrap();
        assert_eq!(got, vec![b"a".to_vec(), b"bc".to_vec(), b"def".to_vec()]);
    }
}
