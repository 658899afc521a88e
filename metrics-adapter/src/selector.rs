//! Kubernetes label selectors (`labelSelector=`) and their translation to PromQL label matchers.
//!
//! The grammar is the one `kubectl -l` and the HPA send: comma-separated requirements, each
//! `key=value`, `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key` (exists)
//! or `!key` (does not exist). Keys and values are checked against Kubernetes' own syntax, and
//! every value is escaped again when it is written into PromQL (string escaping, plus regex
//! escaping inside `=~`/`!~`), so no selector can change the shape of a query.
//!
//! | selector          | PromQL matcher        |
//! |-------------------|-----------------------|
//! | `k=v`, `k==v`     | `k="v"`               |
//! | `k!=v`            | `k!="v"`              |
//! | `k in (a,b)`      | `k=~"a\|b"`           |
//! | `k notin (a,b)`   | `k!~"a\|b"`           |
//! | `k`               | `k!=""`               |
//! | `!k`              | `k=""`                |

use std::collections::BTreeSet;
use std::fmt;

/// What a requirement checks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// `key=value` or `key==value`.
    Equals(String),
    /// `key!=value`.
    NotEquals(String),
    /// `key in (a,b)`: the values, sorted and deduplicated.
    In(BTreeSet<String>),
    /// `key notin (a,b)`: the values, sorted and deduplicated.
    NotIn(BTreeSet<String>),
    /// `key`: the label is present.
    Exists,
    /// `!key`: the label is absent.
    DoesNotExist,
}

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// The label key, as the client wrote it.
    pub key: String,
    /// The check.
    pub op: Operator,
}

/// A parsed label selector: all requirements must hold. Empty selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    /// The requirements, sorted (so equal selectors compare and hash equal).
    pub requirements: Vec<Requirement>,
}

/// Why a selector was rejected (the client gets 400 Bad Request).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The text does not follow the selector grammar.
    #[error("invalid label selector at byte {at}: {reason}")]
    Syntax {
        /// Byte offset of the problem.
        at: usize,
        /// What was expected.
        reason: String,
    },
    /// A key that is not a Kubernetes label key.
    #[error("invalid label key {0:?}")]
    Key(String),
    /// A value that is not a Kubernetes label value.
    #[error("invalid label value {0:?}: at most 63 characters of [A-Za-z0-9_.-], starting and ending alphanumeric")]
    Value(String),
    /// A key valid in Kubernetes that cannot name a Prometheus label (e.g. `app.kubernetes.io/name`).
    #[error(
        "label key {0:?} cannot be matched in Prometheus (label names are [a-zA-Z_][a-zA-Z0-9_]*)"
    )]
    NotAPrometheusLabel(String),
    /// Larger than a selector an HPA sends: refused before it becomes a huge Prometheus query.
    #[error("label selector too large: {what} (at most {limit})")]
    TooLarge {
        /// What is over the bound.
        what: String,
        /// The bound.
        limit: usize,
    },
}

/// Longest selector text accepted, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 4096;
/// Most requirements in one selector.
pub const MAX_REQUIREMENTS: usize = 32;
/// Most values in one `in (…)`/`notin (…)` set.
pub const MAX_SET_VALUES: usize = 64;

// === parsing ===

struct Lexer<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn eat(&mut self, token: &str) -> bool {
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn word(&mut self) -> &'a str {
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
            .unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    fn error(&self, reason: &str) -> SelectorError {
        SelectorError::Syntax {
            at: self.pos,
            reason: reason.to_owned(),
        }
    }
}

impl Selector {
    /// Parses selector text. Empty (or blank) text is the empty selector.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.len() > MAX_SELECTOR_BYTES {
            return Err(SelectorError::TooLarge {
                what: format!("{} bytes", text.len()),
                limit: MAX_SELECTOR_BYTES,
            });
        }
        let mut lx = Lexer { text, pos: 0 };
        let mut requirements = Vec::new();
        lx.skip_ws();
        if lx.rest().is_empty() {
            return Ok(Selector::default());
        }
        loop {
            lx.skip_ws();
            let requirement = parse_requirement(&mut lx)?;
            if let Operator::In(values) | Operator::NotIn(values) = &requirement.op {
                if values.len() > MAX_SET_VALUES {
                    return Err(SelectorError::TooLarge {
                        what: format!("{} values for {:?}", values.len(), requirement.key),
                        limit: MAX_SET_VALUES,
                    });
                }
            }
            requirements.push(requirement);
            if requirements.len() > MAX_REQUIREMENTS {
                return Err(SelectorError::TooLarge {
                    what: format!("more than {MAX_REQUIREMENTS} requirements"),
                    limit: MAX_REQUIREMENTS,
                });
            }
            lx.skip_ws();
            if lx.rest().is_empty() {
                break;
            }
            if !lx.eat(",") {
                return Err(lx.error("expected ',' or the end"));
            }
        }
        requirements.sort();
        requirements.dedup();
        Ok(Selector { requirements })
    }

    /// The keys of `key=value` requirements with their values: the labels every matching
    /// series is known to carry.
    pub fn equalities(&self) -> impl Iterator<Item = (&str, &str)> {
        self.requirements.iter().filter_map(|r| match &r.op {
            Operator::Equals(v) => Some((r.key.as_str(), v.as_str())),
            Operator::In(vs) if vs.len() == 1 => {
                vs.iter().next().map(|v| (r.key.as_str(), v.as_str()))
            }
            _ => None,
        })
    }
}

fn parse_requirement(lx: &mut Lexer<'_>) -> Result<Requirement, SelectorError> {
    if lx.eat("!") {
        lx.skip_ws();
        let key = parse_key(lx)?;
        return Ok(Requirement {
            key,
            op: Operator::DoesNotExist,
        });
    }
    let key = parse_key(lx)?;
    lx.skip_ws();
    if lx.rest().is_empty() || lx.rest().starts_with(',') {
        return Ok(Requirement {
            key,
            op: Operator::Exists,
        });
    }
    let op = if lx.eat("==") || lx.eat("=") {
        lx.skip_ws();
        Operator::Equals(parse_value(lx)?)
    } else if lx.eat("!=") {
        lx.skip_ws();
        Operator::NotEquals(parse_value(lx)?)
    } else {
        let start = lx.pos;
        match lx.word() {
            "in" => Operator::In(parse_set(lx)?),
            "notin" => Operator::NotIn(parse_set(lx)?),
            _ => {
                lx.pos = start;
                return Err(lx.error("expected '=', '==', '!=', 'in' or 'notin'"));
            }
        }
    };
    Ok(Requirement { key, op })
}

fn parse_key(lx: &mut Lexer<'_>) -> Result<String, SelectorError> {
    let key = lx.word();
    if key.is_empty() {
        return Err(lx.error("expected a label key"));
    }
    if !valid_key(key) {
        return Err(SelectorError::Key(key.to_owned()));
    }
    Ok(key.to_owned())
}

fn parse_value(lx: &mut Lexer<'_>) -> Result<String, SelectorError> {
    let value = lx.word();
    if !valid_value(value) {
        return Err(SelectorError::Value(value.to_owned()));
    }
    Ok(value.to_owned())
}

fn parse_set(lx: &mut Lexer<'_>) -> Result<BTreeSet<String>, SelectorError> {
    lx.skip_ws();
    if !lx.eat("(") {
        return Err(lx.error("expected '('"));
    }
    let mut values = BTreeSet::new();
    loop {
        lx.skip_ws();
        values.insert(parse_value(lx)?);
        lx.skip_ws();
        if lx.eat(")") {
            return Ok(values);
        }
        if !lx.eat(",") {
            return Err(lx.error("expected ',' or ')'"));
        }
    }
}

/// A Kubernetes label key: optional DNS-subdomain prefix and `/`, then a name of at most 63
/// characters of `[A-Za-z0-9_.-]`, starting and ending alphanumeric.
fn valid_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !ok {
            return false;
        }
    }
    !name.is_empty() && valid_value(name)
}

/// A Kubernetes label value: empty, or at most 63 characters of `[A-Za-z0-9_.-]` starting and
/// ending alphanumeric.
fn valid_value(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    let bytes = value.as_bytes();
    value.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

// === PromQL ===

/// Whether `name` is a valid Prometheus label name.
pub fn is_prometheus_label(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `s` as a PromQL double-quoted string literal, quotes included.
pub fn promql_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `s` as a RE2 regular expression matching exactly `s`.
pub fn regex_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One PromQL label matcher, e.g. `cluster="api"` or `code=~"500|503"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    /// Prometheus label name.
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub op: &'static str,
    /// The literal, already escaped and quoted.
    pub literal: String,
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.label, self.op, self.literal)
    }
}

impl Matcher {
    /// `label="value"`.
    pub fn equals(label: &str, value: &str) -> Self {
        Matcher {
            label: label.to_owned(),
            op: "=",
            literal: promql_string(value),
        }
    }
}

impl Matcher {
    /// `label="name"` for one name, `label=~"a|b"` (regex-escaped) for several: the objects a
    /// custom or resource metric query is about. No names is any object: `label!=""`.
    pub fn one_of(label: &str, names: &[String]) -> Self {
        if names.is_empty() {
            return Matcher {
                label: label.to_owned(),
                op: "!=",
                literal: promql_string(""),
            };
        }
        if let [one] = names {
            return Matcher::equals(label, one);
        }
        let joined: Vec<String> = names.iter().map(|v| regex_literal(v)).collect();
        Matcher {
            label: label.to_owned(),
            op: "=~",
            literal: promql_string(&joined.join("|")),
        }
    }
}

impl Selector {
    /// Whether an object with `labels` is selected (every requirement holds).
    pub fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.get(&r.key);
            match &r.op {
                Operator::Equals(v) => value == Some(v),
                Operator::NotEquals(v) => value != Some(v),
                Operator::In(vs) => value.is_some_and(|x| vs.contains(x)),
                Operator::NotIn(vs) => value.is_none_or(|x| !vs.contains(x)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }

    /// The selector as a Kubernetes `metav1.LabelSelector` (`matchLabels` for equalities,
    /// `matchExpressions` for the rest; `k!=v` is `NotIn [v]`).
    pub fn to_label_selector(&self) -> serde_json::Value {
        let mut match_labels = serde_json::Map::new();
        let mut expressions = Vec::new();
        for r in &self.requirements {
            let (op, values): (&str, Vec<&String>) = match &r.op {
                Operator::Equals(v) => {
                    match_labels.insert(r.key.clone(), serde_json::Value::String(v.clone()));
                    continue;
                }
                Operator::NotEquals(v) => ("NotIn", vec![v]),
                Operator::In(vs) => ("In", vs.iter().collect()),
                Operator::NotIn(vs) => ("NotIn", vs.iter().collect()),
                Operator::Exists => ("Exists", vec![]),
                Operator::DoesNotExist => ("DoesNotExist", vec![]),
            };
            let mut e = serde_json::json!({"key": r.key, "operator": op});
            if !values.is_empty() {
                e["values"] = serde_json::json!(values);
            }
            expressions.push(e);
        }
        let mut out = serde_json::Map::new();
        if !match_labels.is_empty() {
            out.insert("matchLabels".into(), match_labels.into());
        }
        if !expressions.is_empty() {
            out.insert("matchExpressions".into(), expressions.into());
        }
        out.into()
    }
}

impl Requirement {
    /// This requirement as a matcher on Prometheus label `label`.
    pub fn to_matcher(&self, label: &str) -> Result<Matcher, SelectorError> {
        if !is_prometheus_label(label) {
            return Err(SelectorError::NotAPrometheusLabel(label.to_owned()));
        }
        let alternatives = |values: &BTreeSet<String>| {
            let joined: Vec<String> = values.iter().map(|v| regex_literal(v)).collect();
            promql_string(&joined.join("|"))
        };
        let (op, literal) = match &self.op {
            Operator::Equals(v) => ("=", promql_string(v)),
            Operator::NotEquals(v) => ("!=", promql_string(v)),
            Operator::In(vs) => ("=~", alternatives(vs)),
            Operator::NotIn(vs) => ("!~", alternatives(vs)),
            Operator::Exists => ("!=", promql_string("")),
            Operator::DoesNotExist => ("=", promql_string("")),
        };
        Ok(Matcher {
            label: label.to_owned(),
            op,
            literal,
        })
    }
}

impl fmt::Display for Selector {
    /// The canonical text of the selector (sorted requirements).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let set = |vs: &BTreeSet<String>| vs.iter().cloned().collect::<Vec<_>>().join(",");
            match &r.op {
                Operator::Equals(v) => write!(f, "{}={v}", r.key)?,
                Operator::NotEquals(v) => write!(f, "{}!={v}", r.key)?,
                Operator::In(vs) => write!(f, "{} in ({})", r.key, set(vs))?,
                Operator::NotIn(vs) => write!(f, "{} notin ({})", r.key, set(vs))?,
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn oversized_selectors_are_refused() {
        let many: Vec<String> = (0..5000).map(|i| format!("k{i}=v")).collect();
        assert!(matches!(
            Selector::parse(&many.join(",")),
            Err(SelectorError::TooLarge { .. })
        ));
        let many: Vec<String> = (0..33).map(|i| format!("k{i}=v")).collect();
        let e = Selector::parse(&many.join(",")).unwrap_err();
        assert!(e.to_string().contains("more than 32 requirements"), "{e}");
        let values: Vec<String> = (0..65).map(|i| format!("v{i}")).collect();
        let e = Selector::parse(&format!("app in ({})", values.join(","))).unwrap_err();
        assert!(e.to_string().contains("65 values"), "{e}");
        let ok: Vec<String> = (0..32).map(|i| format!("k{i}=v")).collect();
        assert!(Selector::parse(&ok.join(",")).is_ok());
    }

    use super::*;

    fn matchers(text: &str) -> Vec<String> {
        Selector::parse(text)
            .unwrap()
            .requirements
            .iter()
            .map(|r| r.to_matcher(&r.key).unwrap().to_string())
            .collect()
    }

    #[test]
    fn every_operator_translates() {
        assert_eq!(matchers("service=api"), ["service=\"api\""]);
        assert_eq!(matchers("service==api"), ["service=\"api\""]);
        assert_eq!(matchers("service!=api"), ["service!=\"api\""]);
        assert_eq!(
            matchers("env in (prod, canary.1)"),
            ["env=~\"canary\\\\.1|prod\""]
        );
        assert_eq!(matchers("env notin (a,b)"), ["env!~\"a|b\""]);
        assert_eq!(matchers("tier"), ["tier!=\"\""]);
        assert_eq!(matchers("!tier"), ["tier=\"\""]);
        assert_eq!(matchers("a="), ["a=\"\""]);
        assert_eq!(
            matchers(" b = 2 , a in (x) , !c,d"),
            ["a=~\"x\"", "b=\"2\"", "c=\"\"", "d!=\"\""]
        );
        assert!(matchers("").is_empty());
    }

    #[test]
    fn canonical_text_is_order_independent() {
        let a = Selector::parse("b=2,a in (y,x)").unwrap();
        let b = Selector::parse("a in (x,y,x), b==2").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_string(), "a in (x,y),b=2");
    }

    #[test]
    fn injection_attempts_are_rejected() {
        for bad in [
            "service=\"a\"}",
            "service=a\"}or vector(1)",
            "service in (a|b)",
            "service=a}",
            "se rvice=a",
            "service=a b",
            "service=\\",
            "service=-a",
            "service>3",
            "=a",
            "service in a",
            "service in (a",
            ",",
            "a,",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn escaping_is_defensive_even_for_valid_values() {
        assert_eq!(promql_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(regex_literal("a.b|c(d)"), r"a\.b\|c\(d\)");
        let m = Requirement {
            key: "k".into(),
            op: Operator::In(["x\"}".to_owned()].into()),
        };
        assert_eq!(m.to_matcher("k").unwrap().to_string(), r#"k=~"x\"\\}""#);
    }

    #[test]
    fn keys_must_be_prometheus_labels() {
        let s = Selector::parse("app.kubernetes.io/name=web").unwrap();
        assert_eq!(
            s.requirements[0].to_matcher(&s.requirements[0].key),
            Err(SelectorError::NotAPrometheusLabel(
                "app.kubernetes.io/name".into()
            ))
        );
        assert!(is_prometheus_label("code_class"));
        assert!(!is_prometheus_label("1a"));
        assert!(!is_prometheus_label(""));
    }

    #[test]
    fn long_values_are_rejected() {
        let long = "a".repeat(64);
        assert!(Selector::parse(&format!("k={long}")).is_err());
        assert!(Selector::parse(&format!("k={}", &long[..63])).is_ok());
    }

    /// A PromQL double-quoted literal: quotes only at the ends, every inner quote escaped.
    fn well_formed_literal(lit: &str) -> bool {
        let Some(inner) = lit.strip_prefix('"').and_then(|l| l.strip_suffix('"')) else {
            return false;
        };
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            let ok = match c {
                '\\' => chars.next().is_some(),
                '"' | '\n' => false,
                _ => true,
            };
            if !ok {
                return false;
            }
        }
        true
    }

    proptest::proptest! {
        #[test]
        fn no_input_escapes_its_literal(text in ".{0,80}") {
            if let Ok(sel) = Selector::parse(&text) {
                for r in &sel.requirements {
                    if let Ok(m) = r.to_matcher(&r.key) {
                        proptest::prop_assert!(is_prometheus_label(&m.label));
                        proptest::prop_assert!(well_formed_literal(&m.literal), "{}", m);
                    }
                }
            }
        }

        #[test]
        fn escaping_any_value_is_well_formed(value in "\\PC{0,40}") {
            proptest::prop_assert!(well_formed_literal(&promql_string(&value)));
            proptest::prop_assert!(well_formed_literal(&promql_string(&regex_literal(&value))));
        }

        #[test]
        fn canonical_text_parses_to_the_same_selector(
            keys in proptest::collection::vec("[a-z]([a-z0-9_]{0,7}[a-z0-9])?", 1..4),
            values in proptest::collection::vec("[a-z0-9]([a-z0-9.-]{0,6}[a-z0-9])?", 1..4),
        ) {
            let text: Vec<String> = keys.iter().zip(values.iter().cycle()).enumerate().map(|(i, (k, v))| match i % 3 {
                0 => format!("{k}={v}"),
                1 => format!("{k} in ({v},{v}x)"),
                _ => format!("!{k}"),
            }).collect();
            let sel = Selector::parse(&text.join(",")).unwrap();
            proptest::prop_assert_eq!(Selector::parse(&sel.to_string()).unwrap(), sel);
        }
    }
}
