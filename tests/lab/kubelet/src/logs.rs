//! Deterministic container logs, generated on the fly as a byte stream. Line N of a container's log
//! is always the same text (its time is derived from the pod's start), so tests can predict output;
//! nothing is materialised, so a 100 MB log costs no memory and `tailLines` on it only counts.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::knobs::LogSize;

/// Simulated time between two log lines.
const LINE_STEP_MS: i64 = 10;
/// Size of the chunks handed to the HTTP body.
const CHUNK: usize = 64 * 1024;
/// Time between two new lines while following.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);

/// Which log: one container instance's.
pub struct LogSpec {
    /// `ns/pod/container`, repeated in every line so a test can tell whose line it got.
    pub label: String,
    /// `instance 3` or `previous instance 2`.
    pub instance: String,
    /// Time of the first line.
    pub base: Timestamp,
    pub size: LogSize,
}

/// The kubelet's log query options that change the output.
#[derive(Debug, Default, Clone)]
pub struct LogQuery {
    pub tail_lines: Option<u64>,
    pub limit_bytes: Option<u64>,
    pub since: Option<Timestamp>,
    pub timestamps: bool,
    pub follow: bool,
}

/// Formats line timestamps, reusing the `YYYY-MM-DDTHH:MM:SS` part while the second is unchanged
/// (a full strftime per line would dominate the cost of a large log).
#[derive(Default)]
struct TsFormatter {
    second: Option<i64>,
    prefix: String,
}

impl TsFormatter {
    fn write(&mut self, out: &mut String, ts: Timestamp, frac_digits: usize) {
        let second = ts.as_second();
        if self.second != Some(second) {
            self.prefix = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
            self.second = Some(second);
        }
        out.push_str(&self.prefix);
        let nanos = ts.subsec_nanosecond().max(0) as u64;
        let frac = nanos / 10u64.pow(9 - frac_digits as u32);
        let _ = write!(out, ".{frac:0frac_digits$}Z");
    }
}

struct Gen {
    spec: LogSpec,
    ts: TsFormatter,
    /// Fixed part of a line's length (everything but the line number's digits).
    fixed_len: u64,
}

impl Gen {
    fn new(spec: LogSpec) -> Self {
        // "<24-char time> <label> line <n>: simulated output (<instance>)\n"
        let fixed_len = (24
            + 1
            + spec.label.len()
            + " line ".len()
            + ": simulated output (".len()
            + spec.instance.len()
            + ")\n".len()) as u64;
        Gen {
            spec,
            ts: TsFormatter::default(),
            fixed_len,
        }
    }

    fn line_time(&self, index: u64) -> Timestamp {
        self.spec.base + SignedDuration::from_millis(index as i64 * LINE_STEP_MS)
    }

    fn line_len(&self, index: u64) -> u64 {
        self.fixed_len + digits(index + 1)
    }

    /// Number of lines, and the byte length of the last one (shorter than a full line when a
    /// byte-sized log cuts it).
    fn layout(&self) -> (u64, u64) {
        match self.spec.size {
            LogSize::Lines(n) => (n, n.checked_sub(1).map_or(0, |i| self.line_len(i))),
            LogSize::Bytes(total) => {
                let (mut count, mut used) = (0u64, 0u64);
                while used < total {
                    let len = self.line_len(count).min(total - used);
                    used += len;
                    count += 1;
                    if used == total {
                        return (count, len);
                    }
                }
                (0, 0)
            }
        }
    }

    fn push_line(&mut self, out: &mut String, number: u64, ts: Timestamp, keep: Option<u64>) {
        let start = out.len();
        self.ts.write(out, ts, 3);
        let _ = writeln!(
            out,
            " {} line {}: simulated output ({})",
            self.spec.label, number, self.spec.instance
        );
        // A byte-sized log ends in a cut line that still ends in a newline.
        if let Some(keep) = keep {
            let keep = keep as usize;
            if keep < out.len() - start {
                out.truncate(start + keep.saturating_sub(1));
                if keep > 0 {
                    out.push('\n');
                }
            }
        }
    }
}

fn digits(mut n: u64) -> u64 {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

struct State {
    gen: Gen,
    next: u64,
    end: u64,
    last_len: u64,
    limit: Option<u64>,
    timestamps: bool,
    follow: bool,
    followed: u64,
}

impl State {
    /// Appends one line (with the optional timestamp prefix) and applies limitBytes.
    fn emit(&mut self, out: &mut String, index: u64, ts: Timestamp, keep: Option<u64>) {
        let start = out.len();
        if self.timestamps {
            // The kubelet prefixes RFC3339 with fixed nanoseconds and a space.
            self.gen.ts.write(out, ts, 9);
            out.push(' ');
        }
        self.gen.push_line(out, index + 1, ts, keep);
        if let Some(limit) = self.limit.as_mut() {
            let written = (out.len() - start) as u64;
            if written >= *limit {
                // limitBytes cuts anywhere, even inside a line, as the kubelet does.
                out.truncate(start + *limit as usize);
                *limit = 0;
            } else {
                *limit -= written;
            }
        }
    }

    fn exhausted(&self) -> bool {
        self.limit == Some(0)
    }
}

/// The log as a stream of chunks; with `follow` it goes on with one new line a second (stamped
/// with the wall clock) until the receiver drops it.
pub fn stream(spec: LogSpec, query: LogQuery) -> impl Stream<Item = Bytes> + Send {
    let gen = Gen::new(spec);
    let (count, last_len) = gen.layout();
    let mut first = 0;
    if let Some(since) = query.since {
        let ms = since.duration_since(gen.spec.base).as_millis();
        if ms > 0 {
            first = (ms as u64).div_ceil(LINE_STEP_MS as u64).min(count);
        }
    }
    if let Some(tail) = query.tail_lines {
        first = first.max(count.saturating_sub(tail));
    }
    let state = State {
        gen,
        next: first,
        end: count,
        last_len,
        limit: query.limit_bytes,
        timestamps: query.timestamps,
        follow: query.follow,
        followed: 0,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.exhausted() {
            return None;
        }
        let mut out = String::with_capacity(CHUNK + 256);
        if st.next < st.end {
            while st.next < st.end && out.len() < CHUNK && !st.exhausted() {
                let index = st.next;
                let keep = (index + 1 == st.end).then_some(st.last_len);
                let ts = st.gen.line_time(index);
                st.emit(&mut out, index, ts, keep);
                st.next += 1;
            }
            return Some((Bytes::from(out), st));
        }
        if !st.follow {
            return None;
        }
        tokio::time::sleep(FOLLOW_EVERY).await;
        let index = st.end + st.followed;
        st.followed += 1;
        st.emit(&mut out, index, Timestamp::now(), None);
        Some((Bytes::from(out), st))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn spec(size: LogSize) -> LogSpec {
        LogSpec {
            label: "ns/pod/c".into(),
            instance: "instance 0".into(),
            base: "2026-11-23T10:00:00Z".parse().unwrap(),
            size,
        }
    }

    async fn collect(spec: LogSpec, q: LogQuery) -> String {
        let chunks: Vec<Bytes> = stream(spec, q).collect().await;
        String::from_utf8(chunks.concat()).unwrap()
    }

    #[tokio::test]
    async fn lines_tail_and_limit() {
        let all = collect(spec(LogSize::Lines(20)), LogQuery::default()).await;
        assert_eq!(all.lines().count(), 20);
        assert!(all.starts_with(
            "2026-11-23T10:00:00.000Z ns/pod/c line 1: simulated output (instance 0)\n"
        ));
        let tail = collect(
            spec(LogSize::Lines(20)),
            LogQuery {
                tail_lines: Some(3),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(tail.lines().count(), 3);
        assert!(tail.contains("line 18:"));
        let limited = collect(
            spec(LogSize::Lines(20)),
            LogQuery {
                limit_bytes: Some(10),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(limited.len(), 10);
    }

    #[tokio::test]
    async fn bytes_exact() {
        for n in [0u64, 1, 79, 80, 1000, 300_001] {
            let log = collect(spec(LogSize::Bytes(n)), LogQuery::default()).await;
            assert_eq!(log.len() as u64, n);
            assert!(n == 0 || log.ends_with('\n'));
            let tail = collect(
                spec(LogSize::Bytes(n)),
                LogQuery {
                    tail_lines: Some(2),
                    ..Default::default()
                },
            )
            .await;
            assert!(log.ends_with(&tail));
        }
    }
}
