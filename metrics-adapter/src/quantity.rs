//! Kubernetes quantities: a metric value rendered the way `resource.Quantity` prints it.
//!
//! The HPA reads external metric values as milli-units (`Quantity::MilliValue`), so a value is
//! first rounded to the nearest thousandth and then written in canonical decimal-SI form: an
//! integer mantissa and the largest suffix (`m`, none, `k`, `M`, `G`, `T`, `P`, `E`) that keeps the
//! mantissa an integer. `1.5` is `1500m`, `2.0` is `2`, `12000` is `12k`, `1200` stays `1200`.

use std::fmt;

/// A value the HPA can read, in thousandths (milli-units).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MilliQuantity(pub i64);

/// Why a value has no quantity.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum QuantityError {
    /// NaN: typically a ratio over no traffic (0/0).
    #[error("value is NaN")]
    NotANumber,
    /// ±Inf, or beyond ±9.2e15, which milli-units in an i64 cannot hold.
    #[error("value {0} is out of range for a Kubernetes quantity")]
    OutOfRange(f64),
}

impl MilliQuantity {
    /// Rounds `value` to the nearest milli-unit (halves away from zero).
    pub fn from_f64(value: f64) -> Result<Self, QuantityError> {
        if value.is_nan() {
            return Err(QuantityError::NotANumber);
        }
        let milli = (value * 1000.0).round();
        // i64::MAX is not exactly representable; stay strictly inside the range.
        if !milli.is_finite() || milli.abs() >= 9.2e18 {
            return Err(QuantityError::OutOfRange(value));
        }
        Ok(MilliQuantity(milli as i64))
    }

    /// The value as a float (for forecasting and scaling).
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

impl fmt::Display for MilliQuantity {
    /// Canonical decimal-SI form, e.g. `1500m`, `2`, `12k`, `-250m`, `0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("0");
        }
        const SUFFIXES: [&str; 8] = ["m", "", "k", "M", "G", "T", "P", "E"];
        let negative = self.0 < 0;
        let mut mantissa = self.0.unsigned_abs();
        let mut index = 0;
        while index + 1 < SUFFIXES.len() && mantissa.is_multiple_of(1000) {
            mantissa /= 1000;
            index += 1;
        }
        if negative {
            f.write_str("-")?;
        }
        write!(f, "{mantissa}{}", SUFFIXES[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(v: f64) -> String {
        MilliQuantity::from_f64(v).unwrap().to_string()
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(q(1.5), "1500m");
        assert_eq!(q(2.0), "2");
        assert_eq!(q(12000.0), "12k");
        assert_eq!(q(1200.0), "1200");
        assert_eq!(q(0.0), "0");
        assert_eq!(q(-0.0), "0");
        assert_eq!(q(0.001), "1m");
        assert_eq!(q(0.25), "250m");
        assert_eq!(q(-0.25), "-250m");
        assert_eq!(q(1e6), "1M");
        assert_eq!(q(2.5e9), "2500M");
        assert_eq!(q(3e15), "3P");
        assert_eq!(q(1234567.891), "1234567891m");
    }

    #[test]
    fn rounds_to_the_nearest_milli() {
        assert_eq!(q(10.000000000000002), "10");
        assert_eq!(q(0.0004), "0");
        assert_eq!(q(0.0005), "1m");
        assert_eq!(q(0.9999), "1");
        assert_eq!(q(1.0 / 3.0), "333m");
    }

    #[test]
    fn rejects_what_a_quantity_cannot_hold() {
        assert_eq!(
            MilliQuantity::from_f64(f64::NAN),
            Err(QuantityError::NotANumber)
        );
        assert!(MilliQuantity::from_f64(f64::INFINITY).is_err());
        assert!(MilliQuantity::from_f64(-f64::INFINITY).is_err());
        assert!(MilliQuantity::from_f64(1e17).is_err());
        assert!(MilliQuantity::from_f64(9e15).is_ok());
    }

    #[test]
    fn extreme_milli_values_format() {
        assert_eq!(
            MilliQuantity(i64::MIN + 1).to_string(),
            "-9223372036854775807m"
        );
        assert_eq!(MilliQuantity(5_000_000_000_000_000_000).to_string(), "5P");
        // i64 milli-units top out at 9.2P; E never appears.
        assert_eq!(MilliQuantity(9_000_000_000_000_000_000).to_string(), "9P");
    }

    /// Parses what [`MilliQuantity`]'s `Display` writes, back to milli-units.
    fn parse_back(text: &str) -> i64 {
        let (number, factor) = match text.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
            None => (text, 1000i128),
            Some((i, _)) => {
                let factor = match &text[i..] {
                    "m" => 1,
                    "k" => 1_000_000,
                    "M" => 1_000_000_000,
                    "G" => 1_000_000_000_000,
                    "T" => 1_000_000_000_000_000,
                    "P" => 1_000_000_000_000_000_000,
                    other => panic!("unexpected suffix {other}"),
                };
                (&text[..i], factor)
            }
        };
        (number.parse::<i128>().unwrap() * factor) as i64
    }

    proptest::proptest! {
        #[test]
        fn formatting_round_trips(milli in (i64::MIN + 1)..i64::MAX) {
            let text = MilliQuantity(milli).to_string();
            proptest::prop_assert_eq!(parse_back(&text), milli, "{}", text);
        }

        #[test]
        fn rounding_is_within_half_a_milli(value in -1e12f64..1e12) {
            let q = MilliQuantity::from_f64(value).unwrap();
            proptest::prop_assert!((q.as_f64() - value).abs() <= 0.0005 + value.abs() * 1e-15);
        }
    }
}
