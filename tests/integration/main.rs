//! kirt's integration tests: one test crate, one module per feature.
//!
//! Most tests run the built `kirt` binary against the lab (tests/lab/lab.sh: real etcd,
//! kube-apiserver, simulated kubelet, moto, s3s-fs) and check the result with an independent
//! client. Without a running lab they fail and say how to start it; `KIRT_SKIP_LAB=1` skips them,
//! loudly. Run one feature with `cargo test --test integration quarantine::`; what each module
//! covers is listed in docs/lab.md ("Where tests live").

mod common;

mod audit;
mod authenticity;
mod backup;
mod cli;
mod copy;
mod credentials;
mod deploy;
mod doctor;
mod evidence;
mod immutable;
mod interrupt;
mod lab_sanity;
mod objects;
mod pitr;
mod playbooks;
mod quarantine;
mod reports;
mod restore;
mod rollback;
mod serve;
mod store_contract;
mod stream;
