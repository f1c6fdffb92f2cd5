//! Kubernetes protobuf → the API's JSON, driven by the embedded [`schema`](super::schema): the
//! JSON a kube-apiserver would serve for the same bytes (Go's field names, zero values omitted
//! where the Go field is `omitempty`, pointers' zeros kept, inlined structs, Time/Quantity/
//! IntOrString/RawExtension as their custom JSON). Everything is read from untrusted bytes:
//! lengths are checked against what is there, nesting is bounded, nothing panics.

use base64::Engine;
use serde_json::{Map, Value};

use super::schema::{Field, Scalar, Schema, Special, Type};

/// Deeper nesting than any real object (CRD schemas nest ~20 levels) means planted bytes.
const MAX_DEPTH: usize = 100;

/// Why bytes could not be decoded (a message for the operator, never the bytes themselves).
pub type DecodeError = String;

/// One field as it is on the wire.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl Wire<'_> {
    fn is_zero(&self) -> bool {
        match self {
            Wire::Varint(v) | Wire::Fixed64(v) => *v == 0,
            Wire::Fixed32(v) => *v == 0,
            Wire::Bytes(b) => b.is_empty(),
        }
    }
}

/// Iterates over the fields of one message's bytes.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = *self
                .buf
                .get(self.pos)
                .ok_or("truncated protobuf (varint)")?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err("protobuf varint overflows 64 bits".into());
            }
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err("protobuf varint longer than 10 bytes".into())
    }

    fn slice(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or("truncated protobuf (a length runs past the end)")?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn next_field(&mut self) -> Result<Option<(u32, Wire<'a>)>, DecodeError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| "protobuf field number out of range")?;
        if tag == 0 {
            return Err("protobuf field number 0".into());
        }
        let w = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => Wire::Fixed64(u64::from_le_bytes(
                self.slice(8)?.try_into().map_err(|_| "fixed64")?,
            )),
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| "length out of range")?;
                Wire::Bytes(self.slice(n)?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(
                self.slice(4)?.try_into().map_err(|_| "fixed32")?,
            )),
            t => {
                return Err(format!(
                    "protobuf wire type {t} (groups are not used by Kubernetes)"
                ))
            }
        };
        Ok(Some((tag, w)))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Wire<'a>), DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        self.next_field().transpose()
    }
}

/// `runtime.Unknown`, the envelope of every protobuf value (after the `k8s\0` magic).
pub struct Envelope<'a> {
    pub api_version: String,
    pub kind: String,
    pub raw: &'a [u8],
    pub content_encoding: String,
}

pub fn envelope(bytes: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    let mut env = Envelope {
        api_version: String::new(),
        kind: String::new(),
        raw: &[],
        content_encoding: String::new(),
    };
    for f in Fields::new(bytes) {
        match f? {
            (1, Wire::Bytes(tm)) => {
                for g in Fields::new(tm) {
                    match g? {
                        (1, Wire::Bytes(b)) => env.api_version = text(b),
                        (2, Wire::Bytes(b)) => env.kind = text(b),
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(b)) => env.raw = b,
            (3, Wire::Bytes(b)) => env.content_encoding = text(b),
            _ => {}
        }
    }
    if env.kind.is_empty() || env.api_version.is_empty() {
        return Err("protobuf envelope without apiVersion/kind".into());
    }
    Ok(env)
}

/// Converts one message to JSON; the names of fields the schema does not know (and that hold
/// something) are appended to `dropped` (`Message.N`).
pub fn to_json(
    schema: &Schema,
    msg: usize,
    bytes: &[u8],
    dropped: &mut Vec<String>,
) -> Result<Value, DecodeError> {
    Decoder { schema, dropped }.message(msg, bytes, 0)
}

struct Decoder<'s, 'd> {
    schema: &'s Schema,
    dropped: &'d mut Vec<String>,
}

/// What arrived for one field of a message.
enum Slot {
    Absent,
    One(Value),
    List(Vec<Value>),
    Map(Map<String, Value>),
}

impl Decoder<'_, '_> {
    fn message(&mut self, idx: usize, bytes: &[u8], depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(format!("protobuf nested deeper than {MAX_DEPTH} messages"));
        }
        let m = &self.schema.messages[idx];
        if m.special != Special::None {
            return self.special(idx, bytes, depth);
        }
        let mut slots: Vec<Slot> = (0..m.fields.len()).map(|_| Slot::Absent).collect();
        for f in Fields::new(bytes) {
            let (tag, w) = f?;
            let Some((i, field)) = m.field(tag) else {
                if !w.is_zero() {
                    let short = m.name.rsplit('.').next().unwrap_or(&m.name);
                    self.dropped.push(format!("{short}.{tag}"));
                }
                continue;
            };
            match &field.ty {
                Type::Map(k, v) => {
                    let Wire::Bytes(entry) = w else {
                        return Err(format!("{}: map entry is not length-delimited", field.json));
                    };
                    let (key, value) = self.map_entry(*k, v, entry, depth)?;
                    if let Slot::Absent = slots[i] {
                        slots[i] = Slot::Map(Map::new());
                    }
                    if let Slot::Map(map) = &mut slots[i] {
                        map.insert(key, value);
                    }
                }
                ty if field.repeated => {
                    if let Slot::Absent = slots[i] {
                        slots[i] = Slot::List(Vec::new());
                    }
                    let Slot::List(list) = &mut slots[i] else {
                        continue;
                    };
                    match (ty, w) {
                        // packed repeated scalars
                        (Type::Scalar(s), Wire::Bytes(b))
                            if !matches!(s, Scalar::String | Scalar::Bytes) =>
                        {
                            let mut p = Fields::new(b);
                            while p.pos < b.len() {
                                let w = match s {
                                    Scalar::Double => Wire::Fixed64(u64::from_le_bytes(
                                        p.slice(8)?.try_into().map_err(|_| "packed")?,
                                    )),
                                    Scalar::Float => Wire::Fixed32(u32::from_le_bytes(
                                        p.slice(4)?.try_into().map_err(|_| "packed")?,
                                    )),
                                    _ => Wire::Varint(p.varint()?),
                                };
                                list.push(scalar(*s, w, &field.json)?);
                            }
                        }
                        _ => list.push(self.value(ty, w, &field.json, depth)?),
                    }
                }
                ty => slots[i] = Slot::One(self.value(ty, w, &field.json, depth)?),
            }
        }
        if m.list {
            // a Go slice type (ExtraValue): its JSON is the items themselves
            return Ok(match slots.into_iter().next() {
                Some(Slot::List(items)) => Value::Array(items),
                _ => Value::Null,
            });
        }
        let mut obj = Map::new();
        for (field, slot) in m.fields.iter().zip(slots) {
            match slot {
                Slot::Absent => {
                    // Go encodes a nil slice or map without omitempty as null
                    let collection = field.repeated || matches!(field.ty, Type::Map(..));
                    if collection && !field.inline() && !field.omitempty && !field.omitzero {
                        obj.insert(field.json.clone(), Value::Null);
                    }
                    // and a zero metav1.Time that is not a pointer as null
                    // (`"creationTimestamp": null` in a pod template)
                    let time = matches!(field.ty, Type::Message(t)
                        if matches!(self.schema.messages[t].special, Special::Time | Special::MicroTime));
                    if time && !field.repeated && !field.pointer && !field.omitzero {
                        obj.insert(field.json.clone(), Value::Null);
                    }
                }
                Slot::One(v) if field.inline() => {
                    if let Value::Object(inner) = v {
                        obj.extend(inner);
                    }
                }
                Slot::One(v) => {
                    if !omitted(field, &v) {
                        obj.insert(field.json.clone(), v);
                    }
                }
                Slot::List(items) => {
                    obj.insert(field.json.clone(), Value::Array(items));
                }
                Slot::Map(map) => {
                    obj.insert(field.json.clone(), Value::Object(map));
                }
            }
        }
        Ok(Value::Object(obj))
    }

    fn value(
        &mut self,
        ty: &Type,
        w: Wire,
        name: &str,
        depth: usize,
    ) -> Result<Value, DecodeError> {
        match ty {
            Type::Scalar(s) => scalar(*s, w, name),
            Type::Message(idx) => match w {
                Wire::Bytes(b) => self.message(*idx, b, depth + 1),
                _ => Err(format!("{name}: a message that is not length-delimited")),
            },
            Type::Map(..) => Err(format!("{name}: nested map")),
        }
    }

    fn map_entry(
        &mut self,
        key: Scalar,
        value: &Type,
        entry: &[u8],
        depth: usize,
    ) -> Result<(String, Value), DecodeError> {
        let (mut k, mut v) = (None, None);
        for f in Fields::new(entry) {
            match f? {
                (1, w) => k = Some(scalar(key, w, "map key")?),
                (2, w) => v = Some(self.value(value, w, "map value", depth)?),
                _ => {}
            }
        }
        let k = match k {
            Some(Value::String(s)) => s,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        // an absent value is the type's zero
        let v = match (v, value) {
            (Some(v), _) => v,
            (None, Type::Scalar(s)) => zero(*s),
            (None, ty) => self.value(ty, Wire::Bytes(&[]), "map value", depth)?,
        };
        Ok((k, v))
    }

    /// Messages with custom JSON in Go.
    fn special(&mut self, idx: usize, bytes: &[u8], depth: usize) -> Result<Value, DecodeError> {
        let m = &self.schema.messages[idx];
        let mut fields: Vec<(u32, Wire)> = Vec::new();
        for f in Fields::new(bytes) {
            fields.push(f?);
        }
        let int = |tag: u32| -> i64 {
            fields
                .iter()
                .rev()
                .find_map(|(t, w)| match (t, w) {
                    (t, Wire::Varint(v)) if *t == tag => Some(*v as i64),
                    _ => None,
                })
                .unwrap_or(0)
        };
        let bytes_of = |tag: u32| -> Option<&[u8]> {
            fields.iter().rev().find_map(|(t, w)| match (t, w) {
                (t, Wire::Bytes(b)) if *t == tag => Some(*b),
                _ => None,
            })
        };
        let sub_schema = |tag: u32| -> Option<usize> {
            match m.field(tag).map(|(_, f)| &f.ty) {
                Some(Type::Message(i)) => Some(*i),
                _ => None,
            }
        };
        Ok(match m.special {
            Special::None => unreachable_special(&m.name)?,
            Special::Time if fields.is_empty() => Value::Null,
            Special::Time => Value::String(rfc3339(int(1), None)?),
            Special::MicroTime if fields.is_empty() => Value::Null,
            Special::MicroTime => Value::String(rfc3339(int(1), Some(int(2) as i32))?),
            Special::Duration => Value::String(go_duration(int(1))),
            Special::Quantity => Value::String(match bytes_of(1) {
                Some(b) if !b.is_empty() => text(b),
                _ => "0".into(),
            }),
            Special::IntOrString => {
                if int(1) == 1 {
                    Value::String(bytes_of(3).map(text).unwrap_or_default())
                } else {
                    Value::from(int(2) as i32)
                }
            }
            Special::RawJson => match bytes_of(1) {
                None | Some([]) => Value::Null,
                Some(raw) => serde_json::from_slice(raw).map_err(|e| {
                    format!(
                        "{}: embedded bytes are not JSON ({e})",
                        m.name.rsplit('.').next().unwrap_or("")
                    )
                })?,
            },
            Special::SchemaOrBool => match (bytes_of(2), sub_schema(2)) {
                (Some(b), Some(s)) => self.message(s, b, depth + 1)?,
                _ => Value::Bool(int(1) != 0),
            },
            Special::SchemaOrArray => {
                let many: Vec<&[u8]> = fields
                    .iter()
                    .filter_map(|(t, w)| match (t, w) {
                        (2, Wire::Bytes(b)) => Some(*b),
                        _ => None,
                    })
                    .collect();
                match (sub_schema(1), bytes_of(1)) {
                    (Some(s), _) if !many.is_empty() => Value::Array(
                        many.into_iter()
                            .map(|b| self.message(s, b, depth + 1))
                            .collect::<Result<_, _>>()?,
                    ),
                    (Some(s), Some(b)) => self.message(s, b, depth + 1)?,
                    _ => Value::Null,
                }
            }
            Special::SchemaOrStringArray => {
                let props: Vec<Value> = fields
                    .iter()
                    .filter_map(|(t, w)| match (t, w) {
                        (2, Wire::Bytes(b)) => Some(Value::String(text(b))),
                        _ => None,
                    })
                    .collect();
                match (sub_schema(1), bytes_of(1)) {
                    _ if !props.is_empty() => Value::Array(props),
                    (Some(s), Some(b)) => self.message(s, b, depth + 1)?,
                    _ => Value::Null,
                }
            }
        })
    }
}

fn unreachable_special(name: &str) -> Result<Value, DecodeError> {
    Err(format!("{name} has no special encoding"))
}

/// Whether Go's JSON encoder leaves this present field out.
fn omitted(field: &Field, v: &Value) -> bool {
    let zero = match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty() && field.omitzero,
    };
    if !zero {
        return false;
    }
    let scalar = matches!(field.ty, Type::Scalar(_));
    // omitempty leaves out zero scalars that are not pointers (a pointer to zero was set on
    // purpose: `replicas: 0`); it never leaves out a struct. omitzero leaves out any zero value.
    field.omitzero || (field.omitempty && scalar && !field.pointer)
}

fn text(b: &[u8]) -> String {
    // valid UTF-8 is the rule: from_utf8 checks it faster than the lossy conversion's chunking
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn zero(s: Scalar) -> Value {
    match s {
        Scalar::String | Scalar::Bytes => Value::String(String::new()),
        Scalar::Bool => Value::Bool(false),
        _ => Value::from(0),
    }
}

fn scalar(s: Scalar, w: Wire, name: &str) -> Result<Value, DecodeError> {
    Ok(match (s, w) {
        (Scalar::String, Wire::Bytes(b)) => Value::String(text(b)),
        (Scalar::Bytes, Wire::Bytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Scalar::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        // negative int32s are sign-extended to 64 bits on the wire
        (Scalar::Int32, Wire::Varint(v)) => Value::from(v as i64 as i32),
        (Scalar::Int64, Wire::Varint(v)) => Value::from(v as i64),
        (Scalar::Uint32, Wire::Varint(v)) => Value::from(v as u32),
        (Scalar::Uint64, Wire::Varint(v)) => Value::from(v),
        (Scalar::Double, Wire::Fixed64(v)) => number(f64::from_bits(v)),
        (Scalar::Float, Wire::Fixed32(v)) => number(f64::from(f32::from_bits(v))),
        (s, w) => {
            return Err(format!(
                "{name}: {s:?} field with the wrong wire type ({})",
                match w {
                    Wire::Varint(_) => "varint",
                    Wire::Fixed64(_) => "fixed64",
                    Wire::Bytes(_) => "length-delimited",
                    Wire::Fixed32(_) => "fixed32",
                }
            ))
        }
    })
}

/// Go encodes whole floats without a fraction (`1`, not `1.0`).
fn number(f: f64) -> Value {
    if f.fract() == 0.0 && f.abs() < 9e15 {
        Value::from(f as i64)
    } else {
        serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

/// RFC 3339 in UTC, as metav1.Time (seconds) and MicroTime (microseconds) marshal.
fn rfc3339(seconds: i64, nanos: Option<i32>) -> Result<String, DecodeError> {
    let t = jiff::Timestamp::from_second(seconds)
        .map_err(|e| format!("timestamp {seconds} out of range: {e}"))?;
    let base = t.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    Ok(match nanos {
        None => format!("{base}Z"),
        Some(n) => format!("{base}.{:06}Z", n.clamp(0, 999_999_999) / 1000),
    })
}

/// Go's `time.Duration.String()`: "1h0m0s", "1m30s", "1.5s", "300ms", "0s".
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    let frac = |v: u64, prec: u32| -> String {
        if v == 0 {
            return String::new();
        }
        let s = format!(".{:0width$}", v, width = prec as usize);
        s.trim_end_matches('0').to_string()
    };
    let body = if u < 1_000_000_000 {
        let (unit, prec) = match u {
            0..1_000 => ("ns", 0),
            1_000..1_000_000 => ("µs", 3),
            _ => ("ms", 6),
        };
        let p = 10u64.pow(prec);
        format!("{}{}{unit}", u / p, frac(u % p, prec))
    } else {
        let secs = u / 1_000_000_000;
        let s = format!("{}{}s", secs % 60, frac(u % 1_000_000_000, 9));
        let (mins, hours) = ((secs / 60) % 60, secs / 3600);
        match (hours, secs / 60) {
            (0, 0) => s,
            (0, _) => format!("{mins}m{s}"),
            _ => format!("{hours}h{mins}m{s}"),
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A tiny protobuf writer for the tests.
    #[derive(Default)]
    struct W(Vec<u8>);
    impl W {
        fn varint(&mut self, mut v: u64) {
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    self.0.push(b);
                    return;
                }
                self.0.push(b | 0x80);
            }
        }
        fn int(mut self, tag: u32, v: i64) -> Self {
            self.varint(u64::from(tag) << 3);
            self.varint(v as u64);
            self
        }
        fn bytes(mut self, tag: u32, b: &[u8]) -> Self {
            self.varint((u64::from(tag) << 3) | 2);
            self.varint(b.len() as u64);
            self.0.extend_from_slice(b);
            self
        }
        fn str(self, tag: u32, s: &str) -> Self {
            self.bytes(tag, s.as_bytes())
        }
        fn msg(self, tag: u32, m: W) -> Self {
            self.bytes(tag, &m.0)
        }
    }

    fn decode(name: &str, w: &W) -> (Value, Vec<String>) {
        let s = super::super::schema::get().unwrap();
        let mut dropped = Vec::new();
        let v = to_json(s, s.message(name).unwrap(), &w.0, &mut dropped).unwrap();
        (v, dropped)
    }

    fn meta(name: &str) -> W {
        // as Kubernetes writes it: every non-pointer field, zero or not
        W::default()
            .str(1, name)
            .str(2, "")
            .str(3, "ns")
            .str(4, "")
            .str(5, "uid-1")
            .str(6, "")
            .int(7, 0)
            .msg(8, W::default().int(1, 1_700_000_000))
            .msg(11, W::default().str(1, "app").str(2, "web"))
            .str(15, "")
    }

    #[test]
    fn zero_values_follow_the_go_json_tags() {
        let spec = W::default()
            .int(1, 0) // replicas: a pointer, explicitly 0
            .msg(
                3,
                W::default()
                    .msg(1, W::default().str(2, "").int(7, 0)) // template metadata: all zero
                    .msg(
                        2,
                        W::default()
                            .msg(2, W::default().str(1, "c").str(2, "img"))
                            .msg(
                                1,
                                W::default().str(1, "v").msg(
                                    2,
                                    // VolumeSource (inline) with an emptyDir
                                    W::default().msg(2, W::default()),
                                ),
                            ),
                    ),
            )
            .int(5, 0); // minReadySeconds: omitempty, not a pointer
        let d = W::default().msg(1, meta("web")).msg(2, spec);
        let (v, dropped) = decode("k8s.io.api.apps.v1.Deployment", &d);
        assert!(dropped.is_empty(), "{dropped:?}");
        assert_eq!(
            v["metadata"],
            json!({"name": "web", "namespace": "ns", "uid": "uid-1",
                   "creationTimestamp": "2023-11-14T22:13:20Z", "labels": {"app": "web"}})
        );
        assert_eq!(v["spec"]["replicas"], 0);
        assert!(v["spec"].get("minReadySeconds").is_none(), "{v}");
        // a zero Time in the template's metadata is null, as apiservers serve it
        assert_eq!(
            v["spec"]["template"]["metadata"],
            json!({"creationTimestamp": null})
        );
        let pod = &v["spec"]["template"]["spec"];
        assert_eq!(pod["containers"], json!([{"name": "c", "image": "img"}]));
        assert_eq!(pod["volumes"], json!([{"name": "v", "emptyDir": {}}]));
    }

    #[test]
    fn special_types_marshal_as_in_go() {
        // Service port: targetPort IntOrString (string), NodePort int
        let port = W::default()
            .str(1, "http")
            .str(2, "TCP")
            .int(3, 80)
            .msg(4, W::default().int(1, 1).str(3, "web"));
        let (v, _) = decode("k8s.io.api.core.v1.ServicePort", &port);
        assert_eq!(v["targetPort"], "web");
        let port = W::default().int(3, 80).msg(4, W::default().int(2, 8080));
        let (v, _) = decode("k8s.io.api.core.v1.ServicePort", &port);
        assert_eq!(v["targetPort"], 8080);
        // Secret data: bytes → base64
        let s = W::default()
            .msg(1, meta("s"))
            .msg(2, W::default().str(1, "password").bytes(2, b"hunter2"));
        let (v, _) = decode("k8s.io.api.core.v1.Secret", &s);
        assert_eq!(v["data"]["password"], "aHVudGVyMg==");
        // resource quantities
        let rr = W::default().msg(
            2,
            W::default()
                .str(1, "cpu")
                .msg(2, W::default().str(1, "100m")),
        );
        let (v, _) = decode("k8s.io.api.core.v1.ResourceRequirements", &rr);
        assert_eq!(v["requests"], json!({"cpu": "100m"}));
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(300_000_000), "300ms");
        assert_eq!(go_duration(-2_000), "-2µs");
    }

    #[test]
    fn unknown_fields_are_reported_and_planted_bytes_fail_cleanly() {
        let cm = W::default().msg(1, meta("c")).str(99, "from a newer kirt?");
        let (v, dropped) = decode("k8s.io.api.core.v1.ConfigMap", &cm);
        assert_eq!(v["metadata"]["name"], "c");
        assert_eq!(dropped, vec!["ConfigMap.99"]);
        let s = super::super::schema::get().unwrap();
        let cm = s.message("k8s.io.api.core.v1.ConfigMap").unwrap();
        let mut d = Vec::new();
        for bad in [
            &[0x0a, 0xff, 0xff, 0xff, 0x0f][..], // length past the end
            &[0x0a][..],                         // truncated
            &[0xff; 12][..],                     // varint too long
            &[0x0b][..],                         // group wire type
            &[0x08, 0x01][..],                   // metadata as a varint
        ] {
            assert!(to_json(s, cm, bad, &mut d).is_err(), "{bad:?}");
        }
        // nesting bound: JSONSchemaProps within itself, deeper than any real CRD
        let props = s
            .message("k8s.io.apiextensions_apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps")
            .unwrap();
        let mut deep = W::default().str(5, "string");
        for _ in 0..150 {
            deep = W::default().msg(29, W::default().str(1, "k").msg(2, deep));
        }
        let e = to_json(s, props, &deep.0, &mut d).unwrap_err();
        assert!(e.contains("nested deeper"), "{e}");
    }
}
