//! etcd backups: `create` streams a snapshot through zstd and age into a store and writes the
//! manifest last; `list` reads manifests; `prune` applies restic-style retention.

pub mod create;
pub mod list;
pub mod manifest;
pub mod metrics;
pub mod prune;
pub mod retention;
pub mod scratch;
pub mod signing;
pub mod verify;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::crypto;
use crate::error::{Error, Result};
use crate::pipeline::Encryption;

/// How backups are encrypted. Encryption is on unless `--no-encrypt` is given.
#[derive(Debug, Clone, Default, clap::Args, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct EncryptOptions {
    /// age X25519 (age1…) or SSH (ssh-ed25519/ssh-rsa) public key; repeatable
    #[arg(long = "recipient", value_name = "RECIPIENT")]
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

impl EncryptOptions {
    /// Checks the combination and parses the keys, before anything is read or written.
    pub fn resolve(&self) -> Result<(Encryption, Option<manifest::EncryptionInfo>)> {
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
        if self.no_encrypt {
            return Ok((Encryption::None, None));
        }
        if self.passphrase {
            let p = crypto::passphrase(true)?;
            let info = manifest::EncryptionInfo {
                algorithm: "age".into(),
                mode: "passphrase".into(),
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
            .map(|r| crypto::parse_recipient(r))
            .collect::<Result<Vec<_>>>()?;
        if let Some(f) = &self.recipients_file {
            rs.extend(crypto::recipients_file(f)?);
        }
        let info = manifest::EncryptionInfo {
            algorithm: "age".into(),
            mode: "recipients".into(),
            recipients: rs
                .iter()
                .map(|r| manifest::RecipientInfo {
                    kind: r.kind.into(),
                    fingerprint: r.fingerprint.clone(),
                })
                .collect(),
        };
        Ok((Encryption::Recipients(rs), Some(info)))
    }
}
