//! A Falco event as Falco's `http_output` (json_output) and Falcosidekick's webhook POST it:
//! `{"hostname", "output", "output_fields": {"k8s.ns.name", "k8s.pod.name", "container.id", …},
//! "priority", "rule", "source", "tags", "time"}` (Falcosidekick adds `uuid`). Unknown fields are
//! ignored; the body is untrusted and only ever read as data.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Falco's priorities, lowest first (so `>=` means "at least as severe").
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Debug,
    #[serde(alias = "info")]
    Informational,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(Value::String(s.to_ascii_lowercase()))
            .map_err(|_| format!("unknown priority {s:?} (emergency … debug)"))
    }
}

#[derive(Debug, Deserialize)]
struct Wire {
    rule: String,
    priority: String,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    output_fields: Map<String, Value>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub rule: String,
    pub priority: Priority,
    /// As Falco sent it (RFC 3339); empty when absent.
    pub time: String,
    pub output_fields: Map<String, Value>,
    pub tags: Vec<String>,
    pub hostname: String,
    pub source: String,
    /// `sha256:…` of the body as received.
    pub digest: String,
}

/// Longest string kept from an event (a rule name, a field): nothing legitimate is longer.
const MAX_TEXT: usize = 1024;

impl Event {
    /// Parses a body; the error says what is wrong (the HTTP answer is 400 with it).
    pub fn parse(body: &[u8]) -> Result<Event, String> {
        let w: Wire =
            serde_json::from_slice(body).map_err(|e| format!("not a Falco event: {e}"))?;
        if w.rule.is_empty() || w.rule.len() > MAX_TEXT {
            return Err("not a Falco event: rule is empty or too long".into());
        }
        let priority = w.priority.parse::<Priority>()?;
        Ok(Event {
            rule: w.rule,
            priority,
            time: w.time.unwrap_or_default(),
            output_fields: w.output_fields,
            tags: w.tags,
            hostname: w.hostname.unwrap_or_default(),
            source: w.source.unwrap_or_default(),
            digest: crate::playbook::engine::digest_bytes(body),
        })
    }

    /// An output field as text (numbers too); None when absent or null.
    pub fn field(&self, name: &str) -> Option<String> {
        match self.output_fields.get(name)? {
            Value::String(s) if s.len() <= MAX_TEXT => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    fn text(&self, name: &str) -> Option<&str> {
        self.output_fields
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TEXT && *s != "<NA>")
    }

    pub fn namespace(&self) -> Option<&str> {
        self.text("k8s.ns.name")
    }

    pub fn pod(&self) -> Option<&str> {
        self.text("k8s.pod.name")
    }

    /// The event's time, when it is one.
    pub fn timestamp(&self) -> Option<jiff::Timestamp> {
        self.time.parse().ok()
    }

    /// What rule templates see as `event`.
    pub fn template_data(&self) -> Value {
        json!({"event": {
            "rule": self.rule, "priority": self.priority, "time": self.time,
            "hostname": self.hostname, "source": self.source, "tags": self.tags,
            "output_fields": self.output_fields,
            "namespace": self.namespace(), "pod": self.pod(),
        }})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_falco_json_and_orders_priorities() {
        let body = br#"{"hostname":"n1","output":"x","output_fields":{"container.id":"734cfc07ae4d","evt.time":1718000000000000000,"k8s.ns.name":"shop","k8s.pod.name":"web-1","proc.name":"bash"},"priority":"Notice","rule":"Terminal shell in container","source":"syscall","tags":["container","shell"],"time":"2024-06-10T06:13:20.123456789Z","uuid":"u"}"#;
        let e = Event::parse(body).unwrap();
        assert_eq!((e.namespace(), e.pod()), (Some("shop"), Some("web-1")));
        assert_eq!(e.priority, Priority::Notice);
        assert!(e.timestamp().is_some());
        assert_eq!(e.field("evt.time").unwrap(), "1718000000000000000");
        assert!(
            Priority::Critical > Priority::Warning && Priority::Informational < Priority::Notice
        );
        assert_eq!("INFO".parse::<Priority>().unwrap(), Priority::Informational);
        assert!(Event::parse(b"{\"rule\":\"x\"}")
            .unwrap_err()
            .contains("priority"));
        assert!(Event::parse(br#"{"rule":"x","priority":"loud"}"#)
            .unwrap_err()
            .contains("loud"));
    }
}
