//! Access logs: the connection manager's `access_log` entries, each a stdout or file logger
//! (`envoy.access_loggers.stdout`, `envoy.access_loggers.file`) with a text or JSON
//! `log_format`. A filter, another logger, or a format option gofe would not honour is
//! refused; so is a format with an operator gofe does not write.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::accesslog::v3 as accesslog;
use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
    file_access_log, FileAccessLog,
};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
    stdout_access_log, StdoutAccessLog,
};
use gofe_model::access_log::parse_format;
use gofe_model::AccessLogConfig;

use super::*;

/// Name of the stdout access logger.
pub const STDOUT_ACCESS_LOG_NAME: &str = "envoy.access_loggers.stdout";
/// Name of the file access logger.
pub const FILE_ACCESS_LOG_NAME: &str = "envoy.access_loggers.file";

// === to wire ===

/// The connection manager's `access_log` for a listener's loggers.
pub(super) fn access_logs_to_wire(logs: &[AccessLogConfig]) -> Vec<accesslog::AccessLog> {
    logs.iter().map(access_log_to_wire).collect()
}

fn access_log_to_wire(log: &AccessLogConfig) -> accesslog::AccessLog {
    let format = format_to_wire(log);
    let (name, typed) = match &log.path {
        None => (
            STDOUT_ACCESS_LOG_NAME,
            to_any(&StdoutAccessLog {
                access_log_format: format.map(stdout_access_log::AccessLogFormat::LogFormat),
            }),
        ),
        Some(path) => (
            FILE_ACCESS_LOG_NAME,
            to_any(&FileAccessLog {
                path: path.clone(),
                access_log_format: format.map(file_access_log::AccessLogFormat::LogFormat),
            }),
        ),
    };
    accesslog::AccessLog {
        name: name.into(),
        filter: None,
        config_type: Some(accesslog::access_log::ConfigType::TypedConfig(typed)),
    }
}

fn format_to_wire(log: &AccessLogConfig) -> Option<core::SubstitutionFormatString> {
    use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
    let format = match (&log.format, &log.json_format) {
        (Some(text), _) => Format::TextFormatSource(core::DataSource {
            specifier: Some(core::data_source::Specifier::InlineString(text.clone())),
            ..Default::default()
        }),
        (None, Some(map)) => Format::JsonFormat(Struct {
            fields: map
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Value {
                            kind: Some(value::Kind::StringValue(v.clone())),
                        },
                    )
                })
                .collect(),
        }),
        (None, None) => return None,
    };
    Some(core::SubstitutionFormatString {
        format: Some(format),
        ..Default::default()
    })
}

// === from wire ===

/// A connection manager's `access_log` (at `base`) as the listener's loggers.
pub(super) fn access_logs_from_wire(
    logs: &[accesslog::AccessLog],
    res: &str,
    base: &str,
) -> Result<Vec<AccessLogConfig>, ConvertError> {
    logs.iter()
        .enumerate()
        .map(|(i, log)| access_log_from_wire(log, res, &join(base, &format!("access_log[{i}]"))))
        .collect()
}

#[allow(deprecated)]
fn access_log_from_wire(
    log: &accesslog::AccessLog,
    res: &str,
    base: &str,
) -> Result<AccessLogConfig, ConvertError> {
    let accesslog::AccessLog {
        // A name for statistics and logs only.
        name: _,
        filter,
        config_type,
    } = log;
    Unsupported::new(res, base)
        .set("filter (gofe logs every request)", filter)
        .finish()?;
    let Some(accesslog::access_log::ConfigType::TypedConfig(any)) = config_type else {
        return Err(invalid(res, &join(base, "typed_config"), "missing"));
    };
    let tbase = join(base, "typed_config");
    if any.type_url == StdoutAccessLog::type_url() {
        let StdoutAccessLog { access_log_format } = from_any(any)?;
        let format = access_log_format
            .as_ref()
            .map(|stdout_access_log::AccessLogFormat::LogFormat(f)| f);
        let (format, json_format) = log_format_from_wire(format, res, &join(&tbase, "log_format"))?;
        return Ok(AccessLogConfig {
            path: None,
            format,
            json_format,
        });
    }
    if any.type_url == FileAccessLog::type_url() {
        let FileAccessLog {
            path,
            access_log_format,
        } = from_any(any)?;
        if path.is_empty() {
            return Err(invalid(res, &join(&tbase, "path"), "empty"));
        }
        let (format, json_format) = match &access_log_format {
            None => (None, None),
            Some(file_access_log::AccessLogFormat::LogFormat(f)) => {
                log_format_from_wire(Some(f), res, &join(&tbase, "log_format"))?
            }
            Some(file_access_log::AccessLogFormat::Format(text)) => {
                checked_text(text, res, &join(&tbase, "format"))?;
                (Some(text.clone()), None)
            }
            Some(file_access_log::AccessLogFormat::JsonFormat(s)) => (
                None,
                Some(json_from_wire(s, res, &join(&tbase, "json_format"))?),
            ),
            Some(file_access_log::AccessLogFormat::TypedJsonFormat(_)) => {
                return Err(unsupported(res, &join(&tbase, "typed_json_format")));
            }
        };
        return Ok(AccessLogConfig {
            path: Some(path),
            format,
            json_format,
        });
    }
    Err(invalid(
        res,
        &tbase,
        format!(
            "access logger {:?} ({}) not supported by gofe (only the stdout and file loggers)",
            log.name, any.type_url
        ),
    ))
}

type Formats = (Option<String>, Option<BTreeMap<String, String>>);

#[allow(deprecated)]
fn log_format_from_wire(
    f: Option<&core::SubstitutionFormatString>,
    res: &str,
    base: &str,
) -> Result<Formats, ConvertError> {
    use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
    let Some(f) = f else {
        return Ok((None, None));
    };
    let core::SubstitutionFormatString {
        omit_empty_values,
        content_type,
        formatters,
        // Deprecated, and always true: gofe sorts JSON keys too.
        json_format_options: _,
        format,
    } = f;
    Unsupported::new(res, base)
        .set("omit_empty_values", omit_empty_values)
        .set("content_type", content_type)
        .set("formatters", formatters)
        .finish()?;
    match format {
        None => Ok((None, None)),
        Some(Format::TextFormat(text)) => {
            checked_text(text, res, &join(base, "text_format"))?;
            Ok((Some(text.clone()), None))
        }
        Some(Format::TextFormatSource(source)) => {
            let sbase = join(base, "text_format_source");
            let core::DataSource {
                watched_directory,
                specifier,
            } = source;
            Unsupported::new(res, &sbase)
                .set("watched_directory", watched_directory)
                .finish()?;
            let text = match specifier {
                Some(core::data_source::Specifier::InlineString(s)) => {
                    checked_text(s, res, &join(&sbase, "inline_string"))?;
                    s.clone()
                }
                Some(core::data_source::Specifier::InlineBytes(b)) => {
                    let field = join(&sbase, "inline_bytes");
                    let s = String::from_utf8(b.clone())
                        .map_err(|_| invalid(res, &field, "not UTF-8"))?;
                    checked_text(&s, res, &field)?;
                    s
                }
                Some(core::data_source::Specifier::Filename(_)) => {
                    return Err(unsupported(res, &join(&sbase, "filename")))
                }
                Some(core::data_source::Specifier::EnvironmentVariable(_)) => {
                    return Err(unsupported(res, &join(&sbase, "environment_variable")))
                }
                None => return Err(invalid(res, &sbase, "empty")),
            };
            Ok((Some(text), None))
        }
        Some(Format::JsonFormat(s)) => Ok((
            None,
            Some(json_from_wire(s, res, &join(base, "json_format"))?),
        )),
    }
}

/// A text format gofe can write, or its problem at `field`.
fn checked_text(text: &str, res: &str, field: &str) -> Result<(), ConvertError> {
    parse_format(text)
        .map(|_| ())
        .map_err(|m| invalid(res, field, m))
}

/// A `json_format` whose values are all format strings gofe can write.
fn json_from_wire(
    s: &Struct,
    res: &str,
    base: &str,
) -> Result<BTreeMap<String, String>, ConvertError> {
    if s.fields.is_empty() {
        return Err(invalid(res, base, "needs at least one key"));
    }
    let mut out = BTreeMap::new();
    for (key, v) in &s.fields {
        let field = join(base, key);
        match &v.kind {
            Some(value::Kind::StringValue(text)) => {
                checked_text(text, res, &field)?;
                out.insert(key.clone(), text.clone());
            }
            _ => {
                return Err(invalid(
                    res,
                    &field,
                    "only string values (format strings) are supported by gofe",
                ))
            }
        }
    }
    Ok(out)
}
