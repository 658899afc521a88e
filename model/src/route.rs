//! What a route does besides choosing a cluster, in Envoy's terms: path and host rewrites,
//! redirects and direct responses, and header mutations (`request_headers_to_add`, …) at the
//! route configuration, virtual host and route levels.
//!
//! Regular expressions (a route's `safe_regex`, string matchers' `safe_regex`, the rewrites'
//! `regex_rewrite.pattern`) use the `regex` crate's syntax, which is RE2's for everything
//! Envoy's configurations use (no look-around, no back-references); a pattern it cannot
//! compile is refused with its field. Matching patterns match the whole value, as in Envoy.
//!
//! Header values may hold Envoy's command operators: `%DOWNSTREAM_REMOTE_ADDRESS%`,
//! `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`, `%PROTOCOL%`, `%START_TIME%`, `%REQ(name)%`
//! (request headers only), `%ROUTE_NAME%`, `%UPSTREAM_CLUSTER%` and `%HOSTNAME%`, each with an
//! optional `:N` length; `%%` is a literal `%`. Any other operator is refused by name.

use serde::{Deserialize, Serialize};

use crate::access_log::{self, Operator, Segment};

/// The largest direct response body, in bytes, when the route configuration does not say
/// (Envoy's default `max_direct_response_body_size_bytes`).
pub const DEFAULT_MAX_DIRECT_RESPONSE_BODY_BYTES: usize = 4096;

/// Compiles `pattern` as Envoy's matchers use it: the whole value must match.
pub fn full_match_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| regex_error(&e))
}

/// Compiles `pattern` to search with (a rewrite replaces every match).
pub fn search_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::Regex::new(pattern).map_err(|e| regex_error(&e))
}

fn regex_error(e: &regex::Error) -> String {
    // The crate's message spans lines (the pattern, a caret, the reason): keep its last line.
    let text = e.to_string();
    let reason = text.lines().last().unwrap_or("invalid").trim().to_owned();
    format!("not a regular expression gofe can compile: {reason}")
}

/// An Envoy substitution (`\1` for the first capture group, `\\` for a backslash) in the
/// `regex` crate's replacement syntax (`${1}`, `$$` for a dollar).
pub fn substitution_to_replacement(substitution: &str) -> String {
    let mut out = String::with_capacity(substitution.len() + 4);
    let mut chars = substitution.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' => out.push_str("$$"),
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str("${");
                    out.push(*d);
                    out.push('}');
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            c => out.push(c),
        }
    }
    out
}

/// A regex rewrite of a path (Envoy's `RegexMatchAndSubstitute`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegexRewriteConfig {
    /// The pattern; every match in the path (query string excluded) is replaced.
    pub pattern: String,
    /// The replacement; `\1`… name capture groups, as in Envoy.
    pub substitution: String,
}

/// A route that answers with a redirect (Envoy's `RedirectAction`) instead of forwarding.
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedirectConfig {
    /// The new scheme (`https_redirect` is `"https"`). Default: the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme_redirect: Option<String>,
    /// The new host (the whole authority, port included). Default: the request's (losing
    /// its port when the scheme changes from that port's default scheme, as in Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_redirect: Option<String>,
    /// The new port. Default: as above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_redirect: Option<u16>,
    /// The new path (a query string in it replaces the request's). At most one of
    /// `path_redirect`, `prefix_rewrite`, `regex_rewrite`. Default: the request's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_redirect: Option<String>,
    /// Replaces the part of the path the route's `prefix` (or `path`) matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Rewrites the path with a regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_rewrite: Option<RegexRewriteConfig>,
    /// 301, 302, 303, 307 or 308. Default 301 (Envoy's `MOVED_PERMANENTLY`).
    #[serde(
        default = "default_redirect_code",
        skip_serializing_if = "is_default_redirect_code"
    )]
    pub response_code: u16,
    /// Drop the request's query string. Default `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_query: bool,
}

fn default_redirect_code() -> u16 {
    301
}

fn is_default_redirect_code(c: &u16) -> bool {
    *c == 301
}

/// The redirect codes Envoy has (`RedirectResponseCode`).
pub const REDIRECT_CODES: [u16; 5] = [301, 302, 303, 307, 308];

/// A route that answers itself (Envoy's `DirectResponseAction`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectResponseConfig {
    /// The status, 200..=599.
    pub status: u16,
    /// The body (`content-type: text/plain` when non-empty), at most 4096 bytes. Default:
    /// none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// What a header added to a request or response does when the header is already there
/// (Envoy's `HeaderValueOption.append_action`).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HeaderAppendAction {
    /// Add a value beside the existing ones, or add the header.
    #[default]
    AppendIfExistsOrAdd,
    /// Add the header only when absent.
    AddIfAbsent,
    /// Replace every existing value, or add the header.
    OverwriteIfExistsOrAdd,
    /// Replace the existing values; do nothing when absent.
    OverwriteIfExists,
}

impl HeaderAppendAction {
    fn is_default(&self) -> bool {
        *self == HeaderAppendAction::default()
    }
}

/// A header to add (Envoy's `HeaderValueOption`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueOptionConfig {
    /// The header's name (not a pseudo-header, not `host`).
    pub key: String,
    /// The value; may hold command operators (see the module's documentation).
    pub value: String,
    /// Default `APPEND_IF_EXISTS_OR_ADD`.
    #[serde(default, skip_serializing_if = "HeaderAppendAction::is_default")]
    pub append_action: HeaderAppendAction,
    /// Add the header even when its value comes out empty. Default `false` (as Envoy, an
    /// empty value is not added).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_empty_value: bool,
}

/// One piece of a header value, compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValuePart {
    /// Literal text.
    Text(String),
    /// `%HOSTNAME%`: the machine's host name.
    Hostname,
    /// Another command operator, cut to `max_len` characters when given.
    Op {
        /// The operator.
        op: Operator,
        /// `%NAME:N%`'s N.
        max_len: Option<usize>,
    },
}

/// Marks `%HOSTNAME%` while the access-log parser reads the rest (a private-use character,
/// which no configuration means literally).
const HOSTNAME_MARK: char = '\u{E000}';

/// Parses a header value with its command operators; `request`: a request header (where
/// `%REQ(...)%` reads the request's headers).
pub fn parse_header_value(value: &str, request: bool) -> Result<Vec<ValuePart>, String> {
    if value.contains(HOSTNAME_MARK) {
        return Err("a header value cannot hold U+E000".into());
    }
    let marked = value.replace("%HOSTNAME%", &HOSTNAME_MARK.to_string());
    let mut out = Vec::new();
    for s in access_log::parse_format(&marked)? {
        match s {
            Segment::Text(t) => {
                if t.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                    return Err("a header value cannot hold CR, LF or NUL".into());
                }
                for (i, piece) in t.split(HOSTNAME_MARK).enumerate() {
                    if i > 0 {
                        out.push(ValuePart::Hostname);
                    }
                    if !piece.is_empty() {
                        out.push(ValuePart::Text(piece.to_owned()));
                    }
                }
            }
            Segment::Op { op, max_len } => match op {
                Operator::StartTime
                | Operator::Protocol
                | Operator::DownstreamRemoteAddress
                | Operator::DownstreamRemoteAddressWithoutPort
                | Operator::RouteName
                | Operator::UpstreamCluster => out.push(ValuePart::Op { op, max_len }),
                Operator::Req(_) if request => out.push(ValuePart::Op { op, max_len }),
                other => {
                    return Err(format!(
                        "%{}% is not supported by gofe in {} header values (supported: \
                         DOWNSTREAM_REMOTE_ADDRESS, DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, \
                         PROTOCOL, START_TIME, HOSTNAME, ROUTE_NAME, UPSTREAM_CLUSTER{})",
                        operator_name(&other),
                        if request { "request" } else { "response" },
                        if request { ", REQ(...)" } else { "" },
                    ))
                }
            },
        }
    }
    Ok(out)
}

/// Envoy's name of an operator.
fn operator_name(op: &Operator) -> &'static str {
    match op {
        Operator::StartTime => "START_TIME",
        Operator::Req(_) => "REQ(...)",
        Operator::Resp(_) => "RESP(...)",
        Operator::Protocol => "PROTOCOL",
        Operator::ResponseCode => "RESPONSE_CODE",
        Operator::ResponseFlags => "RESPONSE_FLAGS",
        Operator::Duration => "DURATION",
        Operator::BytesReceived => "BYTES_RECEIVED",
        Operator::BytesSent => "BYTES_SENT",
        Operator::UpstreamHost => "UPSTREAM_HOST",
        Operator::UpstreamCluster => "UPSTREAM_CLUSTER",
        Operator::DownstreamRemoteAddress => "DOWNSTREAM_REMOTE_ADDRESS",
        Operator::DownstreamRemoteAddressWithoutPort => "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
        Operator::RouteName => "ROUTE_NAME",
        Operator::UpstreamTransportFailureReason => "UPSTREAM_TRANSPORT_FAILURE_REASON",
        Operator::ResponseCodeDetails => "RESPONSE_CODE_DETAILS",
    }
}

/// Problems of one level's header mutations, each as (field, message); `base` ends with the
/// level's path and a dot, or is empty.
pub fn check_header_mutations(
    base: &str,
    request_add: &[HeaderValueOptionConfig],
    request_remove: &[String],
    response_add: &[HeaderValueOptionConfig],
    response_remove: &[String],
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let name_ok = |name: &str| -> Result<(), String> {
        if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
            return Err(format!(
                "{name:?} cannot be modified (pseudo-headers and host are not, as in Envoy)"
            ));
        }
        http::HeaderName::from_bytes(name.as_bytes())
            .map(|_| ())
            .map_err(|_| format!("invalid header name {name:?}"))
    };
    for (adds, which, request) in [
        (request_add, "request_headers_to_add", true),
        (response_add, "response_headers_to_add", false),
    ] {
        for (i, h) in adds.iter().enumerate() {
            if let Err(m) = name_ok(&h.key) {
                out.push((format!("{base}{which}[{i}].key"), m));
            }
            if let Err(m) = parse_header_value(&h.value, request) {
                out.push((format!("{base}{which}[{i}].value"), m));
            }
        }
    }
    for (removes, which) in [
        (request_remove, "request_headers_to_remove"),
        (response_remove, "response_headers_to_remove"),
    ] {
        for (i, h) in removes.iter().enumerate() {
            if let Err(m) = name_ok(h) {
                out.push((format!("{base}{which}[{i}]"), m));
            }
        }
    }
    out
}

/// Problems of a redirect at `base` (ends with `redirect.`); `prefix_matched`: the route's
/// match is a prefix or a path (what `prefix_rewrite` replaces).
pub fn check_redirect(
    r: &RedirectConfig,
    base: &str,
    prefix_matched: bool,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !REDIRECT_CODES.contains(&r.response_code) {
        out.push((
            format!("{base}response_code"),
            format!(
                "{} is not a redirect code Envoy has (301, 302, 303, 307, 308)",
                r.response_code
            ),
        ));
    }
    if let Some(s) = &r.scheme_redirect {
        let ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !ok {
            out.push((
                format!("{base}scheme_redirect"),
                format!("{s:?} is not a scheme"),
            ));
        }
    }
    if let Some(h) = &r.host_redirect {
        if h.is_empty() || !h.bytes().all(crate::is_authority_byte) {
            out.push((
                format!("{base}host_redirect"),
                format!("{h:?} is not a host"),
            ));
        }
    }
    if r.port_redirect == Some(0) {
        out.push((format!("{base}port_redirect"), "0 is no port".into()));
    }
    let rewrites = usize::from(r.path_redirect.is_some())
        + usize::from(r.prefix_rewrite.is_some())
        + usize::from(r.regex_rewrite.is_some());
    if rewrites > 1 {
        out.push((
            base.trim_end_matches('.').to_owned(),
            "set at most one of path_redirect, prefix_rewrite, regex_rewrite".into(),
        ));
    }
    if let Some(p) = &r.path_redirect {
        if !p.starts_with('/') || !is_path_text(p) {
            out.push((
                format!("{base}path_redirect"),
                format!("{p:?} is not a path (it starts with '/', without spaces or controls)"),
            ));
        }
    }
    if let Some(p) = &r.prefix_rewrite {
        if !prefix_matched {
            out.push((
                format!("{base}prefix_rewrite"),
                "needs a route matching by prefix, path or path_separated_prefix".into(),
            ));
        }
        if !is_path_text(p) {
            out.push((
                format!("{base}prefix_rewrite"),
                format!("{p:?} is not a path"),
            ));
        }
    }
    if let Some(rr) = &r.regex_rewrite {
        check_regex_rewrite(rr, &format!("{base}regex_rewrite."), &mut out);
    }
    out
}

/// Problems of a regex rewrite at `base` (ends with a dot).
pub fn check_regex_rewrite(r: &RegexRewriteConfig, base: &str, out: &mut Vec<(String, String)>) {
    if let Err(m) = search_regex(&r.pattern) {
        out.push((format!("{base}pattern"), m));
    }
    if !is_path_text(&r.substitution) {
        out.push((
            format!("{base}substitution"),
            "cannot hold spaces or control characters".into(),
        ));
    }
}

/// Problems of a direct response at `base` (ends with `direct_response.`).
pub fn check_direct_response(d: &DirectResponseConfig, base: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if !(200..=599).contains(&d.status) {
        out.push((
            format!("{base}status"),
            format!("{} is outside 200..=599 (Envoy's range)", d.status),
        ));
    }
    if let Some(b) = &d.body {
        if b.len() > DEFAULT_MAX_DIRECT_RESPONSE_BODY_BYTES {
            out.push((
                format!("{base}body"),
                format!(
                    "{} bytes is more than the {DEFAULT_MAX_DIRECT_RESPONSE_BODY_BYTES} a direct response may have",
                    b.len()
                ),
            ));
        }
    }
    out
}

/// Whether `s` can go into a request target: visible ASCII, no spaces (`#` is refused too).
fn is_path_text(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutions_become_the_regex_crates() {
        assert_eq!(substitution_to_replacement(r"/v2/\1/x"), "/v2/${1}/x");
        assert_eq!(substitution_to_replacement(r"a$b\\c"), r"a$$b\c");
        assert_eq!(substitution_to_replacement(r"\x"), r"\x");
    }

    #[test]
    fn regexes_match_whole_values_and_bad_ones_say_why() {
        let r = full_match_regex("/api/[0-9]+").unwrap();
        assert!(r.is_match("/api/12"));
        assert!(!r.is_match("/api/12/x"));
        assert!(!r.is_match("x/api/12"));
        let e = full_match_regex("(?=x)").unwrap_err();
        assert!(e.contains("look-around"), "{e}");
    }

    #[test]
    fn header_values_take_a_small_set_of_operators() {
        assert!(parse_header_value("%DOWNSTREAM_REMOTE_ADDRESS% 100%%", true).is_ok());
        assert!(parse_header_value("%REQ(x-a)%", true).is_ok());
        let e = parse_header_value("%REQ(x-a)%", false).unwrap_err();
        assert!(e.contains("response"), "{e}");
        let e = parse_header_value("%RESPONSE_CODE%", true).unwrap_err();
        assert!(e.starts_with("%RESPONSE_CODE% is not supported"), "{e}");
        assert_eq!(
            parse_header_value("a%HOSTNAME%", true).unwrap(),
            [ValuePart::Text("a".into()), ValuePart::Hostname]
        );
        let e = parse_header_value("%NOPE%", true).unwrap_err();
        assert!(e.contains("NOPE"), "{e}");
        assert!(parse_header_value("a\nb", true).is_err());
    }

    #[test]
    fn mutations_refuse_pseudo_headers_and_host() {
        let add = |k: &str| HeaderValueOptionConfig {
            key: k.into(),
            value: "v".into(),
            append_action: HeaderAppendAction::default(),
            keep_empty_value: false,
        };
        let p = check_header_mutations(
            "r.",
            &[add(":path"), add("x-ok")],
            &["Host".into()],
            &[add("bad name")],
            &[],
        );
        let fields: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "r.request_headers_to_add[0].key",
                "r.response_headers_to_add[0].key",
                "r.request_headers_to_remove[0]"
            ]
        );
    }
}
