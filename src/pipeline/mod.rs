//! The streaming byte pipeline shared by backup and evidence, and its orchestration:
//! producer → (blocking) zstd → age → sha256 → upload, with bounded buffers between stages so
//! memory stays flat whatever the size, and every stage overlapping the others.
//!
//! [`run`] owns the stages: it starts the blocking encoder and the uploader, watches for
//! SIGINT/SIGTERM in every stage (the producer is dropped, the uploader aborts even while it waits
//! on a slow store), joins everything, picks the root cause when something failed (a stage that
//! stopped because the next one did is not the cause), aborts the upload on any failure, and
//! otherwise hands back what was encoded for the caller to check and commit. The CPU-heavy middle
//! runs on a blocking thread; the ends (etcd stream or Kubernetes API, store upload) are async.

mod decode;
mod encode;

pub use decode::{open_reader, DecodeStats, Decoder, Decryption};
pub use encode::{Compression, EncodeStats, Encoder, Encryption};

use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::{join, Error, Result};
use crate::signal::Shutdown;
use crate::store::Upload;

/// Size of the chunks passed between stages.
pub const CHUNK: usize = 1 << 20;
/// Chunks buffered between two stages.
pub const DEPTH: usize = 4;

/// What to encode with and where the stored bytes go.
pub struct Job {
    pub compression: Compression,
    pub encryption: Encryption,
    /// The object being written; `None` in a dry run (everything is encoded and counted, nothing
    /// stored).
    pub upload: Option<Box<dyn Upload>>,
    /// Items buffered between the producer and the encoder.
    pub depth: usize,
}

/// The producer's end of the first channel.
pub struct Feed<T> {
    tx: mpsc::Sender<T>,
    stopped: Arc<AtomicBool>,
}

impl<T> Feed<T> {
    /// Hands an item to the encoding stage. Fails when that stage has stopped; its own error is
    /// then the one reported, not this one.
    pub async fn send(&self, item: T) -> Result<()> {
        self.tx.send(item).await.map_err(|_| {
            self.stopped.store(true, Ordering::SeqCst);
            Error::failed("the encoding stage stopped")
        })
    }
}

/// How a pipeline run ended.
pub enum Outcome<R> {
    /// Every stage finished: the caller checks what it got and commits or aborts.
    Done(Encoded<R>),
    /// SIGINT/SIGTERM arrived: the upload was aborted.
    Stopped,
    /// A stage failed (this is the root cause); the upload was aborted.
    Failed(Error),
}

impl<R> Outcome<R> {
    /// `Done` as Ok; a signal as `Error::Interrupted` saying nothing was published.
    pub fn into_result(self, stop: &Shutdown) -> Result<Encoded<R>> {
        match self {
            Outcome::Done(e) => Ok(e),
            Outcome::Stopped => Err(stop.error("nothing was published")),
            Outcome::Failed(e) => Err(e),
        }
    }
}

/// What a finished run produced; the upload is neither committed nor aborted yet.
pub struct Encoded<R> {
    /// What the producer returned.
    pub output: R,
    /// Digest and size of the stored bytes.
    pub stats: EncodeStats,
    pub upload: Pending,
}

/// An upload waiting for the caller's verdict. Dropping it uncommitted discards it.
pub struct Pending(Option<Box<dyn Upload>>);

impl Pending {
    /// Makes the object visible (nothing to do in a dry run).
    pub async fn commit(self) -> Result<()> {
        if let Some(up) = self.0 {
            up.commit().await?;
        }
        Ok(())
    }

    pub async fn abort(self) {
        if let Some(up) = self.0 {
            up.abort().await;
        }
    }
}

/// Runs one pipeline: `produce` feeds items, `encode` (on a blocking thread) writes them as
/// plaintext into the encoder, whose stored bytes go to the upload. `stop` ends it early.
pub async fn run<T, R, E, P, Fut>(job: Job, stop: &Shutdown, encode: E, produce: P) -> Outcome<R>
where
    T: Send + 'static,
    E: FnOnce(mpsc::Receiver<T>, &mut Encoder) -> Result<()> + Send + 'static,
    P: FnOnce(Feed<T>) -> Fut,
    Fut: Future<Output = Result<R>>,
{
    let (tx, rx) = mpsc::channel::<T>(job.depth.max(1));
    let (stored_tx, stored_rx) = mpsc::channel::<Bytes>(DEPTH);
    let (compression, encryption) = (job.compression, job.encryption);
    let encoder = tokio::task::spawn_blocking(move || -> Result<EncodeStats> {
        let mut enc = Encoder::new(ChannelWriter::new(stored_tx), &compression, &encryption)?;
        encode(rx, &mut enc)?;
        enc.finish()
            .map_err(|e| Error::io("finishing compression/encryption", e))
    });
    let uploader = spawn_uploader(job.upload, stored_rx, stop.clone());
    let stopped = Arc::new(AtomicBool::new(false));
    let feed = Feed {
        tx,
        stopped: stopped.clone(),
    };
    // The producer's future (and with it the feed) is gone after this: the encoder sees the end
    // of its input and finishes, the uploader drains.
    let produced = tokio::select! {
        r = produce(feed) => Some(r),
        _ = stop.requested() => None,
    };
    let encoded = join("the encoder", encoder).await.and_then(|r| r);
    let upload = match join("the uploader", uploader).await {
        // the uploader aborted its upload itself
        Ok(Uploaded::Stopped) => return Outcome::Stopped,
        Ok(Uploaded::Failed(e)) | Err(e) => return Outcome::Failed(e),
        Ok(Uploaded::Done(up)) => Pending(up),
    };
    match (produced, encoded) {
        (None, _) => {
            upload.abort().await;
            Outcome::Stopped
        }
        _ if stop.is_requested() => {
            upload.abort().await;
            Outcome::Stopped
        }
        (Some(Err(e)), encoded) => {
            upload.abort().await;
            match encoded {
                Err(cause) if stopped.load(Ordering::SeqCst) => Outcome::Failed(cause),
                _ => Outcome::Failed(e),
            }
        }
        (Some(Ok(_)), Err(e)) => {
            upload.abort().await;
            Outcome::Failed(e)
        }
        (Some(Ok(output)), Ok(stats)) => Outcome::Done(Encoded {
            output,
            stats,
            upload,
        }),
    }
}

/// The `KIRT_HOLD_AT=upload` test hook holds once this much was stored: more than one 5 MiB S3
/// part, so a multipart upload with parts is in flight.
const HOLD_AFTER: u64 = 8 << 20;

/// How the upload stage ended.
enum Uploaded {
    /// Everything written; the upload waits for commit (`None` in a dry run).
    Done(Option<Box<dyn Upload>>),
    /// A write failed; the upload was aborted.
    Failed(Error),
    /// A signal arrived; the upload was aborted.
    Stopped,
}

/// The upload stage: writes what arrives on `rx` into `upload` (nothing in a dry run) and hands
/// the upload back once the channel closes. On a write error or a signal (also while a write
/// waits on a slow store) the upload is aborted at once; dropping `rx` then stops the stages
/// before it.
fn spawn_uploader(
    mut upload: Option<Box<dyn Upload>>,
    mut rx: mpsc::Receiver<Bytes>,
    stop: Shutdown,
) -> tokio::task::JoinHandle<Uploaded> {
    tokio::spawn(async move {
        let written: std::result::Result<(), Option<Error>> = async {
            let (mut bytes, mut held) = (0u64, false);
            loop {
                // (tests stop here with parts of a multipart upload already sent)
                if bytes >= HOLD_AFTER && !held {
                    held = true;
                    stop.hold("upload").await;
                }
                let chunk = tokio::select! {
                    c = rx.recv() => c,
                    _ = stop.requested() => return Err(None),
                };
                let Some(chunk) = chunk else { return Ok(()) };
                bytes += chunk.len() as u64;
                if let Some(up) = upload.as_mut() {
                    tokio::select! {
                        r = up.write(chunk) => r.map_err(Some)?,
                        _ = stop.requested() => return Err(None),
                    }
                }
            }
        }
        .await;
        match written {
            Ok(()) if !stop.is_requested() => Uploaded::Done(upload),
            end => {
                if let Some(up) = upload.take() {
                    up.abort().await;
                }
                match end {
                    Err(Some(e)) => Uploaded::Failed(e),
                    _ => Uploaded::Stopped,
                }
            }
        }
    })
}

/// The encoding stage for a byte stream: writes every chunk as it comes.
pub fn copy_chunks(mut rx: mpsc::Receiver<Bytes>, enc: &mut Encoder) -> Result<()> {
    while let Some(chunk) = rx.blocking_recv() {
        enc.write_all(&chunk)
            .map_err(|e| Error::io("compressing/encrypting", e))?;
    }
    Ok(())
}

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
    /// Bytes seen so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

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

    /// A local store in a temp dir and one object key, for the orchestration tests.
    async fn store() -> (tempfile::TempDir, std::sync::Arc<dyn crate::store::Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::open(dir.path().to_str().unwrap(), &Default::default())
            .await
            .unwrap();
        (dir, store)
    }

    fn job(upload: Option<Box<dyn Upload>>, encryption: Encryption) -> Job {
        Job {
            compression: Compression::zstd(3, 2).unwrap(),
            encryption,
            upload,
            depth: 4,
        }
    }

    /// The producer's bytes, through zstd and age into a store, come back identical through the
    /// decoder, and the digests agree on both sides.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn encode_then_decode_round_trips() {
        let id = age::x25519::Identity::generate();
        let recipient = crate::crypto::parse_recipient(&id.to_public().to_string()).unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let (_dir, store) = store().await;
        let up = store.create("obj").await.unwrap();
        let sent = data.clone();
        let outcome = run(
            job(Some(up), Encryption::Recipients(vec![recipient])),
            &Shutdown::manual(),
            copy_chunks,
            |feed| async move {
                for c in sent.chunks(100_000) {
                    feed.send(Bytes::copy_from_slice(c)).await?;
                }
                Ok(sent.len())
            },
        )
        .await;
        let encoded = outcome.into_result(&Shutdown::manual()).unwrap();
        assert_eq!(encoded.output, data.len());
        let stats = encoded.stats.clone();
        encoded.upload.commit().await.unwrap();

        let reader = store.get("obj").await.unwrap();
        let (plain, decoded) = tokio::task::spawn_blocking(move || {
            let mut dec = Decoder::new(
                open_reader(reader),
                &Decryption::Identities(vec![Box::new(id)]),
                true,
            )
            .unwrap();
            let mut plain = Vec::new();
            std::io::Read::read_to_end(&mut dec, &mut plain).unwrap();
            (plain, dec.finish().unwrap())
        })
        .await
        .unwrap();
        assert!(plain == data, "the decoded bytes differ");
        assert_eq!(decoded.stored_sha256, stats.stored_sha256);
        assert_eq!(decoded.stored_size, stats.stored_size);
    }

    /// A failing encoder is the root cause (not the producer it stopped), and the upload is gone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stage_that_failed_is_reported_and_nothing_is_stored() {
        let (dir, store) = store().await;
        let up = store.create("obj").await.unwrap();
        let outcome = run(
            job(Some(up), Encryption::None),
            &Shutdown::manual(),
            |mut rx: mpsc::Receiver<Bytes>, _enc: &mut Encoder| {
                let _ = rx.blocking_recv();
                Err(Error::VerifyFailed("the encoder refused".into()))
            },
            |feed| async move {
                loop {
                    feed.send(Bytes::from_static(b"x")).await?;
                }
                #[allow(unreachable_code)]
                Ok(())
            },
        )
        .await;
        match outcome {
            Outcome::Failed(e) => assert!(e.to_string().contains("the encoder refused"), "{e}"),
            _ => panic!("expected the encoder's failure"),
        }
        assert!(store.list("").await.unwrap().is_empty());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");

        // a failing producer is the root cause when the later stages were fine
        let up = store.create("obj").await.unwrap();
        let outcome = run(
            job(Some(up), Encryption::None),
            &Shutdown::manual(),
            copy_chunks,
            |feed| async move {
                feed.send(Bytes::from_static(b"some")).await?;
                Err::<(), _>(Error::failed("the source broke"))
            },
        )
        .await;
        match outcome {
            Outcome::Failed(e) => assert_eq!(e.to_string(), "the source broke"),
            _ => panic!("expected the producer's failure"),
        }
        assert!(store.list("").await.unwrap().is_empty());
    }

    /// A signal while the store is slow (a write that does not return) aborts the upload: nothing
    /// is stored and the run says it stopped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_signal_during_back_pressure_aborts_the_upload() {
        struct Stuck {
            aborted: Arc<AtomicBool>,
        }
        #[async_trait::async_trait]
        impl Upload for Stuck {
            async fn write(&mut self, _data: Bytes) -> Result<()> {
                std::future::pending().await
            }
            async fn commit(self: Box<Self>) -> Result<u64> {
                panic!("must not commit")
            }
            async fn abort(self: Box<Self>) {
                self.aborted.store(true, Ordering::SeqCst);
            }
        }
        let aborted = Arc::new(AtomicBool::new(false));
        let stop = Shutdown::manual();
        let s = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            s.cancel();
        });
        let up = Box::new(Stuck {
            aborted: aborted.clone(),
        });
        let outcome = run(
            job(Some(up), Encryption::None),
            &stop,
            copy_chunks,
            |feed| async move {
                loop {
                    feed.send(Bytes::from(vec![7u8; 1 << 16])).await?;
                }
                #[allow(unreachable_code)]
                Ok(())
            },
        )
        .await;
        assert!(matches!(outcome, Outcome::Stopped));
        assert!(aborted.load(Ordering::SeqCst), "the upload was not aborted");
        match outcome.into_result(&stop) {
            Err(e) => assert_eq!(e.exit(), crate::Exit::Terminated),
            Ok(_) => panic!("expected the interruption"),
        }
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
