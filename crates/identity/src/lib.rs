//! The identity service: accounts, sessions (rotating refresh tokens), password resets, email
//! verification, addresses and the keys access tokens are signed with.

pub mod api;
pub mod domain;
pub mod hashing;
pub mod keys;
pub mod service;
pub mod store;

pub use service::{Identity, Settings, SERVICE};
