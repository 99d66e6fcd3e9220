//! TLS for the agent API when it leaves loopback.
//!
//! The control plane has one self-signed certificate (made by the first server or `strato
//! host token` that needs it, kept in the database's `meta` table with its key, sealed by
//! `crate::secrets`, so every API server of a database presents the same one). Its SHA-256
//! travels inside each join token; an agent pins it: the handshake succeeds only with that
//! certificate and a signature made with its key. No certificate authority and no host names
//! are involved, so the control plane can be reached at any address. `serve --agent-listen
//! ADDR:PORT` opens the TLS listener; it serves the agent API only.

use std::sync::Arc;

use anyhow::Context;
use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::Digest;

use crate::control::Control;

/// The control plane's certificate and key (DER).
#[derive(Clone)]
pub struct Identity {
    pub cert: Vec<u8>,
    key: Vec<u8>,
}

impl Identity {
    /// The certificate's SHA-256, lower-case hex: what agents pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }
}

pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(der))
}

const CERT_KEY: &str = "agent_tls_cert";
const KEY_KEY: &str = "agent_tls_key";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The control plane's identity, made on first use (under the write lock, so two servers
/// starting together make one).
pub async fn identity(control: &Control) -> anyhow::Result<Identity> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut tx = control.store().begin_write().await?;
    let cert = crate::store::get_meta(tx.conn(), CERT_KEY).await?;
    let key = crate::store::get_meta(tx.conn(), KEY_KEY).await?;
    if let (Some(cert), Some(key)) = (cert, key) {
        let key = if crate::secrets::is_sealed(&key) {
            control.sealer.open(KEY_KEY, &key)?
        } else {
            // Stored in clear by an older version: sealed now.
            let der = b64.decode(key).context("the stored agent TLS key")?;
            crate::store::set_meta(tx.conn(), KEY_KEY, &control.sealer.seal(KEY_KEY, &der)?).await?;
            der
        };
        tx.commit().await?;
        return Ok(Identity { cert: b64.decode(cert).context("the stored agent TLS certificate")?, key });
    }
    let pair = rcgen::KeyPair::generate().context("making the agent TLS key")?;
    let mut params = rcgen::CertificateParams::new(vec!["strato-control-plane".to_owned()])?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "Strato control plane");
    let cert = params.self_signed(&pair).context("making the agent TLS certificate")?;
    let identity = Identity { cert: cert.der().to_vec(), key: pair.serialize_der() };
    crate::store::set_meta(tx.conn(), CERT_KEY, &b64.encode(&identity.cert)).await?;
    crate::store::set_meta(tx.conn(), KEY_KEY, &control.sealer.seal(KEY_KEY, &identity.key)?).await?;
    tx.commit().await?;
    tracing::info!(fingerprint = identity.fingerprint(), "agent TLS certificate made");
    Ok(identity)
}

pub fn server_config(identity: &Identity) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(identity.cert.clone())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key.clone())),
        )
        .context("the agent TLS certificate")?;
    Ok(Arc::new(cfg))
}

/// A TLS client that accepts exactly one certificate, by its SHA-256.
pub fn client_config(pinned: &str) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    anyhow::ensure!(
        pinned.len() == 64 && pinned.bytes().all(|b| b.is_ascii_hexdigit()),
        "a certificate fingerprint is 64 hex digits"
    );
    let provider = provider();
    let verifier = Pinned { fingerprint: pinned.to_ascii_lowercase(), provider: provider.clone() };
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity.as_ref()) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the control plane's certificate is not the one in the join token".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A listener whose connections are TLS: handshakes run in their own tasks (one slow or
/// silent client holds up no other), at most 10 s each.
pub struct TlsListener {
    accepted:
        tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    pub fn new(listener: tokio::net::TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, accepted) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "agent API accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, sender) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::warn!(%peer, error = %e, "agent API TLS handshake failed"),
                        Err(_) => tracing::warn!(%peer, "agent API TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_is_64_hex_digits() {
        assert!(client_config("ab").is_err());
        assert!(client_config(&"g".repeat(64)).is_err());
        assert!(client_config(&"Ab".repeat(32)).is_ok());
    }
}
