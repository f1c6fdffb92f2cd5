//! Files the tests look into: evidence bundles extracted with the real zstd and tar, JSON files,
//! shell steps run where the files are.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs a shell script with the real tools in `cwd`, stopping at the first failing command
/// (`sh -e`), and returns its stdout; panics with its output on failure. (`common::sh` runs
/// `bash -c` where the caller is, and leaves the exit code to the caller.)
#[track_caller]
pub fn sh_in(cwd: &Path, script: &str) -> String {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(cwd)
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "$ {script}\nexit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The single file in `dir` (a bundle), or panic.
pub fn only_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(
        files.len(),
        1,
        "expected one bundle in {}: {files:?}",
        dir.display()
    );
    files[0].clone()
}

/// Extracts a plain (unencrypted) bundle with zstd + tar; returns the top directory.
pub fn extract_plain(bundle: &Path, into: &Path) -> PathBuf {
    std::fs::create_dir_all(into).unwrap();
    sh_in(
        into,
        &format!("zstd -d -c '{}' | tar xf -", bundle.display()),
    );
    only_file(into)
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
