//! minijinja over step fields. A string that is exactly one `{{ expression }}` keeps the
//! expression's type (a list stays a list, a number a number); any other template renders to a
//! string. `when` and `foreach` are bare expressions.

use std::collections::BTreeSet;

use minijinja::Environment;
use serde_json::{Map, Value};

pub fn env() -> Environment<'static> {
    let mut e = Environment::new();
    e.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    e
}

pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// The expression inside a string that is nothing but `{{ expr }}`.
fn pure_expr(s: &str) -> Option<&str> {
    let inner = s.trim().strip_prefix("{{")?.strip_suffix("}}")?;
    (!inner.contains("{{") && !inner.contains("}}")).then_some(inner.trim())
}

/// `when`/`foreach` may be written bare (`params.x`) or wrapped (`{{ params.x }}`).
pub fn bare(expr: &str) -> &str {
    pure_expr(expr).unwrap_or(expr.trim())
}

/// Syntax check; returns the dotted variables the template reads (`params.ns`, `steps.a.outputs.id`).
pub fn variables(
    e: &Environment<'_>,
    s: &str,
    expression: bool,
) -> Result<BTreeSet<String>, String> {
    let vars = if expression {
        e.compile_expression_owned(bare(s).to_string())
            .map_err(|err| err.to_string())?
            .undeclared_variables(true)
    } else if let Some(x) = pure_expr(s) {
        e.compile_expression_owned(x.to_string())
            .map_err(|err| err.to_string())?
            .undeclared_variables(true)
    } else {
        e.template_from_str(s)
            .map_err(|err| err.to_string())?
            .undeclared_variables(true)
    };
    Ok(vars.into_iter().collect())
}

pub fn eval(e: &Environment<'_>, expr: &str, data: &Value) -> Result<Value, String> {
    let x = e
        .compile_expression_owned(bare(expr).to_string())
        .map_err(|err| err.to_string())?;
    let v = x
        .eval(minijinja::Value::from(minijinja::value::Serde(data)))
        .map_err(|err| err.to_string())?;
    if v.is_undefined() || v.is_none() {
        return Ok(Value::Null);
    }
    serde_json::to_value(&v).map_err(|err| err.to_string())
}

pub fn truthy(e: &Environment<'_>, expr: &str, data: &Value) -> Result<bool, String> {
    let x = e
        .compile_expression_owned(bare(expr).to_string())
        .map_err(|err| err.to_string())?;
    Ok(
        x.eval(minijinja::Value::from(minijinja::value::Serde(data)))
            .map_err(|err| err.to_string())?
            .is_true(),
    )
}

pub fn render_str(e: &Environment<'_>, s: &str, data: &Value) -> Result<Value, String> {
    if !is_template(s) {
        return Ok(Value::String(s.to_string()));
    }
    if let Some(x) = pure_expr(s) {
        return eval(e, x, data);
    }
    e.render_str(s, minijinja::Value::from(minijinja::value::Serde(data)))
        .map(Value::String)
        .map_err(|err| err.to_string())
}

/// Renders every string of a `with:` tree.
pub fn render(e: &Environment<'_>, v: &Value, data: &Value) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => render_str(e, s, data)?,
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render(e, x, data))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                let r = render(e, x, data)?;
                // an expression that yields nothing leaves the field unset (its default applies)
                if !(r.is_null() && matches!(x, Value::String(s) if is_template(s))) {
                    out.insert(k.clone(), r);
                }
            }
            Value::Object(out)
        }
        other => other.clone(),
    })
}

/// Every string in a tree, with the key path that leads to it.
pub fn strings<'a>(v: &'a Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, &'a str)>) {
    match v {
        Value::String(s) => out.push((path.clone(), s)),
        Value::Array(a) => a.iter().for_each(|x| strings(x, path, out)),
        Value::Object(m) => {
            for (k, x) in m {
                path.push(k.clone());
                strings(x, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pure_expressions_keep_types() {
        let e = env();
        let d = json!({"params": {"n": 3, "l": ["a", "b"], "ns": "prod"}});
        assert_eq!(render_str(&e, "{{ params.n }}", &d).unwrap(), json!(3));
        assert_eq!(
            render_str(&e, "{{ params.l }}", &d).unwrap(),
            json!(["a", "b"])
        );
        assert_eq!(
            render_str(&e, "ns={{ params.ns }}", &d).unwrap(),
            json!("ns=prod")
        );
        assert!(truthy(&e, "params.ns", &d).unwrap());
        assert!(!truthy(&e, "params.missing", &d).unwrap());
        let vars = variables(&e, "{{ steps.a.outputs.id }}-{{ params.ns }}", false).unwrap();
        assert!(
            vars.contains("steps.a.outputs.id") && vars.contains("params.ns"),
            "{vars:?}"
        );
        assert!(variables(&e, "{{ params.ns ", false).is_err());
    }
}
