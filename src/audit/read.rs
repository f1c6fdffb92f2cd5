//! The audit log files and their lines: a PATH is a file or a directory of rotated files; each
//! file is plain or gzipped (told by its first bytes, not its name); lines are read with a cap
//! so that no planted line can take the memory; every file's bytes are counted and hashed as
//! they are read, for the chain of custody.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::progress::Stage;

/// Longest line kept. Longer lines (a RequestResponse body of a huge list) are skipped and
/// counted: the memory a planted line can take stays bounded.
pub const MAX_LINE: usize = 8 << 20;
/// Corrupt line numbers remembered per file (the count is always complete).
const SHOWN_CORRUPT: usize = 10;

/// The files to read, each once.
#[derive(Debug, Clone)]
pub struct Sources {
    pub files: Vec<PathBuf>,
}

impl Sources {
    /// Every PATH given: a file, or a directory's regular files that are not hidden (rotated
    /// `audit-….log.gz` next to `audit.log`). A path that does not exist, or a directory without
    /// files, is a usage error: nothing is read before every path checks out.
    pub fn resolve(paths: &[PathBuf]) -> Result<Sources> {
        let mut files = Vec::new();
        for p in paths {
            let meta = std::fs::metadata(p).map_err(|e| {
                Error::usage(format!(
                    "--audit-log {}: {e} (give the apiserver's --audit-log-path file, or the directory of its rotated files)",
                    p.display()
                ))
            })?;
            if meta.is_dir() {
                let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                    .map_err(|e| Error::usage(format!("--audit-log {}: {e}", p.display())))?
                    .filter_map(|e| e.ok())
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .map(|e| e.path())
                    .filter(|f| f.is_file())
                    .collect();
                if found.is_empty() {
                    return Err(Error::usage(format!(
                        "--audit-log {}: the directory holds no files",
                        p.display()
                    )));
                }
                found.sort();
                files.extend(found);
            } else {
                files.push(p.clone());
            }
        }
        let mut seen = std::collections::HashSet::new();
        files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
        Ok(Sources { files })
    }

    /// Bytes on disk (compressed for gzipped files): the progress total.
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// What reading one file gave.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FileStats {
    pub path: String,
    pub gzip: bool,
    /// Bytes read from the file (compressed for gzip; a live log may have grown since).
    pub bytes: u64,
    /// sha256 of those bytes, when the file was read to its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub lines: u64,
    /// Lines that are not an audit event (not JSON, or without auditID, stage or time).
    pub corrupt: u64,
    /// The first corrupt lines' numbers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub corrupt_lines: Vec<u64>,
    /// Lines longer than the cap, skipped.
    pub oversized: u64,
    /// The file ended in the middle of a line (a log still being written).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub incomplete_tail: bool,
    pub selected: u64,
    /// Why the file could not be read (to the end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl FileStats {
    pub fn corrupt_at(&mut self, line: u64) {
        self.corrupt += 1;
        if self.corrupt_lines.len() < SHOWN_CORRUPT {
            self.corrupt_lines.push(line);
        }
    }
}

/// Counts and hashes the bytes of a file as they are read, and reports them as progress.
struct Tally<'s, R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
    stage: &'s dyn Stage,
}

impl<R: Read> Read for Tally<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        self.stage.inc(n as u64);
        Ok(n)
    }
}

type Plain<'s> = BufReader<Tally<'s, File>>;

/// The bytes of a file as lines: straight, or through gzip.
enum Reader<'s> {
    Plain(Plain<'s>),
    Gzip(BufReader<flate2::bufread::MultiGzDecoder<Plain<'s>>>),
}

impl Reader<'_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        match self {
            Reader::Plain(r) => r.fill_buf(),
            Reader::Gzip(r) => r.fill_buf(),
        }
    }

    fn consume(&mut self, n: usize) {
        match self {
            Reader::Plain(r) => r.consume(n),
            Reader::Gzip(r) => r.consume(n),
        }
    }
}

/// One open audit log file, line by line.
pub struct LogFile<'s> {
    reader: Reader<'s>,
    pub stats: FileStats,
}

const BUF: usize = 1 << 20;

/// A line as [`LogFile::next_line`] found it.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A whole line (now in the buffer, without its newline).
    Whole,
    /// The last bytes of the file, without a newline (now in the buffer).
    Unterminated,
    /// Longer than [`MAX_LINE`]: skipped, the buffer is empty.
    Oversized,
}

impl<'s> LogFile<'s> {
    pub fn open(path: &Path, stage: &'s dyn Stage) -> std::io::Result<LogFile<'s>> {
        let mut file = File::open(path)?;
        let mut magic = [0u8; 2];
        let gzip = file.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
        use std::io::Seek;
        file.rewind()?;
        let raw = BufReader::with_capacity(
            BUF,
            Tally {
                inner: file,
                hasher: Sha256::new(),
                bytes: 0,
                stage,
            },
        );
        let reader = if gzip {
            Reader::Gzip(BufReader::with_capacity(
                BUF,
                flate2::bufread::MultiGzDecoder::new(raw),
            ))
        } else {
            Reader::Plain(raw)
        };
        Ok(LogFile {
            reader,
            stats: FileStats {
                path: path.display().to_string(),
                gzip,
                ..Default::default()
            },
        })
    }

    /// The next line into `buf` (cleared first); `None` at the end of the file.
    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> std::io::Result<Option<Line>> {
        buf.clear();
        let mut oversized = false;
        let mut any = false;
        loop {
            let avail = match self.reader.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                return Ok(match (any, oversized) {
                    (false, _) => None,
                    (true, true) => Some(Line::Oversized),
                    (true, false) => Some(Line::Unterminated),
                });
            }
            any = true;
            let (take, end) = match memchr::memchr(b'\n', avail) {
                Some(i) => (i, i + 1),
                None => (avail.len(), avail.len()),
            };
            if !oversized {
                if buf.len() + take > MAX_LINE {
                    oversized = true;
                    buf.clear();
                    buf.shrink_to(BUF);
                } else {
                    buf.extend_from_slice(&avail[..take]);
                }
            }
            let newline = end > take;
            self.reader.consume(end);
            if newline {
                return Ok(Some(if oversized {
                    Line::Oversized
                } else {
                    Line::Whole
                }));
            }
        }
    }

    /// The file's statistics, with its byte count and digest (when `complete`).
    pub fn finish(self, complete: bool) -> FileStats {
        let tally = match self.reader {
            Reader::Plain(r) => r.into_inner(),
            Reader::Gzip(r) => r.into_inner().into_inner().into_inner(),
        };
        let mut stats = self.stats;
        stats.bytes = tally.bytes;
        if complete {
            stats.sha256 = Some(hex::encode(tally.hasher.finalize()));
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use crate::progress::Progress;
    use std::io::Write;

    fn lines_of(path: &Path) -> Vec<(Line, String)> {
        let stage = NoProgress.stage("t", None);
        let mut f = LogFile::open(path, stage.as_ref()).unwrap();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(l) = f.next_line(&mut buf).unwrap() {
            out.push((l, String::from_utf8_lossy(&buf).into_owned()));
        }
        let st = f.finish(true);
        assert_eq!(st.bytes, std::fs::metadata(path).unwrap().len());
        assert_eq!(
            st.sha256.unwrap(),
            hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
        );
        out
    }

    #[test]
    fn reads_plain_and_gzip_alike_with_a_line_cap() {
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("audit.log");
        let long = "x".repeat(MAX_LINE + 10);
        std::fs::write(&plain, format!("a\n{long}\nb\n\nc")).unwrap();
        let got = lines_of(&plain);
        assert_eq!(
            got,
            vec![
                (Line::Whole, "a".into()),
                (Line::Oversized, String::new()),
                (Line::Whole, "b".into()),
                (Line::Whole, String::new()),
                (Line::Unterminated, "c".into()),
            ]
        );
        // gzip is recognised by its content whatever the name; concatenated members are read
        let gz = d.path().join("rotated.log");
        let mut f = File::create(&gz).unwrap();
        for part in ["a\nb\n", "c\n"] {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(part.as_bytes()).unwrap();
            f.write_all(&e.finish().unwrap()).unwrap();
        }
        drop(f);
        let got: Vec<String> = lines_of(&gz).into_iter().map(|(_, s)| s).collect();
        assert_eq!(got, vec!["a", "b", "c"]);
    }

    #[test]
    fn sources_expand_directories_once_and_refuse_missing_paths() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("audit.log"), "").unwrap();
        std::fs::write(d.path().join("audit-1.log.gz"), "").unwrap();
        std::fs::write(d.path().join(".hidden"), "").unwrap();
        let s = Sources::resolve(&[d.path().to_path_buf(), d.path().join("audit.log")]).unwrap();
        let names: Vec<String> = s
            .files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["audit-1.log.gz", "audit.log"]);
        let e = Sources::resolve(&[d.path().join("nope")]).unwrap_err();
        assert_eq!(e.exit(), crate::Exit::Usage);
        let empty = tempfile::tempdir().unwrap();
        assert!(Sources::resolve(&[empty.path().to_path_buf()]).is_err());
    }
}
