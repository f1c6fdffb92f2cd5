//! The streaming byte pipeline shared by backup, verify and evidence:
//! source → sha256 → zstd (multi-threaded) → age → sha256 → sink, with bounded buffers between
//! stages so memory stays flat whatever the size, and every stage overlapping the others.
//!
//! The CPU-heavy middle (compression, encryption) runs on a blocking thread; the ends (etcd
//! stream, store upload) are async. Stages talk through bounded channels of `Bytes`.

mod decode;
mod encode;

pub use decode::{open_reader, DecodeStats, Decoder, Decryption};
pub use encode::{Compression, EncodeStats, Encoder, Encryption};

use std::io::Write;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// Size of the chunks passed between stages.
pub const CHUNK: usize = 1 << 20;
/// Chunks buffered between two stages.
pub const DEPTH: usize = 4;

/// Counts and hashes what passes through, then writes it on.
pub struct HashCount<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashCount<W> {
    pub fn new(inner: W) -> Self {
        HashCount {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    pub fn finish(mut self) -> std::io::Result<(W, String, u64)> {
        self.inner.flush()?;
        Ok((self.inner, hex::encode(self.hasher.finalize()), self.count))
    }
}

impl<W: Write> Write for HashCount<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A blocking `Write` that batches bytes into `CHUNK`-sized `Bytes` for an async consumer.
/// A closed receiver (the consumer failed) turns into a `BrokenPipe` error, which stops the
/// producer.
pub struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
}

impl ChannelWriter {
    pub fn new(tx: mpsc::Sender<Bytes>) -> Self {
        ChannelWriter {
            tx,
            buf: BytesMut::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK);
        self.tx.blocking_send(chunk).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the next stage stopped")
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = buf.len().min(room);
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Checks etcd's snapshot trailer on the fly: the stream is the db followed by the sha256 of the
/// db. Hashes everything but the last 32 bytes seen so far (held back), in one pass.
#[derive(Clone, Default)]
pub struct TrailerCheck {
    hasher: Sha256,
    held: Vec<u8>,
    total: u64,
}

/// What the trailer check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDigest {
    /// sha256 of the db (what etcd's trailer claims).
    pub db_sha256: String,
    /// sha256 of the whole stream (db + trailer): the file `age -d | zstd -d` gives.
    pub file_sha256: String,
    /// Size of the whole stream.
    pub size: u64,
    pub trailer_ok: bool,
}

impl TrailerCheck {
    pub fn update(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if data.len() >= 32 {
            self.hasher.update(&self.held);
            self.held.clear();
            let (body, tail) = data.split_at(data.len() - 32);
            self.hasher.update(body);
            self.held.extend_from_slice(tail);
        } else {
            self.held.extend_from_slice(data);
            if self.held.len() > 32 {
                let extra = self.held.len() - 32;
                self.hasher.update(&self.held[..extra]);
                self.held.drain(..extra);
            }
        }
    }

    pub fn finish(self) -> SnapshotDigest {
        let db = self.hasher.clone().finalize();
        let mut whole = self.hasher;
        whole.update(&self.held);
        SnapshotDigest {
            db_sha256: hex::encode(db),
            file_sha256: hex::encode(whole.finalize()),
            size: self.total,
            trailer_ok: self.held.len() == 32 && self.held[..] == db[..],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_like(db: &[u8]) -> Vec<u8> {
        let mut v = db.to_vec();
        v.extend_from_slice(&Sha256::digest(db));
        v
    }

    #[test]
    fn trailer_check_any_chunking() {
        let db: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let stream = snapshot_like(&db);
        for chunk in [1, 5, 31, 32, 33, 1000, 20_000] {
            let mut t = TrailerCheck::default();
            for c in stream.chunks(chunk) {
                t.update(c);
            }
            let d = t.finish();
            assert!(d.trailer_ok, "chunk {chunk}");
            assert_eq!(d.db_sha256, hex::encode(Sha256::digest(&db)));
            assert_eq!(d.file_sha256, hex::encode(Sha256::digest(&stream)));
            assert_eq!(d.size, stream.len() as u64);
        }
        let mut bad = stream.clone();
        bad[100] ^= 1;
        let mut t = TrailerCheck::default();
        t.update(&bad);
        assert!(!t.finish().trailer_ok);
        let mut t = TrailerCheck::default();
        t.update(&stream[..stream.len() - 1]);
        assert!(!t.finish().trailer_ok, "truncated stream must fail");
    }
}
