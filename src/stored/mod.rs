//! Kubernetes objects as kube-apiserver stores them in etcd, decoded back to the API's JSON:
//! protobuf (`k8s\0` + runtime.Unknown, built-in kinds; [`proto`] with the embedded
//! [`schema`]), JSON (custom resources), and values encrypted at rest ([`encryption`], with the
//! apiserver's EncryptionConfiguration). Each value is checked against its etcd key ([`keys`]):
//! what the key says and what the value claims must agree.
//!
//! Everything here reads bytes that may have been planted (an etcd that an intruder wrote to is
//! still backed up faithfully): nothing panics, nothing is guessed, and every value that cannot be
//! decoded says why.

pub mod encryption;
pub mod keys;
pub mod proto;
pub mod restorable;
pub mod schema;

use serde_json::{Map, Value};

pub use encryption::Keyring;
pub use keys::Key;

/// One key/value of a backup's `/registry/`.
#[derive(Debug, Clone)]
pub struct Stored {
    pub key: Key,
    /// etcd's mod revision: the object's resourceVersion.
    pub revision: i64,
    pub content: Content,
}

#[derive(Debug, Clone)]
pub enum Content {
    /// The object as the API would serve it (apiVersion, kind, metadata.resourceVersion set).
    Object(Value),
    /// Decoded, but the API's JSON of it would lose something (fields this schema does not
    /// know), or it disagrees with its key: shown, never restored.
    Suspect(Value, String),
    /// Encrypted at rest and not opened (why).
    Encrypted(String),
    /// Neither protobuf nor JSON of an object (why).
    Undecodable(String),
}

impl Content {
    /// `decoded`, `suspect`, `encrypted`, `undecodable`.
    pub fn state(&self) -> &'static str {
        match self {
            Content::Object(_) => "decoded",
            Content::Suspect(..) => "suspect",
            Content::Encrypted(_) => "encrypted",
            Content::Undecodable(_) => "undecodable",
        }
    }

    pub fn object(&self) -> Option<&Value> {
        match self {
            Content::Object(v) | Content::Suspect(v, _) => Some(v),
            _ => None,
        }
    }

    /// Why it is not a plain decoded object.
    pub fn problem(&self) -> Option<&str> {
        match self {
            Content::Object(_) => None,
            Content::Suspect(_, why) | Content::Encrypted(why) | Content::Undecodable(why) => {
                Some(why)
            }
        }
    }
}

/// Decodes values with the embedded schema and, optionally, encryption keys.
pub struct Decoder {
    schema: &'static schema::Schema,
    keys: Keyring,
}

impl Decoder {
    pub fn new(keys: Keyring) -> crate::error::Result<Decoder> {
        let schema = schema::get()
            .map_err(|e| crate::error::Error::failed(format!("kirt's Kubernetes schema: {e}")))?;
        Ok(Decoder { schema, keys })
    }

    /// Decodes one value; `None` for keys that hold no object.
    pub fn decode(&self, key: &str, value: &[u8], revision: i64) -> Option<Stored> {
        let key = Key::parse(key)?;
        let content = self.content(&key, value, revision);
        Some(Stored {
            key,
            revision,
            content,
        })
    }

    /// Decodes the value stored under `key` at `revision`.
    pub fn content(&self, key: &Key, value: &[u8], revision: i64) -> Content {
        let opened;
        let value = if value.starts_with(encryption::PREFIX) {
            match self.keys.open(&key.raw, value) {
                Ok(plain) => {
                    opened = plain;
                    &opened[..]
                }
                Err(why) => return Content::Encrypted(why),
            }
        } else {
            value
        };
        let (mut obj, dropped) = match self.object(value) {
            Ok(x) => x,
            Err(why) => return Content::Undecodable(why),
        };
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            // the apiserver clears it before storing and serves the etcd revision
            m.insert(
                "resourceVersion".into(),
                Value::String(revision.to_string()),
            );
        }
        if !dropped.is_empty() {
            let why = format!(
                "fields this kirt's schema (Kubernetes 1.36) does not know: {}",
                dropped.join(", ")
            );
            return Content::Suspect(obj, why);
        }
        match agrees(key, &obj) {
            Ok(()) => Content::Object(obj),
            Err(why) => Content::Suspect(obj, why),
        }
    }

    fn object(&self, value: &[u8]) -> Result<(Value, Vec<String>), String> {
        let mut dropped = Vec::new();
        if let Some(pb) = value.strip_prefix(b"k8s\x00") {
            let env = proto::envelope(pb)?;
            if !env.content_encoding.is_empty() {
                return Err(format!("content encoding {:?}", env.content_encoding));
            }
            let msg = self
                .schema
                .kind(&env.api_version, &env.kind)
                .ok_or_else(|| {
                    format!(
                        "{} {} is not a kind kirt knows (Kubernetes 1.20–1.36)",
                        env.api_version, env.kind
                    )
                })?;
            let body = proto::to_json(self.schema, msg, env.raw, &mut dropped)?;
            let Value::Object(fields) = body else {
                return Err("the object is not a message".into());
            };
            let mut obj = Map::new();
            obj.insert("apiVersion".into(), Value::String(env.api_version));
            obj.insert("kind".into(), Value::String(env.kind));
            obj.extend(fields);
            return Ok((Value::Object(obj), dropped));
        }
        if value.first() == Some(&b'{') {
            let v: Value = serde_json::from_slice(value).map_err(|e| format!("JSON: {e}"))?;
            let typed = v.get("apiVersion").is_some_and(Value::is_string)
                && v.get("kind").is_some_and(Value::is_string)
                && v.get("metadata").is_some_and(Value::is_object);
            if !typed {
                return Err("JSON without apiVersion, kind and metadata".into());
            }
            return Ok((v, dropped));
        }
        Err(format!(
            "neither protobuf nor JSON ({} bytes starting {:?})",
            value.len(),
            String::from_utf8_lossy(&value[..value.len().min(8)])
        ))
    }
}

/// The decoded object's kind, namespace and name agree with its etcd key.
fn agrees(key: &Key, obj: &Value) -> Result<(), String> {
    let kind = obj["kind"].as_str().unwrap_or_default();
    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
    let group = api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("");
    let meta = &obj["metadata"];
    let ns = meta["namespace"].as_str().filter(|s| !s.is_empty());
    let name = meta["name"].as_str().unwrap_or_default();
    let mut wrong = Vec::new();
    match key.builtin {
        Some(b) if b.kind != kind || !b.groups.contains(&group) => wrong.push(format!(
            "the key holds {} ({}) but the value is {api_version} {kind}",
            b.plural, b.kind
        )),
        None if key.is_custom() && key.group != group => wrong.push(format!(
            "the key holds {} but the value is {api_version} {kind}",
            key.group_resource()
        )),
        _ => {}
    }
    if ns != key.namespace.as_deref() {
        wrong.push(format!(
            "the key's namespace is {} but the value's {}",
            key.namespace.as_deref().unwrap_or("(none)"),
            ns.unwrap_or("(none)")
        ));
    }
    if name != key.name && !key.internal() {
        wrong.push(format!(
            "the key's name is {} but the value's {name}",
            key.name
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("disagrees with its etcd key: {}", wrong.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_values_are_checked_against_their_key() {
        let d = Decoder::new(Keyring::default()).unwrap();
        let cr = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                        "metadata": {"name": "w1", "namespace": "shop"}, "spec": {"size": 3}});
        let s = d
            .decode(
                "/registry/example.com/widgets/shop/w1",
                cr.to_string().as_bytes(),
                42,
            )
            .unwrap();
        let Content::Object(v) = &s.content else {
            panic!("{:?}", s.content)
        };
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        // planted: a cluster-admin binding stored under a ConfigMap's key
        let planted = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                             "metadata": {"name": "x"}, "roleRef": {"name": "cluster-admin"}});
        let s = d
            .decode(
                "/registry/configmaps/shop/x",
                planted.to_string().as_bytes(),
                1,
            )
            .unwrap();
        let why = s.content.problem().unwrap();
        assert!(
            s.content.state() == "suspect" && why.contains("ConfigMap"),
            "{why}"
        );
        // moved to another namespace
        let s = d
            .decode(
                "/registry/example.com/widgets/other/w1",
                cr.to_string().as_bytes(),
                1,
            )
            .unwrap();
        assert!(s.content.problem().unwrap().contains("namespace"));
        let s = d
            .decode("/registry/configmaps/shop/y", b"\x00\x01garbage", 1)
            .unwrap();
        assert_eq!(s.content.state(), "undecodable");
        let s = d
            .decode("/registry/secrets/shop/y", b"k8s:enc:aescbc:v1:k:xxxx", 1)
            .unwrap();
        assert_eq!(s.content.state(), "encrypted");
    }
}
