//! Composes Mercato's services into one process: the all-in-one application (every service
//! behind the gateway edge, embedded backends by default) or a single service.

pub mod app;
pub mod gateway_app;
pub mod internal;
pub mod local;
pub mod peers;
pub mod service;

pub use app::{App, AppOptions};
