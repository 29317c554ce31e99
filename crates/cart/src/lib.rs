//! The cart service: user and guest carts, each line a SKU, a quantity and a snapshot of the
//! product (name, image, price) refreshed by product events; totals and warnings (price
//! changed, out of stock, product gone) on every view; the guest cart merges into the user's at
//! login; idle carts are reported once as cart.abandoned. Carts live in SQL (all-in-one) or Redis
//! (distributed) behind [`store::CartStore`].

pub mod api;
pub mod events;
pub mod holds;
pub mod kept_store;
pub mod redis_store;
pub mod service;
pub mod store;
mod stripes;

pub use service::{Cart, Owner, Settings, SERVICE};
