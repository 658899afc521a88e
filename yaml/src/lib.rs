//! gofe-yaml: how every gofe configuration file is read.
//!
//! The proxy's config, its bootstrap, the controller's, the metrics adapter's rules and the
//! simulator's scenarios are all YAML deserialized into plain serde types, then checked by their
//! own [`Validate`] pass. This crate is the one place that
//!
//! * turns a parse failure into a [`Problem`] naming the line, column and field path;
//! * collects *every* problem of the validation pass ([`Validator`]), each under its field path,
//!   and finds each path's line and column in the text afterwards, so the configuration types
//!   carry no source positions and stay plain data that xDS and code can build too;
//! * owns the error every loader returns ([`ConfigError`]) and the loaders ([`load`], [`parse`],
//!   [`parse_with`]);
//! * owns how durations are written ([`duration`]: `"30s"`, `"250ms"`, `"1m30s"`).
//!
//! What a field means, and which values are valid, stays with each configuration's own types.
//! Parsing stops at the first syntax or type error (serde cannot go on past one); validation
//! reports every problem it finds.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub mod duration;
mod span;

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
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, Problem> {
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

/// What a configuration file checks about itself once it has parsed: every semantic problem,
/// each under the path of its field (`clusters[0].endpoints[1].address`). The file's line and
/// column are found from the path afterwards, so the types stay plain data.
pub trait Validate {
    /// Reports every problem of `self` to `v`.
    fn validate(&self, v: &mut Validator);
}

/// Collects the problems of a validation pass.
#[derive(Debug, Default)]
pub struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    /// A problem with the field at `field` (a path such as `listeners[0].address`).
    pub fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            line: None,
            column: None,
            field: field.into(),
            message: message.into(),
        });
    }

    /// Runs `check` on a part of the document at `prefix` (`static_resources`, say): the
    /// fields it names are taken as relative to that part.
    pub fn within(&mut self, prefix: &str, check: impl FnOnce(&mut Validator)) {
        let first = self.problems.len();
        check(self);
        for p in &mut self.problems[first..] {
            p.field = if p.field.is_empty() {
                prefix.to_owned()
            } else if p.field.starts_with('[') {
                format!("{prefix}{}", p.field)
            } else {
                format!("{prefix}.{}", p.field)
            };
        }
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

    /// The problems in the order they were found, with no places looked up (for values that
    /// did not come from a file, such as xDS resources).
    pub fn finish(self) -> Vec<Problem> {
        self.problems
    }

    /// The problems with their places in `text` (the document they were parsed from), in file
    /// order, those without a place last.
    pub fn finish_in(self, text: &str) -> Vec<Problem> {
        let mut problems = self.problems;
        locate(text, &mut problems);
        problems.sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column.unwrap_or(0)));
        problems
    }
}

/// Fills in the line and column of every problem that has a field path but no place, from the
/// document `text`. A field the file leaves out is placed where its parent is written.
pub fn locate(text: &str, problems: &mut [Problem]) {
    if problems.iter().all(|p| p.line.is_some()) {
        return;
    }
    let index = span::SpanIndex::build(text);
    for p in problems.iter_mut().filter(|p| p.line.is_none()) {
        if let Some((line, column)) = index.locate(&p.field) {
            p.line = Some(line);
            p.column = Some(column);
        }
    }
}

// === errors ===

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration: every problem found, in file order,
    /// one `FILE:LINE:COLUMN: FIELD: MESSAGE` per line.
    #[error("{}", render(file, problems))]
    Invalid {
        /// The file's name as given (or what the text is called, e.g. `embedded`).
        file: String,
        /// Every problem.
        problems: Vec<Problem>,
    },
}

fn render(file: &str, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| p.in_file(file)).collect();
    lines.join("\n")
}

impl ConfigError {
    /// The problems (none for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }

    /// An invalid-configuration error for `file`.
    pub fn invalid(file: &str, problems: Vec<Problem>) -> Self {
        ConfigError::Invalid {
            file: file.to_owned(),
            problems,
        }
    }
}

// === loading ===

/// Reads a file's text.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads, parses and validates the file at `path`.
pub fn load<T: DeserializeOwned + Validate>(path: &Path) -> Result<T, ConfigError> {
    parse(&path.display().to_string(), &read(path)?)
}

/// Parses and validates `text`; `file` names it in errors. An empty document (nothing but
/// blank lines and comments) is refused: it is almost always the wrong file.
pub fn parse<T: DeserializeOwned + Validate>(file: &str, text: &str) -> Result<T, ConfigError> {
    parse_with(file, text, |value: T, v| {
        value.validate(v);
        value
    })
}

/// Parses `text` and hands the value to `convert`, which reports problems to the validator
/// and returns the converted form (a compiled rule book, say). Any problem fails the whole
/// file, with every problem named.
pub fn parse_with<T: DeserializeOwned, U>(
    file: &str,
    text: &str,
    convert: impl FnOnce(T, &mut Validator) -> U,
) -> Result<U, ConfigError> {
    if is_blank(text) {
        return Err(ConfigError::invalid(
            file,
            vec![Problem {
                line: Some(1),
                column: Some(1),
                field: String::new(),
                message: "the file is empty".into(),
            }],
        ));
    }
    let value: T = from_str(text).map_err(|p| ConfigError::invalid(file, vec![p]))?;
    let mut v = Validator::default();
    let converted = convert(value, &mut v);
    if v.is_empty() {
        Ok(converted)
    } else {
        Err(ConfigError::invalid(file, v.finish_in(text)))
    }
}

/// The keys of a document's top-level mapping, in file order; `None` when the text does not
/// parse or is not a mapping. What `gofe check` tells file kinds apart by.
pub fn top_level_keys(text: &str) -> Option<Vec<String>> {
    span::top_level_keys(text)
}

/// True for a document with nothing but whitespace and comments.
pub fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#') || l == "---")
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

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Checked {
        outer: Vec<Inner>,
    }

    impl Validate for Checked {
        fn validate(&self, v: &mut Validator) {
            for (i, inner) in self.outer.iter().enumerate() {
                if inner.n == 0 {
                    v.error(format!("outer[{i}].n"), "must not be 0");
                }
            }
            if self.outer.len() > 2 {
                v.error("outer", "at most two");
            }
        }
    }

    #[test]
    fn every_validation_problem_is_named_with_its_place_in_file_order() {
        let e = parse::<Checked>("f.yaml", "outer:\n  - n: 0\n  - n: 1\n  - n: 0\n").unwrap_err();
        let text = e.to_string();
        assert_eq!(
            text,
            "f.yaml:2:3: outer: at most two\nf.yaml:2:8: outer[0].n: must not be 0\nf.yaml:4:8: outer[2].n: must not be 0",
        );
        assert_eq!(e.problems().len(), 3);
        assert!(parse::<Checked>("f.yaml", "outer:\n  - n: 1\n").is_ok());
    }

    #[test]
    fn an_empty_file_is_refused() {
        for text in ["", "\n  \n", "# only a comment\n---\n"] {
            let e = parse::<Checked>("f.yaml", text).unwrap_err();
            assert_eq!(e.to_string(), "f.yaml:1:1: the file is empty");
        }
    }

    #[test]
    fn a_missing_file_is_a_read_error() {
        let e = load::<Checked>(Path::new("/nonexistent/gofe.yaml")).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert!(
            e.to_string()
                .starts_with("/nonexistent/gofe.yaml: cannot read:"),
            "{e}"
        );
    }
}
