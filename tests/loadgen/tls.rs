//! TLS for the load generator (`--tls`): a throwaway CA and a server certificate made at run
//! time, and one [`Dialer`] that opens plain or TLS connections for both the simulated agents'
//! WebSockets and the REST client, so every mode measures the same code over either transport.
//!
//! Owns: the test PKI (openssl CLI, P-256 keys, valid for 2 days, in a temporary directory) and
//! the client side of TLS. Must not: weaken anything on the server; the server is started with
//! its own `--tls-cert`/`--tls-key` listener exactly as in production.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

use crate::Fail;

/// A CA and a certificate for `localhost` / `127.0.0.1` signed by it, in a temporary directory.
pub struct Pki {
    dir: tempfile::TempDir,
    roots: Arc<rustls::RootCertStore>,
}

impl Pki {
    /// Makes the CA and the server certificate with the openssl CLI (P-256 ECDSA keys, as a
    /// small deployment would use; the server's handshake cost is one ECDSA signature).
    pub fn generate() -> Result<Pki, Fail> {
        let dir = tempfile::tempdir()?;
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-days", "2"]);
        ca.extend(["-subj", "/CN=docker-ctl-loadgen-ca"]);
        openssl(dir.path(), &ca)?;
        std::fs::write(
            dir.path().join("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        )?;
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", "server.key", "-out", "server.csr"]);
        req.extend(["-subj", "/CN=localhost"]);
        openssl(dir.path(), &req)?;
        openssl(
            dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        )?;
        let mut roots = rustls::RootCertStore::empty();
        let ca_pem = std::fs::read(dir.path().join("ca.crt"))?;
        for c in rustls_pemfile::certs(&mut ca_pem.as_slice()) {
            roots.add(c?)?;
        }
        Ok(Pki {
            dir,
            roots: Arc::new(roots),
        })
    }

    /// The server's arguments: `--tls-cert` and `--tls-key`.
    pub fn server_args(&self) -> Vec<String> {
        let p = |f: &str| self.dir.path().join(f).display().to_string();
        vec![
            "--tls-cert".into(),
            p("server.crt"),
            "--tls-key".into(),
            p("server.key"),
        ]
    }

    /// A dialer that trusts this CA only.
    pub fn dialer(&self) -> Dialer {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cc = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        Dialer {
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(cc))),
        }
    }
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), Fail> {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(|e| format!("--tls needs the openssl CLI to make a test CA: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// Opens connections to the server under test: plain TCP, or TLS to the name `localhost`
/// (every connection shares one client config, as one agent process would).
#[derive(Clone, Default)]
pub struct Dialer {
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Dialer {
    pub fn plain() -> Dialer {
        Dialer::default()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// `ws://addr` or `wss://addr`.
    pub fn ws_base(&self, addr: &str) -> String {
        format!("{}://{addr}", if self.is_tls() { "wss" } else { "ws" })
    }

    /// `http://addr` or `https://addr`.
    pub fn http_base(&self, addr: &str) -> String {
        format!("{}://{addr}", if self.is_tls() { "https" } else { "http" })
    }

    /// A TCP connection (no Nagle) and, with TLS, the completed TLS handshake.
    pub async fn connect(&self, addr: &str) -> io::Result<Stream> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        self.wrap(tcp).await
    }

    /// Connects to `url` (`ws://` or `wss://host:port/path`) and completes the WebSocket
    /// handshake, all within `within`. A failure says which step it was in (TCP connect, TLS
    /// handshake, WebSocket upgrade) and whether the deadline cut it.
    pub async fn websocket(
        &self,
        url: &str,
        cfg: Option<WebSocketConfig>,
        within: Duration,
    ) -> Result<WebSocketStream<Stream>, DialError> {
        let deadline = tokio::time::Instant::now() + within;
        let addr = url
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
            .unwrap_or(url);
        let step = |stage: Stage| move |e: io::Error| DialError::io(stage, e);
        let tcp = until(deadline, Stage::Tcp, TcpStream::connect(addr))
            .await?
            .map_err(step(Stage::Tcp))?;
        tcp.set_nodelay(true).map_err(step(Stage::Tcp))?;
        let stream = until(deadline, Stage::Tls, self.wrap(tcp))
            .await?
            .map_err(step(Stage::Tls))?;
        let (ws, _) = until(
            deadline,
            Stage::WebSocket,
            tokio_tungstenite::client_async_with_config(url, stream, cfg),
        )
        .await?
        .map_err(|e| DialError {
            stage: Stage::WebSocket,
            what: match e {
                tokio_tungstenite::tungstenite::Error::Io(io) => format!("{:?}", io.kind()),
                e => e.to_string(),
            },
        })?;
        Ok(ws)
    }

    /// With TLS: the client handshake to the name `localhost` on `tcp`.
    async fn wrap(&self, tcp: TcpStream) -> io::Result<Stream> {
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some(c) => {
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                Ok(Stream::Tls(Box::new(c.connect(name, tcp).await?)))
            }
        }
    }
}

/// A step of opening a simulated agent's WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Tcp,
    Tls,
    WebSocket,
}

/// Why a dial failed: its step and what happened (`timed out`, an I/O error kind, or the
/// WebSocket error).
#[derive(Debug)]
pub struct DialError {
    pub stage: Stage,
    pub what: String,
}

impl DialError {
    fn io(stage: Stage, e: io::Error) -> DialError {
        let what = match e.kind() {
            // rustls' alerts and certificate errors carry their own text.
            io::ErrorKind::InvalidData | io::ErrorKind::Other => e.to_string(),
            k => format!("{k:?}"),
        };
        DialError { stage, what }
    }

    /// The server was not listening (it is down during a storm): not a failed handshake.
    pub fn refused(&self) -> bool {
        self.stage == Stage::Tcp && self.what == "ConnectionRefused"
    }

    /// A short label for counting failures by cause, e.g. `tls: timed out`.
    pub fn label(&self) -> String {
        let stage = match self.stage {
            Stage::Tcp => "tcp connect",
            Stage::Tls => "tls handshake",
            Stage::WebSocket => "websocket upgrade",
        };
        format!("{stage}: {}", self.what)
    }
}

async fn until<T>(
    deadline: tokio::time::Instant,
    stage: Stage,
    f: impl Future<Output = T>,
) -> Result<T, DialError> {
    tokio::time::timeout_at(deadline, f)
        .await
        .map_err(|_| DialError {
            stage,
            what: "timed out".into(),
        })
}

/// Failed handshakes counted by cause (a [`DialError::label`] or an authentication step).
#[derive(Default)]
pub struct Failures(std::sync::Mutex<std::collections::BTreeMap<String, u64>>);

impl Failures {
    pub fn add(&self, cause: impl Into<String>) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry(cause.into()).or_default() += 1;
        }
    }

    /// `cause: count` pairs, most frequent first; `none` when nothing failed.
    pub fn summary(&self) -> String {
        let mut v: Vec<(String, u64)> = self
            .0
            .lock()
            .map(|m| m.iter().map(|(k, n)| (k.clone(), *n)).collect())
            .unwrap_or_default();
        if v.is_empty() {
            return "none".into();
        }
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v.iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn clear(&self) {
        if let Ok(mut m) = self.0.lock() {
            m.clear();
        }
    }
}

/// The REST client's connector: `hyper_util`'s pooled client dials through the [`Dialer`].
impl tower::Service<hyper::Uri> for Dialer {
    type Response = hyper_util::rt::TokioIo<Stream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: hyper::Uri) -> Self::Future {
        let d = self.clone();
        Box::pin(async move {
            let auth = uri.authority().ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "a URL without host:port")
            })?;
            Ok(hyper_util::rt::TokioIo::new(
                d.connect(auth.as_str()).await?,
            ))
        })
    }
}

/// A plain or TLS client connection.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl hyper_util::client::legacy::connect::Connection for Stream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The test PKI when `--tls` was given.
pub fn pki(args: &crate::Args) -> Result<Option<Pki>, Fail> {
    if !args.tls {
        return Ok(None);
    }
    Ok(Some(Pki::generate()?))
}

/// Prints the transport, and for TLS what one connection negotiated (version, cipher suite).
pub async fn report(dialer: &Dialer, addr: &str) {
    if !dialer.is_tls() {
        println!("transport: plain WebSocket (ws://)");
        return;
    }
    match dialer.connect(addr).await {
        Ok(Stream::Tls(s)) => {
            let (_, conn) = s.get_ref();
            println!(
                "transport: wss:// to the server's own TLS listener, {:?}, {:?}",
                conn.protocol_version(),
                conn.negotiated_cipher_suite().map(|c| c.suite())
            );
        }
        Ok(Stream::Plain(_)) => println!("transport: plain (unexpected)"),
        Err(e) => println!("transport: wss://, probe failed: {e}"),
    }
}
