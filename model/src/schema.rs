//! JSON Schema for the configuration types (`schemars`), from which `gofe config reference`
//! writes the configuration reference: the types' doc comments are its text.

use std::borrow::Cow;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};

/// How a duration is written in every gofe file: a number and a unit (`ns`, `us`, `ms`, `s`,
/// `m`, `h`), several of them summed (`1m30s`), as `gofe_yaml::duration` reads it.
pub struct DurationText;

impl JsonSchema for DurationText {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Duration")
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit (ns, us, ms, s, m, h), e.g. \"250ms\", \"1.5s\", \"1m30s\".",
            "examples": ["250ms", "10s", "1m30s"],
        })
    }
}

/// The JSON Schema of a proxy configuration file ([`crate::ProxyConfig`]).
pub fn proxy_config() -> Schema {
    schemars::schema_for!(crate::ProxyConfig)
}
