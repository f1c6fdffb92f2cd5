//! Running things: the built kirt (against the lab, or with no cluster at all), kubectl, shell
//! pipelines; polling until a condition holds; server processes a test starts and must stop.

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::Lab;

pub fn kirt_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kirt"))
}

/// The result of a command, with helpers that print everything on failure.
pub struct Run {
    pub out: Output,
    pub what: String,
}

impl Run {
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    pub fn dump(&self) -> String {
        format!(
            "$ {}\nexit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }
    #[track_caller]
    pub fn ok(self) -> Self {
        assert!(
            self.out.status.success(),
            "command failed:\n{}",
            self.dump()
        );
        self
    }
    #[track_caller]
    pub fn code_is(self, code: i32) -> Self {
        assert_eq!(self.code(), code, "unexpected exit code:\n{}", self.dump());
        self
    }
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.out.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.dump()))
    }
}

/// Runs `cmd` to completion with no stdin; `what` names it in failure messages.
pub fn run(mut cmd: Command, what: String) -> Run {
    cmd.stdin(Stdio::null());
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    Run { out, what }
}

/// Runs a shell pipeline (`bash -c`) and returns its output; the caller checks the exit code.
pub fn sh(script: &str) -> Run {
    let mut c = Command::new("bash");
    c.args(["-c", script]);
    run(c, script.to_string())
}

/// `kirt ARGS` with no cluster at all (no KUBECONFIG) in a fresh temp dir: for usage errors and
/// the CLI surface, which must not need a lab.
pub fn kirt_without_lab(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(kirt_bin());
    c.current_dir(dir.path())
        .env_remove("KUBECONFIG")
        .env("HOME", dir.path())
        .args(args);
    run(c, format!("kirt {}", args.join(" ")))
}

/// Runs `cmd` (built with an empty environment, as `Lab::kirt_cmd` does) under GNU time: its
/// result and its peak RSS in KiB.
#[track_caller]
pub fn peak_rss(cmd: Command, what: &str) -> (Run, u64) {
    const MARK: &str = "KIRT-PEAK-RSS-KB=";
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", &format!("{MARK}%M")])
        .arg(cmd.get_program());
    timed.args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        timed.current_dir(dir);
    }
    timed.env_clear();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            timed.env(k, v);
        }
    }
    let r = run(timed, format!("time {what}"));
    let kb = r
        .stderr()
        .lines()
        .find_map(|l| l.strip_prefix(MARK).and_then(|n| n.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no peak RSS from /usr/bin/time:\n{}", r.dump()));
    (r, kb)
}

fn describe(tool: &str, args: &[OsString]) -> String {
    let args: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
    format!("{tool} {}", args.join(" "))
}

impl Lab {
    /// `kirt ARGS` against the lab, in this test's temp dir, with a clean environment.
    pub fn kirt_cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(kirt_bin());
        self.lab_env(&mut c);
        c.args(args);
        c
    }

    /// `kirt ARGS` with a terminal on stdin, so that it asks for confirmation; once the question
    /// is on stderr, `at_prompt` runs (kirt is waiting: nothing timing-dependent), then kirt is
    /// answered `y`. Returns the run and the question asked.
    pub fn kirt_confirming(&self, args: &[&str], at_prompt: impl FnOnce()) -> (Run, String) {
        use std::io::{BufRead, Write};
        let script = self.dir.path().join("answer_on_a_terminal.py");
        std::fs::write(&script, TTY_PY).unwrap();
        let (out, err) = (
            self.dir.path().join("tty.out"),
            self.dir.path().join("tty.err"),
        );
        let mut c = Command::new("python3");
        self.lab_env(&mut c);
        c.arg(&script)
            .arg(&out)
            .arg(&err)
            .arg(kirt_bin())
            .args(args);
        c.stdin(Stdio::piped()).stdout(Stdio::piped());
        let mut child = c.spawn().expect("python3");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
        let asked = first == "PROMPT";
        if asked {
            at_prompt();
        }
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(b"go\n");
        drop(stdin);
        let status = child.wait().unwrap();
        let stderr = std::fs::read(&err).unwrap_or_default();
        let question = String::from_utf8_lossy(&stderr).into_owned();
        assert!(asked, "kirt did not ask for confirmation:\n{question}");
        let run = Run {
            out: Output {
                status,
                stdout: std::fs::read(&out).unwrap_or_default(),
                stderr,
            },
            what: format!("kirt {} (answered y on a terminal)", args.join(" ")),
        };
        (run, question)
    }

    /// The clean environment every kirt run gets (HOME and working directory in the test's dir).
    fn lab_env(&self, c: &mut Command) {
        c.current_dir(self.dir.path())
            .env_clear()
            .env("PATH", self.path())
            .env("HOME", self.dir.path())
            .env("KUBECONFIG", self.kubeconfig())
            .env("AWS_ACCESS_KEY_ID", "kirt-test")
            .env("AWS_SECRET_ACCESS_KEY", "kirt-test-secret")
            .env("AWS_REGION", "us-east-1")
            // never let the AWS credential chain reach for a cloud metadata address
            .env("AWS_EC2_METADATA_DISABLED", "true");
    }

    pub fn kirt<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        run(self.kirt_cmd(&args), describe("kirt", &args))
    }

    /// The real kubectl as the lab's admin.
    pub fn kubectl<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut c = Command::new("kubectl");
        c.env("KUBECONFIG", self.kubeconfig()).args(&args);
        run(c, describe("kubectl", &args))
    }

    /// The real etcdctl (3.5) against the lab's etcd (the one behind the apiserver).
    #[track_caller]
    pub fn etcdctl(&self, args: &[&str]) -> Run {
        let bin = std::path::Path::new(&self.get("KIRT_LAB_ETCD35_BIN")).join("etcdctl");
        let mut c = Command::new(bin);
        c.env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.get("KIRT_LAB_ETCD"))
            .args(args);
        let owned: Vec<OsString> = args.iter().map(OsString::from).collect();
        run(c, describe("etcdctl", &owned)).ok()
    }
}

/// Runs ARGV with a pseudo-terminal on stdin (stdout and stderr to the files given), prints
/// `PROMPT` once the confirmation question is on stderr, waits for a line on its own stdin, then
/// answers `y`; exits with the program's code.
const TTY_PY: &str = r#"
import os, pty, subprocess, sys
out_path, err_path, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
master, slave = pty.openpty()
with open(out_path, "wb") as out, open(err_path, "wb") as err:
    p = subprocess.Popen(argv, stdin=slave, stdout=out, stderr=subprocess.PIPE)
    os.close(slave)
    seen = b""
    while b"Proceed?" not in seen:
        chunk = p.stderr.read1(4096)
        if not chunk:
            break
        seen += chunk
    err.write(seen)
    err.flush()
    print("PROMPT" if b"Proceed?" in seen else "EXITED", flush=True)
    sys.stdin.readline()
    try:
        os.write(master, b"y\n")
    except OSError:
        pass
    err.write(p.stderr.read())
sys.exit(p.wait())
"#;

/// Polls `f` until it returns true, panicking with `what` after `timeout`.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the server `child` listens on 127.0.0.1:`port`. The child must still be running
/// afterwards: a server that could not bind its port (another process took it) exits at once,
/// and what answers on the port then is not ours.
#[track_caller]
pub fn wait_serving(child: &mut std::process::Child, port: u16, what: &str) {
    let alive = |child: &mut std::process::Child| {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited ({status}) instead of serving on 127.0.0.1:{port}");
        }
    };
    wait_until(Duration::from_secs(20), what, || {
        alive(child);
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    std::thread::sleep(Duration::from_millis(300));
    alive(child);
}

/// A server process this test started; killed (by its PID) when dropped.
pub struct Proc {
    pub child: std::process::Child,
    pub endpoint: String,
    pub dir: PathBuf,
    pub port: u16,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A kirt running in the background, to be stopped by a signal. Started with
/// [`Held::start`], it runs until a phase (`KIRT_HOLD_AT=PHASE`), says so and waits there for
/// the signal (src/signal.rs): the tests send SIGTERM in a known phase, not at a guessed time.
pub struct Held {
    pub child: std::process::Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    held: std::sync::mpsc::Receiver<()>,
    /// Closed when kirt's stderr reaches its end.
    eof: std::sync::mpsc::Receiver<()>,
}

impl Held {
    /// Starts `cmd` in the background, collecting its stderr.
    pub fn spawn(mut cmd: Command) -> Held {
        use std::io::BufRead;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start kirt");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, held) = std::sync::mpsc::channel();
        let (eof_tx, eof) = std::sync::mpsc::channel::<()>();
        let pipe = child.stderr.take().expect("stderr");
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains("holding at") {
                    let _ = tx.send(());
                }
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
            drop(eof_tx);
        });
        Held {
            child,
            stderr,
            held,
            eof,
        }
    }

    /// Starts `cmd` with the hook for `phase` and waits (up to `within`) until kirt holds there.
    #[track_caller]
    pub fn start(mut cmd: Command, phase: &str, within: Duration) -> Held {
        cmd.env("KIRT_HOLD_AT", phase);
        let mut h = Held::spawn(cmd);
        h.wait_held(phase, within);
        h
    }

    /// Waits (up to `within`) until kirt says it holds at its `KIRT_HOLD_AT` phase (for a
    /// server, which reaches it only once it is asked to do something).
    #[track_caller]
    pub fn wait_held(&mut self, phase: &str, within: Duration) {
        let start = Instant::now();
        loop {
            if self.held.recv_timeout(Duration::from_millis(200)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "kirt exited ({status}) before holding at {phase}:\n{}",
                    self.stderr()
                );
            }
            assert!(
                start.elapsed() < within,
                "kirt did not reach {phase} within {within:?}:\n{}",
                self.stderr()
            );
        }
    }

    /// What kirt wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The processes kirt started (scratch servers, etcdutl), by PID.
    pub fn children(&self) -> Vec<u32> {
        let pid = self.child.id();
        let mut out = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        out
    }

    /// Sends SIGTERM and waits for kirt to exit; returns its exit code, how long it took, and
    /// what it wrote on stderr.
    pub fn terminate(self) -> (i32, Duration, String) {
        self.signal("TERM")
    }

    /// Sends `SIG` (`TERM`, `INT`) and waits for kirt to exit, as [`Held::terminate`].
    pub fn signal(mut self, sig: &str) -> (i32, Duration, String) {
        let start = Instant::now();
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                break self.child.wait().expect("wait");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = start.elapsed();
        // all of stderr (a child that inherited it and survived would hold it open: then what
        // arrived within 10 s)
        let _ = self.eof.recv_timeout(Duration::from_secs(10));
        (status.code().unwrap_or(-1), took, self.stderr())
    }
}

/// A test that fails before it signals its kirt must not leave it holding forever (it would keep
/// its scratch servers, and any lock it holds, alive).
impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether a process still exists (zombies of exited parents are reaped by init).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}
