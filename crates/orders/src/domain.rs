//! The orders domain, free of I/O: the one state machine every status change goes through,
//! the price arithmetic of a checkout (discount, shipping, tax, total), coupons' rules, the
//! human order number, and the shapes of what a checkout stores (address snapshot, lines).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Created, stock reserved, waiting for the payment.
    Pending,
    Paid,
    /// Being prepared (also where a cash-on-delivery order goes once confirmed).
    Processing,
    Shipped,
    OutForDelivery,
    Delivered,
    /// Final: stopped before shipping (by the customer, an admin, a stock shortage or an unpaid
    /// reservation's expiry).
    Cancelled,
    /// Final: the provider declined the payment; the stock went back.
    PaymentFailed,
    ReturnRequested,
    Returned,
    /// Final: the returned items' money went back.
    Refunded,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 11] = [
        Self::Pending,
        Self::Paid,
        Self::Processing,
        Self::Shipped,
        Self::OutForDelivery,
        Self::Delivered,
        Self::Cancelled,
        Self::PaymentFailed,
        Self::ReturnRequested,
        Self::Returned,
        Self::Refunded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Paid => "paid",
            Self::Processing => "processing",
            Self::Shipped => "shipped",
            Self::OutForDelivery => "out_for_delivery",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
            Self::PaymentFailed => "payment_failed",
            Self::ReturnRequested => "return_requested",
            Self::Returned => "returned",
            Self::Refunded => "refunded",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Nothing moves an order out of these.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Cancelled | Self::PaymentFailed | Self::Refunded)
    }
}

/// What happens to an order: the inputs of the state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// The provider captured the payment.
    PaymentSucceeded,
    /// The provider declined it.
    PaymentFailed,
    /// A cash-on-delivery order was accepted (paid later, on delivery).
    CashOnDeliveryConfirmed,
    /// The customer or an admin cancels it.
    Cancel,
    /// Nobody paid before the reservation expired.
    ReservationExpired,
    StartProcessing,
    Ship,
    OutForDelivery,
    Deliver,
    RequestReturn,
    RejectReturn,
    ReceiveReturn,
    /// The returned items were refunded, and they were everything the order held.
    Refund,
    /// The returned items were refunded, and the order still holds others (which may be
    /// returned later, within the window).
    PartRefund,
    /// The carrier gave up and brought the parcel back: the order ends as cancelled, so its
    /// stock goes back and a captured payment is refunded (as for any cancellation).
    ReturnedToSender,
}

impl Trigger {
    pub const ALL: [Trigger; 15] = [
        Self::PaymentSucceeded,
        Self::PaymentFailed,
        Self::CashOnDeliveryConfirmed,
        Self::Cancel,
        Self::ReservationExpired,
        Self::StartProcessing,
        Self::Ship,
        Self::OutForDelivery,
        Self::Deliver,
        Self::RequestReturn,
        Self::RejectReturn,
        Self::ReceiveReturn,
        Self::Refund,
        Self::PartRefund,
        Self::ReturnedToSender,
    ];
}

/// The state machine's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Change to this status.
    Move(OrderStatus),
    /// Already there, or the trigger means nothing in this status (a late or repeated event):
    /// change nothing, and it is not an error.
    Stay,
    /// Not allowed; the reason is for a person.
    Refuse(&'static str),
}

/// The one place that decides every status change.
pub fn next(from: OrderStatus, trigger: Trigger) -> Step {
    use OrderStatus as S;
    use Trigger as T;
    match (from, trigger) {
        (S::Pending, T::PaymentSucceeded) => Step::Move(S::Paid),
        // Late or repeated captures change nothing. A capture on an order that already ended
        // (cancelled, or declined and its stock given back) is refunded by the service.
        (_, T::PaymentSucceeded) => Step::Stay,

        (S::Pending, T::PaymentFailed) => Step::Move(S::PaymentFailed),
        // A decline after the capture, or after the order ended: the capture stands.
        (_, T::PaymentFailed) => Step::Stay,

        (S::Pending, T::CashOnDeliveryConfirmed) => Step::Move(S::Processing),
        (S::Processing, T::CashOnDeliveryConfirmed) => Step::Stay,
        (_, T::CashOnDeliveryConfirmed) => Step::Refuse("only a pending order can be confirmed for cash on delivery"),

        (S::Pending | S::Paid | S::Processing, T::Cancel) => Step::Move(S::Cancelled),
        (S::Cancelled, T::Cancel) => Step::Stay,
        (S::Shipped | S::OutForDelivery | S::Delivered | S::ReturnRequested | S::Returned, T::Cancel) => {
            Step::Refuse("the order has shipped; ask for a return once it is delivered")
        }
        (_, T::Cancel) => Step::Refuse("the order is already closed"),

        (S::Pending, T::ReservationExpired) => Step::Move(S::Cancelled),
        (_, T::ReservationExpired) => Step::Stay,

        (S::Paid, T::StartProcessing) => Step::Move(S::Processing),
        (S::Processing, T::StartProcessing) => Step::Stay,
        (_, T::StartProcessing) => Step::Refuse("only a paid order can go into processing"),

        (S::Paid | S::Processing, T::Ship) => Step::Move(S::Shipped),
        (S::Shipped, T::Ship) => Step::Stay,
        (_, T::Ship) => Step::Refuse("only a paid or processing order can ship"),

        (S::Shipped, T::OutForDelivery) => Step::Move(S::OutForDelivery),
        (S::OutForDelivery, T::OutForDelivery) => Step::Stay,
        (_, T::OutForDelivery) => Step::Refuse("only a shipped order can go out for delivery"),

        (S::Shipped | S::OutForDelivery, T::Deliver) => Step::Move(S::Delivered),
        (S::Delivered, T::Deliver) => Step::Stay,
        (_, T::Deliver) => Step::Refuse("only a shipped order can be delivered"),

        (S::Delivered, T::RequestReturn) => Step::Move(S::ReturnRequested),
        (S::ReturnRequested, T::RequestReturn) => Step::Refuse("a return is already open for this order"),
        (_, T::RequestReturn) => Step::Refuse("only a delivered order can be returned"),

        (S::ReturnRequested, T::RejectReturn) => Step::Move(S::Delivered),
        (_, T::RejectReturn) => Step::Refuse("the order has no open return"),

        (S::ReturnRequested, T::ReceiveReturn) => Step::Move(S::Returned),
        (S::Returned, T::ReceiveReturn) => Step::Stay,
        (_, T::ReceiveReturn) => Step::Refuse("the order has no open return"),

        (S::Returned, T::Refund) => Step::Move(S::Refunded),
        (S::Refunded, T::Refund) => Step::Stay,
        (_, T::Refund) => Step::Refuse("only a returned order is refunded this way"),

        (S::Returned, T::PartRefund) => Step::Move(S::Delivered),
        (_, T::PartRefund) => Step::Refuse("only a returned order is refunded this way"),

        (S::Shipped | S::OutForDelivery, T::ReturnedToSender) => Step::Move(S::Cancelled),
        (S::Cancelled, T::ReturnedToSender) => Step::Stay,
        (_, T::ReturnedToSender) => Step::Refuse("only a shipped order comes back to the sender"),
    }
}

/// The trigger an admin's "set the status to `to`" stands for, if admins may ask for it.
/// Payment outcomes and returns have their own paths and are not set by hand.
pub fn admin_trigger(to: OrderStatus) -> Option<Trigger> {
    match to {
        OrderStatus::Processing => Some(Trigger::StartProcessing),
        OrderStatus::Shipped => Some(Trigger::Ship),
        OrderStatus::OutForDelivery => Some(Trigger::OutForDelivery),
        OrderStatus::Delivered => Some(Trigger::Deliver),
        OrderStatus::Cancelled => Some(Trigger::Cancel),
        _ => None,
    }
}

/// `ORD-2026-000123`.
pub fn order_number(year: i32, sequence: i64) -> String {
    format!("ORD-{year}-{sequence:06}")
}

// ----- money ---------------------------------------------------------------------------------

/// What a checkout charges besides the goods.
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    pub shipping_flat: i64,
    /// Goods (after the discount) at or above this ship free.
    pub free_shipping_threshold: Option<i64>,
    /// Basis points per country code.
    pub tax_rates_bps: BTreeMap<String, i64>,
    pub default_tax_bps: i64,
}

/// An order's amounts, all in minor units of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Totals {
    pub subtotal: i64,
    pub discount: i64,
    pub shipping: i64,
    pub tax: i64,
    pub total: i64,
}

/// `amount × bps / 10 000`, rounded half up (amounts are never negative here).
fn share(amount: i64, bps: i64) -> Option<i64> {
    let product = i128::from(amount) * i128::from(bps);
    i64::try_from((product + 5_000) / 10_000).ok()
}

impl Pricing {
    pub fn tax_bps(&self, country: &str) -> i64 {
        self.tax_rates_bps
            .get(&country.to_ascii_uppercase())
            .copied()
            .unwrap_or(self.default_tax_bps)
    }

    /// The amounts of an order of these `(unit price, quantity)` lines with this discount (already
    /// capped to the subtotal), shipped to `country`. Tax is charged on the discounted goods and
    /// the shipping. `None` on an overflow.
    pub fn totals(&self, lines: &[(i64, i64)], discount: i64, country: &str) -> Option<Totals> {
        let subtotal = lines.iter().try_fold(0i64, |sum, (price, quantity)| {
            sum.checked_add(price.checked_mul(*quantity)?)
        })?;
        let discount = discount.clamp(0, subtotal);
        let goods = subtotal - discount;
        let shipping = match self.free_shipping_threshold {
            Some(threshold) if goods >= threshold => 0,
            _ if subtotal == 0 => 0,
            _ => self.shipping_flat.max(0),
        };
        let taxable = goods.checked_add(shipping)?;
        let tax = share(taxable, self.tax_bps(country).max(0))?;
        Some(Totals {
            subtotal,
            discount,
            shipping,
            tax,
            total: taxable.checked_add(tax)?,
        })
    }
}

// ----- coupons -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CouponKind {
    /// `value` percent off the goods (1–100).
    Percent,
    /// `value` minor units off the goods (never more than the goods).
    Fixed,
}

impl CouponKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Percent => "percent",
            Self::Fixed => "fixed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "percent" => Some(Self::Percent),
            "fixed" => Some(Self::Fixed),
            _ => None,
        }
    }
}

/// What of a coupon decides whether and how much it takes off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CouponTerms {
    pub kind: CouponKind,
    pub value: i64,
    pub min_subtotal: i64,
    /// Unix ms; the coupon works from `starts_at` (inclusive) to `ends_at` (exclusive).
    pub starts_at: Option<i64>,
    pub ends_at: Option<i64>,
    pub active: bool,
}

/// Why a coupon does not apply (usage limits are checked atomically in the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CouponRefusal {
    Inactive,
    NotYetValid,
    Expired,
    BelowMinimum { min_subtotal: i64 },
}

impl CouponRefusal {
    pub fn message(&self) -> String {
        match self {
            Self::Inactive => "this coupon is not active".to_owned(),
            Self::NotYetValid => "this coupon is not valid yet".to_owned(),
            Self::Expired => "this coupon has expired".to_owned(),
            Self::BelowMinimum { min_subtotal } => {
                format!("this coupon needs a subtotal of at least {min_subtotal} (minor units)")
            }
        }
    }
}

impl CouponTerms {
    /// The discount on goods worth `subtotal` at `now`, or why there is none.
    pub fn discount(&self, subtotal: i64, now: i64) -> Result<i64, CouponRefusal> {
        if !self.active {
            return Err(CouponRefusal::Inactive);
        }
        if self.starts_at.is_some_and(|at| now < at) {
            return Err(CouponRefusal::NotYetValid);
        }
        if self.ends_at.is_some_and(|at| now >= at) {
            return Err(CouponRefusal::Expired);
        }
        if subtotal < self.min_subtotal {
            return Err(CouponRefusal::BelowMinimum {
                min_subtotal: self.min_subtotal,
            });
        }
        let off = match self.kind {
            CouponKind::Percent => share(subtotal, self.value.clamp(0, 100) * 100).unwrap_or(subtotal),
            CouponKind::Fixed => self.value.max(0),
        };
        Ok(off.min(subtotal))
    }
}

/// A coupon code as typed: trimmed, upper case, 3–40 of `A-Z 0-9 - _`.
pub fn normalize_coupon_code(raw: &str) -> Option<String> {
    let code = raw.trim().to_ascii_uppercase();
    ((3..=40).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    .then_some(code)
}

// ----- returns -------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReturnStatus {
    Requested,
    Approved,
    Rejected,
    Received,
    Refunded,
}

impl ReturnStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Requested => "requested",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Received => "received",
            Self::Refunded => "refunded",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Self::Requested,
            Self::Approved,
            Self::Rejected,
            Self::Received,
            Self::Refunded,
        ]
        .into_iter()
        .find(|s| s.as_str() == raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus as S;
    use Trigger as T;

    /// Every move the machine allows, written out independently of `next`.
    const MOVES: &[(OrderStatus, Trigger, OrderStatus)] = &[
        (S::Pending, T::PaymentSucceeded, S::Paid),
        (S::Pending, T::PaymentFailed, S::PaymentFailed),
        (S::Pending, T::CashOnDeliveryConfirmed, S::Processing),
        (S::Pending, T::Cancel, S::Cancelled),
        (S::Paid, T::Cancel, S::Cancelled),
        (S::Processing, T::Cancel, S::Cancelled),
        (S::Pending, T::ReservationExpired, S::Cancelled),
        (S::Paid, T::StartProcessing, S::Processing),
        (S::Paid, T::Ship, S::Shipped),
        (S::Processing, T::Ship, S::Shipped),
        (S::Shipped, T::OutForDelivery, S::OutForDelivery),
        (S::Shipped, T::Deliver, S::Delivered),
        (S::OutForDelivery, T::Deliver, S::Delivered),
        (S::Delivered, T::RequestReturn, S::ReturnRequested),
        (S::ReturnRequested, T::RejectReturn, S::Delivered),
        (S::ReturnRequested, T::ReceiveReturn, S::Returned),
        (S::Returned, T::Refund, S::Refunded),
        (S::Returned, T::PartRefund, S::Delivered),
        (S::Shipped, T::ReturnedToSender, S::Cancelled),
        (S::OutForDelivery, T::ReturnedToSender, S::Cancelled),
    ];

    /// Triggers that come from outside (events that may arrive late or twice): never an error.
    fn is_external(trigger: Trigger) -> bool {
        matches!(trigger, T::PaymentSucceeded | T::PaymentFailed | T::ReservationExpired)
    }

    #[test]
    fn every_state_and_trigger_pair_is_decided_as_specified() {
        for from in OrderStatus::ALL {
            for trigger in Trigger::ALL {
                let step = next(from, trigger);
                match MOVES.iter().find(|(f, t, _)| *f == from && *t == trigger) {
                    Some((_, _, to)) => assert_eq!(step, Step::Move(*to), "{from:?} + {trigger:?}"),
                    None => {
                        assert!(!matches!(step, Step::Move(_)), "{from:?} + {trigger:?} moved: {step:?}");
                        if is_external(trigger) {
                            assert_eq!(step, Step::Stay, "{from:?} + {trigger:?} must be harmless");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn final_states_never_move() {
        for from in OrderStatus::ALL.into_iter().filter(|s| s.is_final()) {
            for trigger in Trigger::ALL {
                assert!(!matches!(next(from, trigger), Step::Move(_)), "{from:?} + {trigger:?}");
            }
        }
    }

    #[test]
    fn cancelling_stops_at_shipping() {
        for from in [
            S::Shipped,
            S::OutForDelivery,
            S::Delivered,
            S::ReturnRequested,
            S::Returned,
        ] {
            assert!(matches!(next(from, T::Cancel), Step::Refuse(_)), "{from:?}");
        }
    }

    #[test]
    fn admins_set_only_fulfilment_statuses() {
        assert_eq!(admin_trigger(S::Shipped), Some(T::Ship));
        assert_eq!(admin_trigger(S::Cancelled), Some(T::Cancel));
        for status in [
            S::Pending,
            S::Paid,
            S::PaymentFailed,
            S::ReturnRequested,
            S::Returned,
            S::Refunded,
        ] {
            assert_eq!(admin_trigger(status), None, "{status:?}");
        }
    }

    #[test]
    fn statuses_round_trip_through_text() {
        for status in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(status.as_str()), Some(status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        assert_eq!(OrderStatus::parse("shipping"), None);
    }

    #[test]
    fn order_numbers_are_zero_padded() {
        assert_eq!(order_number(2026, 123), "ORD-2026-000123");
        assert_eq!(order_number(2027, 1_234_567), "ORD-2027-1234567");
    }

    fn pricing() -> Pricing {
        Pricing {
            shipping_flat: 499,
            free_shipping_threshold: Some(5_000),
            tax_rates_bps: BTreeMap::from([("DE".to_owned(), 1_900)]),
            default_tax_bps: 0,
        }
    }

    #[test]
    fn totals_add_shipping_below_the_threshold_and_tax_by_country() {
        let t = pricing().totals(&[(1_000, 2), (250, 1)], 0, "de").unwrap();
        assert_eq!(t.subtotal, 2_250);
        assert_eq!(t.shipping, 499);
        // 19 % of 2 749 = 522.31 → 522.
        assert_eq!(t.tax, 522);
        assert_eq!(t.total, 2_250 + 499 + 522);

        let free = pricing().totals(&[(5_000, 1)], 0, "US").unwrap();
        assert_eq!((free.shipping, free.tax, free.total), (0, 0, 5_000));
    }

    #[test]
    fn the_discount_counts_towards_the_free_shipping_threshold_and_is_capped() {
        let t = pricing().totals(&[(5_000, 1)], 100, "US").unwrap();
        assert_eq!((t.discount, t.shipping, t.total), (100, 499, 5_399));
        let capped = pricing().totals(&[(300, 1)], 10_000, "US").unwrap();
        assert_eq!((capped.discount, capped.total), (300, 499));
    }

    #[test]
    fn tax_rounds_half_up_and_overflow_is_refused() {
        let p = Pricing {
            default_tax_bps: 500,
            ..Pricing::default()
        };
        // 5 % of 10 = 0.5 → 1; of 9 = 0.45 → 0.
        assert_eq!(p.totals(&[(10, 1)], 0, "FR").unwrap().tax, 1);
        assert_eq!(p.totals(&[(9, 1)], 0, "FR").unwrap().tax, 0);
        assert_eq!(p.totals(&[(i64::MAX, 2)], 0, "FR"), None);
    }

    fn terms(kind: CouponKind, value: i64) -> CouponTerms {
        CouponTerms {
            kind,
            value,
            min_subtotal: 1_000,
            starts_at: Some(100),
            ends_at: Some(200),
            active: true,
        }
    }

    #[test]
    fn coupons_apply_inside_their_window_above_their_minimum() {
        assert_eq!(terms(CouponKind::Percent, 10).discount(2_345, 150), Ok(235));
        assert_eq!(terms(CouponKind::Fixed, 500).discount(2_000, 150), Ok(500));
        assert_eq!(terms(CouponKind::Fixed, 5_000).discount(2_000, 150), Ok(2_000));
        assert_eq!(
            terms(CouponKind::Percent, 10).discount(2_000, 99),
            Err(CouponRefusal::NotYetValid)
        );
        assert_eq!(
            terms(CouponKind::Percent, 10).discount(2_000, 200),
            Err(CouponRefusal::Expired)
        );
        assert_eq!(
            terms(CouponKind::Percent, 10).discount(999, 150),
            Err(CouponRefusal::BelowMinimum { min_subtotal: 1_000 })
        );
        let inactive = CouponTerms {
            active: false,
            ..terms(CouponKind::Percent, 10)
        };
        assert_eq!(inactive.discount(2_000, 150), Err(CouponRefusal::Inactive));
    }

    #[test]
    fn coupon_codes_are_checked() {
        assert_eq!(normalize_coupon_code(" save-10 ").as_deref(), Some("SAVE-10"));
        assert_eq!(normalize_coupon_code("ab"), None);
        assert_eq!(normalize_coupon_code("no spaces"), None);
    }
}
