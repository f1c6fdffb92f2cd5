//! age recipients and identities: the shared `--recipient/--recipients-file/--passphrase/
//! --no-encrypt` and `--identity/--passphrase` option groups, parsing what users pass (X25519
//! `age1…`, SSH `ssh-ed25519`/`ssh-rsa` public keys, identity files, passphrases), and the
//! fingerprints that manifests record instead of keys.

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use age::secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::pipeline::{Decryption, Encryption};

pub type SharedRecipient = Arc<dyn age::Recipient + Send + Sync>;
pub type BoxIdentity = Box<dyn age::Identity + Send + Sync>;

/// How something is encrypted: `--recipient`/`--recipients-file`, `--passphrase` or
/// `--no-encrypt`. Backups must choose; evidence bundles are plain unless recipients are given.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct EncryptOptions {
    /// age X25519 (age1…) or SSH (ssh-ed25519/ssh-rsa) public key; repeatable
    #[arg(long = "recipient", alias = "encrypt-to", value_name = "RECIPIENT")]
    pub recipients: Vec<String>,
    /// File with one recipient per line (as `age -R`)
    #[arg(long, value_name = "FILE")]
    pub recipients_file: Option<PathBuf>,
    /// Encrypt with a passphrase ($KIRT_PASSPHRASE or asked on the terminal)
    #[arg(long)]
    pub passphrase: bool,
    /// Store unencrypted (not recommended: etcd holds every Secret of the cluster)
    #[arg(long)]
    pub no_encrypt: bool,
}

/// What manifests record about encryption: the mode and the recipients' fingerprints, never a key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EncryptionInfo {
    pub algorithm: String,
    /// "recipients" or "passphrase"
    pub mode: String,
    pub recipients: Vec<RecipientInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecipientInfo {
    #[serde(rename = "type")]
    pub kind: String,
    pub fingerprint: String,
}

/// Mode names recorded in `EncryptionInfo::mode`.
pub const MODE_PASSPHRASE: &str = "passphrase";
pub const MODE_RECIPIENTS: &str = "recipients";

impl EncryptOptions {
    /// Checks the combination and parses the keys, before anything is read or written. With
    /// `required`, giving nothing is an error (backups); otherwise it means "not encrypted".
    pub fn resolve(&self, required: bool) -> Result<(Encryption, Option<EncryptionInfo>)> {
        let has_recipients = !self.recipients.is_empty() || self.recipients_file.is_some();
        if self.no_encrypt && (has_recipients || self.passphrase) {
            return Err(Error::usage(
                "--no-encrypt cannot be combined with --recipient/--recipients-file/--passphrase",
            ));
        }
        if self.passphrase && has_recipients {
            return Err(Error::usage(
                "--passphrase cannot be combined with recipients (age does not mix them)",
            ));
        }
        if self.no_encrypt || (!required && !has_recipients && !self.passphrase) {
            return Ok((Encryption::None, None));
        }
        if self.passphrase {
            let p = passphrase(true)?;
            let info = EncryptionInfo {
                algorithm: "age".into(),
                mode: MODE_PASSPHRASE.into(),
                recipients: vec![],
            };
            return Ok((Encryption::Passphrase(p), Some(info)));
        }
        if !has_recipients {
            return Err(Error::usage(
                "backups are encrypted: give --recipient AGE_OR_SSH_KEY, --recipients-file F or --passphrase (or --no-encrypt)",
            ));
        }
        let mut rs = self
            .recipients
            .iter()
            .map(|r| parse_recipient(r))
            .collect::<Result<Vec<_>>>()?;
        if let Some(f) = &self.recipients_file {
            rs.extend(recipients_file(f)?);
        }
        let info = EncryptionInfo {
            algorithm: "age".into(),
            mode: MODE_RECIPIENTS.into(),
            recipients: rs
                .iter()
                .map(|r| RecipientInfo {
                    kind: r.kind.into(),
                    fingerprint: r.fingerprint.clone(),
                })
                .collect(),
        };
        Ok((Encryption::Recipients(rs), Some(info)))
    }
}

/// How to decrypt (restore side): identity files or a passphrase.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct DecryptOptions {
    /// age or SSH identity file; repeatable
    #[arg(long = "identity", short = 'i', value_name = "FILE")]
    pub identities: Vec<PathBuf>,
    /// Decrypt with a passphrase ($KIRT_PASSPHRASE or asked on the terminal)
    #[arg(long)]
    pub passphrase: bool,
}

impl DecryptOptions {
    /// The decryption for an object encrypted in `mode` (`None`: not encrypted); `what` names the
    /// object in messages ("this backup", "the bundle").
    pub fn resolve(&self, mode: Option<&str>, what: &str) -> Result<Decryption> {
        match mode {
            None => Ok(Decryption::None),
            Some(MODE_PASSPHRASE) => {
                if !self.passphrase {
                    return Err(Error::usage(format!(
                        "{what} is passphrase-encrypted: pass --passphrase ($KIRT_PASSPHRASE)"
                    )));
                }
                Ok(Decryption::Passphrase(passphrase(false)?))
            }
            Some(_) => {
                if self.identities.is_empty() {
                    return Err(Error::usage(format!(
                        "{what} is encrypted: pass --identity FILE (age or SSH private key)"
                    )));
                }
                let mut ids = Vec::new();
                for f in &self.identities {
                    ids.extend(load_identities(f)?);
                }
                Ok(Decryption::Identities(ids))
            }
        }
    }
}

/// A parsed recipient with the fingerprint recorded in manifests.
#[derive(Clone)]
pub struct Recipient {
    pub inner: SharedRecipient,
    pub kind: &'static str,
    pub fingerprint: String,
}

/// SHA-256 of the recipient's public text, shortened: identifies a key without revealing it.
pub fn fingerprint(public: &str) -> String {
    let d = Sha256::digest(public.trim().as_bytes());
    format!("SHA256:{}", &hex::encode(d)[..32])
}

pub fn parse_recipient(s: &str) -> Result<Recipient> {
    let t = s.trim();
    if t.starts_with("age1") {
        let r = age::x25519::Recipient::from_str(t)
            .map_err(|e| Error::usage(format!("malformed age recipient {}: {e}", abbreviate(t))))?;
        return Ok(Recipient {
            inner: Arc::new(r),
            kind: "x25519",
            fingerprint: fingerprint(t),
        });
    }
    if t.starts_with("ssh-") {
        // Only "type base64" identify the key; a trailing comment is not part of it.
        let key: String = t.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        let r = age::ssh::Recipient::from_str(t).map_err(|e| {
            Error::usage(format!("malformed SSH recipient {}: {e:?}", abbreviate(t)))
        })?;
        let kind = if t.starts_with("ssh-ed25519") {
            "ssh-ed25519"
        } else {
            "ssh-rsa"
        };
        return Ok(Recipient {
            inner: Arc::new(r),
            kind,
            fingerprint: fingerprint(&key),
        });
    }
    Err(Error::usage(format!(
        "malformed recipient {}: expected an age X25519 key (age1…) or an SSH public key (ssh-ed25519 …, ssh-rsa …)",
        abbreviate(t)
    )))
}

/// Reads recipients from a file (one per line, `#` comments), as `age -R` does.
pub fn recipients_file(path: &Path) -> Result<Vec<Recipient>> {
    let text = std::fs::read_to_string(path)
        .ctx(|| format!("reading recipients file {}", path.display()))?;
    let rs: Vec<Recipient> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(parse_recipient)
        .collect::<Result<_>>()?;
    if rs.is_empty() {
        return Err(Error::usage(format!(
            "recipients file {} has no recipients",
            path.display()
        )));
    }
    Ok(rs)
}

/// Loads an identity file: age identities (`AGE-SECRET-KEY-1…`) or an unencrypted SSH private key.
pub fn load_identities(path: &Path) -> Result<Vec<BoxIdentity>> {
    let data = std::fs::read(path).ctx(|| format!("reading identity file {}", path.display()))?;
    if let Ok(file) = age::IdentityFile::from_buffer(BufReader::new(&data[..])) {
        if let Ok(ids) = file.into_identities() {
            if !ids.is_empty() {
                return Ok(ids);
            }
        }
    }
    match age::ssh::Identity::from_buffer(BufReader::new(&data[..]), Some(path.display().to_string())) {
        Ok(age::ssh::Identity::Unencrypted(k)) => Ok(vec![Box::new(age::ssh::Identity::Unencrypted(k))]),
        Ok(age::ssh::Identity::Encrypted(_)) => Err(Error::usage(format!(
            "identity {} is a passphrase-protected SSH key; decrypt it first (ssh-keygen -p) or use an age identity",
            path.display()
        ))),
        _ => Err(Error::usage(format!(
            "identity file {} holds no age identity (AGE-SECRET-KEY-1…) or unencrypted SSH private key",
            path.display()
        ))),
    }
}

/// Reads a passphrase from `$KIRT_PASSPHRASE` (cron) or the terminal. Never logged.
pub fn passphrase(confirm_twice: bool) -> Result<SecretString> {
    if let Ok(p) = std::env::var("KIRT_PASSPHRASE") {
        if p.is_empty() {
            return Err(Error::usage("KIRT_PASSPHRASE is empty"));
        }
        return Ok(SecretString::from(p));
    }
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(Error::usage(
            "--passphrase needs $KIRT_PASSPHRASE or a terminal to ask on",
        ));
    }
    let p = read_hidden("Passphrase: ")?;
    if confirm_twice && read_hidden("Passphrase (again): ")? != p {
        return Err(Error::usage("the passphrases do not match"));
    }
    if p.is_empty() {
        return Err(Error::usage("empty passphrase"));
    }
    Ok(SecretString::from(p))
}

fn read_hidden(prompt: &str) -> Result<String> {
    use std::io::Write;
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let echo_off = std::process::Command::new("stty")
        .arg("-echo")
        .stdin(std::process::Stdio::inherit())
        .status();
    let mut line = String::new();
    let r = std::io::stdin().read_line(&mut line);
    if echo_off.is_ok() {
        let _ = std::process::Command::new("stty")
            .arg("echo")
            .stdin(std::process::Stdio::inherit())
            .status();
    }
    eprintln!();
    r.ctx(|| "reading the passphrase".into())?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// Shows the start of a key-like string without echoing all of it into logs.
fn abbreviate(s: &str) -> String {
    let head: String = s.chars().take(16).collect();
    if s.chars().count() > 16 {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;

    #[test]
    fn parses_x25519_and_rejects_garbage() {
        let id = age::x25519::Identity::generate();
        let public = id.to_public().to_string();
        let r = parse_recipient(&public).unwrap();
        assert_eq!(r.kind, "x25519");
        assert!(r.fingerprint.starts_with("SHA256:"));
        assert!(!r.fingerprint.contains(&public));
        let e = parse_recipient("age1notakey").err().unwrap();
        assert_eq!(e.exit(), crate::Exit::Usage);
        let e = parse_recipient("hello").err().unwrap();
        assert!(e.to_string().contains("expected an age X25519 key"), "{e}");
        // the secret key never appears in messages
        let secret = id.to_string();
        let e = parse_recipient(secret.expose_secret()).err().unwrap();
        assert!(
            !e.to_string().contains(&secret.expose_secret()[20..]),
            "{e}"
        );
    }
}
