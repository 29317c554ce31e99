//! The platform crate's integration tests: one conformance suite per port, each instantiated
//! once per backend (quickwit's `metastore_test_suite!`). The store suite runs on SQLite and,
//! when `MERCATO_TEST_POSTGRES_URL` is set, on PostgreSQL; the bus suite runs on the log bus
//! and, when `MERCATO_TEST_NATS_URL` is set, on NATS JetStream; the Redis rate limiter runs when
//! `MERCATO_TEST_REDIS_URL` is set.

mod bus;
mod helpers;
mod ratelimit;
mod store;
