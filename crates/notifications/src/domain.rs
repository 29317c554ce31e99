//! The notifications domain, free of I/O: which kinds of notification exist and which event
//! each answers, who gets one, whether it also goes to the user's inbox, and the states of a
//! notification log row.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One kind of notification: one template, answering one event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// user.registered
    Welcome,
    /// user.email_verification_requested
    VerifyEmail,
    /// user.password_reset_requested
    PasswordReset,
    /// order.created
    OrderPlaced,
    /// payment.succeeded
    PaymentReceived,
    /// payment.failed
    PaymentFailed,
    /// order.shipped
    OrderShipped,
    /// order.out_for_delivery
    OutForDelivery,
    /// order.delivered
    OrderDelivered,
    /// order.cancelled
    OrderCancelled,
    /// refund.succeeded
    RefundIssued,
    /// return.requested
    ReturnRequested,
    /// return.approved
    ReturnApproved,
    /// return.rejected
    ReturnRejected,
    /// return.received
    ReturnReceived,
    /// return.refunded
    ReturnRefunded,
    /// inventory.low_stock, to the operations address.
    LowStock,
    /// shipment.created
    ShipmentCreated,
    /// shipment.code_issued
    DeliveryCode,
    /// shipment.failed_attempt
    DeliveryAttemptFailed,
}

/// Who a kind of notification is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// The account holder, about their account (no inbox entry: the inbox needs the account).
    Account,
    /// The customer, about an order; also written to their in-app inbox.
    Customer,
    /// The shop's operations team (`Settings::operations_email`).
    Operations,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 20] = [
        Self::Welcome,
        Self::VerifyEmail,
        Self::PasswordReset,
        Self::OrderPlaced,
        Self::PaymentReceived,
        Self::PaymentFailed,
        Self::OrderShipped,
        Self::OutForDelivery,
        Self::OrderDelivered,
        Self::OrderCancelled,
        Self::RefundIssued,
        Self::ReturnRequested,
        Self::ReturnApproved,
        Self::ReturnRejected,
        Self::ReturnReceived,
        Self::ReturnRefunded,
        Self::LowStock,
        Self::ShipmentCreated,
        Self::DeliveryCode,
        Self::DeliveryAttemptFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Welcome => "welcome",
            Self::VerifyEmail => "verify_email",
            Self::PasswordReset => "password_reset",
            Self::OrderPlaced => "order_placed",
            Self::PaymentReceived => "payment_received",
            Self::PaymentFailed => "payment_failed",
            Self::OrderShipped => "order_shipped",
            Self::OutForDelivery => "out_for_delivery",
            Self::OrderDelivered => "order_delivered",
            Self::OrderCancelled => "order_cancelled",
            Self::RefundIssued => "refund_issued",
            Self::ReturnRequested => "return_requested",
            Self::ReturnApproved => "return_approved",
            Self::ReturnRejected => "return_rejected",
            Self::ReturnReceived => "return_received",
            Self::ReturnRefunded => "return_refunded",
            Self::LowStock => "low_stock",
            Self::ShipmentCreated => "shipment_created",
            Self::DeliveryCode => "delivery_code",
            Self::DeliveryAttemptFailed => "delivery_attempt_failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == raw)
    }

    /// The event type this kind answers.
    pub fn event_type(self) -> &'static str {
        match self {
            Self::Welcome => "user.registered",
            Self::VerifyEmail => "user.email_verification_requested",
            Self::PasswordReset => "user.password_reset_requested",
            Self::OrderPlaced => "order.created",
            Self::PaymentReceived => "payment.succeeded",
            Self::PaymentFailed => "payment.failed",
            Self::OrderShipped => "order.shipped",
            Self::OutForDelivery => "order.out_for_delivery",
            Self::OrderDelivered => "order.delivered",
            Self::OrderCancelled => "order.cancelled",
            Self::RefundIssued => "refund.succeeded",
            Self::ReturnRequested => "return.requested",
            Self::ReturnApproved => "return.approved",
            Self::ReturnRejected => "return.rejected",
            Self::ReturnReceived => "return.received",
            Self::ReturnRefunded => "return.refunded",
            Self::LowStock => "inventory.low_stock",
            Self::ShipmentCreated => "shipment.created",
            Self::DeliveryCode => "shipment.code_issued",
            Self::DeliveryAttemptFailed => "shipment.failed_attempt",
        }
    }

    /// The kind that answers `event_type`, if any.
    pub fn for_event(event_type: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.event_type() == event_type)
    }

    /// A kind by its name (`order_placed`) or by the event type it answers (`order.created`).
    pub fn lookup(raw: &str) -> Option<Self> {
        Self::parse(raw).or_else(|| Self::for_event(raw))
    }

    pub fn audience(self) -> Audience {
        match self {
            Self::Welcome | Self::VerifyEmail | Self::PasswordReset => Audience::Account,
            Self::LowStock => Audience::Operations,
            _ => Audience::Customer,
        }
    }

    /// Whether the user also finds this notification in their in-app inbox.
    pub fn has_inbox_entry(self) -> bool {
        self.audience() == Audience::Customer
    }

    /// The data field holding the recipient's address, when the event carries one.
    pub fn email_field(self) -> Option<&'static str> {
        match self {
            Self::Welcome | Self::VerifyEmail | Self::PasswordReset => Some("email"),
            Self::OrderPlaced
            | Self::OrderShipped
            | Self::OutForDelivery
            | Self::OrderDelivered
            | Self::OrderCancelled => Some("customer_email"),
            _ => None,
        }
    }
}

/// Where a notification goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Inbox,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Inbox => "inbox",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "email" => Some(Self::Email),
            "inbox" => Some(Self::Inbox),
            _ => None,
        }
    }
}

/// Where a notification's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStatus {
    /// An attempt holds the row and is sending now (or died doing so; taken over when stale).
    Sending,
    /// Delivered; final.
    Sent,
    /// The last attempt failed; the next delivery of the event tries again.
    Failed,
    /// Nothing to send (no recipient, an unusable address); final, with the reason as the error.
    Skipped,
}

impl LogStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "sending" => Some(Self::Sending),
            "sent" => Some(Self::Sent),
            "failed" => Some(Self::Failed),
            "skipped" => Some(Self::Skipped),
            _ => None,
        }
    }

    /// Whether no further attempt will be made.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Sent | Self::Skipped)
    }
}

/// Cuts `text` to at most `max` characters (on a character boundary).
pub fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((index, _)) => &text[..index],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_answer_distinct_events() {
        let mut events = std::collections::HashSet::new();
        for kind in NotificationKind::ALL {
            assert_eq!(NotificationKind::parse(kind.as_str()), Some(kind));
            assert_eq!(NotificationKind::for_event(kind.event_type()), Some(kind));
            assert_eq!(NotificationKind::lookup(kind.event_type()), Some(kind));
            assert!(events.insert(kind.event_type()), "{kind:?} shares its event");
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str());
        }
        assert_eq!(NotificationKind::lookup("order.paid"), None);
        assert_eq!(NotificationKind::parse("nope"), None);
    }

    #[test]
    fn only_customer_kinds_reach_the_inbox() {
        assert!(NotificationKind::OrderPlaced.has_inbox_entry());
        assert!(NotificationKind::DeliveryCode.has_inbox_entry());
        assert!(NotificationKind::ReturnRejected.has_inbox_entry());
        assert!(!NotificationKind::Welcome.has_inbox_entry());
        assert!(!NotificationKind::PasswordReset.has_inbox_entry());
        assert!(!NotificationKind::LowStock.has_inbox_entry());
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("hi", 10), "hi");
    }
}
