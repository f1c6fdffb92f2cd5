//! The selected events of one subject, in time order and each once, in bounded memory: lines are
//! collected up to a budget, then sorted and spilled to an anonymous temporary file (a "run");
//! the runs are merged at the end (an external merge sort), and a line with the same key as the
//! one before it — the same event read from two overlapping files — is dropped.
//!
//! Only redacted lines ever reach a run file: nothing secret is spilled to disk.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, Write};

/// Order of events: when the request was received, then its audit ID (a request's stages stay
/// together), then the stage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    /// requestReceivedTimestamp, microseconds since the epoch.
    pub at: i64,
    pub id: String,
    pub stage: u8,
}

/// Runs merged at once; more are merged in several passes (bounded open files).
const FAN_IN: usize = 64;
/// Bookkeeping per line held in memory, on top of its bytes.
const OVERHEAD: usize = 64;

/// The selection of one subject while the logs are read.
pub struct Selection {
    budget: usize,
    fan_in: usize,
    held: Vec<(Key, Vec<u8>)>,
    held_bytes: usize,
    runs: Vec<File>,
}

impl Selection {
    /// Holds up to `budget` bytes in memory before spilling a run.
    pub fn new(budget: usize) -> Selection {
        Selection {
            budget,
            fan_in: FAN_IN,
            held: Vec::new(),
            held_bytes: 0,
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, key: Key, line: Vec<u8>) -> std::io::Result<()> {
        self.held_bytes += line.len() + key.id.len() + OVERHEAD;
        self.held.push((key, line));
        if self.held_bytes > self.budget {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> std::io::Result<()> {
        let mut held = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        held.sort_by(|a, b| a.0.cmp(&b.0));
        let mut w = BufWriter::new(tempfile::tempfile()?);
        for (k, line) in &held {
            write_item(&mut w, k, line)?;
        }
        let mut f = w.into_inner().map_err(|e| e.into_error())?;
        f.rewind()?;
        self.runs.push(f);
        Ok(())
    }

    /// The lines in order, duplicates dropped.
    pub fn into_sorted(mut self) -> std::io::Result<Sorted> {
        if self.runs.is_empty() {
            self.held.sort_by(|a, b| a.0.cmp(&b.0));
            return Ok(Sorted {
                source: Source::Memory(self.held.into_iter()),
                last: None,
            });
        }
        if !self.held.is_empty() {
            self.spill()?;
        }
        let mut runs = std::mem::take(&mut self.runs);
        while runs.len() > self.fan_in {
            let rest = runs.split_off(self.fan_in);
            let mut merged = Merge::new(runs)?;
            let mut w = BufWriter::new(tempfile::tempfile()?);
            while let Some((k, line)) = merged.next_item()? {
                write_item(&mut w, &k, &line)?;
            }
            let mut f = w.into_inner().map_err(|e| e.into_error())?;
            f.rewind()?;
            runs = rest;
            runs.push(f);
        }
        Ok(Sorted {
            source: Source::Runs(Merge::new(runs)?),
            last: None,
        })
    }
}

fn write_item(w: &mut impl Write, k: &Key, line: &[u8]) -> std::io::Result<()> {
    let id = k.id.as_bytes();
    w.write_all(&k.at.to_le_bytes())?;
    w.write_all(&[k.stage])?;
    w.write_all(&(id.len() as u32).to_le_bytes())?;
    w.write_all(id)?;
    w.write_all(&(line.len() as u32).to_le_bytes())?;
    w.write_all(line)
}

fn read_item(r: &mut impl Read) -> std::io::Result<Option<(Key, Vec<u8>)>> {
    let mut at = [0u8; 8];
    match r.read_exact(&mut at) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut stage = [0u8; 1];
    r.read_exact(&mut stage)?;
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let mut id = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut id)?;
    r.read_exact(&mut len)?;
    let mut line = vec![0u8; u32::from_le_bytes(len) as usize];
    r.read_exact(&mut line)?;
    let key = Key {
        at: i64::from_le_bytes(at),
        id: String::from_utf8(id).map_err(std::io::Error::other)?,
        stage: stage[0],
    };
    Ok(Some((key, line)))
}

/// A k-way merge of sorted runs.
struct Merge {
    runs: Vec<BufReader<File>>,
    heap: BinaryHeap<Reverse<(Key, usize)>>,
    pending: Vec<Option<Vec<u8>>>,
}

impl Merge {
    fn new(files: Vec<File>) -> std::io::Result<Merge> {
        let mut m = Merge {
            runs: files
                .into_iter()
                .map(|f| BufReader::with_capacity(64 * 1024, f))
                .collect(),
            heap: BinaryHeap::new(),
            pending: Vec::new(),
        };
        m.pending = vec![None; m.runs.len()];
        for i in 0..m.runs.len() {
            m.advance(i)?;
        }
        Ok(m)
    }

    fn advance(&mut self, i: usize) -> std::io::Result<()> {
        if let Some((k, line)) = read_item(&mut self.runs[i])? {
            self.pending[i] = Some(line);
            self.heap.push(Reverse((k, i)));
        }
        Ok(())
    }

    fn next_item(&mut self) -> std::io::Result<Option<(Key, Vec<u8>)>> {
        let Some(Reverse((k, i))) = self.heap.pop() else {
            return Ok(None);
        };
        let line = self.pending[i].take().unwrap_or_default();
        self.advance(i)?;
        Ok(Some((k, line)))
    }
}

enum Source {
    Memory(std::vec::IntoIter<(Key, Vec<u8>)>),
    Runs(Merge),
}

/// The selected lines in time order, each event once.
pub struct Sorted {
    source: Source,
    last: Option<Key>,
}

impl Iterator for Sorted {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let item = match &mut self.source {
                Source::Memory(it) => it.next(),
                Source::Runs(m) => match m.next_item() {
                    Ok(x) => x,
                    Err(e) => return Some(Err(e)),
                },
            };
            let (k, line) = item?;
            if self.last.as_ref() == Some(&k) {
                continue;
            }
            self.last = Some(k);
            return Some(Ok(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(at: i64, id: &str, stage: u8) -> Key {
        Key {
            at,
            id: id.into(),
            stage,
        }
    }

    fn sorted(mut s: Selection, items: &[(i64, &str, u8)]) -> Vec<String> {
        for (at, id, st) in items {
            s.push(key(*at, id, *st), format!("{at}-{id}-{st}").into_bytes())
                .unwrap();
        }
        s.into_sorted()
            .unwrap()
            .map(|l| String::from_utf8(l.unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn orders_by_time_id_stage_and_drops_duplicates() {
        let items = [
            (5, "b", 2),
            (1, "a", 2),
            (5, "a", 0),
            (1, "a", 0),
            (5, "b", 0),
            (1, "a", 2), // the same event read again (overlapping rotated files)
        ];
        let want = vec!["1-a-0", "1-a-2", "5-a-0", "5-b-0", "5-b-2"];
        assert_eq!(sorted(Selection::new(1 << 20), &items), want);
        // a tiny budget spills a run per line and merges in several passes
        let mut tiny = Selection::new(1);
        tiny.fan_in = 2;
        assert_eq!(sorted(tiny, &items), want);
    }

    #[test]
    fn many_runs_merge_in_order() {
        let mut s = Selection::new(200);
        s.fan_in = 3;
        let mut items = Vec::new();
        for i in 0..500i64 {
            // a pseudo-random order, every event twice
            let at = (i * 7919) % 500;
            items.push((at, "x", 2));
            items.push((at, "x", 2));
        }
        let got = sorted(s, &items);
        let want: Vec<String> = (0..500).map(|at| format!("{at}-x-2")).collect();
        assert_eq!(got, want);
    }
}
