//! The catalog service: categories (a tree), products with variants, images and attributes,
//! reviews with moderation, wishlists, full-text search (tantivy) and a product read cache.

pub mod api;
pub mod cache;
pub mod domain;
pub mod events;
pub mod indexer;
pub mod redis_cache;
pub mod search;
pub mod seed;
pub mod service;
pub mod store;
pub mod views;

pub use service::{Catalog, Settings, SERVICE};
