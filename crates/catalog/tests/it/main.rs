//! The catalog's store conformance suite, run on SQLite and (when `MERCATO_TEST_POSTGRES_URL`
//! is set) on PostgreSQL, including a property test of list filters and the search index
//! against a brute-force filter over seeded data.

mod redis_cache;
mod store;
