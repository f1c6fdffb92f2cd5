//! The Kubernetes protobuf schema kirt decodes with: every message of the built-in API groups,
//! each field's number, wire type and JSON name, and what the Go JSON encoder does with it
//! (omitted when zero, a pointer whose zero is kept, inlined into its parent). Generated from
//! Kubernetes' `generated.proto` files and Go types by `tools/k8s-schema.py` into
//! `k8s-schema.txt`, embedded here and parsed once.
//!
//! Format, one item per line (`#` comments):
//! - `package PROTO_PACKAGE GROUP VERSION` (`-` for the core group);
//! - `message NAME [list]` (`list`: a Go slice type such as `ExtraValue`, JSON is its `items`);
//! - `TAG JSON_NAME LABEL TYPE FLAGS` for each field of the message above it: LABEL `o`ptional
//!   or `r`epeated; TYPE a scalar, a message name or `map<K,V>`; FLAGS from `o` (omitempty),
//!   `z` (omitzero), `p` (Go pointer), `i` (JSON inline; JSON_NAME is `-`), or `-` for none.

use std::collections::HashMap;
use std::sync::LazyLock;

const TEXT: &str = include_str!("k8s-schema.txt");

static SCHEMA: LazyLock<Result<Schema, String>> = LazyLock::new(|| Schema::parse(TEXT));

/// The embedded schema (parsed on first use).
pub fn get() -> Result<&'static Schema, String> {
    SCHEMA.as_ref().map_err(Clone::clone)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scalar {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Double,
    Float,
}

impl Scalar {
    fn parse(s: &str) -> Option<Scalar> {
        Some(match s {
            "string" => Scalar::String,
            "bytes" => Scalar::Bytes,
            "bool" => Scalar::Bool,
            "int32" => Scalar::Int32,
            "int64" => Scalar::Int64,
            "uint32" => Scalar::Uint32,
            "uint64" => Scalar::Uint64,
            "double" => Scalar::Double,
            "float" => Scalar::Float,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Scalar(Scalar),
    /// Index into [`Schema::messages`].
    Message(usize),
    Map(Scalar, Box<Type>),
}

/// Messages whose JSON is not their fields (custom `MarshalJSON` in Go).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    None,
    /// metav1.Time: RFC 3339 seconds, zero → null.
    Time,
    /// metav1.MicroTime: RFC 3339 with microseconds.
    MicroTime,
    /// metav1.Duration: Go's duration string ("1h0m0s").
    Duration,
    /// resource.Quantity: its string.
    Quantity,
    /// intstr.IntOrString: a number or a string.
    IntOrString,
    /// runtime.RawExtension, apiextensions JSON, metav1.FieldsV1: the embedded JSON bytes.
    RawJson,
    /// apiextensions JSONSchemaPropsOrBool / OrArray / OrStringArray.
    SchemaOrBool,
    SchemaOrArray,
    SchemaOrStringArray,
}

#[derive(Debug, Clone)]
pub struct Field {
    pub tag: u32,
    /// JSON name; empty for a field inlined into its parent.
    pub json: String,
    pub repeated: bool,
    pub ty: Type,
    pub omitempty: bool,
    pub omitzero: bool,
    pub pointer: bool,
}

impl Field {
    pub fn inline(&self) -> bool {
        self.json.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Message {
    pub name: String,
    /// A Go slice type: the JSON is the array of its `items` field.
    pub list: bool,
    pub special: Special,
    /// Sorted by tag.
    pub fields: Vec<Field>,
}

impl Message {
    pub fn field(&self, tag: u32) -> Option<(usize, &Field)> {
        self.fields
            .binary_search_by_key(&tag, |f| f.tag)
            .ok()
            .map(|i| (i, &self.fields[i]))
    }
}

#[derive(Debug)]
pub struct Schema {
    pub messages: Vec<Message>,
    by_name: HashMap<String, usize>,
    /// (group, version) → protobuf package.
    packages: HashMap<(String, String), String>,
}

impl Schema {
    /// The message of a top-level kind (`apps/v1`, `Deployment`).
    pub fn kind(&self, api_version: &str, kind: &str) -> Option<usize> {
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let pkg = self
            .packages
            .get(&(group.to_string(), version.to_string()))?;
        self.by_name.get(&format!("{pkg}.{kind}")).copied()
    }

    pub fn message(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    fn parse(text: &str) -> Result<Schema, String> {
        struct Raw<'a> {
            name: &'a str,
            list: bool,
            fields: Vec<(u32, &'a str, bool, &'a str, &'a str)>,
        }
        let mut raws: Vec<Raw> = Vec::new();
        let mut packages = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let bad = || format!("k8s-schema.txt:{}: {line}", n + 1);
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                [] => {}
                [c, ..] if c.starts_with('#') => {}
                ["package", pkg, group, version] => {
                    let g = if *group == "-" { "" } else { group };
                    packages.insert((g.to_string(), version.to_string()), pkg.to_string());
                }
                ["message", name] | ["message", name, "list"] => raws.push(Raw {
                    name,
                    list: w.len() == 3,
                    fields: Vec::new(),
                }),
                [tag, json, label, ty, flags] => {
                    let tag: u32 = tag.parse().map_err(|_| bad())?;
                    let json = if *json == "-" { "" } else { json };
                    raws.last_mut().ok_or_else(bad)?.fields.push((
                        tag,
                        json,
                        *label == "r",
                        ty,
                        flags,
                    ));
                }
                _ => return Err(bad()),
            }
        }
        let by_name: HashMap<String, usize> = raws
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.to_string(), i))
            .collect();
        let resolve = |ty: &str| -> Result<Type, String> {
            if let Some(s) = Scalar::parse(ty) {
                return Ok(Type::Scalar(s));
            }
            by_name
                .get(ty)
                .map(|i| Type::Message(*i))
                .ok_or_else(|| format!("k8s-schema.txt: unknown type {ty}"))
        };
        let mut messages = Vec::with_capacity(raws.len());
        for r in &raws {
            let mut fields = Vec::with_capacity(r.fields.len());
            for (tag, json, repeated, ty, flags) in &r.fields {
                let ty = match ty.strip_prefix("map<").and_then(|t| t.strip_suffix('>')) {
                    Some(kv) => {
                        let (k, v) = kv
                            .split_once(',')
                            .ok_or_else(|| format!("k8s-schema.txt: bad map {ty}"))?;
                        let k = Scalar::parse(k)
                            .ok_or_else(|| format!("k8s-schema.txt: bad map key {ty}"))?;
                        Type::Map(k, Box::new(resolve(v)?))
                    }
                    None => resolve(ty)?,
                };
                fields.push(Field {
                    tag: *tag,
                    json: json.to_string(),
                    repeated: *repeated,
                    ty,
                    omitempty: flags.contains('o'),
                    omitzero: flags.contains('z'),
                    pointer: flags.contains('p'),
                });
            }
            fields.sort_by_key(|f| f.tag);
            messages.push(Message {
                name: r.name.to_string(),
                list: r.list,
                special: special(r.name),
                fields,
            });
        }
        Ok(Schema {
            messages,
            by_name,
            packages,
        })
    }
}

fn special(name: &str) -> Special {
    const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1.";
    const EXT: &str = "k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.";
    if let Some(n) = name.strip_prefix(META) {
        return match n {
            "Time" => Special::Time,
            "MicroTime" => Special::MicroTime,
            "Duration" => Special::Duration,
            "FieldsV1" => Special::RawJson,
            _ => Special::None,
        };
    }
    if let Some(n) = name
        .strip_prefix(EXT)
        .and_then(|n| n.split_once('.').map(|(_, n)| n))
    {
        return match n {
            "JSON" => Special::RawJson,
            "JSONSchemaPropsOrBool" => Special::SchemaOrBool,
            "JSONSchemaPropsOrArray" => Special::SchemaOrArray,
            "JSONSchemaPropsOrStringArray" => Special::SchemaOrStringArray,
            _ => Special::None,
        };
    }
    match name {
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => Special::Quantity,
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => Special::IntOrString,
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => Special::RawJson,
        _ => Special::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_schema_parses_and_knows_the_stored_kinds() {
        let s = get().unwrap();
        for (av, kind) in [
            ("v1", "ConfigMap"),
            ("v1", "Secret"),
            ("apps/v1", "Deployment"),
            ("rbac.authorization.k8s.io/v1", "RoleBinding"),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            ("apiregistration.k8s.io/v1", "APIService"),
            ("discovery.k8s.io/v1beta1", "EndpointSlice"),
            ("flowcontrol.apiserver.k8s.io/v1beta1", "FlowSchema"),
            ("batch/v1beta1", "CronJob"),
            ("policy/v1beta1", "PodSecurityPolicy"),
        ] {
            assert!(s.kind(av, kind).is_some(), "{av} {kind}");
        }
        assert!(s.kind("v1", "Nope").is_none());
        let meta = &s.messages[s
            .message("k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta")
            .unwrap()];
        let (_, name) = meta.field(1).unwrap();
        assert_eq!((name.json.as_str(), name.omitempty), ("name", true));
        let (_, created) = meta.field(8).unwrap();
        assert!(matches!(created.ty, Type::Message(i) if s.messages[i].special == Special::Time));
        let vol = &s.messages[s.message("k8s.io.api.core.v1.Volume").unwrap()];
        assert!(vol.field(2).unwrap().1.inline(), "VolumeSource is inlined");
        let spec = &s.messages[s.message("k8s.io.api.apps.v1.DeploymentSpec").unwrap()];
        assert!(spec.field(1).unwrap().1.pointer, "replicas is a pointer");
        let extra = &s.messages[s.message("k8s.io.api.certificates.v1.ExtraValue").unwrap()];
        assert!(extra.list);
    }
}
