//! Money: integer minor units and an ISO 4217 currency. Never floating point.
//!
//! Arithmetic is checked: mixing currencies or overflowing is an error, not a wrong number.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A three-letter ISO 4217 code, upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String, example = "EUR")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(raw: &str) -> Result<Self, MoneyError> {
        let bytes = raw.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(MoneyError::InvalidCurrency(raw.to_owned()));
        }
        Ok(Self([bytes[0], bytes[1], bytes[2]]))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII upper-case letters get in through `parse`.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }

    /// How many minor units make a major unit (JPY has none, most have two).
    pub fn minor_digits(&self) -> u32 {
        match self.as_str() {
            "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" => 0,
            "BHD" | "KWD" | "OMR" | "JOD" | "TND" => 3,
            _ => 2,
        }
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("`{0}` is not an ISO 4217 currency code")]
    InvalidCurrency(String),
    #[error("cannot combine {0} with {1}")]
    CurrencyMismatch(Currency, Currency),
    #[error("amount overflow")]
    Overflow,
}

/// An amount of money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub struct Money {
    /// Integer minor units (cents for EUR).
    pub amount_minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(amount_minor: i64, currency: Currency) -> Self {
        Self { amount_minor, currency }
    }

    pub fn zero(currency: Currency) -> Self {
        Self::new(0, currency)
    }

    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount = self
            .amount_minor
            .checked_add(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let amount = self
            .amount_minor
            .checked_sub(other.amount_minor)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    pub fn checked_mul(self, quantity: i64) -> Result<Money, MoneyError> {
        let amount = self.amount_minor.checked_mul(quantity).ok_or(MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    /// `self × basis_points / 10 000`, rounded half away from zero (for percentages and tax rates).
    pub fn checked_percent_bp(self, basis_points: i64) -> Result<Money, MoneyError> {
        let product = i128::from(self.amount_minor) * i128::from(basis_points);
        let half = if product >= 0 { 5_000 } else { -5_000 };
        let rounded = (product + half) / 10_000;
        let amount = i64::try_from(rounded).map_err(|_| MoneyError::Overflow)?;
        Ok(Money::new(amount, self.currency))
    }

    /// Sums amounts, all of which must share `currency`.
    pub fn sum(currency: Currency, items: impl IntoIterator<Item = Money>) -> Result<Money, MoneyError> {
        items.into_iter().try_fold(Money::zero(currency), Money::checked_add)
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch(self.currency, other.currency))
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.currency.minor_digits();
        let sign = if self.amount_minor < 0 { "-" } else { "" };
        let abs = self.amount_minor.unsigned_abs();
        if digits == 0 {
            return write!(f, "{sign}{abs} {}", self.currency);
        }
        let scale = 10u64.pow(digits);
        write!(
            f,
            "{sign}{}.{:0width$} {}",
            abs / scale,
            abs % scale,
            self.currency,
            width = digits as usize
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(amount: i64) -> Money {
        Money::new(amount, Currency::parse("EUR").unwrap())
    }

    #[test]
    fn currency_codes_are_three_upper_case_letters() {
        for bad in ["eur", "EU", "EURO", "E1R", ""] {
            assert!(Currency::parse(bad).is_err(), "{bad} must be rejected");
        }
        assert_eq!(Currency::parse("USD").unwrap().as_str(), "USD");
    }

    #[test]
    fn arithmetic_is_checked() {
        assert_eq!(eur(150).checked_add(eur(250)).unwrap(), eur(400));
        assert_eq!(eur(150).checked_sub(eur(250)).unwrap(), eur(-100));
        assert_eq!(eur(199).checked_mul(3).unwrap(), eur(597));
        assert_eq!(eur(i64::MAX).checked_add(eur(1)), Err(MoneyError::Overflow));
        assert_eq!(eur(i64::MAX).checked_mul(2), Err(MoneyError::Overflow));
        let usd = Money::new(1, Currency::parse("USD").unwrap());
        assert!(matches!(eur(1).checked_add(usd), Err(MoneyError::CurrencyMismatch(..))));
    }

    #[test]
    fn percentages_round_half_away_from_zero() {
        assert_eq!(eur(1_000).checked_percent_bp(1_850).unwrap(), eur(185));
        assert_eq!(eur(5).checked_percent_bp(1_000).unwrap(), eur(1)); // 0.5 → 1
        assert_eq!(eur(-5).checked_percent_bp(1_000).unwrap(), eur(-1));
        assert_eq!(eur(4).checked_percent_bp(1_000).unwrap(), eur(0));
    }

    #[test]
    fn display_uses_minor_digits() {
        assert_eq!(eur(123_456).to_string(), "1234.56 EUR");
        assert_eq!(eur(-5).to_string(), "-0.05 EUR");
        assert_eq!(Money::new(500, Currency::parse("JPY").unwrap()).to_string(), "500 JPY");
    }

    #[test]
    fn serializes_as_minor_units_and_code() {
        let json = serde_json::to_value(eur(995)).unwrap();
        assert_eq!(json, serde_json::json!({"amount_minor": 995, "currency": "EUR"}));
        let bad: Result<Money, _> = serde_json::from_value(serde_json::json!({"amount_minor": 1, "currency": "eu"}));
        assert!(bad.is_err());
    }
}
