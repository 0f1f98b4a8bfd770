//! Money: `Decimal` USD amounts, parsed strictly from strings, rounded only at
//! named points.

use rust_decimal::{Decimal, RoundingStrategy};

pub type Money = Decimal;

/// The largest additional-credits limit a subscription may set.
pub const MAX_LIMIT_USD: Decimal = Decimal::from_parts(50000, 0, 0, false, 2);

/// Most decimal places accepted in any amount.
pub const MAX_SCALE: u32 = 10;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("{0:?} is not a plain decimal string like \"12.50\"")]
    NotDecimal(String),
    #[error("{0:?} has more than 10 decimal places")]
    TooPrecise(String),
    #[error("{0:?} is too large (must be below 10^12)")]
    TooLarge(String),
}

/// Parses a money string: optional sign, digits, optional fraction; no
/// exponent, no spaces, at most 10 decimal places, magnitude below 10^12.
pub fn parse_money(s: &str) -> Result<Decimal, MoneyError> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let int_ok = !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit());
    let frac_ok = frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    if !int_ok || !frac_ok {
        return Err(MoneyError::NotDecimal(s.to_string()));
    }
    if frac.is_some_and(|f| f.len() > MAX_SCALE as usize) {
        return Err(MoneyError::TooPrecise(s.to_string()));
    }
    // 12 integer digits (after leading zeros) is already ≥ 10^12.
    if int.trim_start_matches('0').len() > 12 {
        return Err(MoneyError::TooLarge(s.to_string()));
    }
    let value: Decimal = s
        .parse()
        .map_err(|_| MoneyError::NotDecimal(s.to_string()))?;
    if value.abs() >= Decimal::from(1_000_000_000_000u64) {
        return Err(MoneyError::TooLarge(s.to_string()));
    }
    Ok(value.normalize())
}

/// Rounds half-up (away from zero) to cents: the one rounding rule for
/// invoice lines.
pub fn round_cents(amount: Decimal) -> Decimal {
    let mut r = amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    r.rescale(2);
    r
}

/// Formats an amount with at least two decimals ("5" → "5.00", "0.0125" stays).
pub fn display(amount: Decimal) -> String {
    let mut a = amount.normalize();
    if a.scale() < 2 {
        a.rescale(2);
    }
    a.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    #[test]
    fn parses_plain_decimal_strings() {
        assert_eq!(parse_money("12.50").unwrap(), dec!(12.5));
        assert_eq!(parse_money("0.0125").unwrap(), dec!(0.0125));
        assert_eq!(parse_money("-3").unwrap(), dec!(-3));
        assert_eq!(parse_money("0.0000000001").unwrap(), dec!(0.0000000001));
    }

    #[test]
    fn refuses_what_is_not_money() {
        for bad in [
            "", "1e5", "1.", ".5", " 1", "1,00", "NaN", "--1", "0x10", "1.2.3",
        ] {
            assert!(
                matches!(parse_money(bad), Err(MoneyError::NotDecimal(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_money("0.00000000001"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            parse_money("1000000000000"),
            Err(MoneyError::TooLarge(_))
        ));
        assert!(parse_money("999999999999.99").is_ok());
    }

    #[test]
    fn rounds_half_up_to_cents() {
        assert_eq!(round_cents(dec!(0.005)).to_string(), "0.01");
        assert_eq!(round_cents(dec!(0.0049)).to_string(), "0.00");
        assert_eq!(round_cents(dec!(-0.005)).to_string(), "-0.01");
        assert_eq!(round_cents(dec!(5)).to_string(), "5.00");
        assert_eq!(display(dec!(5)), "5.00");
        assert_eq!(display(dec!(0.0125)), "0.0125");
    }

    #[test]
    fn the_limit_ceiling_is_500() {
        assert_eq!(MAX_LIMIT_USD, dec!(500.00));
    }
}
