//! The pieces every Mercato service shares: configuration, the error type, ids, money,
//! pagination, the store, events and the bus, authentication, telemetry, health, rate limits
//! and the service-to-service HTTP client.

pub mod auth;
pub mod bus;
pub mod clock;
pub mod config;
pub mod consumer;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod http_client;
pub mod id;
pub mod money;
pub mod outbox;
pub mod page;
pub mod periodic;
pub mod ratelimit;
pub mod redis_link;
pub mod sku;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod traces;

pub use error::{ApiError, ApiResult, FieldError};
