//! Small parsing and formatting helpers shared by several commands (sizes, durations, times).

/// Parses "16MiB", "64M", "1GiB", "512k", "1048576" into bytes (binary units; "MB" means MiB too,
/// as in most ops tooling).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (e.g. 16MiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => {
            return Err(format!(
                "invalid size unit {u:?} in {s:?} (use KiB, MiB, GiB)"
            ))
        }
    };
    Ok((n * mult as f64) as u64)
}

/// Human-readable bytes (binary units).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Parses "30s", "5m", "1h30m" (humantime) for `--timeout` style flags.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("invalid duration {s:?}: {e} (e.g. 30s, 5m, 1h)"))
}

/// kirt's state directory: `$XDG_STATE_HOME/kirt` or `~/.local/state/kirt` (journals, pending
/// upload ids).
pub fn state_dir() -> std::path::PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("kirt")
}

/// Serde for byte sizes: accepts a number or a string like "16MiB" (playbooks), writes a number.
pub mod size_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            N(u64),
            S(String),
        }
        match V::deserialize(d)? {
            V::N(n) => Ok(n),
            V::S(s) => super::parse_size(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A free TCP port on 127.0.0.1 for a server kirt (or its lab) starts, chosen below the kernel's
/// ephemeral range: a port from that range (what binding port 0 gives) can be taken, between
/// choosing it and the server binding it, as the source port of any outgoing connection.
pub fn free_loopback_port() -> std::io::Result<u16> {
    use std::collections::BTreeSet;
    use std::hash::{BuildHasher, Hasher};
    use std::net::TcpListener;
    use std::sync::Mutex;
    // ports handed out by this process, not yet bound by their server
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, ephemeral_low.max(10_001));
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0..500u64 {
        let mut h = random.build_hasher();
        h.write_u64(attempt);
        let port = from + (h.finish() % u64::from(to - from)) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return Ok(port);
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("5M").unwrap(), 5 << 20);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(12), "12 B");
    }

    #[test]
    fn loopback_ports_are_below_the_ephemeral_range_and_distinct() {
        let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(32768);
        let ports: Vec<u16> = (0..20).map(|_| free_loopback_port().unwrap()).collect();
        for p in &ports {
            assert!((10_000..low).contains(p), "{p} not in 10000..{low}");
            std::net::TcpListener::bind(("127.0.0.1", *p)).expect("free");
        }
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    }
}
