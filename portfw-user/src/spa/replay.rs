//! The agent's memory of the knocks it accepted, so that a captured knock replayed within
//! the clock window opens nothing.
//!
//! A nonce is kept for twice the clock window ([`portfw_common::SPA_WINDOW_SECS`]) after
//! the knock's own timestamp, or after it arrived if that is later: past that, a replay of
//! the knock fails the clock check anyway. Only knocks whose HMAC and clock checked out
//! are remembered, so only holders of a key can fill the cache; it is bounded all the
//! same, and a full cache refuses knocks rather than forget a nonce that is still live.
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
};

use portfw_common::SPA_NONCE_LEN;

type Nonce = [u8; SPA_NONCE_LEN];

/// Nonces most remembered at once.
pub const REPLAY_CACHE_MAX: usize = 65_536;

#[derive(Debug)]
pub struct ReplayCache {
    /// Each nonce and when (UNIX seconds) it may be forgotten.
    seen: HashMap<Nonce, u64>,
    /// The same, soonest forgotten first.
    order: BinaryHeap<Reverse<(u64, Nonce)>>,
    keep_secs: u64,
    max: usize,
}

/// What [`ReplayCache::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// A new nonce, now remembered.
    New,
    /// Seen before: a replay.
    Replay,
    /// The cache is full of live nonces: refused, to be safe.
    Full,
}

impl ReplayCache {
    /// A cache keeping nonces for `keep_secs`.
    pub fn new(keep_secs: u64) -> Self {
        Self::with_capacity(keep_secs, REPLAY_CACHE_MAX)
    }

    pub fn with_capacity(keep_secs: u64, max: usize) -> Self {
        Self {
            seen: HashMap::new(),
            order: BinaryHeap::new(),
            keep_secs,
            max,
        }
    }

    /// Remembers `nonce` of a knock stamped `timestamp`, arriving at `now` (UNIX seconds),
    /// unless it was seen already.
    pub fn admit(&mut self, nonce: Nonce, timestamp: u64, now: u64) -> Admission {
        self.expire(now);
        if self.seen.contains_key(&nonce) {
            return Admission::Replay;
        }
        if self.seen.len() >= self.max {
            return Admission::Full;
        }
        let until = timestamp.max(now).saturating_add(self.keep_secs);
        self.seen.insert(nonce, until);
        self.order.push(Reverse((until, nonce)));
        Admission::New
    }

    /// Forgets the nonces whose time is up.
    fn expire(&mut self, now: u64) {
        while let Some(&Reverse((until, nonce))) = self.order.peek() {
            if until > now {
                break;
            }
            self.order.pop();
            self.seen.remove(&nonce);
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_admitted_once() {
        let mut cache = ReplayCache::new(60);
        assert_eq!(cache.admit([1; 16], 100, 100), Admission::New);
        assert_eq!(cache.admit([2; 16], 100, 100), Admission::New);
        assert_eq!(cache.admit([1; 16], 100, 101), Admission::Replay);
        assert_eq!(cache.admit([1; 16], 100, 159), Admission::Replay);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn nonces_are_kept_for_twice_the_window_then_forgotten() {
        let mut cache = ReplayCache::new(60);
        assert_eq!(cache.admit([1; 16], 100, 100), Admission::New);
        // A knock stamped in the future is kept from its timestamp.
        assert_eq!(cache.admit([2; 16], 130, 100), Admission::New);
        assert_eq!(cache.admit([3; 16], 1, 1), Admission::New);
        cache.expire(160);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.admit([2; 16], 130, 189), Admission::Replay);
        cache.expire(190);
        assert!(cache.is_empty());
        assert_eq!(cache.admit([1; 16], 100, 190), Admission::New);
    }

    #[test]
    fn a_full_cache_refuses_rather_than_forgets() {
        let mut cache = ReplayCache::with_capacity(60, 2);
        assert_eq!(cache.admit([1; 16], 100, 100), Admission::New);
        assert_eq!(cache.admit([2; 16], 100, 100), Admission::New);
        assert_eq!(cache.admit([3; 16], 100, 100), Admission::Full);
        assert_eq!(cache.admit([1; 16], 100, 100), Admission::Replay);
        assert_eq!(cache.admit([3; 16], 100, 160), Admission::New);
    }
}
