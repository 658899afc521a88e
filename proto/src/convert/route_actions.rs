//! The parts of routes beyond choosing a cluster: regex matchers, string matchers, query
//! parameter matchers, rewrites, redirects, direct responses and header mutations, each
//! converted both ways.
//!
//! Regexes are taken as written (`RegexMatcher.regex`; the deprecated `google_re2` engine
//! and its `max_program_size` are accepted and ignored) and compiled by gofe's model checks,
//! which name the field of a pattern gofe cannot compile. A direct response's body may come
//! inline (`inline_string`, or `inline_bytes` in UTF-8) or from a `filename`, read when the
//! resource is accepted (as Envoy reads it when it loads the route).

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction as PbAppend;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use envoy_types::pb::envoy::r#type::v3::Int64Range;
use gofe_model::{
    DirectResponseConfig, HeaderAppendAction, HeaderValueOptionConfig, RedirectConfig,
    RegexRewriteConfig,
};

use super::*;

// === regexes ===

/// A `RegexMatcher`'s pattern.
#[allow(deprecated)]
pub(super) fn regex_from_wire(
    r: &matcher::RegexMatcher,
    res: &str,
    base: &str,
) -> Result<String, ConvertError> {
    let matcher::RegexMatcher {
        regex,
        // RE2's program-size limit: the `regex` crate has its own size limits.
        engine_type: _,
    } = r;
    if regex.is_empty() {
        return Err(invalid(res, &join(base, "regex"), "empty"));
    }
    Ok(regex.clone())
}

/// A pattern as a `RegexMatcher`.
pub(super) fn regex_to_wire(pattern: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher {
        regex: pattern.to_owned(),
        engine_type: None,
    }
}

/// A `RegexMatchAndSubstitute`.
pub(super) fn regex_rewrite_from_wire(
    r: &matcher::RegexMatchAndSubstitute,
    res: &str,
    base: &str,
) -> Result<RegexRewriteConfig, ConvertError> {
    let matcher::RegexMatchAndSubstitute {
        pattern,
        substitution,
    } = r;
    let pattern = pattern
        .as_ref()
        .ok_or_else(|| invalid(res, &join(base, "pattern"), "missing"))?;
    Ok(RegexRewriteConfig {
        pattern: regex_from_wire(pattern, res, &join(base, "pattern"))?,
        substitution: substitution.clone(),
    })
}

/// A regex rewrite as Envoy's.
pub(super) fn regex_rewrite_to_wire(r: &RegexRewriteConfig) -> matcher::RegexMatchAndSubstitute {
    matcher::RegexMatchAndSubstitute {
        pattern: Some(regex_to_wire(&r.pattern)),
        substitution: r.substitution.clone(),
    }
}

// === string matchers ===

/// A `StringMatcher` (of a header or query parameter matcher; `field` names it).
pub(super) fn string_match_from_wire(
    m: &matcher::StringMatcher,
) -> Result<StringMatchConfig, String> {
    use matcher::string_matcher::MatchPattern;
    let matcher::StringMatcher {
        ignore_case,
        match_pattern,
    } = m;
    let mut sm = StringMatchConfig {
        ignore_case: *ignore_case,
        ..Default::default()
    };
    match match_pattern {
        Some(MatchPattern::Exact(v)) => sm.exact = Some(v.clone()),
        Some(MatchPattern::Prefix(v)) => sm.prefix = Some(v.clone()),
        Some(MatchPattern::Suffix(v)) => sm.suffix = Some(v.clone()),
        Some(MatchPattern::Contains(v)) => sm.contains = Some(v.clone()),
        Some(MatchPattern::SafeRegex(r)) => {
            if r.regex.is_empty() {
                return Err("safe_regex.regex is empty".into());
            }
            sm.safe_regex = Some(r.regex.clone());
            // Envoy: ignore_case has no effect on a regex.
            sm.ignore_case = false;
        }
        Some(MatchPattern::Custom(_)) => {
            return Err("custom string matchers are not supported by gofe".into())
        }
        None => return Err("string_match needs a pattern".into()),
    }
    Ok(sm)
}

/// A string matcher as Envoy's.
pub(super) fn string_match_to_wire(
    sm: &StringMatchConfig,
) -> Result<matcher::StringMatcher, String> {
    use matcher::string_matcher::MatchPattern;
    let pattern = match (
        &sm.exact,
        &sm.prefix,
        &sm.suffix,
        &sm.contains,
        &sm.safe_regex,
    ) {
        (Some(v), None, None, None, None) => MatchPattern::Exact(v.clone()),
        (None, Some(v), None, None, None) => MatchPattern::Prefix(v.clone()),
        (None, None, Some(v), None, None) => MatchPattern::Suffix(v.clone()),
        (None, None, None, Some(v), None) => MatchPattern::Contains(v.clone()),
        (None, None, None, None, Some(v)) => MatchPattern::SafeRegex(regex_to_wire(v)),
        _ => return Err("string_match needs exactly one pattern".into()),
    };
    Ok(matcher::StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: sm.ignore_case && sm.safe_regex.is_none(),
    })
}

/// An `Int64Range`.
pub(super) fn range_from_wire(r: &Int64Range) -> gofe_model::Int64RangeConfig {
    gofe_model::Int64RangeConfig {
        start: r.start,
        end: r.end,
    }
}

/// A range as Envoy's.
pub(super) fn range_to_wire(r: &gofe_model::Int64RangeConfig) -> Int64Range {
    Int64Range {
        start: r.start,
        end: r.end,
    }
}

/// A `QueryParameterMatcher`.
pub(super) fn query_from_wire(
    q: &route::QueryParameterMatcher,
) -> Result<gofe_model::QueryParameterMatcherConfig, String> {
    use route::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    let route::QueryParameterMatcher {
        name,
        query_parameter_match_specifier,
    } = q;
    let (string_match, present_match) = match query_parameter_match_specifier {
        Some(Q::StringMatch(m)) => (Some(string_match_from_wire(m)?), None),
        Some(Q::PresentMatch(true)) => (None, Some(true)),
        Some(Q::PresentMatch(false)) => {
            return Err("present_match: false matches nothing in Envoy; gofe refuses it".into())
        }
        // Envoy: a matcher without a specifier needs the parameter present.
        None => (None, Some(true)),
    };
    Ok(gofe_model::QueryParameterMatcherConfig {
        name: name.clone(),
        string_match,
        present_match,
    })
}

/// A query parameter matcher as Envoy's.
pub(super) fn query_to_wire(
    q: &gofe_model::QueryParameterMatcherConfig,
) -> Result<route::QueryParameterMatcher, String> {
    use route::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
    let spec = match (&q.string_match, q.present_match) {
        (Some(sm), None) => Q::StringMatch(string_match_to_wire(sm)?),
        (None, Some(p)) => Q::PresentMatch(p),
        _ => return Err("needs exactly one of string_match or present_match".into()),
    };
    Ok(route::QueryParameterMatcher {
        name: q.name.clone(),
        query_parameter_match_specifier: Some(spec),
    })
}

/// A `CookieMatcher`.
pub(super) fn cookie_from_wire(
    c: &route::CookieMatcher,
) -> Result<gofe_model::CookieMatcherConfig, String> {
    let route::CookieMatcher {
        name,
        string_match,
        invert_match,
    } = c;
    let sm = string_match
        .as_ref()
        .ok_or_else(|| "string_match is missing (Envoy requires it)".to_owned())?;
    Ok(gofe_model::CookieMatcherConfig {
        name: name.clone(),
        string_match: string_match_from_wire(sm)?,
        invert_match: *invert_match,
    })
}

/// A cookie matcher as Envoy's.
pub(super) fn cookie_to_wire(
    c: &gofe_model::CookieMatcherConfig,
) -> Result<route::CookieMatcher, String> {
    Ok(route::CookieMatcher {
        name: c.name.clone(),
        string_match: Some(string_match_to_wire(&c.string_match)?),
        invert_match: c.invert_match,
    })
}

// === header mutations ===

/// A level's four header mutation lists.
pub(super) struct Mutations {
    pub(super) request_add: Vec<HeaderValueOptionConfig>,
    pub(super) request_remove: Vec<String>,
    pub(super) response_add: Vec<HeaderValueOptionConfig>,
    pub(super) response_remove: Vec<String>,
}

/// A level's header mutations (`base` is the message holding them).
pub(super) fn mutations_from_wire(
    request_add: &[core::HeaderValueOption],
    request_remove: &[String],
    response_add: &[core::HeaderValueOption],
    response_remove: &[String],
    res: &str,
    base: &str,
) -> Result<Mutations, ConvertError> {
    let adds = |list: &[core::HeaderValueOption], which: &str| {
        list.iter()
            .enumerate()
            .map(|(i, h)| header_option_from_wire(h, res, &join(base, &format!("{which}[{i}]"))))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Mutations {
        request_add: adds(request_add, "request_headers_to_add")?,
        request_remove: request_remove
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        response_add: adds(response_add, "response_headers_to_add")?,
        response_remove: response_remove
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    })
}

#[allow(deprecated)]
fn header_option_from_wire(
    h: &core::HeaderValueOption,
    res: &str,
    base: &str,
) -> Result<HeaderValueOptionConfig, ConvertError> {
    let core::HeaderValueOption {
        header,
        append,
        append_action,
        keep_empty_value,
    } = h;
    let header = header
        .as_ref()
        .ok_or_else(|| invalid(res, &join(base, "header"), "missing"))?;
    let core::HeaderValue {
        key,
        value,
        raw_value,
    } = header;
    let value = if value.is_empty() && !raw_value.is_empty() {
        String::from_utf8(raw_value.clone()).map_err(|_| {
            invalid(
                res,
                &join(base, "header.raw_value"),
                "not UTF-8 (gofe's header values are text)",
            )
        })?
    } else {
        value.clone()
    };
    let action = match PbAppend::try_from(*append_action) {
        Ok(PbAppend::AppendIfExistsOrAdd) => HeaderAppendAction::AppendIfExistsOrAdd,
        Ok(PbAppend::AddIfAbsent) => HeaderAppendAction::AddIfAbsent,
        Ok(PbAppend::OverwriteIfExistsOrAdd) => HeaderAppendAction::OverwriteIfExistsOrAdd,
        Ok(PbAppend::OverwriteIfExists) => HeaderAppendAction::OverwriteIfExists,
        Err(_) => {
            return Err(invalid(
                res,
                &join(base, "append_action"),
                format!("unknown value {append_action}"),
            ))
        }
    };
    let action = match append {
        None => action,
        // Envoy refuses both.
        Some(_) if *append_action != PbAppend::AppendIfExistsOrAdd as i32 => {
            return Err(invalid(
                res,
                &join(base, "append"),
                "set either append (deprecated) or append_action, not both",
            ))
        }
        Some(BoolValue { value: true }) => HeaderAppendAction::AppendIfExistsOrAdd,
        Some(BoolValue { value: false }) => HeaderAppendAction::OverwriteIfExistsOrAdd,
    };
    Ok(HeaderValueOptionConfig {
        key: key.to_ascii_lowercase(),
        value,
        append_action: action,
        keep_empty_value: *keep_empty_value,
    })
}

/// Header values to add, as Envoy's.
pub(super) fn header_options_to_wire(
    list: &[HeaderValueOptionConfig],
) -> Vec<core::HeaderValueOption> {
    list.iter()
        .map(|h| core::HeaderValueOption {
            header: Some(core::HeaderValue {
                key: h.key.clone(),
                value: h.value.clone(),
                raw_value: Vec::new(),
            }),
            append_action: match h.append_action {
                HeaderAppendAction::AppendIfExistsOrAdd => PbAppend::AppendIfExistsOrAdd,
                HeaderAppendAction::AddIfAbsent => PbAppend::AddIfAbsent,
                HeaderAppendAction::OverwriteIfExistsOrAdd => PbAppend::OverwriteIfExistsOrAdd,
                HeaderAppendAction::OverwriteIfExists => PbAppend::OverwriteIfExists,
            } as i32,
            keep_empty_value: h.keep_empty_value,
            ..Default::default()
        })
        .collect()
}

// === redirects and direct responses ===

/// A `RedirectAction`.
pub(super) fn redirect_from_wire(
    r: &route::RedirectAction,
    res: &str,
    base: &str,
) -> Result<RedirectConfig, ConvertError> {
    let route::RedirectAction {
        host_redirect,
        port_redirect,
        response_code,
        strip_query,
        scheme_rewrite_specifier,
        path_rewrite_specifier,
    } = r;
    let scheme_redirect = match scheme_rewrite_specifier {
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_owned()),
        Some(SchemeRewriteSpecifier::HttpsRedirect(false)) => None,
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) if s.is_empty() => None,
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.to_ascii_lowercase()),
        None => None,
    };
    let port_redirect =
        match *port_redirect {
            0 => None,
            p => Some(u16::try_from(p).map_err(|_| {
                invalid(res, &join(base, "port_redirect"), format!("{p} is no port"))
            })?),
        };
    let mut out = RedirectConfig {
        scheme_redirect,
        host_redirect: (!host_redirect.is_empty()).then(|| host_redirect.clone()),
        port_redirect,
        response_code: match RedirectResponseCode::try_from(*response_code) {
            Ok(RedirectResponseCode::MovedPermanently) => 301,
            Ok(RedirectResponseCode::Found) => 302,
            Ok(RedirectResponseCode::SeeOther) => 303,
            Ok(RedirectResponseCode::TemporaryRedirect) => 307,
            Ok(RedirectResponseCode::PermanentRedirect) => 308,
            Err(_) => {
                return Err(invalid(
                    res,
                    &join(base, "response_code"),
                    format!("unknown value {response_code}"),
                ))
            }
        },
        strip_query: *strip_query,
        ..Default::default()
    };
    match path_rewrite_specifier {
        Some(PathRewriteSpecifier::PathRedirect(p)) => out.path_redirect = Some(p.clone()),
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => out.prefix_rewrite = Some(p.clone()),
        Some(PathRewriteSpecifier::RegexRewrite(r)) => {
            out.regex_rewrite = Some(regex_rewrite_from_wire(
                r,
                res,
                &join(base, "regex_rewrite"),
            )?)
        }
        Some(_) => {
            return Err(unsupported(
                res,
                &join(
                    base,
                    "path_rewrite_specifier (only path_redirect, prefix_rewrite and regex_rewrite)",
                ),
            ))
        }
        None => {}
    }
    Ok(out)
}

/// A redirect as Envoy's.
pub(super) fn redirect_to_wire(r: &RedirectConfig) -> route::RedirectAction {
    let path_rewrite_specifier = match (&r.path_redirect, &r.prefix_rewrite, &r.regex_rewrite) {
        (Some(p), ..) => Some(PathRewriteSpecifier::PathRedirect(p.clone())),
        (None, Some(p), _) => Some(PathRewriteSpecifier::PrefixRewrite(p.clone())),
        (None, None, Some(rr)) => Some(PathRewriteSpecifier::RegexRewrite(regex_rewrite_to_wire(
            rr,
        ))),
        (None, None, None) => None,
    };
    route::RedirectAction {
        host_redirect: r.host_redirect.clone().unwrap_or_default(),
        port_redirect: r.port_redirect.map_or(0, u32::from),
        response_code: match r.response_code {
            302 => RedirectResponseCode::Found,
            303 => RedirectResponseCode::SeeOther,
            307 => RedirectResponseCode::TemporaryRedirect,
            308 => RedirectResponseCode::PermanentRedirect,
            _ => RedirectResponseCode::MovedPermanently,
        } as i32,
        strip_query: r.strip_query,
        scheme_rewrite_specifier: r
            .scheme_redirect
            .clone()
            .map(SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier,
    }
}

/// A `DirectResponseAction`; a `filename` body is read now.
pub(super) fn direct_response_from_wire(
    d: &route::DirectResponseAction,
    res: &str,
    base: &str,
) -> Result<DirectResponseConfig, ConvertError> {
    use super::core::data_source::Specifier;
    let route::DirectResponseAction {
        status,
        body,
        body_format,
    } = d;
    Unsupported::new(res, base)
        .set("body_format", body_format)
        .finish()?;
    let status = u16::try_from(*status)
        .ok()
        .filter(|s| (200..=599).contains(s))
        .ok_or_else(|| {
            invalid(
                res,
                &join(base, "status"),
                format!("{status} is outside 200..=599"),
            )
        })?;
    let body = match body {
        None => None,
        Some(core::DataSource {
            watched_directory,
            specifier,
        }) => {
            let bbase = join(base, "body");
            Unsupported::new(res, &bbase)
                .set("watched_directory", watched_directory)
                .finish()?;
            let bytes = match specifier {
                Some(Specifier::InlineString(s)) => s.clone().into_bytes(),
                Some(Specifier::InlineBytes(b)) => b.clone(),
                Some(Specifier::Filename(f)) => std::fs::read(f).map_err(|e| {
                    invalid(
                        res,
                        &join(&bbase, "filename"),
                        format!("cannot read {f:?}: {e}"),
                    )
                })?,
                Some(Specifier::EnvironmentVariable(_)) => {
                    return Err(unsupported(res, &join(&bbase, "environment_variable")))
                }
                None => Vec::new(),
            };
            Some(String::from_utf8(bytes).map_err(|_| {
                invalid(
                    res,
                    &bbase,
                    "not UTF-8 (gofe's direct response bodies are text)",
                )
            })?)
        }
    };
    Ok(DirectResponseConfig {
        status,
        body: body.filter(|b| !b.is_empty()),
    })
}

/// A direct response as Envoy's.
pub(super) fn direct_response_to_wire(d: &DirectResponseConfig) -> route::DirectResponseAction {
    route::DirectResponseAction {
        status: u32::from(d.status),
        body: d.body.as_ref().map(|b| core::DataSource {
            specifier: Some(core::data_source::Specifier::InlineString(b.clone())),
            watched_directory: None,
        }),
        body_format: None,
    }
}
