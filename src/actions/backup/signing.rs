//! Detached minisign (ed25519) signatures of manifests: `minisign -Vm ID.manifest.json -p key.pub`
//! checks them without kirt. A signed manifest pins every digest, so a stolen bucket credential
//! cannot swap in a backup of its own.

use std::io::Cursor;
use std::path::Path;

use super::manifest;
use super::source::Located;
use crate::error::{Error, Result};

pub const SUFFIX: &str = ".minisig";

pub fn load_secret_key(path: &Path) -> Result<minisign::SecretKey> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::usage(format!("cannot read --sign-key {}: {e}", path.display())))?;
    // Never prompt (cron has no terminal): unencrypted keys as they are, encrypted ones with
    // $KIRT_SIGN_PASSWORD.
    let sk = match std::env::var("KIRT_SIGN_PASSWORD") {
        Ok(p) => minisign::SecretKey::from_box(text.into(), Some(p)),
        Err(_) => minisign::SecretKey::from_unencrypted_box(text.into()),
    };
    let sk = sk
        .map_err(|e| Error::usage(format!("--sign-key {} is not a usable minisign secret key: {e} (encrypted keys need $KIRT_SIGN_PASSWORD)", path.display())))?;
    Ok(sk)
}

pub fn sign(sk: &minisign::SecretKey, data: &[u8], id: &str) -> Result<Vec<u8>> {
    let trusted = format!("kirt etcd backup manifest {id}");
    let sig = minisign::sign(
        None,
        sk,
        Cursor::new(data),
        Some(&trusted),
        Some("signature from kirt"),
    )
    .map_err(|e| Error::failed(format!("signing the manifest: {e}")))?;
    Ok(sig.into_string().into_bytes())
}

/// Requires a valid signature of the stored manifest bytes by `public_key`.
pub async fn verify(loc: &Located, public_key: &Path) -> Result<()> {
    let pk = minisign::PublicKey::from_file(public_key).map_err(|e| {
        Error::usage(format!(
            "--trusted-key {} is not a minisign public key: {e}",
            public_key.display()
        ))
    })?;
    let key = format!(
        "{}{SUFFIX}",
        manifest::manifest_key(&loc.entry.cluster, &loc.entry.id)
    );
    let sig = match loc.store.get_bytes(&key).await {
        Ok(b) => b,
        Err(Error::NotFound { .. }) => {
            return Err(Error::VerifyFailed(format!(
                "backup {} has no manifest signature ({key}) but --trusted-key requires one",
                loc.entry.id
            )))
        }
        Err(e) => return Err(e),
    };
    let text = String::from_utf8(sig)
        .map_err(|_| Error::VerifyFailed(format!("{key} is not a minisign signature")))?;
    let sig = minisign::SignatureBox::from_string(&text)
        .map_err(|e| Error::VerifyFailed(format!("{key} is not a minisign signature: {e}")))?;
    minisign::verify(&pk, &sig, Cursor::new(&loc.manifest_bytes), true, false, false).map_err(|e| {
        Error::VerifyFailed(format!(
            "manifest signature check failed ({e}): the manifest was modified or signed by another key"
        ))
    })
}
