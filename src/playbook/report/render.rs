//! Markdown and HTML from one [`Report`], with minijinja templates. Every value printed into a
//! template is escaped for its format by default (HTML entities; Markdown punctuation, with line
//! breaks and table pipes neutralised): a user agent or Event message planted by an intruder is
//! text in the report, never a link, an image or a script.

use minijinja::{AutoEscape, Environment, Output, State, Value};

use super::{Report, ReportFormat};
use crate::error::{Error, Result};

const MARKDOWN: &str = "markdown";

fn env() -> Result<Environment<'static>> {
    let mut e = Environment::new();
    e.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            AutoEscape::Html
        } else {
            AutoEscape::Custom(MARKDOWN.into())
        }
    });
    e.set_formatter(format);
    for (name, text) in [
        ("report.md", include_str!("report.md.j2")),
        ("report.html", include_str!("report.html.j2")),
    ] {
        e.add_template(name, text)
            .map_err(|err| Error::failed(format!("report template {name}: {err}")))?;
    }
    Ok(e)
}

fn format(
    out: &mut Output,
    state: &mut State,
    value: &Value,
) -> std::result::Result<(), minijinja::Error> {
    if matches!(state.auto_escape(), AutoEscape::Custom(n) if n == MARKDOWN) && !value.is_safe() {
        let s = if value.is_none() || value.is_undefined() {
            String::new()
        } else {
            value.to_string()
        };
        return out.write_str(&markdown(&s)).map_err(minijinja::Error::from);
    }
    minijinja::escape_formatter(out, state, value)
}

/// Text for a Markdown table cell or line: no markup, no line break, no cell break.
pub fn markdown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

pub fn render(report: &Report, format: ReportFormat) -> Result<String> {
    let name = match format {
        ReportFormat::Md => "report.md",
        ReportFormat::Html => "report.html",
    };
    let e = env()?;
    let t = e
        .get_template(name)
        .map_err(|err| Error::failed(format!("report template {name}: {err}")))?;
    t.render(minijinja::context! { r => Value::from(minijinja::value::Serde(report)) })
        .map_err(|err| Error::failed(format!("rendering the report: {err:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_cannot_be_smuggled_in() {
        let evil = "x | <img src=x onerror=alert(1)> [click](http://evil) **b**\n# h";
        let m = markdown(evil);
        assert!(!m.contains('<') && !m.contains('\n'), "{m}");
        assert!(
            m.contains("\\|") && m.contains("\\[click\\](http://evil)"),
            "{m}"
        );
    }
}
