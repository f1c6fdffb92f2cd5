//! Encoding side: zstd (multi-threaded, with frame checksum) then optionally age, then a sha256
//! of exactly the stored bytes. The output format is what `age -d | zstd -d` reads. With
//! [`Compression::none`] and no encryption the bytes are stored as they come, hashed on the way
//! (copying an object that is already encoded).

use std::io::Write;

use age::secrecy::SecretString;
use serde::Serialize;

use super::{ChannelWriter, HashCount};
use crate::crypto::Recipient;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize)]
pub struct Compression {
    pub algorithm: &'static str,
    pub level: i32,
    pub threads: u32,
}

impl Compression {
    pub fn zstd(level: i32, threads: u32) -> Result<Self> {
        let range = zstd::compression_level_range();
        if !range.contains(&level) {
            return Err(Error::usage(format!(
                "--compression-level {level} is outside zstd's range {range:?}"
            )));
        }
        Ok(Compression {
            algorithm: "zstd",
            level,
            threads,
        })
    }

    /// No compression stage.
    pub fn none() -> Self {
        Compression {
            algorithm: "none",
            level: 0,
            threads: 0,
        }
    }
}

#[derive(Clone)]
pub enum Encryption {
    None,
    Recipients(Vec<Recipient>),
    Passphrase(SecretString),
}

enum Inner {
    Plain(HashCount<ChannelWriter>),
    Age(age::stream::StreamWriter<HashCount<ChannelWriter>>),
}

impl Write for Inner {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Inner::Plain(w) => w.write(buf),
            Inner::Age(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Inner::Plain(w) => w.flush(),
            Inner::Age(w) => w.flush(),
        }
    }
}

/// sha256 and size of the stored (compressed, encrypted) bytes.
#[derive(Debug, Clone)]
pub struct EncodeStats {
    pub stored_sha256: String,
    pub stored_size: u64,
}

/// A blocking writer: plaintext in, stored bytes out to a channel.
pub struct Encoder {
    stage: Stage,
}

enum Stage {
    Zstd(zstd::stream::write::Encoder<'static, Inner>),
    Stored(Inner),
}

impl Encoder {
    pub fn new(
        out: ChannelWriter,
        compression: &Compression,
        encryption: &Encryption,
    ) -> Result<Self> {
        let sink = HashCount::new(out);
        let inner = match encryption {
            Encryption::None => Inner::Plain(sink),
            Encryption::Recipients(rs) => {
                let enc = age::Encryptor::with_recipients(
                    rs.iter().map(|r| r.inner.as_ref() as &dyn age::Recipient),
                )
                .map_err(|e| Error::usage(format!("cannot encrypt to these recipients: {e}")))?;
                Inner::Age(
                    enc.wrap_output(sink)
                        .map_err(|e| Error::io("starting age encryption", e))?,
                )
            }
            Encryption::Passphrase(p) => {
                let enc = age::Encryptor::with_user_passphrase(p.clone());
                Inner::Age(
                    enc.wrap_output(sink)
                        .map_err(|e| Error::io("starting age encryption", e))?,
                )
            }
        };
        if compression.algorithm == "none" {
            return Ok(Encoder {
                stage: Stage::Stored(inner),
            });
        }
        let mut zstd = zstd::stream::write::Encoder::new(inner, compression.level)
            .map_err(|e| Error::io("starting zstd", e))?;
        zstd.include_checksum(true)
            .map_err(|e| Error::io("zstd checksum", e))?;
        if compression.threads > 1 {
            zstd.multithread(compression.threads)
                .map_err(|e| Error::io("zstd threads", e))?;
            // Smaller jobs than zstd's default (4× the window) keep the workers' buffers, and so
            // kirt's peak memory, small; the ratio cost is negligible at these sizes.
            zstd.set_parameter(zstd::zstd_safe::CParameter::JobSize(2 << 20))
                .map_err(|e| Error::io("zstd job size", e))?;
        }
        Ok(Encoder {
            stage: Stage::Zstd(zstd),
        })
    }

    pub fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        Write::write_all(self, data)
    }

    /// Flushes every stage, closes the age stream and returns what was stored.
    pub fn finish(self) -> std::io::Result<EncodeStats> {
        let inner = match self.stage {
            Stage::Zstd(z) => z.finish()?,
            Stage::Stored(inner) => inner,
        };
        let sink = match inner {
            Inner::Plain(s) => s,
            Inner::Age(w) => w.finish()?,
        };
        let (mut out, sha, size) = sink.finish()?;
        out.flush()?;
        Ok(EncodeStats {
            stored_sha256: sha,
            stored_size: size,
        })
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.stage {
            Stage::Zstd(z) => z.write(buf),
            Stage::Stored(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.stage {
            Stage::Zstd(z) => z.flush(),
            Stage::Stored(w) => w.flush(),
        }
    }
}
