//! Kubernetes quantities (`resource.Quantity`) read exactly, as milli-units.
//!
//! The grammar is Kubernetes': an optional sign, a decimal number (`1`, `1.5`, `.5`, `5.`),
//! then a suffix — binary (`Ki` `Mi` `Gi` `Ti` `Pi` `Ei`), decimal SI (`n` `u` `m` none `k`
//! `M` `G` `T` `P` `E`) or a decimal exponent (`e3`, `E-2`, `e+6`). The value is computed in
//! integers (no floating point), then rounded up to a whole milli-unit as
//! `Quantity.MilliValue()` does (`ceil(q × 1000)`; toward +∞, so `-0.5m` is `0`). A result
//! outside the `i64` milli range (`±9223372036854775807m`) is refused rather than wrapped.

use crate::hpa::Milli;

/// Why a text is not a quantity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Not the grammar (empty, no digits, stray characters, whitespace).
    #[error("{0:?} is not a quantity (e.g. 1500m, 1.5, 2k, 1Gi, 1e3)")]
    Syntax(String),
    /// An unknown suffix.
    #[error("{text:?}: unknown suffix {suffix:?} (n u m k M G T P E, Ki Mi Gi Ti Pi Ei, or an exponent e3)")]
    Suffix {
        /// The quantity.
        text: String,
        /// The suffix.
        suffix: String,
    },
    /// The value does not fit in `i64` milli-units.
    #[error("{0:?} is out of range (at most 9223372036854775807m in magnitude)")]
    Range(String),
}

/// Parses `text` into milli-units, rounded up.
pub fn parse_milli(text: &str) -> Result<Milli, QuantityError> {
    let syntax = || QuantityError::Syntax(text.to_owned());
    let range = || QuantityError::Range(text.to_owned());
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(syntax());
    }
    // value = digits × 10^exp10 × 2^exp2, digits without leading zeros.
    let digits = format!("{int}{frac}");
    let digits = digits.trim_start_matches('0');
    let mut exp10 = -i64::try_from(frac.len()).map_err(|_| syntax())?;
    let mut exp2 = 0u32;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        s if s.starts_with(['e', 'E']) => {
            let e = &s[1..];
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            // Exponents beyond this make every non-zero value out of range or below 1n.
            let e: i64 = e.parse::<i64>().map_err(|_| range())?.clamp(-1000, 1000);
            exp10 += e;
        }
        s if s.chars().any(char::is_whitespace) => return Err(syntax()),
        s => {
            return Err(QuantityError::Suffix {
                text: text.to_owned(),
                suffix: s.to_owned(),
            })
        }
    }
    if digits.is_empty() {
        return Ok(0);
    }
    // Milli-units: one more factor of 10^3.
    exp10 += 3;
    // The integer part of digits × 10^exp10 × 2^exp2, and whether anything was cut off.
    let max = u128::from(i64::MAX.unsigned_abs()) + u128::from(negative);
    let (mut whole, remainder) = if exp10 >= 0 {
        if digits.len() as i64 + exp10 > 40 {
            return Err(range());
        }
        let mut v: u128 = digits.parse().map_err(|_| range())?;
        for _ in 0..exp10 {
            v = v.checked_mul(10).ok_or_else(range)?;
        }
        (v, false)
    } else {
        let cut = usize::try_from(-exp10).unwrap_or(usize::MAX);
        if cut >= digits.len() {
            // Below one milli-unit before the binary factor (at most 2^60): the first 18
            // significant digits decide the whole part (more would overflow the product).
            let kept_len = digits.len().min(18);
            let head: u128 = digits[..kept_len].parse().map_err(|_| range())?;
            let dropped = digits[kept_len..].bytes().any(|b| b != b'0');
            let scaled = head.checked_mul(1u128 << exp2).ok_or_else(range)?;
            let exponent = cut - digits.len() + kept_len;
            match 10u128.checked_pow(u32::try_from(exponent).unwrap_or(u32::MAX)) {
                Some(d) => (scaled / d, scaled % d != 0 || dropped),
                None => (0, true),
            }
        } else {
            let (head, tail) = digits.split_at(digits.len() - cut);
            if head.len() > 38 {
                return Err(range());
            }
            let v: u128 = head.parse().map_err(|_| range())?;
            let tail_nonzero = tail.bytes().any(|b| b != b'0');
            if exp2 == 0 {
                (v, tail_nonzero)
            } else {
                // (head + tail/10^cut) × 2^exp2: the fraction's share of the product, exactly.
                let t_len = tail.len().min(19);
                let t: u128 = tail[..t_len].parse().map_err(|_| range())?;
                let more = tail[t_len..].bytes().any(|b| b != b'0');
                let d = 10u128.pow(u32::try_from(t_len).unwrap_or(19));
                let frac_scaled = t.checked_mul(1u128 << exp2).ok_or_else(range)?;
                let v = v.checked_mul(1u128 << exp2).ok_or_else(range)?;
                (
                    v.checked_add(frac_scaled / d).ok_or_else(range)?,
                    frac_scaled % d != 0 || more,
                )
            }
        }
    };
    if exp10 >= 0 && exp2 > 0 {
        whole = whole.checked_mul(1u128 << exp2).ok_or_else(range)?;
    }
    // ceil toward +∞: a positive value with a remainder goes up; a negative one is cut.
    if remainder && !negative {
        whole = whole.checked_add(1).ok_or_else(range)?;
    }
    if whole > max {
        return Err(range());
    }
    let magnitude = i128::try_from(whole).map_err(|_| range())?;
    let value = if negative { -magnitude } else { magnitude };
    Milli::try_from(value).map_err(|_| range())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(text: &str) -> Milli {
        parse_milli(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_suffix_is_exact() {
        assert_eq!(m("1"), 1_000);
        assert_eq!(m("1500m"), 1_500);
        assert_eq!(m("1.5"), 1_500);
        assert_eq!(m(".5"), 500);
        assert_eq!(m("5."), 5_000);
        assert_eq!(m("+2k"), 2_000_000);
        assert_eq!(m("1M"), 1_000_000_000);
        assert_eq!(m("1G"), 1_000_000_000_000);
        assert_eq!(m("1T"), 1_000_000_000_000_000);
        assert_eq!(m("1P"), 1_000_000_000_000_000_000);
        assert_eq!(m("1Ki"), 1_024_000);
        assert_eq!(m("1.5Gi"), 1_610_612_736_000);
        assert_eq!(m("1Ti"), 1_099_511_627_776_000);
        assert_eq!(m("1Pi"), 1_125_899_906_842_624_000);
        assert_eq!(m("1e3"), 1_000_000);
        assert_eq!(m("1E3"), 1_000_000);
        assert_eq!(m("2.5e-3"), 3, "2.5m rounds up to 3m");
        assert_eq!(m("1e+2"), 100_000);
        assert_eq!(m("0"), 0);
        assert_eq!(m("0.000"), 0);
        assert_eq!(m("-1.5"), -1_500);
    }

    #[test]
    fn below_a_milli_unit_rounds_up_as_milli_value_does() {
        assert_eq!(m("100n"), 1);
        assert_eq!(m("1u"), 1);
        assert_eq!(m("1000u"), 1);
        assert_eq!(m("1001u"), 2);
        assert_eq!(m("0.5m"), 1);
        assert_eq!(m("1.0001m"), 2);
        assert_eq!(m("-0.5m"), 0, "ceil goes toward +inf");
        assert_eq!(m("-1.5m"), -1);
        assert_eq!(m("1e-30"), 1);
        assert_eq!(m("0.1Ki"), 102_400);
        assert_eq!(m("0.0001Ki"), 103, "102.4m rounds up");
    }

    #[test]
    fn the_whole_i64_milli_range_and_nothing_beyond() {
        assert_eq!(m("9223372036854775807m"), i64::MAX);
        assert_eq!(m("9223372036854775.807"), i64::MAX);
        assert_eq!(m("-9223372036854775807m"), -i64::MAX);
        assert_eq!(m("-9223372036854775808m"), i64::MIN);
        for text in [
            "9223372036854775808m",
            "9223372036854776",
            "1E",
            "1Ei",
            "1e300",
        ] {
            assert_eq!(
                parse_milli(text),
                Err(QuantityError::Range(text.into())),
                "{text}"
            );
        }
        assert_eq!(
            m("8Pi"),
            9_007_199_254_740_992_000,
            "2^53 in milli-units still fits"
        );
        assert_eq!(m("9E-3"), 9, "an exponent, not exa");
    }

    #[test]
    fn what_kubernetes_refuses_is_refused() {
        for text in [
            "", "m", ".", "1..5", " 1", "1 ", "1.2.3", "e3", "1e", "1e+", "1ee3", "--1",
        ] {
            assert!(
                matches!(
                    parse_milli(text),
                    Err(QuantityError::Syntax(_) | QuantityError::Suffix { .. })
                ),
                "{text:?}"
            );
        }
        assert_eq!(
            parse_milli("1x"),
            Err(QuantityError::Suffix {
                text: "1x".into(),
                suffix: "x".into()
            })
        );
        assert!(parse_milli("1KI").is_err() && parse_milli("1ki").is_err());
    }
}
