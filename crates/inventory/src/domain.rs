//! Inventory rules without I/O: reservation lines, reservation states, and the signals a stock
//! change gives (availability crossing zero, low stock crossing its threshold).

use std::collections::BTreeMap;

use platform::error::{ApiError, FieldError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Most lines one reservation may hold (an order's distinct SKUs).
pub const MAX_LINES: usize = 100;
/// Most units of one SKU a reservation may hold.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Largest stock level an admin may set.
pub const MAX_ON_HAND: i64 = 1_000_000_000;

/// One SKU and how many units of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Line {
    pub sku: String,
    pub quantity: i64,
}

/// Validates lines and sums those of the same SKU (an order may list a SKU twice, e.g. once on
/// its own and once in a bundle: reserving each line alone would let the pair oversell). The
/// result is sorted by SKU, the order in which rows are locked, so that two reservations never
/// wait on each other's rows in opposite orders.
pub fn merge_lines(lines: &[Line]) -> Result<Vec<Line>, ApiError> {
    if lines.is_empty() {
        return Err(ApiError::validation("lines", "must hold at least one line"));
    }
    let mut errors = Vec::new();
    let mut merged: BTreeMap<String, i64> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let sku = platform::sku::parse_sku(&format!("lines/{i}/sku"), &line.sku);
        if !(1..=MAX_QUANTITY).contains(&line.quantity) {
            errors.push(FieldError::new(
                format!("lines/{i}/quantity"),
                format!("must be between 1 and {MAX_QUANTITY}"),
            ));
        }
        match sku {
            Ok(sku) => *merged.entry(sku).or_default() += line.quantity.clamp(0, MAX_QUANTITY),
            Err(err) => errors.push(err),
        }
    }
    if merged.len() > MAX_LINES {
        errors.push(FieldError::new("lines", format!("may hold at most {MAX_LINES} SKUs")));
    }
    if let Some((sku, _)) = merged.iter().find(|(_, &q)| q > MAX_QUANTITY) {
        errors.push(FieldError::new(
            "lines",
            format!("`{sku}` adds up to more than {MAX_QUANTITY} units"),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    Ok(merged
        .into_iter()
        .map(|(sku, quantity)| Line { sku, quantity })
        .collect())
}

/// A reservation's state. Only `active` holds stock; the other two are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReservationStatus {
    Active,
    Committed,
    Released,
}

impl ReservationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Committed => "committed",
            Self::Released => "released",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "active" => Some(Self::Active),
            "committed" => Some(Self::Committed),
            "released" => Some(Self::Released),
            _ => None,
        }
    }
}

/// Why a reservation gave its stock back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseReason {
    /// The order was cancelled.
    Cancelled,
    /// Nobody paid before the reservation's expiry.
    Expired,
    /// The payment failed.
    PaymentFailed,
    /// An admin released it by hand.
    Admin,
}

impl ReleaseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::PaymentFailed => "payment_failed",
            Self::Admin => "admin",
        }
    }
}

/// What the ledger records a change as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement {
    /// An admin set the level.
    Set,
    /// An admin adjusted the level by a delta, with a reason.
    Adjust,
    Reserve,
    Commit,
    Release,
    /// Units came back after a sale (a return or a cancellation after commit).
    Restock,
}

impl Movement {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Set => "set",
            Self::Adjust => "adjust",
            Self::Reserve => "reserve",
            Self::Commit => "commit",
            Self::Release => "release",
            Self::Restock => "restock",
        }
    }
}

/// A SKU's levels at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Levels {
    pub on_hand: i64,
    pub reserved: i64,
    pub low_stock_threshold: i64,
    /// Whether a low-stock alert was sent for the current dip below the threshold.
    pub low_stock_alerted: bool,
}

impl Levels {
    pub fn available(&self) -> i64 {
        self.on_hand - self.reserved
    }
}

/// What a change from `before` to `after` must announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Signals {
    /// `Some(available)` when the SKU went in or out of stock.
    pub availability_changed: Option<i64>,
    /// An alert is due: availability fell to the threshold or below, and none was sent for
    /// this dip yet.
    pub low_stock: bool,
    /// The new value of the alerted flag, when it changes (set by an alert, cleared once
    /// availability is back above the threshold, so the next dip alerts again).
    pub alerted: Option<bool>,
}

pub fn signals(before: &Levels, after: &Levels) -> Signals {
    let was_in_stock = before.available() > 0;
    let in_stock = after.available() > 0;
    let below = after.low_stock_threshold > 0 && after.available() <= after.low_stock_threshold;
    let low_stock = below && !after.low_stock_alerted;
    let alerted = if low_stock {
        Some(true)
    } else if !below && after.low_stock_alerted {
        Some(false)
    } else {
        None
    };
    Signals {
        availability_changed: (was_in_stock != in_stock).then_some(after.available()),
        low_stock,
        alerted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(sku: &str, quantity: i64) -> Line {
        Line {
            sku: sku.to_owned(),
            quantity,
        }
    }

    #[test]
    fn lines_of_one_sku_are_summed_and_sorted() {
        let merged = merge_lines(&[line("B", 1), line("A", 2), line("B", 3)]).unwrap();
        assert_eq!(merged, vec![line("A", 2), line("B", 4)]);
    }

    #[test]
    fn bad_lines_are_all_reported() {
        let Err(ApiError::Validation(errors)) = merge_lines(&[line("ok", 0), line("bad sku", 1), line("x", -3)]) else {
            panic!("expected a validation error");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["lines/0/quantity", "lines/1/sku", "lines/2/quantity"]);
        assert!(merge_lines(&[]).is_err());
        assert!(merge_lines(&[line("A", MAX_QUANTITY), line("A", 1)]).is_err());
    }

    fn levels(on_hand: i64, reserved: i64, alerted: bool) -> Levels {
        Levels {
            on_hand,
            reserved,
            low_stock_threshold: 5,
            low_stock_alerted: alerted,
        }
    }

    #[test]
    fn availability_is_announced_when_it_crosses_zero_only() {
        assert_eq!(
            signals(&levels(10, 9, true), &levels(10, 10, true)).availability_changed,
            Some(0)
        );
        assert_eq!(
            signals(&levels(10, 10, true), &levels(12, 10, true)).availability_changed,
            Some(2)
        );
        assert_eq!(
            signals(&levels(10, 2, false), &levels(10, 3, false)).availability_changed,
            None
        );
    }

    #[test]
    fn low_stock_alerts_once_per_dip_and_rearms_above_the_threshold() {
        // Falling to the threshold alerts once.
        let first = signals(&levels(10, 4, false), &levels(10, 5, false));
        assert!(first.low_stock);
        assert_eq!(first.alerted, Some(true));
        // Falling further while alerted does not alert again.
        let again = signals(&levels(10, 5, true), &levels(10, 8, true));
        assert!(!again.low_stock);
        assert_eq!(again.alerted, None);
        // Back above the threshold re-arms; the next dip alerts.
        let above = signals(&levels(10, 8, true), &levels(20, 8, true));
        assert_eq!(above.alerted, Some(false));
        assert!(signals(&levels(20, 8, false), &levels(20, 16, false)).low_stock);
        // A zero threshold never alerts.
        let mut off = levels(10, 10, false);
        off.low_stock_threshold = 0;
        assert!(!signals(&off, &off).low_stock);
    }
}
