//! TLS for `wss://`: rustls with the ring provider, webpki-roots or a private CA, optional
//! SHA-256 pin, optional client certificate, and the loudly warned `verify_ssl: false`.
//!
//! Owns: building the one `rustls::ClientConfig` the agent uses. Must not: log key material.

use crate::config::{Pin, ServerConfig, ServerUrl};
use crate::error::Error;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::Arc;

/// The TLS config of the links to `urls`: `None` when all are `ws://`. Warns loudly about
/// settings that weaken the link.
pub fn for_link(
    cfg: &ServerConfig,
    urls: &[ServerUrl],
    pin: Option<Pin>,
) -> Result<Option<Arc<ClientConfig>>, Error> {
    if !cfg.verify_ssl {
        log::warn!(
            "!!! server.verify_ssl is false: the server's certificate is NOT verified and anyone on the path can impersonate it{} !!!",
            if pin.is_some() { " (a pin is set, which still protects the link)" } else { "" }
        );
    }
    if urls.iter().any(|u| !u.tls) {
        log::warn!("server.url uses ws:// without TLS: the token and all traffic are readable on the network; use wss:// outside development");
    }
    if !urls.iter().any(|u| u.tls) {
        return Ok(None);
    }
    client_config(cfg, pin).map(Some)
}

/// Builds the client TLS config from `server.*` and the parsed pin.
pub fn client_config(cfg: &ServerConfig, pin: Option<Pin>) -> Result<Arc<ClientConfig>, Error> {
    let tls = |m: String| Error::Tls(m);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algs = provider.signature_verification_algorithms;
    let inner: Arc<dyn ServerCertVerifier> = if cfg.verify_ssl {
        let mut roots = RootCertStore::empty();
        match &cfg.ca_file {
            Some(path) => {
                let certs = read_certs(path)?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(tls(format!(
                        "server.ca_file {}: no usable CA certificate",
                        path.display()
                    )));
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| tls(format!("building the certificate verifier: {e}")))?
    } else {
        Arc::new(AcceptAnyCert { algs })
    };
    let verifier: Arc<dyn ServerCertVerifier> = match pin {
        Some(Pin(pin)) => Arc::new(Pinned { inner, pin }),
        None => inner,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(format!("TLS protocol versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&cfg.client_cert, &cfg.client_key) {
        (Some(cert), Some(key)) => {
            let certs = read_certs(cert)?;
            let key = read_key(key)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| tls(format!("server.client_cert / client_key: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let data =
        std::fs::read(path).map_err(|e| Error::Tls(format!("reading {}: {e}", path.display())))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut data.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            Error::Tls(format!(
                "parsing PEM certificates in {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let data =
        std::fs::read(path).map_err(|e| Error::Tls(format!("reading {}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut data.as_slice())
        .map_err(|e| Error::Tls(format!("parsing the PEM key in {}: {e}", path.display())))?
        .ok_or_else(|| Error::Tls(format!("{}: no PEM private key found", path.display())))
}

/// Reads one DER TLV at the start of `b`: (tag, header length, content length).
fn der_tlv(b: &[u8]) -> Option<(u8, usize, usize)> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    if first < 0x80 {
        return Some((tag, 2, first));
    }
    let n = first & 0x7f;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | *b.get(2 + i)? as usize;
    }
    Some((tag, 2 + n, len))
}

/// The DER SubjectPublicKeyInfo of an X.509 certificate.
pub fn spki_of(cert: &[u8]) -> Option<&[u8]> {
    let (_, h, _) = der_tlv(cert)?; // Certificate SEQUENCE
    let tbs = cert.get(h..)?;
    let (_, th, tlen) = der_tlv(tbs)?; // tbsCertificate SEQUENCE
    let mut rest = tbs.get(th..th + tlen)?;
    // [0] version (optional), serial, signature, issuer, validity, subject, then SPKI.
    let mut skipped = 0;
    loop {
        let (tag, hh, len) = der_tlv(rest)?;
        let end = hh.checked_add(len)?;
        if skipped == 0 && tag != 0xa0 {
            skipped = 1; // no explicit version: this is the serial
        }
        if skipped == 6 {
            return rest.get(..end);
        }
        skipped += 1;
        rest = rest.get(end..)?;
    }
}

/// Checks the server certificate (or its key) against a SHA-256 pin after the inner
/// verifier accepted it.
#[derive(Debug)]
struct Pinned {
    inner: Arc<dyn ServerCertVerifier>,
    pin: [u8; 32],
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        let cert_hash: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        let spki_hash: Option<[u8; 32]> =
            spki_of(end_entity.as_ref()).map(|s| Sha256::digest(s).into());
        if cert_hash == self.pin || spki_hash == Some(self.pin) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate does not match server.pin_sha256 (its key's SHA-256 is {})",
                spki_hash
                    .map(hex::encode)
                    .unwrap_or_else(|| "unknown".into())
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `verify_ssl: false`: any certificate is accepted (handshake signatures are still checked,
/// so a pin on top of it stays meaningful).
#[derive(Debug)]
struct AcceptAnyCert {
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_builds_with_webpki_roots() {
        client_config(&ServerConfig::default(), None).unwrap();
        let insecure = ServerConfig {
            verify_ssl: false,
            ..Default::default()
        };
        client_config(&insecure, Some(Pin([0; 32]))).unwrap();
        let missing = ServerConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        assert!(client_config(&missing, None)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/ca.pem"));
    }
}
