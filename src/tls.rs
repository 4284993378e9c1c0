//! TLS settings from the config: the HTTP listener's (`[server.tls]`) and
//! the cluster links' (`[cluster.tls]`, mutual TLS under the cluster's
//! CA). rustls with the ring provider; errors name the config key.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls;

/// The one TLS crypto backend of the binary: aws-lc-rs (the cluster
/// transport's tokio-rustls needs it; the HTTPS server, the cluster's TLS
/// and the provider clients all use it).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Makes aws-lc-rs the process's default TLS provider (the outbound HTTP
/// clients take the default); idempotent.
pub fn install_default_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The certificates in the PEM file `key` names (`base`-relative).
fn certs(base: &Path, key: &str, file: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let path = base.join(file);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("{key} {}: {e}", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("{key} {}: no certificate in it", path.display());
    }
    Ok(certs)
}

fn private_key(base: &Path, key: &str, file: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let path = base.join(file);
    PrivateKeyDer::from_pem_file(&path)
        .map_err(|e| anyhow::anyhow!("{key} {}: {e}", path.display()))
}

/// The acceptor of `server.tls`, if configured.
pub fn http_acceptor(
    server: &crate::config::Server,
    base: &Path,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    let Some(tls) = &server.tls else {
        return Ok(None);
    };
    let certs = certs(base, "server.tls.cert_file", &tls.cert_file)?;
    let key = private_key(base, "server.tls.key_file", &tls.key_file)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("server.tls: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("server.tls: the key does not fit the certificate: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// The links' TLS of `cluster.tls`, if configured: this node shows its
/// certificate both ways, and takes only peers whose certificate the
/// cluster's CA signed.
pub fn cluster_links(
    cluster: &crate::config::Cluster,
    base: &Path,
) -> anyhow::Result<Option<threadline_actors::cluster::LinkTls>> {
    let Some(tls) = &cluster.tls else {
        return Ok(None);
    };
    let certs = certs(base, "cluster.tls.cert_file", &tls.cert_file)?;
    let key = private_key(base, "cluster.tls.key_file", &tls.key_file)?;
    let mut roots = rustls::RootCertStore::empty();
    for ca in self::certs(base, "cluster.tls.ca_file", &tls.ca_file)? {
        roots
            .add(ca)
            .map_err(|e| anyhow::anyhow!("cluster.tls.ca_file: {e}"))?;
    }
    let roots = Arc::new(roots);
    let peers =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| anyhow::anyhow!("cluster.tls.ca_file: {e}"))?;
    let server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("cluster.tls: {e}"))?
        .with_client_cert_verifier(peers)
        .with_single_cert(certs.clone(), key.clone_key())
        .map_err(|e| anyhow::anyhow!("cluster.tls: the key does not fit the certificate: {e}"))?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("cluster.tls: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("cluster.tls: the key does not fit the certificate: {e}"))?;
    let server_name = ServerName::try_from(tls.server_name.clone())
        .map_err(|e| anyhow::anyhow!("cluster.tls.server_name: {e}"))?;
    Ok(Some(threadline_actors::cluster::LinkTls {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
        server_name,
    }))
}
