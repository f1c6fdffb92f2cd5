//! Decoding side: stored bytes → sha256 → age decrypt → zstd decode → plaintext, as one blocking
//! `Read` chain fed from an async store stream (never whole in memory).

use std::io::Read;

use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;

use crate::crypto::BoxIdentity;
use crate::error::{Error, Result};

/// Hashes and counts what is read through it.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// How the stored bytes are to be decrypted.
pub enum Decryption {
    None,
    Identities(Vec<BoxIdentity>),
    Passphrase(age::secrecy::SecretString),
}

/// Digest of the stored bytes, known once the stream was read to the end.
#[derive(Debug, Clone)]
pub struct DecodeStats {
    pub stored_sha256: String,
    pub stored_size: u64,
}

/// Plaintext reader over a stored object. Read it to the end, then call `finish`.
pub struct Decoder {
    reader: Box<dyn Read + Send>,
    stored: std::sync::Arc<std::sync::Mutex<Option<DecodeStats>>>,
}

/// Shares the stored-bytes digest out of the chain once the source hits EOF.
struct Tap<R> {
    inner: HashReader<R>,
    out: std::sync::Arc<std::sync::Mutex<Option<DecodeStats>>>,
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let stats = DecodeStats {
                stored_sha256: hex::encode(self.inner.hasher.clone().finalize()),
                stored_size: self.inner.count,
            };
            *self.out.lock().unwrap_or_else(|e| e.into_inner()) = Some(stats);
        }
        Ok(n)
    }
}

impl Decoder {
    /// Builds the chain over a blocking reader. `compressed` says whether zstd was used.
    pub fn new(
        source: Box<dyn Read + Send>,
        decryption: &Decryption,
        compressed: bool,
    ) -> Result<Self> {
        let stored = std::sync::Arc::new(std::sync::Mutex::new(None));
        let tap = Tap {
            inner: HashReader {
                inner: source,
                hasher: Sha256::new(),
                count: 0,
            },
            out: stored.clone(),
        };
        let buffered = std::io::BufReader::with_capacity(1 << 20, tap);
        let decrypted: Box<dyn Read + Send> = match decryption {
            Decryption::None => Box::new(buffered),
            Decryption::Identities(ids) => {
                let d = age::Decryptor::new_buffered(buffered).map_err(age_err)?;
                if d.is_scrypt() {
                    return Err(Error::usage(
                        "this object is passphrase-encrypted: use --passphrase",
                    ));
                }
                Box::new(
                    d.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
                        .map_err(age_err)?,
                )
            }
            Decryption::Passphrase(p) => {
                let d = age::Decryptor::new_buffered(buffered).map_err(age_err)?;
                if !d.is_scrypt() {
                    return Err(Error::usage(
                        "this object is encrypted to recipients, not a passphrase: use --identity",
                    ));
                }
                let id = age::scrypt::Identity::new(p.clone());
                Box::new(
                    d.decrypt(std::iter::once(&id as &dyn age::Identity))
                        .map_err(age_err)?,
                )
            }
        };
        let reader: Box<dyn Read + Send> = if compressed {
            Box::new(
                zstd::stream::read::Decoder::new(decrypted)
                    .map_err(|e| Error::io("starting zstd", e))?,
            )
        } else {
            decrypted
        };
        Ok(Decoder { reader, stored })
    }

    /// The stored-bytes digest; `None` if the source was not read to its end.
    pub fn finish(self) -> Option<DecodeStats> {
        drop(self.reader);
        self.stored.lock().ok().and_then(|g| g.clone())
    }
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
}

fn age_err(e: age::DecryptError) -> Error {
    match e {
        age::DecryptError::NoMatchingKeys => {
            Error::VerifyFailed("no identity given can decrypt this object (wrong key?)".into())
        }
        age::DecryptError::DecryptionFailed | age::DecryptError::KeyDecryptionFailed => {
            Error::VerifyFailed(
                "decryption failed: wrong passphrase/key or the object was modified".into(),
            )
        }
        other => Error::VerifyFailed(format!("the object is not a valid age file: {other}")),
    }
}

/// Wraps an async store stream as a blocking reader (use only inside `spawn_blocking`).
pub fn open_reader(r: Box<dyn AsyncRead + Send + Unpin>) -> Box<dyn Read + Send> {
    Box::new(tokio_util::io::SyncIoBridge::new(r))
}
