//! One audit event as the apiserver writes it (`audit.k8s.io/v1` Event, one JSON object a line),
//! read without copying its strings and without building its request and response bodies; which
//! events concern a [`Subject`]; and the redaction of Secret material before an event is kept.

use std::borrow::Cow;

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The fields of an audit event kirt selects, counts and shows. Everything else of the line
/// (request and response bodies, user extras …) is skipped while parsing, and kept verbatim in
/// the line itself.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event<'a> {
    #[serde(rename = "auditID", borrow)]
    pub audit_id: Cow<'a, str>,
    #[serde(borrow)]
    pub stage: Cow<'a, str>,
    #[serde(default, borrow)]
    pub verb: Cow<'a, str>,
    #[serde(rename = "requestURI", default, borrow)]
    pub request_uri: Cow<'a, str>,
    #[serde(default, borrow)]
    pub user: User<'a>,
    #[serde(default, borrow)]
    pub impersonated_user: Option<User<'a>>,
    #[serde(rename = "sourceIPs", default, borrow)]
    pub source_ips: Vec<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub user_agent: Cow<'a, str>,
    #[serde(default, borrow)]
    pub object_ref: Option<ObjectRef<'a>>,
    #[serde(default)]
    pub response_status: Option<ResponseStatus>,
    #[serde(borrow)]
    pub request_received_timestamp: Cow<'a, str>,
    #[serde(default)]
    pub request_object: Option<IgnoredAny>,
    #[serde(default)]
    pub response_object: Option<IgnoredAny>,
    #[serde(default, borrow)]
    pub annotations: Annotations<'a>,
}

#[derive(Debug, Default, Deserialize)]
pub struct User<'a> {
    #[serde(default, borrow)]
    pub username: Cow<'a, str>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef<'a> {
    #[serde(default, borrow)]
    pub resource: Cow<'a, str>,
    #[serde(default, borrow)]
    pub namespace: Cow<'a, str>,
    #[serde(default, borrow)]
    pub name: Cow<'a, str>,
    #[serde(default, borrow)]
    pub api_group: Cow<'a, str>,
    #[serde(default, borrow)]
    pub subresource: Cow<'a, str>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ResponseStatus {
    #[serde(default)]
    pub code: Option<u16>,
}

/// The authorizer's verdict, as the apiserver annotates every event.
#[derive(Debug, Default, Deserialize)]
pub struct Annotations<'a> {
    #[serde(rename = "authorization.k8s.io/decision", default, borrow)]
    pub decision: Option<Cow<'a, str>>,
    #[serde(rename = "authorization.k8s.io/reason", default, borrow)]
    pub reason: Option<Cow<'a, str>>,
}

impl<'a> Event<'a> {
    pub fn parse(line: &'a [u8]) -> Option<Event<'a>> {
        serde_json::from_slice(line).ok()
    }

    /// When the request was received (the time kirt orders and windows events by).
    pub fn received(&self) -> Option<jiff::Timestamp> {
        self.request_received_timestamp.parse().ok()
    }

    /// `true` for 401/403 answers: the request was refused.
    pub fn denied(&self) -> bool {
        matches!(self.code(), Some(401 | 403))
    }

    pub fn code(&self) -> Option<u16> {
        self.response_status.as_ref().and_then(|s| s.code)
    }

    /// The last stage of a request (its outcome is known).
    pub fn is_final(&self) -> bool {
        matches!(self.stage.as_ref(), "ResponseComplete" | "Panic")
    }

    /// Sorting rank of the stage: a request's stages in the order they happen.
    pub fn stage_rank(&self) -> u8 {
        match self.stage.as_ref() {
            "RequestReceived" => 0,
            "ResponseStarted" => 1,
            "ResponseComplete" => 2,
            "Panic" => 3,
            _ => 4,
        }
    }

    /// `pods/exec`, `deployments.apps`, or the path of a non-resource request (`/version`).
    pub fn resource(&self) -> String {
        match &self.object_ref {
            Some(o) if !o.resource.is_empty() => {
                let mut r = o.resource.to_string();
                if !o.subresource.is_empty() {
                    r = format!("{r}/{}", o.subresource);
                }
                if !o.api_group.is_empty() {
                    r = format!("{r}.{}", o.api_group);
                }
                r
            }
            _ => self
                .request_uri
                .split('?')
                .next()
                .unwrap_or_default()
                .to_string(),
        }
    }

    /// `NS/NAME`, `NS`, `NAME` or "" for what the request was about.
    pub fn object(&self) -> String {
        match &self.object_ref {
            Some(o) => match (o.namespace.is_empty(), o.name.is_empty()) {
                (false, false) => format!("{}/{}", o.namespace, o.name),
                (false, true) => o.namespace.to_string(),
                (true, false) => o.name.to_string(),
                (true, true) => String::new(),
            },
            None => String::new(),
        }
    }

    /// Whether the request and response bodies may hold secret material.
    fn secret_bodies(&self) -> bool {
        let Some(o) = &self.object_ref else {
            return false;
        };
        SECRET_BODIES.iter().any(|(group, resource, sub)| {
            o.api_group == *group
                && o.resource == *resource
                && sub.is_none_or(|s| o.subresource == s)
        })
    }

    /// Whether the event must be redacted before it is kept.
    pub fn needs_redaction(&self) -> bool {
        (self.request_object.is_some() || self.response_object.is_some()) && self.secret_bodies()
    }
}

/// (API group, resource, subresource) whose bodies carry secrets when an audit policy logs them
/// at Request/RequestResponse level: Secrets (data, stringData), TokenRequests (the minted
/// token) and TokenReviews (the reviewed token).
const SECRET_BODIES: &[(&str, &str, Option<&str>)] = &[
    ("", "secrets", None),
    ("", "serviceaccounts", Some("token")),
    ("authentication.k8s.io", "tokenreviews", None),
];

/// The annotation kirt adds to an event whose bodies it replaced.
pub const REDACTED: &str = "kirt.dev/redacted";

/// Kept of a body: the object's identity and metadata, nothing of its content.
fn metadata_only(v: &Value) -> Value {
    let Value::Object(m) = v else {
        return Value::Null;
    };
    let mut out = serde_json::Map::new();
    for k in ["kind", "apiVersion"] {
        if let Some(x) = m.get(k) {
            out.insert(k.into(), x.clone());
        }
    }
    if let Some(Value::Object(meta)) = m.get("metadata") {
        let mut meta = meta.clone();
        // `kubectl apply` keeps the whole object, data included, in this annotation
        if let Some(Value::Object(a)) = meta.get_mut("annotations") {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        out.insert("metadata".into(), Value::Object(meta));
    }
    if let Some(Value::Array(items)) = m.get("items") {
        out.insert(
            "items".into(),
            Value::Array(items.iter().map(metadata_only).collect()),
        );
    }
    Value::Object(out)
}

/// The event line with its request and response bodies replaced by their metadata, marked with
/// the [`REDACTED`] annotation. `None` if the line is not a JSON object.
pub fn redact(line: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(line).ok()?;
    let m = v.as_object_mut()?;
    let mut replaced = Vec::new();
    for k in ["requestObject", "responseObject"] {
        if let Some(body) = m.get_mut(k) {
            *body = metadata_only(body);
            replaced.push(k);
        }
    }
    let note = format!(
        "{} replaced by their metadata: they may hold secret material",
        replaced.join(", ")
    );
    match m
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()))
    {
        Value::Object(a) => {
            a.insert(REDACTED.into(), Value::String(note));
        }
        other => *other = serde_json::json!({ REDACTED: note }),
    }
    serde_json::to_vec(&v).ok()
}

/// A core-group object whose audit events belong to a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl Object {
    pub fn new(resource: &str, namespace: &str, name: &str) -> Object {
        Object {
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

/// Whose activity to select: requests made as (or impersonating) one of `users`, requests on one
/// of `objects` (any subresource: `pods/exec` of the pod, `serviceaccounts/token` of its account),
/// and requests from one of `ips`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Subject {
    pub users: Vec<String>,
    pub objects: Vec<Object>,
    pub ips: Vec<String>,
}

impl Subject {
    /// The ServiceAccount `ns/sa` as the apiserver names its user.
    pub fn service_account_user(ns: &str, sa: &str) -> String {
        format!("system:serviceaccount:{ns}:{sa}")
    }

    pub fn matches(&self, e: &Event) -> bool {
        let user = |u: &str| self.users.iter().any(|x| x == u);
        if user(&e.user.username)
            || e.impersonated_user
                .as_ref()
                .is_some_and(|i| user(&i.username))
        {
            return true;
        }
        if let Some(o) = &e.object_ref {
            let core = o.api_group.is_empty();
            if core
                && self.objects.iter().any(|x| {
                    x.resource == o.resource && x.namespace == o.namespace && x.name == o.name
                })
            {
                return true;
            }
        }
        e.source_ips
            .iter()
            .any(|ip| self.ips.iter().any(|x| x == ip))
    }

    /// Quoted strings one of which appears in the text of every line [`Subject::matches`]
    /// accepts: a fast pre-filter before any JSON is parsed. Sound for what an apiserver writes
    /// (Go's encoding/json escapes no character of a DNS name, a user name or an IP address).
    pub fn needles(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .users
            .iter()
            .chain(self.objects.iter().map(|o| &o.name))
            .chain(self.ips.iter())
            .map(|s| format!("\"{s}\""))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET_SECRET: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/shop/secrets/db","verb":"get","user":{"username":"system:serviceaccount:shop:app","groups":["system:serviceaccounts"]},"sourceIPs":["10.0.0.7"],"userAgent":"curl/8","objectRef":{"resource":"secrets","namespace":"shop","name":"db","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200},"responseObject":{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db","namespace":"shop","annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"data\":{\"pw\":\"c2VjcmV0\"}}","team":"a"}},"data":{"pw":"c2VjcmV0"},"type":"Opaque"},"requestReceivedTimestamp":"2026-11-27T10:00:00.000001Z","stageTimestamp":"2026-11-27T10:00:00.002Z","annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":"RBAC: allowed by RoleBinding \"r\""}}"#;

    #[test]
    fn parses_what_it_needs() {
        let e = Event::parse(GET_SECRET.as_bytes()).unwrap();
        assert_eq!(e.audit_id, "a1");
        assert_eq!(e.code(), Some(200));
        assert!(!e.denied() && e.is_final());
        assert_eq!(e.resource(), "secrets");
        assert_eq!(e.object(), "shop/db");
        assert_eq!(e.annotations.decision.as_deref(), Some("allow"));
        assert_eq!(
            e.received().unwrap().to_string(),
            "2026-11-27T10:00:00.000001Z"
        );
        assert!(e.needs_redaction());
        // the fields kirt needs are required: a line without them is not an event
        assert!(Event::parse(br#"{"kind":"Event","stage":"x"}"#).is_none());
    }

    #[test]
    fn redaction_keeps_metadata_only() {
        let out = redact(GET_SECRET.as_bytes()).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!text.contains("c2VjcmV0"), "{text}");
        assert!(!text.contains("last-applied"), "{text}");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["responseObject"]["metadata"]["name"], "db");
        assert_eq!(v["responseObject"]["metadata"]["annotations"]["team"], "a");
        assert!(v["responseObject"].get("data").is_none());
        assert!(v["annotations"][REDACTED]
            .as_str()
            .unwrap()
            .contains("responseObject"));
        assert_eq!(v["annotations"]["authorization.k8s.io/decision"], "allow");
        // a list keeps each item's metadata; a patch body (no metadata) keeps nothing
        let list = serde_json::json!({"kind": "SecretList", "items": [{"kind": "Secret", "metadata": {"name": "x"}, "data": {"k": "djE="}}]});
        let m = metadata_only(&list);
        assert_eq!(m["items"][0]["metadata"]["name"], "x");
        assert!(m["items"][0].get("data").is_none());
        assert_eq!(
            metadata_only(&serde_json::json!([{"op": "add"}])),
            Value::Null
        );
        assert_eq!(
            metadata_only(&serde_json::json!({"stringData": {"pw": "x"}})),
            serde_json::json!({})
        );
    }

    #[test]
    fn tokens_are_redacted_too_and_other_bodies_are_not() {
        let tr = GET_SECRET.replace(
            r#""resource":"secrets""#,
            r#""resource":"tokenreviews","apiGroup":"authentication.k8s.io""#,
        );
        assert!(Event::parse(tr.as_bytes()).unwrap().needs_redaction());
        let token = GET_SECRET.replace(
            r#""resource":"secrets""#,
            r#""resource":"serviceaccounts","subresource":"token""#,
        );
        assert!(Event::parse(token.as_bytes()).unwrap().needs_redaction());
        let cm = GET_SECRET.replace(r#""resource":"secrets""#, r#""resource":"configmaps""#);
        assert!(!Event::parse(cm.as_bytes()).unwrap().needs_redaction());
        // a Secret event without bodies (Metadata level) is kept as written
        let meta = r#"{"auditID":"a","stage":"ResponseComplete","objectRef":{"resource":"secrets","namespace":"n","name":"s"},"requestReceivedTimestamp":"2026-11-27T10:00:00Z"}"#;
        assert!(!Event::parse(meta.as_bytes()).unwrap().needs_redaction());
    }

    #[test]
    fn subjects_match_user_impersonation_objects_and_ips() {
        let s = Subject {
            users: vec![Subject::service_account_user("shop", "app")],
            objects: vec![Object::new("pods", "shop", "web-1")],
            ips: vec!["192.0.2.9".into()],
        };
        let ev = |json: &str| -> bool {
            let line = format!(
                r#"{{"auditID":"a","stage":"ResponseComplete","requestReceivedTimestamp":"2026-11-27T10:00:00Z",{json}}}"#
            );
            s.matches(&Event::parse(line.as_bytes()).unwrap())
        };
        assert!(ev(
            r#""user":{"username":"system:serviceaccount:shop:app"}"#
        ));
        assert!(ev(
            r#""user":{"username":"alice"},"impersonatedUser":{"username":"system:serviceaccount:shop:app"}"#
        ));
        assert!(!ev(
            r#""user":{"username":"system:serviceaccount:shop:other"}"#
        ));
        assert!(ev(
            r#""user":{"username":"alice"},"objectRef":{"resource":"pods","namespace":"shop","name":"web-1","subresource":"exec"}"#
        ));
        // same name in another namespace or API group is another object
        assert!(!ev(
            r#""user":{"username":"alice"},"objectRef":{"resource":"pods","namespace":"dev","name":"web-1"}"#
        ));
        assert!(!ev(
            r#""user":{"username":"alice"},"objectRef":{"resource":"pods","namespace":"shop","name":"web-1","apiGroup":"metrics.k8s.io"}"#
        ));
        assert!(ev(
            r#""user":{"username":"bob"},"sourceIPs":["10.1.1.1","192.0.2.9"]"#
        ));
        assert!(!ev(
            r#""user":{"username":"bob"},"sourceIPs":["192.0.2.90"]"#
        ));
        assert_eq!(
            s.needles(),
            vec![
                "\"192.0.2.9\"",
                "\"system:serviceaccount:shop:app\"",
                "\"web-1\""
            ]
        );
    }
}
