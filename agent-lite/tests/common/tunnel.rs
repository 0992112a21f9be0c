//! The server side of passthrough streams for tests: opens streams on a connected agent,
//! sends request data and credit, and collects what the agent answers per stream.
#![allow(dead_code)]

use super::ws_server::ServerConn;
use protocol::{
    decode_data_frame, encode_data_frame, Envelope, ErrorBody, Message, StreamCancelPayload,
    StreamCreditPayload, StreamEndPayload, StreamOpenPayload, STREAM_WINDOW,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct StreamState {
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub data: Vec<u8>,
    /// Data bytes received and not yet credited back.
    pub uncredited: usize,
    pub ended: bool,
    pub end_error: Option<ErrorBody>,
    pub cancelled: bool,
    /// Send credit back automatically as data arrives.
    pub auto_credit: bool,
    /// Data frames received (each at most STREAM_CHUNK).
    pub frames: usize,
    /// Data bytes received in all.
    pub total: usize,
    /// Count data without keeping it.
    pub discard: bool,
}

impl StreamState {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub struct Tunnel {
    pub conn: ServerConn,
    pub streams: HashMap<u32, StreamState>,
    pub heartbeats: Vec<Instant>,
    pub others: Vec<Envelope>,
    /// Credit the agent granted per stream (bytes of our data it consumed).
    pub agent_credit: HashMap<u32, usize>,
    next_id: u32,
}

pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Vec<(String, String)>,
    pub body: Option<&'a [u8]>,
    pub upgrade: bool,
}

impl<'a> Request<'a> {
    pub fn get(path: &'a str) -> Self {
        Request {
            method: "GET",
            path,
            headers: Vec::new(),
            body: None,
            upgrade: false,
        }
    }

    pub fn new(method: &'a str, path: &'a str) -> Self {
        Request {
            method,
            path,
            ..Request::get(path)
        }
    }

    pub fn json(method: &'a str, path: &'a str, body: &'a [u8]) -> Self {
        Request {
            method,
            path,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: Some(body),
            upgrade: false,
        }
    }
}

impl Tunnel {
    pub fn new(conn: ServerConn) -> Tunnel {
        Tunnel {
            conn,
            streams: HashMap::new(),
            heartbeats: Vec::new(),
            others: Vec::new(),
            agent_credit: HashMap::new(),
            next_id: 1,
        }
    }

    pub fn state(&mut self, id: u32) -> &mut StreamState {
        self.streams.entry(id).or_default()
    }

    /// Opens a stream; with a body, sends it (≤ 32 KiB frames) and `stream_end`, respecting
    /// the agent's window.
    pub fn open(&mut self, req: Request<'_>) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        self.open_with_id(id, &req, req.body.is_some());
        if let Some(b) = req.body {
            self.send_body(id, b);
            self.end(id);
        }
        id
    }

    pub fn open_with_id(&mut self, id: u32, req: &Request<'_>, body: bool) {
        self.state(id).auto_credit = true;
        self.conn.send(&Envelope::new(
            format!("so-{id}"),
            Message::StreamOpen(StreamOpenPayload {
                stream_id: id,
                method: req.method.into(),
                path: req.path.into(),
                headers: req.headers.clone(),
                body,
                upgrade: req.upgrade,
            }),
        ));
        self.next_id = self.next_id.max(id + 1);
    }

    pub fn next_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Sends request bytes, never more than the agent's window un-credited.
    pub fn send_body(&mut self, id: u32, body: &[u8]) {
        let mut sent_uncredited = 0usize;
        let mut credited_total = 0usize;
        let mut pos = 0;
        while pos < body.len() {
            let n = (body.len() - pos).min(protocol::STREAM_CHUNK);
            let credited = self.agent_credit.get(&id).copied().unwrap_or(0);
            if credited > credited_total {
                sent_uncredited -= credited - credited_total;
                credited_total = credited;
            }
            if sent_uncredited + n > STREAM_WINDOW as usize {
                self.pump(Duration::from_millis(50));
                continue;
            }
            self.send_data(id, &body[pos..pos + n]);
            sent_uncredited += n;
            pos += n;
        }
    }

    pub fn send_data(&mut self, id: u32, data: &[u8]) {
        self.conn
            .ws
            .send(tungstenite::Message::Binary(
                encode_data_frame(id, data).into(),
            ))
            .expect("send data frame");
    }

    pub fn end(&mut self, id: u32) {
        self.conn.send(&Envelope::new(
            format!("se-{id}"),
            Message::StreamEnd(StreamEndPayload {
                stream_id: id,
                error: None,
            }),
        ));
    }

    pub fn cancel(&mut self, id: u32) {
        self.conn.send(&Envelope::new(
            format!("sc-{id}"),
            Message::StreamCancel(StreamCancelPayload {
                stream_id: id,
                reason: Some("test cancelled".into()),
            }),
        ));
    }

    pub fn credit(&mut self, id: u32, bytes: u32) {
        self.conn.send(&Envelope::new(
            format!("sk-{id}"),
            Message::StreamCredit(StreamCreditPayload {
                stream_id: id,
                bytes,
            }),
        ));
        let s = self.state(id);
        s.uncredited = s.uncredited.saturating_sub(bytes as usize);
    }

    /// Reads frames for up to `limit` (returns after the first frame or the limit).
    pub fn pump(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            match self.conn.ws.read() {
                Ok(tungstenite::Message::Binary(b)) => {
                    let (id, data) = decode_data_frame(&b).expect("valid data frame");
                    assert!(data.len() <= protocol::STREAM_CHUNK);
                    let s = self.state(id);
                    if !s.discard {
                        s.data.extend_from_slice(data);
                    }
                    s.total += data.len();
                    s.uncredited += data.len();
                    s.frames += 1;
                    assert!(
                        s.uncredited <= STREAM_WINDOW as usize,
                        "stream {id}: the agent sent {} bytes without credit",
                        s.uncredited
                    );
                    if s.auto_credit {
                        let n = data.len() as u32;
                        self.credit(id, n);
                    }
                    return true;
                }
                Ok(tungstenite::Message::Text(t)) => {
                    let env = Envelope::decode(t.as_bytes()).expect("valid message");
                    match env.message {
                        Message::StreamResponse(r) => {
                            let s = self.state(r.stream_id);
                            assert!(s.status.is_none(), "second stream_response");
                            s.status = Some(r.status);
                            s.headers = r.headers;
                        }
                        Message::StreamEnd(e) => {
                            let s = self.state(e.stream_id);
                            s.ended = true;
                            s.end_error = e.error;
                        }
                        Message::StreamCancel(c) => self.state(c.stream_id).cancelled = true,
                        Message::StreamCredit(c) => {
                            *self.agent_credit.entry(c.stream_id).or_default() += c.bytes as usize
                        }
                        Message::Heartbeat(_) => self.heartbeats.push(Instant::now()),
                        _ => self.others.push(env),
                    }
                    return true;
                }
                Ok(tungstenite::Message::Close(_)) => panic!("the agent closed the connection"),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    let _ = self.conn.ws.flush();
                }
                Err(e) => panic!("connection failed: {e}"),
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Pumps until `cond` holds, failing after `limit`.
    pub fn until(&mut self, limit: Duration, what: &str, mut cond: impl FnMut(&Tunnel) -> bool) {
        let deadline = Instant::now() + limit;
        while !cond(self) {
            assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
            self.pump(Duration::from_millis(50));
        }
    }

    /// Waits for the stream's end and returns its state.
    pub fn finish(&mut self, id: u32, limit: Duration) -> StreamState {
        self.until(limit, &format!("stream {id} ended"), |t| {
            t.streams.get(&id).is_some_and(|s| s.ended || s.cancelled)
        });
        self.streams.remove(&id).unwrap_or_default()
    }

    /// One whole request: open, body, wait for the end.
    pub fn request(&mut self, req: Request<'_>) -> StreamState {
        let id = self.open(req);
        self.finish(id, Duration::from_secs(60))
    }
}
