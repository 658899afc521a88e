//! Human durations as written in gofe's configuration files: `"30s"`, `"0.25s"`, `"250ms"`,
//! `"1m30s"`, `"2h"`.
//!
//! Envoy's YAML/JSON form (`"0.250s"`, a decimal number of seconds) is accepted, as are the
//! units `ns`, `us`, `ms`, `s`, `m` and `h`, combined from largest to smallest. A bare number
//! without a unit is refused: `timeout: 5` is ambiguous, and a misread timeout is an outage.

use std::fmt;
use std::time::Duration;

/// Why a duration string was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurationError {
    /// The text that was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid duration {:?}: {} (write e.g. \"30s\", \"250ms\", \"1m30s\")",
            self.input, self.reason
        )
    }
}

impl std::error::Error for DurationError {}

/// Parses a duration such as `"30s"`, `"0.25s"`, `"250ms"` or `"1h2m3s"`.
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(err("empty"));
    }
    let mut rest = text;
    let mut total_nanos: u128 = 0;
    let mut last_unit_rank = usize::MAX;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| err("missing unit"))?;
        if number_len == 0 {
            return Err(err("expected a number"));
        }
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let (rank, unit_nanos) = match unit {
            "h" => (0, 3_600_000_000_000u128),
            "m" => (1, 60_000_000_000),
            "s" => (2, 1_000_000_000),
            "ms" => (3, 1_000_000),
            "us" | "µs" => (4, 1_000),
            "ns" => (5, 1),
            _ => return Err(err("unknown unit")),
        };
        if last_unit_rank != usize::MAX && rank <= last_unit_rank {
            return Err(err("units must go from largest to smallest, each once"));
        }
        last_unit_rank = rank;
        total_nanos = total_nanos
            .checked_add(scaled(number, unit_nanos).ok_or_else(|| err("bad number"))?)
            .ok_or_else(|| err("too large"))?;
        rest = after;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err("too large"))?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// `number` (decimal, at most one dot) times `unit_nanos`, exactly, truncating below 1 ns.
fn scaled(number: &str, unit_nanos: u128) -> Option<u128> {
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut value = whole.checked_mul(unit_nanos)?;
    let mut scale = unit_nanos;
    for digit in frac.bytes() {
        scale /= 10;
        value = value.checked_add(u128::from(digit - b'0') * scale)?;
    }
    Some(value)
}

/// Formats a duration the way [`parse`] reads it back (`"1.5s"`, `"250ms"`, `"0s"`).
pub fn format(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        "0s".to_owned()
    } else if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

/// A duration written as text, for places a `with` adapter cannot reach (inside an `Option`
/// of a list, a map value, …). Serializes the way [`parse`] reads it back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(pub Duration);

impl Text {
    /// Seconds as `f64`.
    pub fn secs(self) -> f64 {
        self.0.as_secs_f64()
    }
}

impl From<Text> for Duration {
    /// The duration written.
    fn from(t: Text) -> Duration {
        t.0
    }
}

impl<'de> serde::Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        text::deserialize(d).map(Text)
    }
}

impl serde::Serialize for Text {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        text::serialize(&self.0, s)
    }
}

/// `#[serde(with = "gofe_yaml::duration::text")]` for a `Duration` field written as text.
pub mod text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads `"30s"` and friends; a bare number is refused.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse(&text).map_err(serde::de::Error::custom)
    }

    /// Writes the form [`super::parse`] reads back.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format(*d))
    }
}

/// `#[serde(default, with = "gofe_yaml::duration::optional_text")]` for an
/// `Option<Duration>` field written as text.
pub mod optional_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Reads `"30s"` and friends as `Some`; `null` as `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(text) => super::parse(&text)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }

    /// Writes the form [`super::parse`] reads back, or nothing.
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format(*d)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("0.25s").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("0.250s").unwrap(), Duration::from_millis(250));
        assert_eq!(parse(".5s").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("15us").unwrap(), Duration::from_micros(15));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn refuses_ambiguous_or_broken_input() {
        for bad in [
            "", "5", "s", "1x", "1.2.3s", "-1s", "1s1m", "1s1s", "1 s", "ms",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
        let e = parse("5").unwrap_err();
        assert!(e.to_string().contains("missing unit"), "{e}");
    }

    #[test]
    fn refuses_overflow() {
        assert!(parse("99999999999999999999999h").is_err());
    }

    proptest! {
        #[test]
        fn format_round_trips(nanos in 0u64..10_000_000_000_000) {
            let d = Duration::from_nanos(nanos);
            prop_assert_eq!(parse(&format(d)).unwrap(), d);
        }

        #[test]
        fn never_panics(s in "\\PC{0,12}") {
            let _ = parse(&s);
        }
    }
}
