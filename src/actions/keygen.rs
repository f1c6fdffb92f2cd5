//! `kirt keygen`: a minisign key pair for signing backups and evidence bundles.
//!
//! Keys made here open with 32 MiB of scrypt memory (or none, unencrypted). `minisign -G` with
//! a password makes keys that need 1 GiB to open, more than a backup CronJob should have.
//! Both kinds sign and verify the same; `minisign -V -p KEY.pub` checks kirt's signatures.

use std::path::PathBuf;

use serde::Serialize;

use crate::context::{write_private, Ctx};
use crate::error::{Error, Result};
use crate::output::{Render, Table};

#[derive(Debug, Clone, clap::Args)]
pub struct KeygenSpec {
    /// Secret key file to create (mode 0600): give it to `--sign-key` / $KIRT_SIGN_KEY
    #[arg(short = 's', long, value_name = "FILE", default_value = "minisign.key")]
    pub secret_key: PathBuf,
    /// Public key file to create: give it to `--trusted-key` / $KIRT_TRUSTED_KEY
    #[arg(short = 'p', long, value_name = "FILE", default_value = "minisign.pub")]
    pub public_key: PathBuf,
    /// Protect the secret key with the password in $KIRT_SIGN_PASSWORD
    #[arg(long)]
    pub password: bool,
    /// Replace existing key files
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct KeygenResult {
    pub secret_key: String,
    pub public_key: String,
    /// minisign's key id (as `minisign -V` prints it).
    pub key_id: String,
    pub password_protected: bool,
}

impl Render for KeygenResult {
    fn table(&self) -> Table {
        let mut t = Table::default();
        t.note(format!(
            "secret key {} ({}), public key {}, key id {}",
            self.secret_key,
            if self.password_protected {
                "password-protected"
            } else {
                "unencrypted: keep it in a Secret or on a root-only path"
            },
            self.public_key,
            self.key_id
        ));
        t
    }
}

pub fn run(_ctx: &Ctx, spec: KeygenSpec) -> Result<KeygenResult> {
    for path in [&spec.secret_key, &spec.public_key] {
        if path.exists() && !spec.force {
            return Err(Error::Refused(format!(
                "{} exists: kirt does not replace keys (--force does; signatures made with the old key then no longer verify with the new one)",
                path.display()
            )));
        }
    }
    let password = if spec.password {
        Some(std::env::var("KIRT_SIGN_PASSWORD").map_err(|_| {
            Error::usage("--password takes the password from $KIRT_SIGN_PASSWORD, which is not set")
        })?)
    } else {
        None
    };
    let failed = |e: minisign::PError| Error::failed(format!("generating a minisign key: {e}"));
    let pair = match &password {
        Some(p) => minisign::KeyPair::generate_encrypted_keypair(Some(p.clone())),
        None => minisign::KeyPair::generate_unencrypted_keypair(),
    }
    .map_err(failed)?;
    let pk = pair.pk.to_box().map_err(failed)?.into_string();
    let sk = pair.sk.to_box(None).map_err(failed)?.into_string();
    write_private(&spec.secret_key, sk.as_bytes(), spec.force)?;
    if let Err(e) = std::fs::write(&spec.public_key, pk.as_bytes()) {
        let _ = std::fs::remove_file(&spec.secret_key); // never half a pair
        return Err(Error::io(
            format!("writing {}", spec.public_key.display()),
            e,
        ));
    }
    Ok(KeygenResult {
        secret_key: spec.secret_key.display().to_string(),
        public_key: spec.public_key.display().to_string(),
        key_id: key_id(pair.pk.keynum()),
        password_protected: password.is_some(),
    })
}

/// A key id as minisign prints it: the 8-byte key number, little-endian, in hex.
fn key_id(keynum: &[u8]) -> String {
    keynum.iter().rev().map(|b| format!("{b:02X}")).collect()
}
