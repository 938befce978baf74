//! Exact conversions of meter readings into the ledger's integer micro-units
//! of the meter's configured unit.
//!
//! A reading arrives as an integer register and a scale (Modbus), a JSON
//! number in J or kWh (Redfish) or a decimal string (Prometheus). Each is
//! taken as an exact decimal — a float's shortest round-trip text, the way
//! it was written — and converted with 128-bit integer arithmetic; the only
//! rounding is the final one to a whole micro-unit (half away from zero), and
//! it happens only when the value has more than micro-unit resolution. Negative,
//! NaN, infinite and out-of-range values are refused, never clamped.

use crate::ledger::micro_factor;

/// Why a value cannot be booked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0} is not a finite number")]
    NotFinite(String),
    #[error("{0} is negative: energy and volume registers never are")]
    Negative(String),
    #[error("{0} is out of range for the ledger (more than 9.2e12 units)")]
    Overflow(String),
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("unknown unit {0:?}")]
    Unit(String),
}

/// An exact decimal `mantissa × 10^-exponent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    pub mantissa: i128,
    pub exponent: u32,
}

impl Decimal {
    pub const ONE: Decimal = Decimal { mantissa: 1, exponent: 0 };

    /// Parses `-12.345`, `1e3`, `1.5E-2`, `+7`; `None` for anything else or
    /// when the digits do not fit 38 significant digits.
    pub fn parse(text: &str) -> Option<Decimal> {
        let t = text.trim();
        let (num, exp) = match t.find(['e', 'E']) {
            Some(i) => (&t[..i], t[i + 1..].parse::<i32>().ok()?),
            None => (t, 0),
        };
        let (neg, digits) = match num.as_bytes().first()? {
            b'-' => (true, &num[1..]),
            b'+' => (false, &num[1..]),
            _ => (false, num),
        };
        let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
        if int.is_empty() && frac.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let mut mantissa: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            mantissa = mantissa.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
        }
        if mantissa == 0 {
            // Whatever its exponent: stripping the zeros of `0e-2000000000` one by one would take seconds.
            return Some(Decimal { mantissa: 0, exponent: 0 });
        }
        let mut scale = frac.len() as i64 - i64::from(exp);
        if scale < -38 {
            // 10^38 overflows i128: only zero survives (and must not loop a billion times).
            return (mantissa == 0).then_some(Decimal { mantissa: 0, exponent: 0 });
        }
        while scale < 0 {
            mantissa = mantissa.checked_mul(10)?;
            scale += 1;
        }
        let mut exponent = u32::try_from(scale).ok()?;
        while exponent > 0 && mantissa % 10 == 0 {
            mantissa /= 10;
            exponent -= 1;
        }
        Some(Decimal { mantissa: if neg { -mantissa } else { mantissa }, exponent })
    }

    /// The exact decimal a finite float was written as (its shortest round-trip text).
    pub fn from_f64(v: f64) -> Result<Decimal, ValueError> {
        if !v.is_finite() {
            return Err(ValueError::NotFinite(v.to_string()));
        }
        // `Display` of f64 never uses exponent notation and gives the shortest round-trip digits.
        Decimal::parse(&v.to_string()).ok_or_else(|| ValueError::Overflow(v.to_string()))
    }

    /// The product of two decimals; `None` on overflow.
    pub fn checked_mul(self, other: Decimal) -> Option<Decimal> {
        Some(Decimal {
            mantissa: self.mantissa.checked_mul(other.mantissa)?,
            exponent: self.exponent.checked_add(other.exponent)?,
        })
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.mantissa.unsigned_abs().to_string();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        let e = self.exponent as usize;
        if e == 0 {
            return write!(f, "{sign}{digits}");
        }
        if e > 64 {
            // `1e-100000` written out would be 100,000 zeros (a width over the formatter's limit panics): the
            // exponent form is as exact.
            return write!(f, "{sign}{digits}e-{e}");
        }
        let padded = format!("{digits:0>width$}", width = e + 1);
        let (int, frac) = padded.split_at(padded.len() - e);
        write!(f, "{sign}{int}.{frac}")
    }
}

/// `num / den` rounded half away from zero (`den > 0`).
fn round_div(num: i128, den: i128) -> i128 {
    let q = num / den;
    let r = num % den;
    if r.abs() * 2 >= den { q + num.signum() } else { q }
}

/// Micro-units of `to` for `value` in `from` (`J`, `Wh`, `kWh`, `MWh`, `L`, `m3`; energy to energy or volume to volume).
pub fn to_micro(value: Decimal, from: &str, to: &str) -> Result<i64, ValueError> {
    let shown = value.to_string();
    if value.mantissa < 0 {
        return Err(ValueError::Negative(shown));
    }
    let f_from = i128::from(micro_factor(from).ok_or_else(|| ValueError::Unit(from.into()))?);
    let f_to = i128::from(micro_factor(to).ok_or_else(|| ValueError::Unit(to.into()))?);
    // value × 10^6 × f_from / (10^e × f_to), in i128.
    let overflow = || ValueError::Overflow(shown.clone());
    let num = value.mantissa.checked_mul(1_000_000).and_then(|n| n.checked_mul(f_from)).ok_or_else(overflow)?;
    let den = 10i128.checked_pow(value.exponent).and_then(|d| d.checked_mul(f_to));
    let micro = match den {
        Some(den) => round_div(num, den),
        // More than 38 decimals: far below a micro-unit.
        None => 0,
    };
    i64::try_from(micro).map_err(|_| overflow())
}

/// Micro-units of `unit` for a float already in `unit` (`float32` registers):
/// `round(v × 10^6)` through f64, since a binary float has no decimal digits to keep.
pub fn float_to_micro(v: f64) -> Result<i64, ValueError> {
    if !v.is_finite() {
        return Err(ValueError::NotFinite(v.to_string()));
    }
    if v < 0.0 {
        return Err(ValueError::Negative(v.to_string()));
    }
    let micro = (v * 1e6).round();
    // i64::MAX as f64 rounds up to 2^63, which is out of range itself.
    if micro >= 9_223_372_036_854_775_807.0 {
        return Err(ValueError::Overflow(v.to_string()));
    }
    Ok(micro as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).expect("decimal")
    }

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(d("12.345"), Decimal { mantissa: 12_345, exponent: 3 });
        assert_eq!(d("-0.5"), Decimal { mantissa: -5, exponent: 1 });
        assert_eq!(d("1e3"), Decimal { mantissa: 1000, exponent: 0 });
        assert_eq!(d("1.5E-2"), Decimal { mantissa: 15, exponent: 3 });
        assert_eq!(d("+7"), Decimal { mantissa: 7, exponent: 0 });
        assert_eq!(d("56438.0"), Decimal { mantissa: 56_438, exponent: 0 });
        assert_eq!(d("1.50"), Decimal { mantissa: 15, exponent: 1 });
        assert_eq!(d(".25").to_string(), "0.25");
        for bad in ["", "-", ".", "1,5", "abc", "1e", "NaN", "Inf", "1.2.3", "1e99999999999", "1e40"] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
        assert_eq!(d("0e2000000000"), Decimal { mantissa: 0, exponent: 0 });
        assert_eq!(Decimal::from_f64(0.1), Ok(d("0.1")));
        assert_eq!(Decimal::from_f64(56438.123), Ok(d("56438.123")));
        assert_eq!(Decimal::from_f64(1e20), Ok(d("100000000000000000000")));
        assert!(Decimal::from_f64(f64::NAN).is_err());
        assert!(Decimal::from_f64(f64::INFINITY).is_err());
    }

    #[test]
    fn units_convert_exactly_and_round_only_below_a_micro_unit() {
        // 56438.123 kWh stays 56438.123 kWh, to the micro-unit.
        assert_eq!(to_micro(d("56438.123"), "kWh", "kWh"), Ok(56_438_123_000));
        // 3.6 J = 1 µkWh exactly; 1 J is 0.2777… µkWh, rounded.
        assert_eq!(to_micro(d("3.6"), "J", "kWh"), Ok(1));
        assert_eq!(to_micro(d("365400000"), "J", "kWh"), Ok(101_500_000));
        assert_eq!(to_micro(d("1"), "J", "kWh"), Ok(0));
        assert_eq!(to_micro(d("2"), "J", "kWh"), Ok(1));
        assert_eq!(to_micro(d("1"), "kWh", "Wh"), Ok(1_000_000_000));
        assert_eq!(to_micro(d("1.5"), "m3", "L"), Ok(1_500_000_000));
        // A 12 GWh register in Wh keeps every digit.
        assert_eq!(to_micro(d("12000000000.000001"), "Wh", "Wh"), Ok(12_000_000_000_000_001));
        assert!(matches!(to_micro(d("-1"), "kWh", "kWh"), Err(ValueError::Negative(_))));
        assert!(matches!(to_micro(d("1e13"), "kWh", "kWh"), Err(ValueError::Overflow(_))));
        assert!(matches!(to_micro(d("1"), "kWh", "BTU"), Err(ValueError::Unit(_))));
    }

    /// Found by the `prometheus_json` fuzz target (`fuzz/corpus/prometheus_json/decimal-huge-exponent.json`): a
    /// decimal with a huge negative exponent panicked when shown (the formatter's width limit); a zero with one
    /// took seconds to normalise.
    #[test]
    fn huge_exponents_are_shown_and_converted_without_a_panic() {
        let tiny = Decimal::parse("1e-100000").expect("parse");
        assert_eq!(tiny.to_string(), "1e-100000");
        assert_eq!(to_micro(tiny, "kWh", "kWh"), Ok(0));
        assert_eq!(Decimal::parse("-7e-70").map(|d| d.to_string()), Some("-7e-70".into()));
        assert_eq!(Decimal::parse("0.0e-2000000000"), Some(Decimal { mantissa: 0, exponent: 0 }));
        // Up to 64 decimals, written out as before.
        assert_eq!(Decimal::parse("1.5e-63").map(|d| d.to_string()), Some(format!("0.{}15", "0".repeat(62))));
    }

    #[test]
    fn floats_round_to_micro_units() {
        assert_eq!(float_to_micro(1234.5), Ok(1_234_500_000));
        assert_eq!(float_to_micro(f64::from(12345.6f32)), Ok(12_345_599_609));
        assert!(float_to_micro(f64::NAN).is_err());
        assert!(float_to_micro(-0.5).is_err());
        assert!(float_to_micro(1e13).is_err());
        assert!(float_to_micro(f64::from(f32::MAX)).is_err());
    }
}
