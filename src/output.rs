//! Rendering of command results: every action returns one serde struct that prints as a table
//! (for people) or as JSON/YAML (for automation). Results go to stdout, logs to stderr.

use serde::Serialize;

use crate::error::{Exit, Result};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// A plain, kubectl-style table.
#[derive(Debug, Default, Clone)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Lines printed after the table (summary, next steps).
    pub notes: Vec<String>,
}

impl Table {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(headers: I) -> Self {
        Table {
            headers: headers.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) -> &mut Self {
        self.rows.push(cells.into_iter().map(Into::into).collect());
        self
    }

    pub fn note(&mut self, line: impl Into<String>) -> &mut Self {
        self.notes.push(line.into());
        self
    }

    /// Key/value table for single-object results.
    pub fn fields<I: IntoIterator<Item = (K, V)>, K: Into<String>, V: Into<String>>(
        fields: I,
    ) -> Self {
        let mut t = Table::new(["FIELD", "VALUE"]);
        for (k, v) in fields {
            t.row([k.into(), v.into()]);
        }
        t
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if !self.headers.is_empty() || !self.rows.is_empty() {
            let mut t = comfy_table::Table::new();
            t.load_preset(comfy_table::presets::NOTHING)
                .set_content_arrangement(comfy_table::ContentArrangement::Disabled);
            if !self.headers.is_empty() {
                t.set_header(&self.headers);
            }
            for r in &self.rows {
                t.add_row(r);
            }
            for line in t.to_string().lines() {
                out.push_str(line.trim_end().trim_start_matches(' '));
                out.push('\n');
            }
        }
        for n in &self.notes {
            out.push_str(n);
            out.push('\n');
        }
        out
    }
}

/// What every action result implements.
pub trait Render: Serialize {
    fn table(&self) -> Table;
    /// The exit code this result implies (a verify that found a breach is still a result).
    fn exit(&self) -> Exit {
        Exit::Ok
    }
}

pub fn render<T: Render + ?Sized>(value: &T, format: Format) -> Result<String> {
    Ok(match format {
        Format::Table => value.table().render(),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(value)
                .map_err(|e| crate::Error::json("JSON output", e))?;
            s.push('\n');
            s
        }
        Format::Yaml => serde_yaml_ng::to_string(value)
            .map_err(|e| crate::Error::failed(format!("YAML output: {e}")))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct R {
        name: String,
        n: u32,
    }
    impl Render for R {
        fn table(&self) -> Table {
            let mut t = Table::new(["NAME", "N"]);
            t.row([self.name.clone(), self.n.to_string()]);
            t
        }
    }

    #[test]
    fn renders_all_formats_from_one_struct() {
        let r = R {
            name: "web-1".into(),
            n: 3,
        };
        let table = render(&r, Format::Table).unwrap();
        assert!(table.starts_with("NAME"), "{table}");
        assert!(
            table.lines().nth(1).unwrap().starts_with("web-1"),
            "{table}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&r, Format::Json).unwrap()).unwrap();
        assert_eq!(json["n"], 3);
        let yaml: serde_json::Value =
            serde_yaml_ng::from_str(&render(&r, Format::Yaml).unwrap()).unwrap();
        assert_eq!(yaml["name"], "web-1");
    }
}
