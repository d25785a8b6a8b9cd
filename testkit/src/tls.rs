//! TLS in front of a plain-TCP fake, as Cloud Storage is only reached over TLS: each write on a
//! new connection pays for a handshake, and every byte for encryption, on both sides.
//! [`LoopbackCa`] makes an authority at run time, a leaf for `127.0.0.1` and `localhost`, and a
//! PEM file of the authority that a client trusts with `SSL_CERT_FILE` (as reqwest's platform
//! verifier, which the Google Cloud clients use, reads it). [`TlsFront`] terminates TLS with that
//! leaf and forwards the plain bytes; it runs on the tokio runtime that started it, and dropping
//! it closes every connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rcgen::{ExtendedKeyUsagePurpose, KeyUsagePurpose};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::aws_lc_rs;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::task::AbortOnDropHandle;

/// A handshake that has not finished by then is dropped, so a stuck client holds no task.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A certificate authority for this process only, and the loopback leaf it signed.
pub struct LoopbackCa {
    /// The authority's certificate, PEM: what `SSL_CERT_FILE` names.
    file: tempfile::NamedTempFile,
    /// The leaf, then the authority: the chain a server sends.
    chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key, PKCS #8 DER.
    key: Vec<u8>,
}

impl LoopbackCa {
    /// A fresh authority and leaf (ECDSA P-256), the authority's certificate in a temporary
    /// file that lives as long as the value.
    pub fn new() -> Result<LoopbackCa> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "testkit loopback CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key)?;

        let leaf_key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])?;
        leaf.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        leaf.use_authority_key_identifier_extension = true;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &Issuer::new(ca, ca_key))?;

        let file = tempfile::Builder::new().prefix("testkit-ca-").suffix(".pem").tempfile()?;
        std::fs::write(file.path(), ca_cert.pem()).context("writing the CA certificate")?;
        let chain = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
        Ok(LoopbackCa { file, chain, key: leaf_key.serialize_der() })
    }

    /// The authority's certificate (PEM), for `SSL_CERT_FILE`.
    pub fn file(&self) -> &Path {
        self.file.path()
    }

    fn server_config(&self) -> Result<ServerConfig> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        // The provider by name: several may be compiled in, and then none is the default.
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(self.chain.clone(), key)?;
        // The upstreams speak HTTP/1.1 only; offering h2 would break the bytes forwarded.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// Terminates TLS on a loopback port and forwards the plain bytes to an upstream.
pub struct TlsFront {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    _accept: AbortOnDropHandle<()>,
}

impl TlsFront {
    /// Listens on a free 127.0.0.1 port with `ca`'s leaf and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr, ca: &LoopbackCa) -> Result<TlsFront> {
        let acceptor = TlsAcceptor::from(Arc::new(ca.server_config()?));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicU64::new(0));
        let serve = move |client| forward(acceptor.clone(), client, upstream);
        let _accept = crate::accept_each(listener, connections.clone(), serve);
        Ok(TlsFront { addr, connections, _accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`, to use as `STORAGE_EMULATOR_HOST`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Connections accepted so far: each one a handshake.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// Completes the handshake, then copies bytes both ways until either side is done.
async fn forward(acceptor: TlsAcceptor, client: TcpStream, upstream: SocketAddr) {
    let _ = client.set_nodelay(true);
    let Ok(Ok(mut client)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(client)).await
    else {
        return;
    };
    // Upstream down: the client sees its connection closed, as behind a load balancer.
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
