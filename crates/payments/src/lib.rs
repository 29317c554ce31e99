//! The payments service: a payment per order through a provider's hosted page (or cash on
//! delivery), signed provider webhooks applied exactly once through one state machine, refunds
//! that never exceed what was captured, and the mock payment provider — a real component with a
//! hosted page, signed webhooks and an automatic mode that can answer late, twice or out of
//! order.

pub mod api;
pub mod domain;
pub mod events;
pub mod mock;
pub mod provider;
pub mod service;
pub mod store;

pub use events::ORDER_EVENTS;
pub use mock::AutoSettings;
pub use service::{
    CreatePayment, ListFilter, PaymentView, Payments, RefundRequest, RefundView, Settings, WebhookOutcome, FAILED,
    REFUND_SUCCEEDED, SERVICE, SUCCEEDED,
};
