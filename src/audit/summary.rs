//! What a selection of audit events says at a glance: requests by verb × resource, allowed and
//! denied, first and last seen, who, from where, with which client. Counted per request (its
//! final stage), fed in time order. Every table has a cap on distinct keys: a planted log with
//! millions of distinct user agents is summarised in bounded memory (the rest is counted under
//! `(other)`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::event::Event;
use crate::output::Table;

/// Distinct keys kept per table.
const MAX_KEYS: usize = 200;
const OTHER: &str = "(other)";

/// Requests by key, with a cap on distinct keys.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Counts(BTreeMap<String, u64>);

impl Counts {
    fn add(&mut self, key: &str) {
        let key = if self.0.contains_key(key) || self.0.len() < MAX_KEYS {
            key
        } else {
            OTHER
        };
        *self.0.entry(key.to_string()).or_default() += 1;
    }

    /// `key (n), …`, most frequent first.
    pub fn text(&self) -> String {
        let mut v: Vec<(&String, &u64)> = self.0.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        v.iter()
            .map(|(k, n)| match k.as_str() {
                "" => format!("(none) ({n})"),
                k => format!("{k} ({n})"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub fn get(&self, key: &str) -> u64 {
        self.0.get(key).copied().unwrap_or(0)
    }
}

/// Requests of one verb on one resource.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Calls {
    pub verb: String,
    pub resource: String,
    pub allowed: u64,
    pub denied: u64,
    /// No final stage was logged (still running when the log was read, or cut off).
    pub unanswered: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Distinct requests (audit IDs).
    pub requests: u64,
    /// Events (a request logs one per stage).
    pub events: u64,
    pub allowed: u64,
    pub denied: u64,
    pub unanswered: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<jiff::Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<jiff::Timestamp>,
    /// Requests by verb × resource.
    pub calls: Vec<Calls>,
    pub users: Counts,
    pub source_ips: Counts,
    pub user_agents: Counts,
    #[serde(skip)]
    by_call: BTreeMap<(String, String), Calls>,
    /// The request being counted: its ID and its latest event's outcome.
    #[serde(skip)]
    pending: Option<Pending>,
}

#[derive(Debug, Clone)]
struct Pending {
    id: String,
    verb: String,
    resource: String,
    outcome: Outcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    Denied,
    Unanswered,
}

impl Summary {
    /// Counts one event; events must come in time order (a request's stages together).
    pub fn add(&mut self, e: &Event) {
        self.events += 1;
        let outcome = match (e.is_final(), e.denied()) {
            (true, true) => Outcome::Denied,
            (true, false) => Outcome::Allowed,
            (false, _) => Outcome::Unanswered,
        };
        if let Some(p) = &mut self.pending {
            if p.id == e.audit_id {
                if outcome != Outcome::Unanswered {
                    p.outcome = outcome;
                }
                return;
            }
        }
        self.flush();
        self.requests += 1;
        if let Some(t) = e.received() {
            self.first_seen = Some(self.first_seen.map_or(t, |f| f.min(t)));
            self.last_seen = Some(self.last_seen.map_or(t, |l| l.max(t)));
        }
        self.users.add(&e.user.username);
        for ip in &e.source_ips {
            self.source_ips.add(ip);
        }
        self.user_agents.add(&e.user_agent);
        self.pending = Some(Pending {
            id: e.audit_id.to_string(),
            verb: e.verb.to_string(),
            resource: e.resource(),
            outcome,
        });
    }

    fn flush(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        let key = if self
            .by_call
            .contains_key(&(p.verb.clone(), p.resource.clone()))
            || self.by_call.len() < MAX_KEYS
        {
            (p.verb, p.resource)
        } else {
            (OTHER.to_string(), OTHER.to_string())
        };
        let c = self.by_call.entry(key.clone()).or_insert_with(|| Calls {
            verb: key.0,
            resource: key.1,
            ..Default::default()
        });
        let (total, call) = match p.outcome {
            Outcome::Allowed => (&mut self.allowed, &mut c.allowed),
            Outcome::Denied => (&mut self.denied, &mut c.denied),
            Outcome::Unanswered => (&mut self.unanswered, &mut c.unanswered),
        };
        *total += 1;
        *call += 1;
    }

    /// Counts the last request; call once all events are in.
    pub fn finish(&mut self) {
        self.flush();
        self.calls = self.by_call.values().cloned().collect();
    }

    /// The verb × resource table, then who, from where, with what.
    pub fn table(&self) -> Table {
        let mut t = Table::new(["VERB", "RESOURCE", "ALLOWED", "DENIED", "UNANSWERED"]);
        for c in &self.calls {
            t.row([
                c.verb.clone(),
                c.resource.clone(),
                c.allowed.to_string(),
                c.denied.to_string(),
                c.unanswered.to_string(),
            ]);
        }
        let when = match (self.first_seen, self.last_seen) {
            (Some(f), Some(l)) => format!(", first {f}, last {l}"),
            _ => String::new(),
        };
        t.note(format!(
            "{} requests: {} allowed, {} denied, {} unanswered{when}",
            self.requests, self.allowed, self.denied, self.unanswered
        ));
        if self.requests > 0 {
            t.note(format!("users: {}", self.users.text()));
            t.note(format!("source IPs: {}", self.source_ips.text()));
            t.note(format!("user agents: {}", self.user_agents.text()));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, stage: &str, verb: &str, code: Option<u16>, ua: &str) -> String {
        let status = code
            .map(|c| format!(r#","responseStatus":{{"code":{c}}}"#))
            .unwrap_or_default();
        format!(
            r#"{{"auditID":"{id}","stage":"{stage}","verb":"{verb}","user":{{"username":"u"}},"sourceIPs":["10.0.0.1"],"userAgent":"{ua}","objectRef":{{"resource":"pods","namespace":"n"}},"requestReceivedTimestamp":"2026-11-27T10:00:0{}Z"{status}}}"#,
            id.len()
        )
    }

    #[test]
    fn counts_requests_not_stages() {
        let lines = [
            ev("a", "RequestReceived", "list", None, "kubectl"),
            ev("a", "ResponseComplete", "list", Some(200), "kubectl"),
            ev("bb", "RequestReceived", "create", None, "kubectl"),
            ev("bb", "ResponseComplete", "create", Some(403), "kubectl"),
            ev("ccc", "RequestReceived", "watch", None, "curl"),
        ];
        let mut s = Summary::default();
        for l in &lines {
            s.add(&Event::parse(l.as_bytes()).unwrap());
        }
        s.finish();
        assert_eq!(
            (s.requests, s.events, s.allowed, s.denied, s.unanswered),
            (3, 5, 1, 1, 1)
        );
        assert_eq!(s.calls.len(), 3);
        let create = s.calls.iter().find(|c| c.verb == "create").unwrap();
        assert_eq!((create.allowed, create.denied), (0, 1));
        assert_eq!(s.user_agents.get("kubectl"), 2);
        assert_eq!(s.first_seen.unwrap().to_string(), "2026-11-27T10:00:01Z");
        assert_eq!(s.last_seen.unwrap().to_string(), "2026-11-27T10:00:03Z");
        let text = s.table().render();
        assert!(
            text.contains("3 requests: 1 allowed, 1 denied, 1 unanswered"),
            "{text}"
        );
    }

    #[test]
    fn distinct_keys_are_capped() {
        let mut c = Counts::default();
        for i in 0..(MAX_KEYS + 50) {
            c.add(&format!("agent-{i}"));
        }
        c.add("agent-0");
        assert_eq!(c.0.len(), MAX_KEYS + 1);
        assert_eq!(c.get(OTHER), 50);
        assert_eq!(c.get("agent-0"), 2);
    }
}
