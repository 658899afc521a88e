//! `gofe reference`: the configuration reference, written from the config types' JSON Schema
//! (`schemars`), so that the doc comments on the types are the documentation and the two
//! cannot drift apart (`tests/config_reference.rs` compares `docs/configuration.md` with this
//! output).
//!
//! Each file kind gets a section; each struct a table of its fields (name, type, default,
//! description) in the order the file's types are first reached; each enum its values.

#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// One file kind of the reference.
struct Section {
    /// The heading.
    title: &'static str,
    /// What it is and which command reads it.
    intro: &'static str,
    /// The schema of its top-level type.
    schema: Value,
}

/// The whole reference, as Markdown.
pub(crate) fn markdown() -> String {
    let to_value = |s: schemars::Schema| serde_json::to_value(s).unwrap_or(Value::Null);
    let sections = [
        Section {
            title: "The proxy file",
            intro: "`gofe proxy --config FILE`, `gofe check`; also what a controller's `proxy_config` names and a bootstrap's `static_resources` holds. Over xDS the same settings travel in Envoy's messages (`proto/README.md`).",
            schema: to_value(gofe_model::schema::proxy_config()),
        },
        Section {
            title: "The xDS bootstrap",
            intro: "`gofe proxy --bootstrap FILE`: who the proxy is, where its control plane is, and what does not come from xDS.",
            schema: to_value(schemars::schema_for!(gofe_proxy::xds::bootstrap::Bootstrap)),
        },
        Section {
            title: "The controller file",
            intro: "`gofe controller run --config FILE`: signals, decisions and where they are served. Paths are relative to the file.",
            schema: to_value(schemars::schema_for!(gofe_controller::config::ControllerConfig)),
        },
    ];
    let mut out = String::from(
        "# Configuration reference\n\n\
         Written by `gofe reference` from the configuration types and their doc comments; do not \
         edit by hand (`tests/config_reference.rs` fails when this file and the types differ: \
         regenerate it with `cargo run -- reference > docs/configuration.md`). Durations are \
         text: a number and a unit (`ns`, `us`, `ms`, `s`, `m`, `h`), e.g. `250ms`, `1m30s`. \
         Every file is YAML; unknown fields are refused, and each problem is reported with its \
         file, line, column and field (`gofe check FILE`).\n",
    );
    // A type is written once, where it is first reached; later sections link to it.
    let mut seen = HashSet::new();
    for s in &sections {
        render_section(&mut out, s, &mut seen);
    }
    out
}

fn render_section(out: &mut String, s: &Section, seen: &mut HashSet<String>) {
    let _ = write!(out, "\n## {}\n\n{}\n", s.title, s.intro);
    let empty = Map::new();
    let defs = s
        .schema
        .get("$defs")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let root_name = s
        .schema
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("root")
        .to_owned();
    // Breadth-first from the root, so a type comes after the first type that names it.
    let mut queue: VecDeque<(String, &Value)> = VecDeque::from([(root_name, &s.schema)]);
    while let Some((name, schema)) = queue.pop_front() {
        if !seen.insert(name.clone()) {
            continue;
        }
        let mut refs = Vec::new();
        collect_refs(schema, &mut refs);
        render_type(out, &name, schema);
        for r in refs {
            if let Some(def) = defs.get(&r) {
                queue.push_back((r, def));
            }
        }
    }
}

/// The names of the definitions `schema` refers to, in order, without descending into them.
fn collect_refs(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(m) => {
            if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                if let Some(name) = r.strip_prefix("#/$defs/") {
                    if !out.iter().any(|n| n == name) {
                        out.push(name.to_owned());
                    }
                }
            }
            for (k, v) in m {
                if k != "$defs" {
                    collect_refs(v, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

fn render_type(out: &mut String, name: &str, schema: &Value) {
    let _ = write!(out, "\n### `{name}`\n\n");
    if let Some(d) = schema.get("description").and_then(Value::as_str) {
        let _ = write!(out, "{}\n\n", paragraph(d));
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        let required: HashSet<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str("| field | type | default | description |\n| --- | --- | --- | --- |\n");
        for (field, p) in props {
            let default = match p.get("default") {
                Some(Value::Null) => "none".to_owned(),
                // A struct's default is its fields' defaults, in its own table.
                Some(Value::Object(m)) if !m.is_empty() => "its fields' defaults".to_owned(),
                Some(v) => format!("`{}`", cell(&compact(v))),
                None if required.contains(field.as_str()) => "required".to_owned(),
                None => "none".to_owned(),
            };
            let description = p
                .get("description")
                .and_then(Value::as_str)
                .map(paragraph)
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "| `{field}` | {} | {default} | {} |",
                cell(&type_of(p)),
                cell(&description)
            );
        }
        return;
    }
    let variants = variants(schema);
    if !variants.is_empty() {
        out.push_str("One of:\n\n");
        for (value, description) in variants {
            match description {
                Some(d) => {
                    let _ = writeln!(out, "- `{value}`: {}", paragraph(&d));
                }
                None => {
                    let _ = writeln!(out, "- `{value}`");
                }
            }
        }
        return;
    }
    let _ = writeln!(out, "Type: {}.", type_of(schema));
}

/// An enum's values with their descriptions: `enum: [...]`, or `oneOf` of `const`s / of
/// single-string enums (how schemars writes documented variants).
fn variants(schema: &Value) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        out.extend(values.iter().map(|v| (compact(v), None)));
    }
    for key in ["oneOf", "anyOf"] {
        for v in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let description = v
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if let Some(c) = v.get("const") {
                out.push((compact(c), description));
            } else if let Some(values) = v.get("enum").and_then(Value::as_array) {
                for value in values {
                    out.push((compact(value), description.clone()));
                }
            }
        }
    }
    out
}

/// A field's type in words: a link to a defined type, a list of, a map of, a primitive.
fn type_of(p: &Value) -> String {
    if let Some(r) = p.get("$ref").and_then(Value::as_str) {
        let name = r.strip_prefix("#/$defs/").unwrap_or(r);
        return format!("[`{name}`](#{})", anchor(name));
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = p.get(key).and_then(Value::as_array) {
            let kinds: Vec<String> = options
                .iter()
                .filter(|o| o.get("type").and_then(Value::as_str) != Some("null"))
                .map(type_of)
                .collect();
            if !kinds.is_empty() {
                return kinds.join(" or ");
            }
        }
    }
    if let Some(c) = p.get("const") {
        return format!("`{}`", compact(c));
    }
    if let Some(values) = p.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", compact(v))).collect();
        return format!("one of {}", values.join(", "));
    }
    let kinds: Vec<&str> = match p.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => vec![],
    };
    match kinds.first().copied() {
        Some("array") => {
            let item = p.get("items").map(type_of).unwrap_or_else(|| "any".into());
            format!("list of {item}")
        }
        Some("object") => match p.get("additionalProperties") {
            Some(v) if v.is_object() => format!("map of string to {}", type_of(v)),
            _ => "object".into(),
        },
        Some("integer") => {
            let min = p.get("minimum").and_then(Value::as_f64);
            match (p.get("format").and_then(Value::as_str), min) {
                (Some(f), Some(m)) if m >= 0.0 => format!("integer ({f})"),
                (Some(f), _) => format!("integer ({f})"),
                _ => "integer".into(),
            }
        }
        Some("number") => "number".into(),
        Some("boolean") => "boolean".into(),
        Some("string") => "string".into(),
        Some(other) => other.into(),
        None => "any".into(),
    }
}

/// A JSON value on one line, as YAML would mostly read it.
fn compact(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

/// Doc-comment text as one Markdown paragraph per blank-line-separated block, joined by `<br>`
/// (a table cell holds one line).
fn paragraph(text: &str) -> String {
    let mut blocks: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            if !current.is_empty() {
                blocks.push(std::mem::take(&mut current));
            }
            continue;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(line);
    }
    if !current.is_empty() {
        blocks.push(current);
    }
    unlink(&blocks.join("<br>"))
}

/// Rustdoc's intra-doc links (``[`Type::item`]``) as plain code: the reference has no Rust
/// items to link to.
fn unlink(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("[`") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after[1..].find("`]") {
            Some(end) if !after[1 + end + 2..].starts_with('(') => {
                out.push_str(&after[..end + 2]);
                rest = &after[end + 3..];
            }
            _ => {
                out.push('[');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Text safe in a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// GitHub's anchor for a `### \`Name\`` heading.
fn anchor(name: &str) -> String {
    name.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
        .collect()
}

/// The fields of every struct in the reference, by type name (for tests).
#[cfg(test)]
fn fields_of(schema: &Value) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    if let Some(defs) = schema.get("$defs").and_then(Value::as_object) {
        for (name, def) in defs {
            if let Some(props) = def.get("properties").and_then(Value::as_object) {
                out.insert(name.clone(), props.keys().cloned().collect());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_of_the_proxy_file_is_in_the_reference_with_its_doc_comment() {
        let schema = serde_json::to_value(gofe_model::schema::proxy_config()).unwrap();
        let text = markdown();
        let fields = fields_of(&schema);
        assert!(fields["ListenerConfig"].contains(&"access_log".to_owned()));
        for (ty, names) in &fields {
            assert!(text.contains(&format!("### `{ty}`")), "{ty} has no section");
            for n in names {
                assert!(text.contains(&format!("| `{n}` |")), "{ty}.{n} is missing");
            }
        }
        // A doc comment, a default written as a duration, an enum's values.
        assert!(text.contains("Time allowed to open a TCP connection to an endpoint"));
        assert!(
            text.contains("| `connect_timeout` | [`Duration`](#duration) | `5s` |"),
            "{text}"
        );
        assert!(
            text.contains("- `HUNDRED`"),
            "FractionalPercent's denominators"
        );
    }

    #[test]
    fn paragraphs_and_cells_stay_on_one_line() {
        assert_eq!(paragraph("a\nb\n\nc"), "a b<br>c");
        assert_eq!(cell("x | y"), "x \\| y");
        assert_eq!(anchor("RouteConfig"), "routeconfig");
        assert_eq!(
            unlink("see [`Policy::window`] and [`x`](#x)"),
            "see `Policy::window` and [`x`](#x)"
        );
    }
}
