//! The playbook file format (DESIGN.md "Playbooks"): what a YAML file may contain. Parsing only;
//! the meaning (actions, templates, references) is checked in `validate`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const API_VERSION: &str = "kirt.dev/v1";
pub const KIND: &str = "Playbook";

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Playbook {
    /// Always "kirt.dev/v1"
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Always "Playbook"
    pub kind: String,
    pub metadata: Metadata,
    /// Parameters given with `-p NAME=VALUE` or `--params-file`
    #[serde(default)]
    pub params: BTreeMap<String, Param>,
    /// Environment variables the playbook may read (as `env.NAME`); no others are visible
    #[serde(default)]
    pub env: Vec<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Param {
    /// The run refuses to start without it
    pub required: bool,
    /// Used when the parameter is not given
    pub default: Option<Value>,
    pub description: String,
    /// Never written to the journal, logs or output (tokens, webhook URLs)
    pub secret: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Unique name of the step; its outputs are `steps.ID.outputs`
    pub id: String,
    /// The action, e.g. backup.create, rollback.undo, exec, notify.webhook
    pub action: String,
    /// The action's spec (the same fields as its subcommand's flags, kebab-case); strings are
    /// minijinja templates
    #[serde(default)]
    pub with: serde_json::Map<String, Value>,
    /// Expression: the step runs only when it is true (e.g. `params.webhook_url`)
    #[serde(default)]
    pub when: Option<String>,
    /// The step runs once per element, available as `item`: an expression giving a list, or
    /// `{pods: {namespace: NS, selector: LABELS}}` for the pods a label selector matches
    #[serde(default)]
    pub foreach: Option<Foreach>,
    /// Extra attempts after a failure (with exponential backoff from retry_delay)
    #[serde(default)]
    pub retries: u32,
    /// First delay between attempts (e.g. 2s); doubles each time
    #[serde(default, with = "crate::units::opt_duration_serde")]
    #[schemars(with = "Option<String>")]
    pub retry_delay: Option<Duration>,
    /// Give up on an attempt after this long (e.g. 5m); a child process is killed
    #[serde(default, with = "crate::units::opt_duration_serde")]
    #[schemars(with = "Option<String>")]
    pub timeout: Option<Duration>,
    /// A failure is recorded and the run goes on (the run then exits 5)
    #[serde(default)]
    pub continue_on_error: bool,
    /// Ask before this step even when the action itself would not
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Foreach {
    /// An expression giving a list, e.g. `params.pods`
    Expr(String),
    /// The pods a label selector matches; each `item` is {name, namespace, node, phase, labels}
    Pods { pods: PodSelector },
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PodSelector {
    pub namespace: String,
    /// A label selector, e.g. `app=web,tier!=db`
    #[serde(default)]
    pub selector: String,
}
