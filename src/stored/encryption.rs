//! Encryption at rest as kube-apiserver does it (`--encryption-provider-config`): values stored
//! as `k8s:enc:PROVIDER:v1:KEYNAME:` + ciphertext. kirt reads the apiserver's own
//! EncryptionConfiguration and opens aescbc (IV + AES-CBC, PKCS#7), aesgcm (nonce + AES-GCM with
//! the etcd key as additional data) and secretbox (nonce + XSalsa20-Poly1305). KMS values need
//! the KMS plugin and stay encrypted. Key material is held zeroized and never printed.

use std::path::Path;

use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

pub const PREFIX: &[u8] = b"k8s:enc:";

/// The providers kirt can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cipher {
    AesCbc,
    AesGcm,
    Secretbox,
}

impl Cipher {
    fn name(self) -> &'static str {
        match self {
            Cipher::AesCbc => "aescbc",
            Cipher::AesGcm => "aesgcm",
            Cipher::Secretbox => "secretbox",
        }
    }
}

struct Key {
    cipher: Cipher,
    name: String,
    secret: Zeroizing<Vec<u8>>,
}

/// The keys of an EncryptionConfiguration.
#[derive(Default)]
pub struct Keyring {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    kind: String,
    #[serde(default)]
    resources: Vec<ResourceConfig>,
}

#[derive(Deserialize)]
struct ResourceConfig {
    #[serde(default)]
    providers: Vec<ProviderConfig>,
}

#[derive(Deserialize)]
struct ProviderConfig {
    aescbc: Option<KeysConfig>,
    aesgcm: Option<KeysConfig>,
    secretbox: Option<KeysConfig>,
}

#[derive(Deserialize)]
struct KeysConfig {
    #[serde(default)]
    keys: Vec<KeyConfig>,
}

#[derive(Deserialize)]
struct KeyConfig {
    name: String,
    secret: String,
}

impl Drop for KeyConfig {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret);
    }
}

impl Keyring {
    /// Reads the apiserver's EncryptionConfiguration (YAML or JSON). A malformed file or key is
    /// a usage error naming the key, never its secret.
    pub fn load(path: &Path) -> Result<Keyring> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Error::usage(format!(
                "cannot read the encryption config {}: {e}",
                path.display()
            ))
        })?);
        let bad = |why: String| {
            Error::usage(format!(
                "encryption config {}: {why} (expected the kube-apiserver's EncryptionConfiguration)",
                path.display()
            ))
        };
        let cfg: Config = serde_yaml_ng::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if cfg.kind != "EncryptionConfiguration" && cfg.kind != "EncryptionConfig" {
            return Err(bad(format!("kind is {:?}", cfg.kind)));
        }
        let mut ring = Keyring::default();
        for p in cfg.resources.iter().flat_map(|r| &r.providers) {
            for (cipher, keys) in [
                (Cipher::AesCbc, &p.aescbc),
                (Cipher::AesGcm, &p.aesgcm),
                (Cipher::Secretbox, &p.secretbox),
            ] {
                for k in keys.iter().flat_map(|k| &k.keys) {
                    let secret = Zeroizing::new(
                        base64::engine::general_purpose::STANDARD
                            .decode(k.secret.trim())
                            .map_err(|_| {
                                bad(format!("{} key {:?} is not base64", cipher.name(), k.name))
                            })?,
                    );
                    let ok = match cipher {
                        Cipher::Secretbox => secret.len() == 32,
                        _ => matches!(secret.len(), 16 | 24 | 32),
                    };
                    if !ok {
                        return Err(bad(format!(
                            "{} key {:?} has {} bytes",
                            cipher.name(),
                            k.name,
                            secret.len()
                        )));
                    }
                    ring.keys.push(Key {
                        cipher,
                        name: k.name.clone(),
                        secret,
                    });
                }
            }
        }
        if ring.keys.is_empty() {
            return Err(bad("no aescbc, aesgcm or secretbox keys".into()));
        }
        Ok(ring)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Opens a value that starts with `k8s:enc:`; `etcd_key` is the authenticated data of
    /// aesgcm. The error says why it stays encrypted.
    pub fn open(&self, etcd_key: &str, value: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let sealed = Sealed::parse(value)?;
        let cipher = match sealed.provider.as_str() {
            "aescbc" => Cipher::AesCbc,
            "aesgcm" => Cipher::AesGcm,
            "secretbox" => Cipher::Secretbox,
            other => {
                return Err(format!(
                    "encrypted by the {other} provider ({}), which kirt cannot open",
                    sealed.key
                ))
            }
        };
        if self.keys.is_empty() {
            return Err(format!(
                "encrypted ({} key {}): give --encryption-config",
                cipher.name(),
                sealed.key
            ));
        }
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.cipher == cipher && k.name == sealed.key)
            .collect();
        if candidates.is_empty() {
            return Err(format!(
                "encrypted with {} key {}, which the encryption config does not hold",
                cipher.name(),
                sealed.key
            ));
        }
        // the same key name may stand for different secrets under different resources
        for k in candidates {
            if let Some(plain) = decrypt(k, etcd_key, sealed.payload) {
                return Ok(plain);
            }
        }
        Err(format!(
            "{} key {} does not open this value (another secret under the same name, or the value was changed)",
            cipher.name(),
            sealed.key
        ))
    }
}

/// `k8s:enc:PROVIDER:VERSION:KEY:` + payload.
pub struct Sealed<'a> {
    pub provider: String,
    pub key: String,
    payload: &'a [u8],
}

impl<'a> Sealed<'a> {
    pub fn parse(value: &'a [u8]) -> std::result::Result<Sealed<'a>, String> {
        let rest = value.strip_prefix(PREFIX).ok_or("not an encrypted value")?;
        let mut parts = rest.splitn(4, |b| *b == b':');
        let (Some(provider), Some(_version), Some(key), Some(payload)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("encrypted value with a malformed k8s:enc: prefix".into());
        };
        let name = |b: &[u8]| {
            String::from_utf8_lossy(b)
                .chars()
                .take(64)
                .collect::<String>()
        };
        Ok(Sealed {
            provider: name(provider),
            key: name(key),
            payload,
        })
    }
}

fn decrypt(k: &Key, etcd_key: &str, data: &[u8]) -> Option<Vec<u8>> {
    use aes::cipher::{BlockDecryptMut, KeyIvInit};
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    match k.cipher {
        Cipher::AesCbc => {
            if data.len() < 32 || !data.len().is_multiple_of(16) {
                return None;
            }
            let (iv, ct) = data.split_at(16);
            type Pad = aes::cipher::block_padding::Pkcs7;
            // CBC is not authenticated: a wrong key gives valid padding once in ~256 tries;
            // what is not a stored object (protobuf envelope or JSON) was not opened
            let plain = match k.secret.len() {
                16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(&k.secret, iv)
                    .ok()?
                    .decrypt_padded_vec_mut::<Pad>(ct)
                    .ok(),
                24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(&k.secret, iv)
                    .ok()?
                    .decrypt_padded_vec_mut::<Pad>(ct)
                    .ok(),
                _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(&k.secret, iv)
                    .ok()?
                    .decrypt_padded_vec_mut::<Pad>(ct)
                    .ok(),
            };
            plain.filter(|p| {
                p.starts_with(b"k8s\0")
                    || serde_json::from_slice::<serde::de::IgnoredAny>(p).is_ok()
            })
        }
        Cipher::AesGcm => {
            if data.len() < 12 + 16 {
                return None;
            }
            let (nonce, ct) = data.split_at(12);
            let payload = Payload {
                msg: ct,
                aad: etcd_key.as_bytes(),
            };
            let nonce = aes_gcm::Nonce::from_slice(nonce);
            match k.secret.len() {
                16 => aes_gcm::Aes128Gcm::new_from_slice(&k.secret)
                    .ok()?
                    .decrypt(nonce, payload)
                    .ok(),
                24 => aes_gcm::AesGcm::<aes::Aes192, aes_gcm::aead::consts::U12>::new_from_slice(
                    &k.secret,
                )
                .ok()?
                .decrypt(nonce, payload)
                .ok(),
                _ => aes_gcm::Aes256Gcm::new_from_slice(&k.secret)
                    .ok()?
                    .decrypt(nonce, payload)
                    .ok(),
            }
        }
        Cipher::Secretbox => {
            use crypto_secretbox::aead::{Aead as _, KeyInit as _};
            if data.len() < 24 + 16 {
                return None;
            }
            let (nonce, ct) = data.split_at(24);
            crypto_secretbox::XSalsa20Poly1305::new_from_slice(&k.secret)
                .ok()?
                .decrypt(crypto_secretbox::Nonce::from_slice(nonce), ct)
                .ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(yaml: &str) -> Result<Keyring> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("enc.yaml");
        std::fs::write(&p, yaml).unwrap();
        Keyring::load(&p)
    }

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes

    #[test]
    fn configs_are_checked_and_secrets_never_named() {
        let good = format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc:\n      keys: [{{name: k1, secret: {KEY}}}]\n  - identity: {{}}\n"
        );
        assert_eq!(ring(&good).unwrap().keys.len(), 1);
        let short = good.replace(KEY, "c2hvcnQ=");
        let e = ring(&short).err().unwrap().to_string();
        assert!(e.contains("\"k1\" has 5 bytes"), "{e}");
        assert!(!e.contains("c2hvcnQ="), "{e}");
        assert!(ring("kind: Pod\n").is_err());
        let none = good.replace("- aescbc:\n      keys: [{name: k1, secret: MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=}]\n", "");
        assert!(ring(&none).is_err());
    }

    #[test]
    fn cbc_gcm_and_secretbox_round_trip_and_reject_other_keys() {
        use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
        use aes_gcm::aead::{Aead, KeyInit, Payload};
        let secret = base64::engine::general_purpose::STANDARD
            .decode(KEY)
            .unwrap();
        let r = ring(&format!(
            "kind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - aescbc: {{keys: [{{name: a, secret: {KEY}}}]}}\n  - aesgcm: {{keys: [{{name: g, secret: {KEY}}}]}}\n  - secretbox: {{keys: [{{name: s, secret: {KEY}}}]}}\n"
        ))
        .unwrap();
        let plain = b"k8s\0 the object";
        let key = "/registry/secrets/ns/x";
        // aescbc
        let iv = [7u8; 16];
        let ct = cbc::Encryptor::<aes::Aes256>::new_from_slices(&secret, &iv)
            .unwrap()
            .encrypt_padded_vec_mut::<aes::cipher::block_padding::Pkcs7>(plain);
        let mut v = b"k8s:enc:aescbc:v1:a:".to_vec();
        v.extend_from_slice(&iv);
        v.extend_from_slice(&ct);
        assert_eq!(r.open(key, &v).unwrap(), plain);
        // a wrong aescbc key whose output happens to end in valid padding is still refused
        let sealed = v.clone();
        let mut lucky = 0;
        for i in 0..4096u32 {
            let mut wrong = secret.clone();
            wrong[..4].copy_from_slice(&i.to_le_bytes());
            wrong[31] ^= 0xff;
            let wrong = Key {
                name: "a".into(),
                cipher: Cipher::AesCbc,
                secret: wrong.into(),
            };
            let padded = cbc::Decryptor::<aes::Aes256>::new_from_slices(&wrong.secret, &iv)
                .unwrap()
                .decrypt_padded_vec_mut::<aes::cipher::block_padding::Pkcs7>(&ct);
            if padded.is_ok() {
                lucky += 1;
                assert_eq!(decrypt(&wrong, key, &sealed[20..]), None);
            }
        }
        assert!(lucky > 0, "no wrong key with valid padding among 4096");
        // aesgcm, authenticated with the etcd key
        let nonce = [3u8; 12];
        let ct = aes_gcm::Aes256Gcm::new_from_slice(&secret)
            .unwrap()
            .encrypt(
                aes_gcm::Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: key.as_bytes(),
                },
            )
            .unwrap();
        let mut v = b"k8s:enc:aesgcm:v1:g:".to_vec();
        v.extend_from_slice(&nonce);
        v.extend_from_slice(&ct);
        assert_eq!(r.open(key, &v).unwrap(), plain);
        let moved = r.open("/registry/secrets/ns/other", &v).unwrap_err();
        assert!(moved.contains("does not open"), "{moved}");
        // secretbox
        let nonce = [9u8; 24];
        let ct = {
            use crypto_secretbox::aead::{Aead as _, KeyInit as _};
            crypto_secretbox::XSalsa20Poly1305::new_from_slice(&secret)
                .unwrap()
                .encrypt(crypto_secretbox::Nonce::from_slice(&nonce), &plain[..])
                .unwrap()
        };
        let mut v = b"k8s:enc:secretbox:v1:s:".to_vec();
        v.extend_from_slice(&nonce);
        v.extend_from_slice(&ct);
        assert_eq!(r.open(key, &v).unwrap(), plain);
        // wrong names, KMS, no config
        assert!(r
            .open(
                key,
                b"k8s:enc:aescbc:v1:zz:0123456789abcdef0123456789abcdef"
            )
            .unwrap_err()
            .contains("does not hold"));
        assert!(r
            .open(key, b"k8s:enc:kms:v2:vault:xxxx")
            .unwrap_err()
            .contains("kms provider"));
        assert!(Keyring::default()
            .open(key, b"k8s:enc:aescbc:v1:a:xxxx")
            .unwrap_err()
            .contains("--encryption-config"));
    }
}
