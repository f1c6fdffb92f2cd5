//! Detached minisign (ed25519) signatures: of backup manifests (`ID.manifest.json.minisig`;
//! `minisign -Vm ID.manifest.json -p key.pub` checks them without kirt) and of evidence bundles
//! (`BUNDLE.minisig`, over the bundle's sha256). age recipients are public keys, so anyone who
//! can write to the bucket can make a backup that decrypts and restores: only a signature by a
//! key the operator trusts says that kirt made it. The keys come from a flag or the environment
//! (`KIRT_SIGN_KEY`, `KIRT_TRUSTED_KEY`), so that cron jobs and CI sign and check by default.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub const SUFFIX: &str = ".minisig";
/// Largest signature file read back (a minisign signature is a few hundred bytes).
pub const MAX_SIGNATURE: u64 = 64 << 10;

/// The signing key: `--sign-key`, else `$KIRT_SIGN_KEY`.
pub fn sign_key_path(flag: &Option<PathBuf>) -> Option<PathBuf> {
    flag.clone().or_else(|| env_path("KIRT_SIGN_KEY"))
}

/// The trusted public key: `--trusted-key`, else `$KIRT_TRUSTED_KEY`.
pub fn trusted_key_path(flag: &Option<PathBuf>) -> Option<PathBuf> {
    flag.clone().or_else(|| env_path("KIRT_TRUSTED_KEY"))
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

pub fn load_secret_key(path: &Path) -> Result<minisign::SecretKey> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::usage(format!("cannot read --sign-key {}: {e}", path.display())))?;
    let unusable = |why: String| {
        Error::usage(format!(
            "--sign-key {} is not a usable minisign secret key: {why}",
            path.display()
        ))
    };
    // Never prompt (cron has no terminal): unencrypted keys as they are, encrypted ones with
    // $KIRT_SIGN_PASSWORD.
    let sk = match kdf_memory_mib(&text) {
        None => minisign::SecretKey::from_unencrypted_box(text.into()),
        Some(mib) => {
            if mib > 64 {
                tracing::warn!(
                    "--sign-key {}: opening this key takes {mib} MiB of memory (scrypt parameters of `minisign -G`); `kirt keygen` makes keys that take 32 MiB",
                    path.display()
                );
            }
            let password = std::env::var("KIRT_SIGN_PASSWORD").map_err(|_| {
                unusable("it is password-protected and $KIRT_SIGN_PASSWORD is not set".into())
            })?;
            minisign::SecretKey::from_box(text.into(), Some(password))
        }
    };
    sk.map_err(|e| unusable(e.to_string()))
}

pub fn load_public_key(path: &Path) -> Result<minisign::PublicKey> {
    minisign::PublicKey::from_file(path).map_err(|e| {
        Error::usage(format!(
            "--trusted-key {} is not a minisign public key: {e}",
            path.display()
        ))
    })
}

/// For a password-protected minisign key (KDF "Sc"): the memory scrypt needs to open it, from
/// the key's own parameters (bytes 46..54 of the decoded key: the memory limit, little-endian).
/// None for an unencrypted key (or no key at all).
fn kdf_memory_mib(key_file: &str) -> Option<u64> {
    use base64::Engine;
    let line = key_file.lines().nth(1)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(line.trim())
        .ok()?;
    (raw.get(2..4)? == b"Sc").then_some(())?;
    let limit = u64::from_le_bytes(raw.get(46..54)?.try_into().ok()?);
    Some(limit >> 20)
}

/// A detached signature of `data`; `what` goes into the signed (trusted) comment.
pub fn sign(sk: &minisign::SecretKey, data: &[u8], what: &str) -> Result<Vec<u8>> {
    let sig = minisign::sign(
        None,
        sk,
        Cursor::new(data),
        Some(what),
        Some("signature from kirt"),
    )
    .map_err(|e| Error::failed(format!("signing {what}: {e}")))?;
    Ok(sig.into_string().into_bytes())
}

/// The trusted comment of a backup manifest's signature.
pub fn manifest_comment(id: &str) -> String {
    format!("kirt etcd backup manifest {id}")
}

/// Whether `sig` (the bytes of a `.minisig` file) is a valid signature of `data` by `pk`.
pub fn check(pk: &minisign::PublicKey, data: &[u8], sig: &[u8]) -> std::result::Result<(), String> {
    let text = std::str::from_utf8(sig).map_err(|_| "not a minisign signature".to_string())?;
    let sig = minisign::SignatureBox::from_string(text)
        .map_err(|e| format!("not a minisign signature: {e}"))?;
    minisign::verify(pk, &sig, Cursor::new(data), true, false, false)
        .map_err(|e| format!("does not verify ({e}): modified, or signed by another key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdf_memory_is_read_from_the_key() {
        let enc = minisign::KeyPair::generate_encrypted_keypair(Some("pw".into())).unwrap();
        let text = enc.sk.to_box(None).unwrap().into_string();
        assert_eq!(kdf_memory_mib(&text), Some(32));
        let plain = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let text = plain.sk.to_box(None).unwrap().into_string();
        assert_eq!(kdf_memory_mib(&text), None);
        assert_eq!(kdf_memory_mib("not a key"), None);
    }

    #[test]
    fn signatures_verify_only_for_the_data_and_key_they_were_made_with() {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let other = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let sig = sign(&pair.sk, b"manifest", "m").unwrap();
        assert!(check(&pair.pk, b"manifest", &sig).is_ok());
        assert!(check(&pair.pk, b"manifesT", &sig).is_err());
        assert!(check(&other.pk, b"manifest", &sig).is_err());
        assert!(check(&pair.pk, b"manifest", b"\xff\xfe").is_err());
    }
}
