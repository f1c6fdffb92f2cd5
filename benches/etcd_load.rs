//! The load for the impact bench (benches/impact.sh): a steady, open-loop client of etcd —
//! PUTS puts per second of ~1 KiB values and half as many range reads (10 keys, linearizable) —
//! recording every request's latency. Requests are sent on schedule whether or not earlier ones
//! have answered, so a slow etcd shows up as latency, not as a lower rate.
//!
//!   etcd_load ENDPOINT PUTS      → on SIGUSR1 prints the window since the last one and starts
//!                                  a new one: `puts N P50 P99 MAX reads N P50 P99 MAX errors E`
//!                                  (milliseconds); exits on SIGTERM
//!   etcd_load ENDPOINT PUTS --trace FILE
//!                                → as above, and each window's requests appended to FILE, one
//!                                  line each (where a contender's latency comes from)
//!   etcd_load ENDPOINT PUTS --puts-only --seconds S
//!                                → puts alone (the stream bench, benches/stream.sh: every write
//!                                  is a revision to stream), for S seconds, then prints the whole
//!                                  run's line as above and exits (SIGUSR1 and SIGTERM as above)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};

#[derive(Default)]
struct Window {
    puts: Vec<f64>,
    reads: Vec<f64>,
    errors: u64,
    /// `--trace`: every request as (put or read, start in Unix ms, latency ms, tick lag ms)
    trace: Option<Vec<(char, f64, f64, f64)>>,
}

/// One request's latency (since `t`), or an error; `lag` is how late its tick fired.
fn record(w: &Mutex<Window>, put: bool, ok: bool, t: Instant, lag: f64, origin: (Instant, f64)) {
    let (t0, epoch0) = origin;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let mut w = w.lock().unwrap();
    if ok {
        if put {
            w.puts.push(ms)
        } else {
            w.reads.push(ms)
        }
    } else {
        w.errors += 1;
    }
    if let Some(trace) = w.trace.as_mut() {
        trace.push((
            if put { 'p' } else { 'r' },
            epoch0 + (t - t0).as_secs_f64() * 1e3,
            ms,
            lag,
        ));
    }
}

fn summary(v: &mut [f64]) -> String {
    if v.is_empty() {
        return "0 0 0 0".into();
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "{} {:.2} {:.2} {:.2}",
        v.len(),
        at(0.5),
        at(0.99),
        v[v.len() - 1]
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let puts_only = take_flag(&mut args, "--puts-only");
    let seconds = match take_value(&mut args, "--seconds").map(|s| s.parse::<f64>()) {
        None => None,
        Some(Ok(s)) if s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(_) => {
            eprintln!("--seconds: a positive number of seconds");
            std::process::exit(2);
        }
    };
    let (Some(endpoint), Some(puts)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<u32>().ok()),
    ) else {
        eprintln!("usage: etcd_load ENDPOINT PUTS_PER_SECOND [--puts-only] [--seconds S]");
        std::process::exit(2);
    };
    let client = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .expect("connect");
    let trace_path = take_value(&mut args, "--trace");
    let window = Arc::new(Mutex::new(Window {
        trace: trace_path.as_ref().map(|_| Vec::new()),
        ..Window::default()
    }));
    let t0 = Instant::now();
    // --trace start times are Unix milliseconds, to line up with other programs' logs
    let epoch0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
        * 1e3;
    let origin = (t0, epoch0);
    let mut usr1 = signal(SignalKind::user_defined1()).expect("SIGUSR1");
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / puts.max(1) as f64));
    let value: Vec<u8> = (0..1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let mut n = 0u64;
    let end = tokio::time::sleep(seconds.unwrap_or(Duration::MAX / 4));
    tokio::pin!(end);
    loop {
        tokio::select! {
            due = tick.tick() => {
                n += 1;
                let lag = due.elapsed().as_secs_f64() * 1e3;
                let (mut kv, w, v) = (client.kv_client(), window.clone(), value.clone());
                let key = format!("/bench-load/{:04}", n % 1000);
                tokio::spawn(async move {
                    let t = Instant::now();
                    let ok = kv.put(key, v, None).await.is_ok();
                    record(&w, true, ok, t, lag, origin);
                });
                if !puts_only && n.is_multiple_of(2) {
                    let (mut kv, w) = (client.kv_client(), window.clone());
                    tokio::spawn(async move {
                        let opts = etcd_client::GetOptions::new().with_prefix().with_limit(10);
                        let t = Instant::now();
                        let ok = kv.get("/bench-load/", Some(opts)).await.is_ok();
                        record(&w, false, ok, t, lag, origin);
                    });
                }
            }
            _ = usr1.recv() => {
                let mut w = {
                    let mut guard = window.lock().unwrap();
                    let fresh = Window { trace: guard.trace.as_ref().map(|_| Vec::new()), ..Window::default() };
                    std::mem::replace(&mut *guard, fresh)
                };
                if let (Some(path), Some(trace)) = (&trace_path, w.trace.take()) {
                    append_trace(path, &trace);
                }
                println!("puts {} reads {} errors {}", summary(&mut w.puts), summary(&mut w.reads), w.errors);
            }
            _ = term.recv() => return,
            _ = &mut end, if seconds.is_some() => {
                // the requests still in flight get a moment to answer, then the run's line
                tokio::time::sleep(Duration::from_secs(2)).await;
                let mut w = std::mem::take(&mut *window.lock().unwrap());
                println!("puts {} reads {} errors {}", summary(&mut w.puts), summary(&mut w.reads), w.errors);
                return;
            }
        }
    }
}

/// `--trace FILE`: one line per request of the window, `KIND START LATENCY LAG` (p or r; Unix
/// ms; ms; ms its tick fired late — the load's own scheduling delay), appended.
fn append_trace(path: &str, trace: &[(char, f64, f64, f64)]) {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("--trace file");
    let mut out = std::io::BufWriter::new(file);
    for (kind, start, ms, lag) in trace {
        writeln!(out, "{kind} {start:.1} {ms:.2} {lag:.2}").expect("--trace write");
    }
}

/// Removes `flag` from `args`; whether it was there.
fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != flag);
    args.len() != before
}

/// Removes `flag VALUE` from `args`; the value.
fn take_value(args: &mut Vec<String>, flag: &str) -> Option<String> {
    let i = args.iter().position(|a| a == flag)?;
    if i + 1 >= args.len() {
        eprintln!("{flag} needs a value");
        std::process::exit(2);
    }
    let v = args.remove(i + 1);
    args.remove(i);
    Some(v)
}
