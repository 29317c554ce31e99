//! A fixed set of locks shared out by key: two keys share a lock only by chance, and then only
//! wait for each other.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;

use tokio::sync::Mutex;

pub(crate) struct Stripes {
    locks: Box<[Arc<Mutex<()>>]>,
    hasher: RandomState,
}

impl Stripes {
    pub(crate) fn new(count: usize) -> Self {
        Self {
            locks: (0..count.max(1)).map(|_| Arc::new(Mutex::new(()))).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The lock of `key`'s stripe.
    pub(crate) fn of(&self, key: &str) -> &Arc<Mutex<()>> {
        let slot = usize::try_from(self.hasher.hash_one(key) % self.locks.len() as u64).unwrap_or(0);
        &self.locks[slot]
    }
}
