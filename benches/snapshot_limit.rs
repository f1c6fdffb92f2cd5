//! The limit for `kirt backup create`: a minimal etcd-client program that reads the snapshot
//! stream and discards it (what any backup tool must at least do). Also fills bench databases.
//!
//!   snapshot_limit read ENDPOINT            → prints bytes and seconds
//!   snapshot_limit fill ENDPOINT MIB        → writes ~MIB MiB of realistic values

use std::time::Instant;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (mode, endpoint) = (
        args.first().map(String::as_str),
        args.get(1).cloned().unwrap_or_default(),
    );
    let mut c = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .expect("connect");
    match mode {
        Some("read") => {
            let t = Instant::now();
            let mut s = c.maintenance_client().snapshot().await.expect("snapshot");
            let mut n = 0u64;
            while let Some(m) = s.message().await.expect("stream") {
                n += m.blob().len() as u64;
            }
            println!("{n} {:.3}", t.elapsed().as_secs_f64());
        }
        Some("fill") => {
            let mib: usize = args.get(2).and_then(|s| s.parse().ok()).expect("MIB");
            let mut written = 0usize;
            let mut i = 0u64;
            let mut x: u64 = 0x2545F4914F6CDD1D;
            while written < mib << 20 {
                let mut ops = Vec::with_capacity(64);
                for _ in 0..64 {
                    i += 1;
                    // mostly JSON-like objects (Kubernetes-ish), every 10th a random 1 KiB blob (an
                    // encrypted Secret, say): the db compresses ~4x with zstd -3
                    let v: Vec<u8> = if i.is_multiple_of(10) {
                        (0..1024)
                            .map(|_| {
                                x ^= x << 13;
                                x ^= x >> 7;
                                x ^= x << 17;
                                x as u8
                            })
                            .collect()
                    } else {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        format!(
                            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-{i}","namespace":"ns-{}","uid":"{:016x}-{:08x}","resourceVersion":"{}","labels":{{"app":"svc-{}","tier":"backend","release":"r{}"}}}},"data":{{"config.yaml":"replicas: {}\nimage: registry.example/app:{}\nport: {}\nfeature_flags: [{}]\n","checksum":"{:016x}{:016x}"}}}}"#,
                            i % 97, x, i, i * 3, i % 31, i % 7, i % 5, x % 1000, 8000 + i % 100,
                            (0..(i % 12)).map(|k| format!("f{k}")).collect::<Vec<_>>().join(","), x.rotate_left(17), x.wrapping_mul(31)
                        )
                        .into_bytes()
                    };
                    written += v.len();
                    ops.push(etcd_client::TxnOp::put(
                        format!("/registry/configmaps/bench/{i:010}"),
                        v,
                        None,
                    ));
                }
                c.txn(etcd_client::Txn::new().and_then(ops))
                    .await
                    .expect("txn");
            }
            println!("{i} keys");
        }
        _ => {
            eprintln!("usage: snapshot_limit read|fill ENDPOINT [MIB]");
            std::process::exit(2);
        }
    }
}
