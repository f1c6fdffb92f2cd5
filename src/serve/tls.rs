//! HTTPS for `kirt serve`, and client certificates: Falco's own `http_output` cannot add a
//! header, so mutual TLS is how it authenticates when it posts to kirt directly. Everything is
//! loaded and checked before the server listens; a bad file is a usage error (exit 2).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use crate::error::{Error, Result};

/// The server's TLS configuration: its certificate chain and key and, with `client_ca`, a
/// verifier for client certificates. A client certificate is *optional* at the handshake (so
/// that kubelet probes and Prometheus reach `/healthz` and `/metrics`), but one that is presented
/// must chain to `client_ca` or the handshake fails; events then require a verified one (401).
pub fn server_config(cert: &str, key: &str, client_ca: Option<&str>) -> Result<Arc<ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        Error::usage(format!(
            "--tls-key {key}: {e} (expected a PEM private key: PKCS#8, PKCS#1 or SEC1)"
        ))
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::failed(format!("TLS protocol versions: {e}")))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca, "--client-ca")? {
                roots.add(c).map_err(|e| {
                    Error::usage(format!(
                        "--client-ca {ca}: not a usable CA certificate: {e}"
                    ))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| Error::usage(format!("--client-ca {ca}: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // with_single_cert checks that the key is the certificate's
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        Error::usage(format!(
            "--tls-cert {cert} and --tls-key: {e} (is the key the certificate's?)"
        ))
    })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; none is an error.
fn certificates(path: &str, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |e: &dyn std::fmt::Display| Error::usage(format!("{flag} {path}: {e}"));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(
            &"no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
        ));
    }
    Ok(certs)
}
