//! etcd backups: `create` streams a snapshot through zstd and age into a store and writes the
//! manifest last; `list` reads manifests; `prune` applies restic-style retention; `verify`
//! streams a backup back and checks every digest (and, with `--restore`, restores it).

pub mod create;
pub mod list;
pub mod manifest;
pub mod metrics;
pub mod prune;
pub mod retention;
pub mod signing;
pub mod source;
pub mod verify;
