//! What a segment holds: etcd's watch events, one JSON line per revision, in revision order —
//! `{"revision":R,"time_ms":T,"events":[{"type":"put","key":…,"value":…,…},{"type":"delete",…}]}`
//! with keys and values in base64. One line per revision because a revision is what etcd
//! applies atomically (a transaction's puts and deletes share it) and what a replay applies as
//! one transaction, so the replayed member's revisions are the source's. `time_ms` is when
//! kirt's watch received the revision (`--to-time` resolves against it).
//!
//! A watch of every key sees every revision (each revision is at least one changed key), so the
//! revisions of a chain are contiguous: [`Continuity`] turns any hole or repeat into an error,
//! on the writing side (never a silent gap) and on the reading side (a planted or damaged
//! segment). Reading is bounded: no line longer than [`MAX_LINE`], nothing past the size the
//! signed manifest states.

use std::io::{BufRead, Read};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Longest line read back: a revision holds at most etcd's --max-request-bytes of data (1.5 MiB
/// by default, often raised to 10 MiB), base64 makes it 4/3 of that.
pub const MAX_LINE: u64 = 64 << 20;

/// One revision of the source: every key it changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revision {
    pub revision: i64,
    /// When kirt received it from the watch (milliseconds since the Unix epoch).
    pub time_ms: i64,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Event {
    Put {
        #[serde(with = "b64")]
        key: Vec<u8>,
        #[serde(with = "b64")]
        value: Vec<u8>,
        create_revision: i64,
        version: i64,
        /// etcd lease the key is attached to (0: none).
        #[serde(default, skip_serializing_if = "is_zero")]
        lease: i64,
        /// The lease's granted TTL in seconds, as the source reported it when the lease first
        /// appeared (a replay grants the lease with it).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_ttl: Option<i64>,
    },
    Delete {
        #[serde(with = "b64")]
        key: Vec<u8>,
    },
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl Event {
    pub fn key(&self) -> &[u8] {
        match self {
            Event::Put { key, .. } | Event::Delete { key } => key,
        }
    }

    /// +1 for a key that did not exist before (version 1), -1 for a delete, else 0: live-key
    /// arithmetic for checking a replay.
    pub fn key_delta(&self) -> i64 {
        match self {
            Event::Put { version: 1, .. } => 1,
            Event::Put { .. } => 0,
            Event::Delete { .. } => -1,
        }
    }
}

impl Revision {
    /// One watch response's events of one revision (the caller groups them); `lease_ttl` says
    /// the granted TTL of a lease id when it is first met.
    pub fn from_watch(
        revision: i64,
        time_ms: i64,
        events: &[etcd_client::Event],
        mut lease_ttl: impl FnMut(i64) -> Option<i64>,
    ) -> Result<Revision> {
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            let kv = ev.kv().ok_or_else(|| {
                Error::failed(format!(
                    "etcd sent an event without a key at revision {revision}"
                ))
            })?;
            if kv.mod_revision() != revision {
                return Err(Error::failed(format!(
                    "etcd sent an event of revision {} among those of revision {revision}",
                    kv.mod_revision()
                )));
            }
            out.push(match ev.event_type() {
                etcd_client::EventType::Put => Event::Put {
                    key: kv.key().to_vec(),
                    value: kv.value().to_vec(),
                    create_revision: kv.create_revision(),
                    version: kv.version(),
                    lease: kv.lease(),
                    lease_ttl: if kv.lease() == 0 {
                        None
                    } else {
                        lease_ttl(kv.lease())
                    },
                },
                etcd_client::EventType::Delete => Event::Delete {
                    key: kv.key().to_vec(),
                },
            });
        }
        Ok(Revision {
            revision,
            time_ms,
            events: out,
        })
    }

    /// The line as stored (with its newline).
    pub fn line(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec(self)
            .map_err(|e| Error::json(format!("encoding revision {}", self.revision), e))?;
        v.push(b'\n');
        Ok(v)
    }

    pub fn time(&self) -> jiff::Timestamp {
        jiff::Timestamp::from_millisecond(self.time_ms).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }
}

/// Checks that revisions follow each other without a hole or a repeat.
#[derive(Debug, Clone, Copy, Default)]
pub struct Continuity {
    last: Option<i64>,
}

impl Continuity {
    /// Expecting `first` next.
    pub fn starting_at(first: i64) -> Self {
        Continuity {
            last: Some(first - 1),
        }
    }

    pub fn last(&self) -> Option<i64> {
        self.last
    }

    /// Ok if `revision` is the next one; otherwise says what is missing or repeated.
    pub fn next(&mut self, revision: i64) -> std::result::Result<(), String> {
        if let Some(last) = self.last {
            if revision != last + 1 {
                return Err(if revision <= last {
                    format!("revision {revision} comes again after {last}")
                } else {
                    format!("revisions {}..{} are missing", last + 1, revision - 1)
                });
            }
        }
        self.last = Some(revision);
        Ok(())
    }
}

/// What was written into a segment's plaintext, for its manifest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    pub size: u64,
    pub sha256: String,
    pub revisions: u64,
    pub events: u64,
    pub first_revision: i64,
    pub last_revision: i64,
    pub first_time_ms: i64,
    pub last_time_ms: i64,
}

/// Serializes revisions and keeps the tally the manifest states.
#[derive(Default, Clone)]
pub struct Tally {
    hasher: Sha256,
    written: Written,
}

impl Tally {
    /// The line for `r`, counted.
    pub fn add(&mut self, r: &Revision) -> Result<Vec<u8>> {
        let line = r.line()?;
        self.hasher.update(&line);
        let w = &mut self.written;
        if w.revisions == 0 {
            w.first_revision = r.revision;
            w.first_time_ms = r.time_ms;
        }
        w.last_revision = r.revision;
        w.last_time_ms = r.time_ms;
        w.revisions += 1;
        w.events += r.events.len() as u64;
        w.size += line.len() as u64;
        Ok(line)
    }

    pub fn is_empty(&self) -> bool {
        self.written.revisions == 0
    }

    pub fn size(&self) -> u64 {
        self.written.size
    }

    pub fn first_time_ms(&self) -> Option<i64> {
        (!self.is_empty()).then_some(self.written.first_time_ms)
    }

    pub fn finish(self) -> Written {
        let mut w = self.written;
        w.sha256 = hex::encode(self.hasher.finalize());
        w
    }
}

/// Reads a segment's plaintext back, line by line, hashing and counting what it reads; never
/// more than `limit` bytes in all and never a line longer than [`MAX_LINE`].
pub struct Reader<R> {
    inner: std::io::BufReader<std::io::Take<HashRead<R>>>,
    limit: u64,
    /// Bytes handed out as lines so far (the inner reader buffers ahead).
    consumed: u64,
    line: Vec<u8>,
}

struct HashRead<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<R: Read> Reader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        let hashed = HashRead {
            inner,
            hasher: Sha256::new(),
            count: 0,
        };
        Reader {
            // one byte past the limit is read, so that "longer than stated" is seen
            inner: std::io::BufReader::with_capacity(1 << 16, hashed.take(limit.saturating_add(1))),
            limit,
            consumed: 0,
            line: Vec::new(),
        }
    }

    /// The next revision, or None at the end. A line that is not a revision, too long, or past
    /// the stated size is an error (the caller names the segment).
    pub fn next_revision(&mut self) -> std::result::Result<Option<Revision>, String> {
        self.line.clear();
        let n = (&mut self.inner)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut self.line)
            .map_err(|e| super::verify::decode_problem(&e))?;
        if n == 0 {
            return Ok(None);
        }
        self.consumed += n as u64;
        if self.consumed > self.limit {
            return Err(format!(
                "its plaintext is longer than the {} bytes its manifest states",
                self.limit
            ));
        }
        if self.line.last() != Some(&b'\n') {
            return Err(if n as u64 > MAX_LINE {
                format!("a line is longer than {MAX_LINE} bytes")
            } else {
                "its last line is cut short".into()
            });
        }
        serde_json::from_slice(&self.line)
            .map(Some)
            .map_err(|e| format!("a line is not a revision ({e})"))
    }

    /// The line the last revision was read from, as stored (with its newline).
    pub fn raw_line(&self) -> &[u8] {
        &self.line
    }

    /// Size and sha256 of everything read, and the reader it read from.
    pub fn finish(self) -> (u64, String, R) {
        let h = self.inner.into_inner().into_inner();
        (h.count, hex::encode(h.hasher.finalize()), h.inner)
    }
}

/// Writes all lines of `revisions` (the unit tests' segments).
#[cfg(test)]
fn write_all(out: &mut impl std::io::Write, revisions: &[Revision]) -> Result<Written> {
    let mut t = Tally::default();
    for r in revisions {
        out.write_all(&t.add(r)?)
            .map_err(|e| Error::io("writing a segment", e))?;
    }
    Ok(t.finish())
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, value: &[u8], version: i64) -> Event {
        Event::Put {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            create_revision: 5,
            version,
            lease: 0,
            lease_ttl: None,
        }
    }

    #[test]
    fn lines_round_trip_binary_keys_and_values() {
        let revs = vec![
            Revision {
                revision: 7,
                time_ms: 1_764_000_000_123,
                events: vec![put("/a", &[0, 255, 10, 13], 1), put("/b", b"x", 3)],
            },
            Revision {
                revision: 8,
                time_ms: 1_764_000_000_200,
                events: vec![
                    Event::Delete {
                        key: b"/a".to_vec(),
                    },
                    Event::Put {
                        key: vec![0xff, b'\n'],
                        value: b"leased".to_vec(),
                        create_revision: 8,
                        version: 1,
                        lease: 7_587_000_000_001,
                        lease_ttl: Some(3600),
                    },
                ],
            },
        ];
        let mut buf = Vec::new();
        let w = write_all(&mut buf, &revs).unwrap();
        assert_eq!(
            (w.revisions, w.events, w.first_revision, w.last_revision),
            (2, 4, 7, 8)
        );
        assert_eq!(w.size, buf.len() as u64);
        let mut r = Reader::new(&buf[..], w.size);
        let mut back = Vec::new();
        while let Some(rev) = r.next_revision().unwrap() {
            back.push(rev);
        }
        assert_eq!(back, revs);
        let (size, sha, _) = r.finish();
        assert_eq!((size, sha), (w.size, w.sha256));
        assert_eq!(revs[0].events[0].key_delta(), 1);
        assert_eq!(revs[0].events[1].key_delta(), 0);
        assert_eq!(revs[1].events[0].key_delta(), -1);
    }

    #[test]
    fn reading_is_bounded_and_strict() {
        let rev = Revision {
            revision: 1,
            time_ms: 0,
            events: vec![put("/k", b"v", 1)],
        };
        let line = rev.line().unwrap();
        // longer than the manifest says
        let mut two = line.clone();
        two.extend_from_slice(&line);
        let mut r = Reader::new(&two[..], line.len() as u64);
        assert!(r.next_revision().unwrap().is_some());
        let e = r.next_revision().unwrap_err();
        assert!(e.contains("longer than"), "{e}");
        // cut short
        let mut r = Reader::new(&line[..line.len() - 3], 1 << 20);
        assert!(r.next_revision().unwrap_err().contains("cut short"));
        // not a revision, unknown fields refused
        let mut r = Reader::new(
            &b"{\"revision\":1,\"time_ms\":0,\"events\":[],\"x\":1}\n"[..],
            100,
        );
        assert!(r.next_revision().unwrap_err().contains("not a revision"));
    }

    #[test]
    fn continuity_names_holes_and_repeats() {
        let mut c = Continuity::starting_at(10);
        c.next(10).unwrap();
        c.next(11).unwrap();
        assert_eq!(c.next(14).unwrap_err(), "revisions 12..13 are missing");
        let mut c = Continuity::starting_at(10);
        c.next(10).unwrap();
        assert_eq!(c.next(10).unwrap_err(), "revision 10 comes again after 10");
        let mut c = Continuity::default();
        c.next(99).unwrap();
        assert_eq!(c.last(), Some(99));
    }
}
