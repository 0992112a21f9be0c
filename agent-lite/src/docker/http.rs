//! HTTP/1.1 response reading over any `Read`: the head is parsed by `httparse`, bodies are
//! framed by Content-Length, chunked transfer coding (`httparse::parse_chunk_size`), or the
//! end of the stream (raw streams such as `/exec/{id}/start`).
//!
//! Owns: framing and size limits. Must not: know about Docker paths or our error codes, or
//! open sockets (the caller gives a reader, so tests feed canned bytes).

use std::io::{self, Read};

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

/// Reads successive responses from one connection, keeping bytes read past the current
/// message for the next one.
pub struct ResponseReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Start of unconsumed bytes in `buf`.
    pos: usize,
    /// Bytes asked for per read.
    read_size: usize,
}

impl<R: Read> ResponseReader<R> {
    pub fn new(inner: R) -> Self {
        ResponseReader {
            inner,
            buf: Vec::with_capacity(8 * 1024),
            pos: 0,
            read_size: 8 * 1024,
        }
    }

    /// Reads up to `n` bytes per call (passthrough streams read in 32 KiB pieces).
    pub fn with_read_size(mut self, n: usize) -> Self {
        self.read_size = n.max(512);
        self
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Reads more bytes into the buffer. Returns 0 at end of stream.
    fn fill(&mut self) -> io::Result<usize> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 32 * 1024 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        // Read straight into the buffer: no stack copy, so small thread stacks suffice.
        let start = self.buf.len();
        self.buf.resize(start + self.read_size, 0);
        let r = loop {
            match self.inner.read(&mut self.buf[start..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        self.buf.truncate(start + *r.as_ref().unwrap_or(&0));
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
        let mut total: u64 = 0;
        let mut emit = |data: &[u8], total: &mut u64| -> Result<(), HttpError> {
            *total += data.len() as u64;
            if *total > limit as u64 {
                return Err(HttpError::TooLarge(limit));
            }
            if !data.is_empty() {
                on_data(data);
            }
            Ok(())
        };
        match framing {
            Framing::None => {}
            Framing::Length(mut left) => {
                if left > limit as u64 {
                    return Err(HttpError::TooLarge(limit));
                }
                while left > 0 {
                    if self.pending().is_empty() && self.fill()? == 0 {
                        return Err(HttpError::Truncated("in a Content-Length body"));
                    }
                    let take = (self.pending().len() as u64).min(left) as usize;
                    let data = self.buf[self.pos..self.pos + take].to_vec();
                    self.consume(take);
                    left -= take as u64;
                    emit(&data, &mut total)?;
                }
            }
            Framing::ToEof => loop {
                if self.pending().is_empty() && self.fill()? == 0 {
                    break;
                }
                let data = self.pending().to_vec();
                let n = data.len();
                self.consume(n);
                emit(&data, &mut total)?;
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
                            if self.fill()? == 0 {
                                return Err(HttpError::Truncated("in a chunk size line"));
                            }
                        }
                        Err(_) => return Err(HttpError::Invalid("invalid chunk size line".into())),
                    }
                };
                if size == 0 {
                    self.skip_trailers()?;
                    break;
                }
                if total + size > limit as u64 {
                    return Err(HttpError::TooLarge(limit));
                }
                let mut left = size;
                while left > 0 {
                    if self.pending().is_empty() && self.fill()? == 0 {
                        return Err(HttpError::Truncated("in a chunk"));
                    }
                    let take = (self.pending().len() as u64).min(left) as usize;
                    let data = self.buf[self.pos..self.pos + take].to_vec();
                    self.consume(take);
                    left -= take as u64;
                    emit(&data, &mut total)?;
                }
                self.expect_crlf()?;
            },
        }
        Ok(total)
    }

    fn expect_crlf(&mut self) -> Result<(), HttpError> {
        while self.pending().len() < 2 {
            if self.fill()? == 0 {
                return Err(HttpError::Truncated("after a chunk"));
            }
        }
        if &self.pending()[..2] != b"\r\n" {
            return Err(HttpError::Invalid("chunk not followed by CRLF".into()));
        }
        self.consume(2);
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
}
