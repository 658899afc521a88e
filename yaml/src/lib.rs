//! gofe-yaml: how every gofe configuration file is read.
//!
//! The proxy's config, the controller's, the metrics adapter's rules and the simulator's
//! scenarios are all YAML deserialized into plain serde types. This crate is the one place that
//! turns a parse failure into a [`Problem`] naming the line, column and field path, and that
//! collects the problems of a semantic validation pass ([`Validator`]) in file order. What a
//! field means, and which values are valid, stays with each configuration's own types.

use std::fmt;

pub use serde_saphyr::{Location, Spanned};

/// One thing wrong with a configuration, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Path of the field, e.g. `clusters[0].endpoints[1].address`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    /// `LINE:COLUMN: FIELD: MESSAGE`, leaving out what is unknown. Prefixed with the file name
    /// and a colon, this is the `file:line:column:` form editors and terminals link to.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "{line}:")?;
            if let Some(column) = self.column {
                write!(f, "{column}:")?;
            }
            f.write_str(" ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl Problem {
    /// `FILE:LINE:COLUMN: FIELD: MESSAGE`.
    pub fn in_file(&self, file: &str) -> String {
        if self.line.is_some() {
            format!("{file}:{self}")
        } else {
            format!("{file}: {self}")
        }
    }
}

/// Deserializes `text` into `T`; a failure is one [`Problem`] with the line, column and the
/// path of the field where it happened.
pub fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Problem> {
    let mut field = String::new();
    let parsed: Result<T, serde_saphyr::Error> =
        serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                field = e.path().to_string();
                e.into_inner()
            })
        });
    parsed.map_err(|e| {
        let location = e.location();
        if field == "." {
            field.clear();
        }
        // A `Spanned<T>` field adds a `.value` step of its own.
        if let Some(stripped) = field.strip_suffix(".value") {
            field = stripped.to_owned();
        }
        Problem {
            line: location.map(|l| l.line() as usize),
            column: location.map(|l| l.column() as usize),
            field,
            message: message_of(&e.without_snippet().to_string()),
        }
    })
}

/// saphyr renders "error: line L column C: message" and a snippet; keep the message alone.
fn message_of(rendered: &str) -> String {
    let line = rendered.lines().next().unwrap_or_default();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    let message = match line.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") => rest,
        _ => line,
    };
    // Some messages repeat the location at the end; it is already in front.
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(", column ") => message[..i].to_owned(),
        _ => message.to_owned(),
    }
}

/// A value with no place in a file (defaults, values built in code).
pub fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
}

/// Collects the problems of a validation pass.
#[derive(Debug, Default)]
pub struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    /// A problem at the place `spanned` came from.
    pub fn at<T>(&mut self, spanned: &Spanned<T>, field: String, message: impl Into<String>) {
        let loc = spanned.referenced;
        let known = loc.line() > 0;
        self.problems.push(Problem {
            line: known.then(|| loc.line() as usize),
            column: known.then(|| loc.column() as usize),
            field,
            message: message.into(),
        });
    }

    /// A problem with a field but no known place.
    pub fn nowhere(&mut self, field: String, message: impl Into<String>) {
        self.problems.push(Problem {
            line: None,
            column: None,
            field,
            message: message.into(),
        });
    }

    /// Adds a problem as it is.
    pub fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    /// True while no problem was found.
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// How many problems were found so far.
    pub fn len(&self) -> usize {
        self.problems.len()
    }

    /// The problems, in file order (those without a place last).
    pub fn finish(mut self) -> Vec<Problem> {
        self.problems
            .sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column.unwrap_or(0)));
        self.problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        outer: Vec<Inner>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    #[test]
    fn problems_name_line_column_and_field() {
        let p = from_str::<Doc>("outer:\n  - n: 1\n  - m: 2\n").unwrap_err();
        assert_eq!((p.line, p.column), (Some(3), Some(5)));
        assert_eq!(p.field, "outer[1].m");
        assert!(p.message.starts_with("unknown field `m`"), "{p}");
        assert_eq!(p.in_file("f.yaml").split(':').next(), Some("f.yaml"));
        let p = from_str::<Doc>("outer: [{ n: x }]\n").unwrap_err();
        assert_eq!(p.line, Some(1));
        assert_eq!(p.field, "outer[0].n");
    }

    #[test]
    fn validator_sorts_by_place() {
        let mut v = Validator::default();
        v.nowhere("a".into(), "no place");
        v.at(
            &Spanned::new(1, Location::UNKNOWN, Location::UNKNOWN),
            "b".into(),
            "unknown place",
        );
        let p = v.finish();
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|p| p.line.is_none()));
    }
}
