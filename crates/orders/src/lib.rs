//! The orders service: checkout with idempotency keys (DESIGN.md §3), orders with their human
//! numbers, address snapshots and timelines, the one state machine every status change goes
//! through, coupons with atomic usage limits, returns, and sellers' view of their lines.

pub mod api;
pub mod checkout;
pub mod coupons;
pub mod domain;
pub mod events;
pub mod live;
pub mod returns;
pub mod service;
pub mod store;

pub use service::{Clients, Orders, Settings, SERVICE};
