//! age recipients and identities: parsing what users pass on the command line (X25519 `age1…`,
//! SSH `ssh-ed25519`/`ssh-rsa` public keys, identity files, passphrases) and the fingerprints that
//! manifests record instead of keys.

use std::io::BufReader;
use std::path::Path;
use std::str::FromStr;

use age::secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};

pub type BoxRecipient = Box<dyn age::Recipient + Send + Sync>;
pub type BoxIdentity = Box<dyn age::Identity + Send + Sync>;

/// A parsed recipient with the fingerprint recorded in manifests.
pub struct Recipient {
    pub inner: BoxRecipient,
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
            inner: Box::new(r),
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
            inner: Box::new(r),
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
