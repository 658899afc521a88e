//! Fixed-point float formatting for reason strings, without going through `format!` in the
//! common case.
//!
//! The decision step writes several numbers into every endpoint's reason; [`push_fixed`] appends
//! the text `format!("{x:.p$}")` would produce, taking a short path for the plain case (a
//! non-negative, not too large value that does not sit on a rounding tie) and deferring to the
//! standard formatter for everything else.

use std::fmt::Write as _;

/// Appends `format!("{x:.p$}")` to `out`: the same text, with a short path for the plain case.
/// A non-negative float below 10¹² is scaled by 10^p; unless the scaled value sits within its
/// rounding error of a tie, it rounds as the exact decimal expansion does, so its integer digits
/// can be written directly. Everything else (ties, negatives, NaN, huge values) goes to `{:.p$}`.
pub(crate) fn push_fixed(out: &mut String, x: f64, p: usize) {
    const POW10: [u64; 5] = [1, 10, 100, 1_000, 10_000];
    if p < POW10.len() && x.is_sign_positive() && x < 1e12 {
        let unit = POW10[p];
        let scaled = x * unit as f64;
        // Truncation is the floor here, and the difference is exact: `scaled` < 2^52.
        let whole = scaled as u64;
        let frac = scaled - whole as f64;
        // `scaled` is within `scaled × 2^-53` of x × 10^p; the margin is twice that.
        if (frac - 0.5).abs() > scaled * f64::EPSILON + f64::MIN_POSITIVE {
            let mut rounded = whole + u64::from(frac > 0.5);
            // Digits, last first: p decimals, the point, then the integer part.
            let mut buf = [0u8; 24];
            let mut at = buf.len();
            for _ in 0..p {
                at -= 1;
                buf[at] = b'0' + (rounded % 10) as u8;
                rounded /= 10;
            }
            if p > 0 {
                at -= 1;
                buf[at] = b'.';
            }
            loop {
                at -= 1;
                buf[at] = b'0' + (rounded % 10) as u8;
                rounded /= 10;
                if rounded == 0 {
                    break;
                }
            }
            out.extend(buf[at..].iter().map(|&b| char::from(b)));
            return;
        }
    }
    let _ = write!(out, "{x:.p$}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn push_fixed_writes_what_std_writes_at_ties_and_edges() {
        let values = [
            0.0,
            -0.0,
            0.5,
            1.5,
            2.5,
            0.25,
            0.125,
            0.375,
            0.0005,
            0.00005,
            0.05,
            0.15,
            0.35,
            1.005,
            2.675,
            9.995,
            99.95,
            0.9995,
            0.99995,
            1e11 + 0.5,
            1e12,
            123456.78125,
            4503599627370495.5,
            -1.25,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MIN_POSITIVE,
            5e-324,
            1.0 - f64::EPSILON,
            0.1 + 0.2,
        ];
        for x in values {
            for p in 0..=5 {
                let mut got = String::new();
                push_fixed(&mut got, x, p);
                assert_eq!(got, format!("{x:.p$}"), "{x:e} at {p}");
            }
        }
    }

    #[test]
    fn push_fixed_appends_after_what_is_there() {
        let mut out = "latency ".to_owned();
        push_fixed(&mut out, 0.012_34, 4);
        out.push_str(" s, ×");
        push_fixed(&mut out, 0.5, 2);
        assert_eq!(out, "latency 0.0123 s, ×0.50");
    }

    proptest! {
        #[test]
        fn push_fixed_writes_what_std_writes(
            x in prop_oneof![0.0f64..1.0, 0.0f64..1000.0, 0.0f64..1e13, any::<f64>()],
            p in 0usize..6,
        ) {
            let mut got = "prefix ".to_owned();
            push_fixed(&mut got, x, p);
            prop_assert_eq!(got, format!("prefix {x:.p$}"));
        }
    }
}
