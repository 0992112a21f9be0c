//! TLS: the server serving https/wss from --tls-cert/--tls-key, and the direct adapter
//! reaching a daemon over https:// with a client certificate (mutual TLS, as Docker on 2376).
//! Certificates are made by the openssl CLI; the "daemon" is a TLS front to the real
//! dockerd socket that requires a client certificate.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::json;
use server::store::Role;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn read(dir: &Path, f: &str) -> String {
    std::fs::read_to_string(dir.join(f)).unwrap()
}

fn roots(dir: &Path) -> rustls::RootCertStore {
    let mut r = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut read(dir, "ca.crt").as_bytes()) {
        r.add(c.unwrap()).unwrap();
    }
    r
}

#[tokio::test]
async fn server_serves_https() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let db = TestDb::sqlite();
    let mut cfg = test_config(&db);
    cfg.tls_cert = Some(pki.path().join("server.crt"));
    cfg.tls_key = Some(pki.path().join("server.key"));
    let st = state_with(&db, cfg).await;
    let srv = spawn(&st).await;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cc = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(pki.path()))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cc))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the server");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.ok();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // Plain HTTP on the TLS port gets nowhere.
    let mut plain = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = plain.read_to_end(&mut buf).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    srv.shutdown().await;
}

/// A TLS listener that requires a client certificate and pipes each connection to dockerd.
async fn mtls_docker_front(pki: &Path) -> std::net::SocketAddr {
    assert!(
        Path::new("/var/run/docker.sock").exists(),
        "dockerd is required (scripts/services.sh)"
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(pki)),
        provider.clone(),
    )
    .build()
    .unwrap();
    let certs = rustls_pemfile::certs(&mut read(pki, "server.crt").as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut read(pki, "server.key").as_bytes())
        .unwrap()
        .unwrap();
    let sc = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut docker) = tokio::net::UnixStream::connect("/var/run/docker.sock").await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut docker).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn direct_over_https_with_a_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let front = mtls_docker_front(pki.path()).await;
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let p = pki.path();
    let (s, h) = call(&st, "POST", "/api/v1/hosts", Some(&admin), Some(json!({
        "name": "tls", "docker_url": format!("https://localhost:{}", front.port()),
        "tls_ca": read(p, "ca.crt"), "tls_cert": read(p, "client.crt"), "tls_key": read(p, "client.key"),
    }))).await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    let id = h["id"].as_str().unwrap();
    let (s, v) = call(
        &st,
        "POST",
        &format!("/api/v1/hosts/{id}/operations"),
        Some(&admin),
        Some(json!({"operation": "container.list", "params": {"all": true}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["data"].is_array());
    let (_, h) = call(
        &st,
        "GET",
        &format!("/api/v1/hosts/{id}"),
        Some(&admin),
        None,
    )
    .await;
    assert_eq!(h["status"], "online");

    // Without the client certificate the daemon refuses the handshake.
    let (_, h2) = call(&st, "POST", "/api/v1/hosts", Some(&admin), Some(json!({
        "name": "tls-nocert", "docker_url": format!("https://localhost:{}", front.port()), "tls_ca": read(p, "ca.crt"),
    }))).await;
    let (s, v) = call(
        &st,
        "POST",
        &format!("/api/v1/hosts/{}/operations", h2["id"].as_str().unwrap()),
        Some(&admin),
        Some(json!({"operation": "system.ping"})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("docker_unreachable")),
        "{v}"
    );
    // A wrong CA: the server certificate is not trusted.
    let (_, h3) = call(&st, "POST", "/api/v1/hosts", Some(&admin), Some(json!({
        "name": "tls-badca", "docker_url": format!("https://localhost:{}", front.port()), "tls_ca": read(p, "client.crt"),
        "tls_cert": read(p, "client.crt"), "tls_key": read(p, "client.key"),
    }))).await;
    let (s, _) = call(
        &st,
        "POST",
        &format!("/api/v1/hosts/{}/operations", h3["id"].as_str().unwrap()),
        Some(&admin),
        Some(json!({"operation": "system.ping"})),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_GATEWAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_cli_through_a_direct_https_host() {
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let front = mtls_docker_front(pki.path()).await;
    let db = TestDb::sqlite();
    let st = state(&db).await;
    let admin = token(&st, "admin", Role::Admin).await;
    let p = pki.path();
    let (s, h) = call(&st, "POST", "/api/v1/hosts", Some(&admin), Some(json!({
        "name": "tls", "docker_url": format!("https://localhost:{}", front.port()),
        "tls_ca": read(p, "ca.crt"), "tls_cert": read(p, "client.crt"), "tls_key": read(p, "client.key"),
    }))).await;
    assert_eq!(s, StatusCode::CREATED, "{h}");
    let id = h["id"].as_str().unwrap().to_string();
    let srv = spawn(&st).await;
    let cfg = tempfile::tempdir().unwrap();
    std::fs::write(
        cfg.path().join("config.json"),
        json!({"HttpHeaders": {"Authorization": format!("Bearer {admin}")}}).to_string(),
    )
    .unwrap();
    let docker_host = format!("tcp://{}/api/v1/hosts/{id}/docker", srv.addr);
    let run = |args: &'static [&'static str]| {
        let (docker_host, cfg) = (docker_host.clone(), cfg.path().to_path_buf());
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("/usr/local/bin/docker")
                .env("DOCKER_HOST", docker_host)
                .arg("--config")
                .arg(cfg)
                .args(args)
                .output()
                .expect("the docker CLI at /usr/local/bin/docker")
        })
    };
    let out = run(&["version", "--format", "{{.Server.APIVersion}}"])
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1.41");
    // attach (hijacked) + wait + remove, all through the TLS connection to the daemon
    let out = run(&[
        "run",
        "--rm",
        "docker-ctl-test/busybox:latest",
        "sh",
        "-c",
        "echo over-tls; exit 3",
    ])
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "over-tls\n");
    srv.shutdown().await;
}
