//! etcd backups: `create` streams a snapshot through zstd and age into a store and writes the
//! manifest last; `list` reads manifests; `prune` applies restic-style retention; `verify`
//! streams a backup back and checks every digest (and, with `--restore`, restores it); `copy`
//! replicates backups to a second store; `objects` reads the Kubernetes objects of a backup and
//! `diff` compares them with the live cluster. `guard` and `lock` keep two clusters, or two runs
//! of one, from writing the same history. `stream` extends a full backup with `segment`s of
//! etcd's watch stream; `chain` resolves and checks them, `replay` applies them to a scratch
//! member (point-in-time recovery), and `compact` snapshots such a member as a new full backup.

pub mod chain;
pub mod compact;
pub mod copy;
pub mod create;
pub mod diff;
pub mod guard;
pub mod list;
pub mod lock;
pub mod manifest;
pub mod metrics;
pub mod objects;
pub mod prune;
pub mod replay;
pub mod retention;
pub mod segment;
pub mod signing;
pub mod source;
pub mod spool;
pub mod stream;
pub mod verify;
