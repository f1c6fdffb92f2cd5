//! The lab apiserver's audit log (tests/lab/lab.sh writes it), read back by the tests with
//! their own reader: plain and gzipped files alike.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{wait_until, Lab};

/// The lab's whole audit log (rotated and gzipped files too), line by line.
pub fn lines(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let raw = std::fs::read(&f).unwrap();
        let text = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut s = String::new();
            flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_string(&mut s)
                .unwrap();
            s
        } else {
            String::from_utf8_lossy(&raw).into_owned()
        };
        out.extend(text.lines().map(String::from));
    }
    out
}

/// Waits until the apiserver has written the final stage of `n` requests made by `user` (the
/// ResponseComplete event is written after the response is sent).
pub fn wait_logged(lab: &Lab, user: &str, n: usize) {
    let needle = format!("\"username\":\"{user}\"");
    wait_until(
        Duration::from_secs(30),
        &format!("{n} requests of {user} in the audit log"),
        || {
            lines(&lab.audit_dir())
                .iter()
                .filter(|l| l.contains(&needle) && l.contains("\"stage\":\"ResponseComplete\""))
                .count()
                >= n
        },
    );
}
