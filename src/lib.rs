//! kirt — Kubernetes Incident Response Toolkit.
//!
//! The library holds all logic; the `kirt` binary parses arguments, sets up logging and maps
//! errors to exit codes. Actions (`actions::*`) are shared by subcommands and playbook steps.
//! Layers, top down (docs/architecture.md): `cli` → `serve` → `playbook` → `actions` →
//! `pipeline` / `store` / `stored` / `k8s` / `etcd` / `scratch`, with `error`, `output`, `progress` and
//! `units` used everywhere.

pub mod actions;
pub mod audit;
pub mod cli;
pub mod context;
pub mod crypto;
pub mod error;
pub mod etcd;
pub mod http;
pub mod k8s;
pub mod output;
pub mod pipeline;
pub mod playbook;
pub mod priority;
pub mod progress;
pub mod runlock;
pub mod scratch;
pub mod serve;
pub mod signal;
pub mod store;
pub mod stored;
pub mod ui;
pub mod units;

pub use context::Ctx;
pub use error::{Error, Exit, Result};
