//! The inventory service: stock per SKU (on hand, reserved, available), a ledger of every
//! movement, reservations that hold stock for an order until committed, released or expired,
//! low-stock alerts, and the invariant check behind `mercato inventory check`.

pub mod api;
mod batch;
pub mod domain;
pub mod events;
pub mod service;
pub mod store;

pub use service::{Context, Inventory, Settings, SERVICE};
