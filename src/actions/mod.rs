//! One module per action family. Each action is a spec struct (serde + clap, kebab-case,
//! deny_unknown_fields) shared by its subcommand and by playbook steps, and one
//! `run(&Ctx, Spec) -> Result<Output>` whose output renders as a table, JSON or YAML.

pub mod backup;
pub mod doctor;
pub mod drill;
pub mod evidence;
pub mod keygen;
pub mod node;
pub mod quarantine;
pub mod restore;
pub mod rollback;
pub mod version;
