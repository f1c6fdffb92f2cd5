//! The bundle itself: a tar written on a blocking thread into the shared zstd(+age) encoder,
//! fed with small JSON documents and with logs/checkpoints spooled to anonymous temp files (a tar
//! header needs the size first). Every file's size and sha256 are recorded as it is handed over,
//! for manifest.json and SHA256SUMS.

use std::io::{Read, Seek};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{sums_line, FileEntry, Manifest, Missing, MANIFEST, SUMS};
use crate::error::{to_json, Error, IoContext, Result};
use crate::pipeline::{Encoder, Feed};
use crate::progress::Stage;

/// One file going into the tar: small JSON in memory, or a spooled log/checkpoint.
pub(super) enum Part {
    Data {
        path: String,
        data: Vec<u8>,
    },
    File {
        path: String,
        file: std::fs::File,
        size: u64,
    },
}

/// The collecting side of a bundle: records each file's digest and hands it to the tar thread.
pub(super) struct BundleWriter<'s> {
    pub(super) feed: Feed<Part>,
    /// Bytes of logs/checkpoints streamed so far (a bar on a terminal, log lines otherwise).
    pub(super) stage: &'s dyn Stage,
    pub(super) files: Vec<FileEntry>,
    pub(super) missing: Vec<Missing>,
}

impl BundleWriter<'_> {
    async fn send(&self, part: Part) -> Result<()> {
        self.feed.send(part).await
    }

    pub(super) async fn data(
        &mut self,
        path: &str,
        data: Vec<u8>,
        listed: bool,
    ) -> Result<FileEntry> {
        let entry = FileEntry {
            path: path.to_string(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(&data)),
        };
        if listed {
            self.files.push(entry.clone());
        }
        self.send(Part::Data {
            path: path.to_string(),
            data,
        })
        .await?;
        Ok(entry)
    }

    pub(super) async fn json<T: Serialize>(&mut self, path: &str, value: &T) -> Result<()> {
        let mut data = to_json(path, value)?;
        data.push(b'\n');
        self.data(path, data, true).await.map(|_| ())
    }

    pub(super) async fn spooled(&mut self, path: &str, s: Spooled) -> Result<()> {
        self.files.push(FileEntry {
            path: path.to_string(),
            size: s.size,
            sha256: s.sha256,
        });
        self.send(Part::File {
            path: path.to_string(),
            file: s.file,
            size: s.size,
        })
        .await
    }

    /// With `--best-effort`, a part kirt may not read is recorded as missing instead of failing.
    pub(super) fn optional<T>(
        &mut self,
        item: &str,
        r: Result<T>,
        best_effort: bool,
    ) -> Result<Option<T>> {
        match r {
            Ok(v) => Ok(Some(v)),
            Err(e @ Error::Forbidden(_)) if best_effort => {
                self.missing(item, e.to_string());
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn missing(&mut self, item: &str, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::warn!(item, %reason, "not collected");
        self.missing.push(Missing {
            item: item.to_string(),
            reason,
        });
    }
}

/// A stream copied to an anonymous temp file (deleted when dropped), hashed on the way.
pub(super) struct Spooled {
    pub(super) file: std::fs::File,
    pub(super) size: u64,
    pub(super) sha256: String,
    pub(super) first: Option<u8>,
}

pub(super) async fn spool<R: futures::AsyncRead + Unpin>(
    mut r: R,
    what: &str,
    stage: &dyn Stage,
) -> Result<Spooled> {
    use futures::AsyncReadExt;
    let file = tempfile::tempfile().ctx(|| format!("creating a temporary file for {what}"))?;
    let mut out = tokio::fs::File::from_std(
        file.try_clone()
            .ctx(|| format!("creating a temporary file for {what}"))?,
    );
    let mut buf = vec![0u8; 64 * 1024];
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut first = None;
    loop {
        let n = r
            .read(&mut buf)
            .await
            .ctx(|| format!("{what}: the stream broke"))?;
        if n == 0 {
            break;
        }
        first.get_or_insert(buf[0]);
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .await
            .ctx(|| format!("spooling {what} to a temporary file"))?;
        size += n as u64;
        stage.inc(n as u64);
    }
    out.flush()
        .await
        .ctx(|| format!("spooling {what} to a temporary file"))?;
    drop(out);
    Ok(Spooled {
        file,
        size,
        sha256: hex::encode(hasher.finalize()),
        first,
    })
}

/// The encoding stage: tar entries written into the pipeline's zstd(+age) encoder.
pub(super) fn write_tar(
    mut rx: mpsc::Receiver<Part>,
    enc: &mut Encoder,
    top: &str,
    mtime: u64,
) -> Result<()> {
    let mut tar = tar::Builder::new(enc);
    let header = |size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    let io = |e| Error::io("writing the evidence bundle", e);
    while let Some(part) = rx.blocking_recv() {
        match part {
            Part::Data { path, data } => tar
                .append_data(
                    &mut header(data.len() as u64),
                    format!("{top}/{path}"),
                    &data[..],
                )
                .map_err(io)?,
            Part::File {
                path,
                mut file,
                size,
            } => {
                file.rewind().map_err(io)?;
                tar.append_data(&mut header(size), format!("{top}/{path}"), file.take(size))
                    .map_err(io)?
            }
        }
    }
    tar.into_inner().map_err(io)?;
    Ok(())
}

/// manifest.json, then SHA256SUMS covering every file including the manifest.
pub(super) async fn finish_bundle(w: &mut BundleWriter<'_>, m: &Manifest) -> Result<()> {
    let mut data = to_json(MANIFEST, m)?;
    data.push(b'\n');
    let entry = w.data(MANIFEST, data, false).await?;
    let sums: String = w
        .files
        .iter()
        .chain(std::iter::once(&entry))
        .map(sums_line)
        .collect();
    w.data(SUMS, sums.into_bytes(), false).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::verify::{compare, scan};
    use super::super::{ClusterInfo, Collector, Options, PodRef, FORMAT};
    use super::*;
    use crate::pipeline::{ChannelWriter, Compression, Encryption};

    const BUNDLE: &str = "evidence-ns-pod-20261123T130405Z";

    fn entry(path: &str, data: &[u8]) -> FileEntry {
        FileEntry {
            path: path.into(),
            size: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data)),
        }
    }

    /// Files as collect records them, then the bytes actually put into the tar (maybe tampered).
    fn bundle(recorded: &[(&str, &[u8])], stored: &[(&str, &[u8])]) -> Vec<u8> {
        let files: Vec<FileEntry> = recorded.iter().map(|(p, d)| entry(p, d)).collect();
        let at: jiff::Timestamp = "2026-11-23T13:04:05Z".parse().unwrap();
        let m = Manifest {
            format: FORMAT.into(),
            bundle: BUNDLE.into(),
            case_id: None,
            note: None,
            collector: Collector {
                identity: "test".into(),
                host: "h".into(),
                kirt_version: "kirt test".into(),
            },
            cluster: ClusterInfo {
                url: "https://x".into(),
                server_version: None,
            },
            pod: PodRef {
                namespace: "ns".into(),
                name: "pod".into(),
                uid: "u".into(),
                node: None,
                quarantined: false,
            },
            options: Options::default(),
            started_at: at,
            finished_at: at,
            files: files.clone(),
            missing: vec![],
            audit: None,
        };
        let manifest = serde_json::to_vec_pretty(&m).unwrap();
        let sums: String = files
            .iter()
            .chain(std::iter::once(&entry(MANIFEST, &manifest)))
            .map(sums_line)
            .collect();
        let mut parts: Vec<(String, Vec<u8>)> = stored
            .iter()
            .map(|(p, d)| (p.to_string(), d.to_vec()))
            .collect();
        parts.push((MANIFEST.into(), manifest));
        parts.push((SUMS.into(), sums.into_bytes()));

        let (part_tx, part_rx) = mpsc::channel(4);
        let (stored_tx, mut stored_rx) = mpsc::channel::<Bytes>(4);
        let writer = std::thread::spawn(move || {
            let mut enc = Encoder::new(
                ChannelWriter::new(stored_tx),
                &Compression::zstd(3, 1).unwrap(),
                &Encryption::None,
            )
            .unwrap();
            write_tar(part_rx, &mut enc, BUNDLE, 0).unwrap();
            enc.finish().unwrap();
        });
        let sender = std::thread::spawn(move || {
            for (path, data) in parts {
                part_tx.blocking_send(Part::Data { path, data }).unwrap();
            }
        });
        let mut out = Vec::new();
        while let Some(chunk) = stored_rx.blocking_recv() {
            out.extend_from_slice(&chunk);
        }
        sender.join().unwrap();
        writer.join().unwrap();
        out
    }

    fn problems(bytes: &[u8]) -> Vec<String> {
        let plain = zstd::decode_all(bytes).unwrap();
        let r = compare(BUNDLE, &scan(&plain[..]).unwrap());
        assert_eq!(r.ok, r.problems.is_empty());
        r.problems
    }

    #[test]
    fn round_trip_verifies_and_tampering_is_named() {
        let files: [(&str, &[u8]); 2] = [("pod.json", b"{}\n"), ("logs/app.log", b"line 1\n")];
        assert_eq!(problems(&bundle(&files, &files)), Vec::<String>::new());

        let changed = problems(&bundle(
            &files,
            &[("pod.json", b"{}\n"), ("logs/app.log", b"line X\n")],
        ));
        assert!(
            changed
                .iter()
                .any(|p| p.starts_with("changed: logs/app.log")),
            "{changed:?}"
        );
        let missing = problems(&bundle(&files, &files[..1]));
        assert!(
            missing
                .iter()
                .any(|p| p.starts_with("missing: logs/app.log")),
            "{missing:?}"
        );
        let mut more = files.to_vec();
        more.push(("evil.sh", b"rm -rf /"));
        let extra = problems(&bundle(&files, &more));
        assert!(
            extra.iter().any(|p| p.starts_with("extra: evil.sh")),
            "{extra:?}"
        );
    }
}
