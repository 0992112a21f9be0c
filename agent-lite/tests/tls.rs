//! `wss://` against a rustls test server with certificates made by openssl: private CA,
//! SHA-256 pins (key and certificate), `verify_ssl: false`, webpki roots refusing an
//! unknown CA, and mutual TLS.

mod common;

use agent_lite::connection::tls::spki_of;
use protocol::{AuthResponsePayload, AuthStatus, Envelope, Message};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use sha2::{Digest, Sha256};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is required for the TLS tests");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for `localhost` and a client certificate, all P-256.
fn make_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        d,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=docker-ctl test CA",
            ],
        ]
        .concat(),
    );
    std::fs::write(d.join("srv.ext"), "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(
        d.join("cli.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    for (name, ext) in [("srv", "srv.ext"), ("cli", "cli.ext")] {
        openssl(
            d,
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN={name}"),
                ],
            ]
            .concat(),
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                ext,
            ],
        );
    }
    Pki { dir }
}

fn certs(p: &Path) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut std::fs::read(p).unwrap().as_slice())
        .collect::<Result<_, _>>()
        .unwrap()
}

fn key(p: &Path) -> PrivateKeyDer<'static> {
    rustls_pemfile::private_key(&mut std::fs::read(p).unwrap().as_slice())
        .unwrap()
        .unwrap()
}

/// A wss server: answers `auth` on every connection; reports the agent id or the TLS error.
fn start_server(pki: &Pki, require_client_cert: bool) -> (u16, Receiver<Result<String, String>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(certs(&pki.path("ca.pem")));
        builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap(),
        )
    } else {
        builder.with_no_client_auth()
    };
    let cfg = Arc::new(
        builder
            .with_single_cert(certs(&pki.path("srv.pem")), key(&pki.path("srv.key")))
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for tcp in listener.incoming().flatten() {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
            let mut s = StreamOwned::new(ServerConnection::new(cfg.clone()).unwrap(), tcp);
            let mut failed = None;
            while s.conn.is_handshaking() {
                if let Err(e) = s.conn.complete_io(&mut s.sock) {
                    failed = Some(e.to_string());
                    break;
                }
            }
            if let Some(e) = failed {
                if tx.send(Err(e)).is_err() {
                    return;
                }
                continue;
            }
            let Ok(mut ws) = tungstenite::accept(s) else {
                continue;
            };
            let Ok(tungstenite::Message::Text(t)) = ws.read() else {
                continue;
            };
            let env = Envelope::decode(t.as_bytes()).unwrap();
            let Message::Auth(auth) = env.message else {
                continue;
            };
            let resp = AuthResponsePayload {
                status: AuthStatus::Authenticated,
                session_id: None,
                config: None,
                protocol_version: None,
                error: None,
            };
            let _ = ws.send(tungstenite::Message::Text(
                Envelope::new(env.id, Message::AuthResponse(resp))
                    .encode()
                    .into(),
            ));
            keep.push(ws);
            if tx.send(Ok(auth.agent_id)).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

fn spki_pin(pki: &Pki) -> String {
    let der = &certs(&pki.path("srv.pem"))[0];
    hex::encode(Sha256::digest(spki_of(der.as_ref()).expect("SPKI")))
}

/// Runs the agent with `tweak` applied; returns what the server saw first.
fn attempt(
    port: u16,
    rx: &Receiver<Result<String, String>>,
    tweak: impl FnOnce(&mut agent_lite::config::Config),
) -> Result<String, String> {
    common::docker::require_docker();
    let id = common::docker::unique("tls-agent");
    let mut cfg = common::agent_config(&format!("wss://localhost:{port}"), &id);
    tweak(&mut cfg);
    let (shutdown, agent) = common::spawn_agent(cfg);
    let got = rx.recv_timeout(Duration::from_secs(15));
    shutdown.trigger();
    let _ = common::join_within(agent, Duration::from_secs(5));
    match got {
        Ok(Ok(seen)) => {
            assert_eq!(seen, id);
            Ok(seen)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no connection".into()),
    }
}

#[test]
fn spki_matches_openssl() {
    let pki = make_pki();
    let out = Command::new("sh")
        .arg("-c")
        .arg("openssl x509 -in srv.pem -pubkey -noout | openssl pkey -pubin -outform der | sha256sum")
        .current_dir(pki.dir.path())
        .output()
        .unwrap();
    let expected = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(expected.len(), 64, "openssl gave {expected:?}");
    assert_eq!(spki_pin(&pki), expected);
}

#[test]
fn private_ca_pins_insecure_mode_and_webpki_roots() {
    let pki = make_pki();
    let (port, rx) = start_server(&pki, false);
    let ca = pki.path("ca.pem");

    attempt(port, &rx, |c| c.server.ca_file = Some(ca.clone())).expect("private CA");
    let pin = spki_pin(&pki);
    attempt(port, &rx, |c| {
        c.server.ca_file = Some(ca.clone());
        c.server.pin_sha256 = Some(pin.clone());
    })
    .expect("matching key pin");
    let cert_pin = hex::encode(Sha256::digest(certs(&pki.path("srv.pem"))[0].as_ref()));
    attempt(port, &rx, |c| {
        c.server.verify_ssl = false;
        c.server.pin_sha256 = Some(cert_pin.clone());
    })
    .expect("matching certificate pin without CA verification");
    let e = attempt(port, &rx, |c| {
        c.server.ca_file = Some(ca.clone());
        c.server.pin_sha256 = Some("00".repeat(32));
    })
    .unwrap_err();
    assert!(
        !e.contains("no connection"),
        "the server must see the refused handshake: {e}"
    );
    attempt(port, &rx, |c| c.server.verify_ssl = false).expect("verify_ssl false");
    let e = attempt(port, &rx, |_| {}).unwrap_err();
    assert!(
        !e.contains("no connection"),
        "webpki roots must refuse the test CA: {e}"
    );
}

#[test]
fn mutual_tls() {
    let pki = make_pki();
    let (port, rx) = start_server(&pki, true);
    let ca = pki.path("ca.pem");
    let e = attempt(port, &rx, |c| c.server.ca_file = Some(ca.clone())).unwrap_err();
    assert!(!e.contains("no connection"), "{e}");
    attempt(port, &rx, |c| {
        c.server.ca_file = Some(ca.clone());
        c.server.client_cert = Some(pki.path("cli.pem"));
        c.server.client_key = Some(pki.path("cli.key"));
    })
    .expect("client certificate accepted");
}
