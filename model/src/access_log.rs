//! Access logs of a listener (Envoy's `HttpConnectionManager.access_log`): where each goes and
//! what each line says, in Envoy's format-string language.
//!
//! A format is parsed once, when the configuration is validated and again when the proxy
//! compiles it, into [`Segment`]s: literal text and [`Operator`]s, each with an optional
//! truncation. The proxy formats a request's line from those segments; nothing is parsed per
//! request. An operator gofe does not know is refused here, with its column in the format.

use std::collections::BTreeMap;

use http::HeaderName;
use serde::{Deserialize, Serialize};

/// Envoy's default access-log format (what a logger without `format` or `json_format` writes).
pub const DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// One access log of a listener: a file or stdout, and a text or JSON format.
///
/// Over xDS this is an entry of the connection manager's `access_log`: an
/// `envoy.access_loggers.stdout` (`StdoutAccessLog`) or `envoy.access_loggers.file`
/// (`FileAccessLog`) logger with `log_format.text_format_source.inline_string` or
/// `log_format.json_format`.
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessLogConfig {
    /// The file lines are appended to (created if missing). Default: none, lines go to stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A text format (Envoy's command operators, e.g. `"%REQ(:PATH)% %RESPONSE_CODE%\n"`); a
    /// line without a final newline gets one. Default: Envoy's default format
    /// ([`DEFAULT_FORMAT`]). Not with `json_format`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// A JSON object per line: each key's value is a format string. A value that is one
    /// numeric operator alone (`%RESPONSE_CODE%`, `%DURATION%`, `%BYTES_SENT%`, …) is written
    /// as a number, and an operator with no value as `null`, as Envoy does. Not with `format`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_format: Option<BTreeMap<String, String>>,
}

/// A piece of a parsed format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Text written as it is.
    Text(String),
    /// A command operator, its value cut to `max_len` characters when given (`%OP:N%`).
    Op {
        /// What to write.
        op: Operator,
        /// Most characters of the value written.
        max_len: Option<usize>,
    },
}

/// A request or response value an operator names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderRef {
    /// `:path` (with the query string).
    Path,
    /// `:method`.
    Method,
    /// `:authority` (or the HTTP/1.1 `Host`).
    Authority,
    /// `:scheme`.
    Scheme,
    /// A header by name.
    Header(HeaderName),
}

/// Envoy's command operators that gofe writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operator {
    /// `%START_TIME%`: when the request started, RFC 3339 UTC with milliseconds.
    StartTime,
    /// `%REQ(X?Y)%`: a request header (or pseudo-header), else the alternative.
    Req(Vec<HeaderRef>),
    /// `%RESP(X?Y)%`: a response header, else the alternative.
    Resp(Vec<HeaderRef>),
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/2`, …
    Protocol,
    /// `%RESPONSE_CODE%`: the status sent, 0 when none was.
    ResponseCode,
    /// `%RESPONSE_FLAGS%`: why the proxy answered as it did (`UH`, `UF`, …), `-` for nothing.
    ResponseFlags,
    /// `%DURATION%`: milliseconds from the request's start to its response's last byte.
    Duration,
    /// `%BYTES_RECEIVED%`: request body bytes received.
    BytesReceived,
    /// `%BYTES_SENT%`: response body bytes sent.
    BytesSent,
    /// `%UPSTREAM_HOST%`: the endpoint of the last attempt, `ip:port`.
    UpstreamHost,
    /// `%UPSTREAM_CLUSTER%`: the cluster the route chose.
    UpstreamCluster,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`: the client's `ip:port`.
    DownstreamRemoteAddress,
    /// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%`: the client's IP.
    DownstreamRemoteAddressWithoutPort,
    /// `%ROUTE_NAME%`: the matched route's `name`.
    RouteName,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: why the connection to the endpoint failed.
    UpstreamTransportFailureReason,
    /// `%RESPONSE_CODE_DETAILS%`: why the proxy answered itself, in Envoy's words (the RBAC
    /// filter's `rbac_access_denied_matched_policy[POLICY]`); `-` otherwise.
    ResponseCodeDetails,
}

impl Operator {
    /// Whether the value is a number (written unquoted in JSON).
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            Operator::ResponseCode
                | Operator::Duration
                | Operator::BytesReceived
                | Operator::BytesSent
        )
    }
}

/// The operators gofe knows, by name, for error messages.
const KNOWN: &str = "START_TIME, REQ(...), RESP(...), PROTOCOL, RESPONSE_CODE, RESPONSE_FLAGS, \
DURATION, BYTES_RECEIVED, BYTES_SENT, UPSTREAM_HOST, UPSTREAM_CLUSTER, DOWNSTREAM_REMOTE_ADDRESS, \
DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT, ROUTE_NAME, UPSTREAM_TRANSPORT_FAILURE_REASON, \
RESPONSE_CODE_DETAILS";

/// Parses a format string into segments; the error names the column (1-based, in characters)
/// where the problem starts. The grammar is Envoy's: `%NAME%`, `%NAME(ARG)%`, `%NAME:N%`,
/// `%NAME(ARG):N%`; `%%` is a literal `%`.
pub fn parse_format(format: &str) -> Result<Vec<Segment>, String> {
    let mut segments = Vec::new();
    let mut text = String::new();
    let mut rest = format;
    while let Some(at) = rest.find('%') {
        text.push_str(&rest[..at]);
        let start = format.len() - rest.len() + at;
        let column = format[..start].chars().count() + 1;
        let after = &rest[at + 1..];
        if let Some(more) = after.strip_prefix('%') {
            text.push('%');
            rest = more;
            continue;
        }
        let (segment, used) = parse_operator(after).map_err(|m| format!("column {column}: {m}"))?;
        if !text.is_empty() {
            segments.push(Segment::Text(std::mem::take(&mut text)));
        }
        segments.push(segment);
        rest = &after[used..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        segments.push(Segment::Text(text));
    }
    Ok(segments)
}

/// Parses the operator at the start of `s` (just after its opening `%`); returns it and how
/// many bytes of `s` it used, its closing `%` included.
fn parse_operator(s: &str) -> Result<(Segment, usize), String> {
    let name_len = s
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
        .count();
    let name = &s[..name_len];
    if name.is_empty() {
        return Err("'%' not followed by an operator name (write %% for a literal '%')".into());
    }
    let mut i = name_len;
    let mut arg = None;
    if s[i..].starts_with('(') {
        let Some(close) = s[i..].find(')') else {
            return Err(format!("%{name}(: '(' without a closing ')'"));
        };
        arg = Some(&s[i + 1..i + close]);
        i += close + 1;
    }
    let mut max_len = None;
    if s[i..].starts_with(':') {
        let digits = s[i + 1..].bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("%{name}: ':' must be followed by a length"));
        }
        max_len = Some(
            s[i + 1..i + 1 + digits]
                .parse::<usize>()
                .map_err(|_| format!("%{name}: truncation length out of range"))?,
        );
        i += 1 + digits;
    }
    if !s[i..].starts_with('%') {
        return Err(format!("%{name}: operator not closed by '%'"));
    }
    let body = &s[..i];
    let no_arg = |op: Operator| match arg {
        None => Ok(op),
        Some(_) => Err(format!(
            "%{body}%: {name} takes no argument{}",
            if name == "START_TIME" {
                " (custom START_TIME formats are not supported by gofe)"
            } else {
                ""
            }
        )),
    };
    let op = match name {
        "START_TIME" => no_arg(Operator::StartTime)?,
        "REQ" => Operator::Req(headers(arg, body, true)?),
        "RESP" => Operator::Resp(headers(arg, body, false)?),
        "PROTOCOL" => no_arg(Operator::Protocol)?,
        "RESPONSE_CODE" => no_arg(Operator::ResponseCode)?,
        "RESPONSE_FLAGS" => no_arg(Operator::ResponseFlags)?,
        "DURATION" => no_arg(Operator::Duration)?,
        "BYTES_RECEIVED" => no_arg(Operator::BytesReceived)?,
        "BYTES_SENT" => no_arg(Operator::BytesSent)?,
        "UPSTREAM_HOST" => no_arg(Operator::UpstreamHost)?,
        "UPSTREAM_CLUSTER" => no_arg(Operator::UpstreamCluster)?,
        "DOWNSTREAM_REMOTE_ADDRESS" => no_arg(Operator::DownstreamRemoteAddress)?,
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_arg(Operator::DownstreamRemoteAddressWithoutPort)?
        }
        "ROUTE_NAME" => no_arg(Operator::RouteName)?,
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => no_arg(Operator::UpstreamTransportFailureReason)?,
        "RESPONSE_CODE_DETAILS" => no_arg(Operator::ResponseCodeDetails)?,
        other => return Err(format!("unknown operator %{other}% (supported: {KNOWN})")),
    };
    Ok((Segment::Op { op, max_len }, i + 1))
}

/// `X` or `X?Y` of `%REQ(...)%` / `%RESP(...)%`.
fn headers(arg: Option<&str>, body: &str, request: bool) -> Result<Vec<HeaderRef>, String> {
    let Some(arg) = arg.filter(|a| !a.is_empty()) else {
        return Err(format!("%{body}%: needs a header name, e.g. %REQ(:PATH)%"));
    };
    let names: Vec<&str> = arg.split('?').collect();
    if names.len() > 2 {
        return Err(format!(
            "%{body}%: at most one alternative (X?Y) is supported"
        ));
    }
    names
        .into_iter()
        .map(|name| {
            let lower = name.to_ascii_lowercase();
            if let Some(pseudo) = lower.strip_prefix(':') {
                let found = match pseudo {
                    "path" => Some(HeaderRef::Path),
                    "method" => Some(HeaderRef::Method),
                    "authority" => Some(HeaderRef::Authority),
                    "scheme" => Some(HeaderRef::Scheme),
                    _ => None,
                };
                return match found {
                    Some(h) if request => Ok(h),
                    _ => Err(format!(
                        "%{body}%: pseudo-header {name:?} is not supported here{}",
                        if request {
                            " (:PATH, :METHOD, :AUTHORITY, :SCHEME)"
                        } else {
                            ""
                        }
                    )),
                };
            }
            HeaderName::from_bytes(lower.as_bytes())
                .map(HeaderRef::Header)
                .map_err(|_| format!("%{body}%: invalid header name {name:?}"))
        })
        .collect()
}

/// Problems of one logger, each as (field under `base`, message).
pub(crate) fn check(log: &AccessLogConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    match (&log.format, &log.json_format) {
        (Some(_), Some(_)) => problems.push((
            "json_format".to_owned(),
            "set either format or json_format, not both".to_owned(),
        )),
        (Some(f), None) => {
            if let Err(m) = parse_format(f) {
                problems.push(("format".to_owned(), m));
            }
        }
        (None, Some(map)) => {
            if map.is_empty() {
                problems.push((
                    "json_format".to_owned(),
                    "needs at least one key".to_owned(),
                ));
            }
            for (key, value) in map {
                if let Err(m) = parse_format(value) {
                    problems.push((format!("json_format.{key}"), m));
                }
            }
        }
        (None, None) => {}
    }
    if log.path.as_deref() == Some("") {
        problems.push((
            "path".to_owned(),
            "must not be empty (leave it out for stdout)".to_owned(),
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: Operator) -> Segment {
        Segment::Op { op, max_len: None }
    }

    #[test]
    fn the_default_format_parses() {
        let segments = parse_format(DEFAULT_FORMAT).unwrap();
        assert_eq!(segments[0], Segment::Text("[".into()));
        assert_eq!(segments[1], op(Operator::StartTime));
        assert!(segments.contains(&op(Operator::Req(vec![
            HeaderRef::Header(HeaderName::from_static("x-envoy-original-path")),
            HeaderRef::Path,
        ]))));
        assert_eq!(segments.last(), Some(&Segment::Text("\"\n".into())));
    }

    #[test]
    fn operators_arguments_alternatives_and_truncation() {
        let s = parse_format("%REQ(User-Agent):10% %RESP(content-type)% %DURATION%ms").unwrap();
        assert_eq!(
            s,
            vec![
                Segment::Op {
                    op: Operator::Req(vec![HeaderRef::Header(HeaderName::from_static(
                        "user-agent"
                    ))]),
                    max_len: Some(10),
                },
                Segment::Text(" ".into()),
                op(Operator::Resp(vec![HeaderRef::Header(
                    HeaderName::from_static("content-type")
                )])),
                Segment::Text(" ".into()),
                op(Operator::Duration),
                Segment::Text("ms".into()),
            ]
        );
        assert_eq!(
            parse_format("100%% %PROTOCOL%").unwrap(),
            vec![Segment::Text("100% ".into()), op(Operator::Protocol)]
        );
        assert_eq!(
            parse_format("%REQ(:AUTHORITY?HOST)%").unwrap(),
            vec![op(Operator::Req(vec![
                HeaderRef::Authority,
                HeaderRef::Header(HeaderName::from_static("host"))
            ]))]
        );
        assert_eq!(parse_format("").unwrap(), vec![]);
    }

    #[test]
    fn what_gofe_cannot_write_is_refused_with_its_column() {
        for (format, expected) in [
            ("a %NOPE% b", "column 3: unknown operator %NOPE%"),
            (
                "%START_TIME(%s)%",
                "column 1: %START_TIME(%s)%: START_TIME takes no argument (custom",
            ),
            ("x %START_TIME(", "column 3: %START_TIME(: '(' without"),
            ("%REQ(a):x%", "':' must be followed by a length"),
            ("%REQ(a) %", "not closed by '%'"),
            ("%REQ()%", "needs a header name"),
            ("%REQ(a?b?c)%", "at most one alternative"),
            ("%REQ(:STATUS)%", "pseudo-header"),
            ("%RESP(:PATH)%", "pseudo-header"),
            ("%REQ(bad header)%", "invalid header name"),
            ("%DURATION(x)%", "takes no argument"),
            (
                "trailing %",
                "column 10: '%' not followed by an operator name",
            ),
            ("é %BOGUS%", "column 3: unknown operator"),
        ] {
            let e = parse_format(format).unwrap_err();
            assert!(
                e.starts_with(expected) || e.contains(expected),
                "{format}: {e}"
            );
        }
    }

    #[test]
    fn a_logger_sets_one_format_at_most() {
        let both = AccessLogConfig {
            format: Some("%PROTOCOL%".into()),
            json_format: Some(BTreeMap::from([("p".into(), "%PROTOCOL%".into())])),
            ..Default::default()
        };
        assert_eq!(check(&both)[0].0, "json_format");
        let bad = AccessLogConfig {
            json_format: Some(BTreeMap::from([("code".into(), "%CODE%".into())])),
            ..Default::default()
        };
        assert_eq!(check(&bad)[0].0, "json_format.code");
        assert!(check(&AccessLogConfig::default()).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_formats_never_panic(text in "[%A-Z_():?0-9a-z \\-é]{0,40}") {
            let _ = parse_format(&text);
        }
    }
}
