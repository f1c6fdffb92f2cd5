//! A certificate authority made for one trial restore or drill: a server certificate for
//! 127.0.0.1 and a client certificate that the scratch etcd requires. Files live in the run's
//! temp dir (0700) and go with it.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

use crate::error::{Error, IoContext, Result};

pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    /// Writes a fresh CA, server and client certificate under `dir`.
    pub fn create(dir: &Path) -> Result<Pki> {
        let pki = dir.join("pki");
        crate::context::private_dir(&pki)?;
        let err = |what: &str, e: rcgen::Error| Error::failed(format!("{what}: {e}"));
        let ca_key = KeyPair::generate().map_err(|e| err("generating the scratch CA key", e))?;
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| err("scratch CA", e))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|e| err("signing the scratch CA", e))?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |name: &str| -> Result<(String, String)> {
            let key = KeyPair::generate().map_err(|e| err("generating a scratch key", e))?;
            let params = CertificateParams::new(vec!["127.0.0.1".to_string(), name.to_string()])
                .map_err(|e| err("scratch certificate", e))?;
            let cert = params
                .signed_by(&key, &issuer)
                .map_err(|e| err("signing a scratch certificate", e))?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf("localhost")?;
        let (client_cert, client_key) = leaf("kirt")?;
        let p = Pki {
            ca: pki.join("ca.crt"),
            server_cert: pki.join("server.crt"),
            server_key: pki.join("server.key"),
            client_cert: pki.join("client.crt"),
            client_key: pki.join("client.key"),
        };
        for (path, text) in [
            (&p.ca, ca_cert.pem()),
            (&p.server_cert, server_cert),
            (&p.server_key, server_key),
            (&p.client_cert, client_cert),
            (&p.client_key, client_key),
        ] {
            crate::context::write_private(path, text.as_bytes(), true)?;
        }
        Ok(p)
    }

    /// Client options for etcd-client: this CA, this client certificate.
    pub fn etcd_client(&self) -> Result<etcd_client::ConnectOptions> {
        let read = |p: &Path| std::fs::read(p).ctx(|| format!("reading {}", p.display()));
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&self.ca)?))
            .identity(etcd_client::Identity::from_pem(
                read(&self.client_cert)?,
                read(&self.client_key)?,
            ));
        Ok(etcd_client::ConnectOptions::new().with_tls(tls))
    }
}
