//! The server side of TLS on the listener: the one rustls [`ServerConfig`] built from
//! `--tls-cert`/`--tls-key` (shared by every connection), and [`TlsStream`], a connection that
//! holds no buffer while it is idle. Also the one rustls client config builder
//! ([`client_config`]) for what the server dials over TLS (Docker hosts, other replicas).
//!
//! Why not `tokio_rustls`: a buffered rustls connection keeps a 4 KiB receive buffer (and its
//! other buffers' spare room) for its whole life, and an agent's session is idle nearly all
//! the time. Ten thousand agents paid 40 MB for empty buffers. [`TlsStream`] drives rustls'
//! unbuffered API instead: ciphertext is read only when the socket is readable, into a buffer
//! that is freed as soon as every whole record in it is processed; decrypted bytes the reader
//! has not taken yet and ciphertext not yet written are kept in buffers freed once empty.
//! The handshake, the record layer, versions and cipher suites are rustls' own (ring provider,
//! its safe defaults: TLS 1.2 and 1.3); this module only moves bytes.
//!
//! Owns: the TLS configs and the server's TLS connection stream. Must not: know HTTP, or keep a
//! buffer around while a connection waits.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use anyhow::Context as _;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// TLS material of an https host (the key already decrypted).
pub struct TlsMaterial {
    pub ca_pem: Option<String>,
    pub cert_pem: Option<String>,
    pub key_pem: Option<protocol::Secret>,
    pub server_name: Option<String>,
}

/// A rustls client config: the CA of `tls` (or the web PKI roots) and its client certificate.
/// For https Docker hosts and for replicas that forward to each other over https.
pub fn client_config(tls: &TlsMaterial) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_pem {
        Some(ca) => {
            for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
                let cert = cert.map_err(|e| format!("tls_ca: {e}"))?;
                roots.add(cert).map_err(|e| format!("tls_ca: {e}"))?;
            }
            if roots.is_empty() {
                return Err("tls_ca holds no PEM certificate".into());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match (&tls.cert_pem, &tls.key_pem) {
        (Some(cert), Some(key)) => {
            let certs = rustls_pemfile::certs(&mut cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("tls_cert: {e}"))?;
            let key = rustls_pemfile::private_key(&mut key.expose().as_bytes())
                .map_err(|e| format!("tls_key: {e}"))?
                .ok_or("tls_key holds no PEM private key")?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("tls_cert and tls_key go together".into()),
    }
}

/// How many bytes one read from the socket may take: a whole TLS record (16 KiB of payload
/// and its header and tag), so a bulk stream needs one read per record.
const READ_SIZE: usize = 16 * 1024 + 256;
/// The most plaintext encrypted per write (one full record).
const WRITE_CHUNK: usize = 16 * 1024;

/// The server's TLS config: the certificate chain and key from PEM files, rustls' ring
/// provider with its safe default versions (TLS 1.2, 1.3), ALPN `http/1.1`.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let cert_pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("parsing {}", key.display()))?
        .with_context(|| format!("{} holds no private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut sc = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not fit")?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(sc))
}

/// A server-side TLS connection over TCP (see the module header).
pub struct TlsStream {
    io: TcpStream,
    conn: UnbufferedServerConnection,
    /// Ciphertext read and not yet processed (a partial record); no allocation when empty.
    incoming: Vec<u8>,
    /// Decrypted bytes not yet read, from `plain_at` on; no allocation when empty.
    plain: Vec<u8>,
    plain_at: usize,
    /// Ciphertext not yet written, from `out_at` on; no allocation when empty.
    out: Vec<u8>,
    out_at: usize,
    /// The peer sent close_notify, or the socket reached its end.
    read_closed: bool,
    eof_without_close_notify: bool,
    close_notify_sent: bool,
}

/// What processing the buffered ciphertext came to.
enum Progress {
    /// More ciphertext is needed.
    NeedData,
    /// The handshake is complete and nothing is left to process.
    Traffic,
}

/// Completes the server side of the handshake on `io`.
pub async fn accept(config: Arc<ServerConfig>, io: TcpStream) -> io::Result<TlsStream> {
    let conn = UnbufferedServerConnection::new(config).map_err(io::Error::other)?;
    let mut s = TlsStream {
        io,
        conn,
        incoming: Vec::new(),
        plain: Vec::new(),
        plain_at: 0,
        out: Vec::new(),
        out_at: 0,
        read_closed: false,
        eof_without_close_notify: false,
        close_notify_sent: false,
    };
    std::future::poll_fn(|cx| s.poll_handshake(cx)).await?;
    Ok(s)
}

impl TlsStream {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            self.process()?;
            ready!(self.poll_flush_out(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                )));
            }
            ready!(self.poll_fill(cx))?;
        }
    }

    /// Runs rustls over the buffered ciphertext until it needs more: decrypted data goes to
    /// `plain`, handshake and alert records to `out`.
    fn process(&mut self) -> io::Result<Progress> {
        let Self {
            conn,
            incoming,
            plain,
            out,
            read_closed,
            ..
        } = self;
        loop {
            let status = conn.process_tls_records(incoming.as_mut_slice());
            let mut discard = status.discard;
            let state = status.state.map_err(tls_error)?;
            let next = match state {
                ConnectionState::ReadTraffic(mut r) => {
                    while let Some(rec) = r.next_record() {
                        let rec = rec.map_err(tls_error)?;
                        discard += rec.discard;
                        plain.extend_from_slice(rec.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    encode_into(out, |buf| e.encode(buf))?;
                    None
                }
                // `out` is written before anything encrypted later, so the records are
                // transmitted in order even though the socket may take them later.
                ConnectionState::TransmitTlsData(t) => {
                    t.done();
                    None
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    *read_closed = true;
                    Some(Progress::Traffic)
                }
                ConnectionState::BlockedHandshake => Some(Progress::NeedData),
                ConnectionState::WriteTraffic(_) => Some(Progress::Traffic),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "unexpected TLS state (early data is not accepted)",
                    ))
                }
            };
            incoming.drain(..discard);
            if let Some(p) = next {
                release_if_empty(incoming);
                return Ok(p);
            }
        }
    }

    /// Reads more ciphertext once the socket is readable (the buffer is made only then).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            self.incoming.reserve(READ_SIZE);
            match self.io.try_read_buf(&mut self.incoming) {
                Ok(0) => {
                    release_if_empty(&mut self.incoming);
                    self.read_closed = true;
                    self.eof_without_close_notify = true;
                    return Poll::Ready(Ok(()));
                }
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    release_if_empty(&mut self.incoming);
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    /// Writes `out` to the socket; frees it once everything is written.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_at < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_at..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_at += n;
        }
        self.out = Vec::new();
        self.out_at = 0;
        Poll::Ready(Ok(()))
    }

    /// Encrypts `data` into `out` (after any pending handshake records).
    fn encrypt(&mut self, data: &[u8]) -> io::Result<()> {
        // Each round processes what arrived first; two are enough, the bound is a guard.
        for _ in 0..8 {
            if let Progress::NeedData = self.process()? {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the TLS handshake is not complete",
                ));
            }
            let status = self.conn.process_tls_records(self.incoming.as_mut_slice());
            let discard = status.discard;
            let done = match status.state.map_err(tls_error)? {
                ConnectionState::WriteTraffic(mut w) => {
                    encrypt_into(&mut self.out, |buf| w.encrypt(data, buf))?;
                    true
                }
                ConnectionState::Closed => return Err(io::ErrorKind::BrokenPipe.into()),
                // Something arrived or must go out first: process it and try again.
                _ => false,
            };
            self.incoming.drain(..discard);
            if done {
                return Ok(());
            }
        }
        Err(io::Error::other("TLS: no write state reached"))
    }

    fn queue_close_notify(&mut self) -> io::Result<()> {
        self.process()?;
        let status = self.conn.process_tls_records(self.incoming.as_mut_slice());
        let discard = status.discard;
        if let Ok(ConnectionState::WriteTraffic(mut w)) = status.state {
            encrypt_into(&mut self.out, |buf| w.queue_close_notify(buf))?;
        }
        self.incoming.drain(..discard);
        Ok(())
    }

    /// Copies decrypted bytes to `buf`; frees `plain` once it is all read.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) {
        let n = buf.remaining().min(self.plain.len() - self.plain_at);
        buf.put_slice(&self.plain[self.plain_at..self.plain_at + n]);
        self.plain_at += n;
        if self.plain_at == self.plain.len() {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
    }
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn release_if_empty(v: &mut Vec<u8>) {
    if v.is_empty() {
        *v = Vec::new();
    }
}

/// Appends what `write` puts into a buffer to `out`, growing the buffer when rustls asks.
fn append_with<E>(
    out: &mut Vec<u8>,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    too_small: impl Fn(&E) -> Option<usize>,
) -> io::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let start = out.len();
    let mut room = 512;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => match too_small(&e) {
                Some(need) if need > room => room = need,
                _ => {
                    out.truncate(start);
                    return Err(io::Error::other(e));
                }
            },
        }
    }
}

fn encode_into(
    out: &mut Vec<u8>,
    write: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> io::Result<()> {
    append_with(out, write, |e| match e {
        EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    })
}

fn encrypt_into(
    out: &mut Vec<u8>,
    write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> io::Result<()> {
    append_with(out, write, |e| match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    })
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_at < this.plain.len() {
                this.take_plain(buf);
                return Poll::Ready(Ok(()));
            }
            this.process()?;
            if this.plain_at < this.plain.len() {
                continue;
            }
            // Alerts and post-handshake records go out; a full socket does not stop reading.
            if let Poll::Ready(Err(e)) = this.poll_flush_out(cx) {
                return Poll::Ready(Err(e));
            }
            if this.read_closed {
                if this.eof_without_close_notify {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection without a TLS close_notify",
                    )));
                }
                return Poll::Ready(Ok(()));
            }
            ready!(this.poll_fill(cx))?;
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Backpressure: new plaintext is taken only once earlier ciphertext is written.
        ready!(this.poll_flush_out(cx))?;
        let n = data.len().min(WRITE_CHUNK);
        this.encrypt(&data[..n])?;
        // Start writing at once; what the socket does not take now goes on the next call.
        if let Poll::Ready(Err(e)) = this.poll_flush_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sent {
            this.close_notify_sent = true;
            this.queue_close_notify()?;
        }
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_grows_to_what_rustls_asks_for() {
        let mut out = b"ab".to_vec();
        let mut calls = 0;
        append_with(
            &mut out,
            |buf: &mut [u8]| {
                calls += 1;
                if buf.len() < 2000 {
                    return Err(EncodeError::InsufficientSize(InsufficientSizeError {
                        required_size: 2000,
                    }));
                }
                buf[..3].copy_from_slice(b"xyz");
                Ok(3)
            },
            |e| match e {
                EncodeError::InsufficientSize(s) => Some(s.required_size),
                _ => None,
            },
        )
        .unwrap();
        assert_eq!(out, b"abxyz");
        assert_eq!(calls, 2);
    }
}
