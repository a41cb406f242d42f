//! A fast hasher for the prefix tables built while checking a policy.
//!
//! std's SipHash made removing duplicates from a 100,000-line set file cost as much as
//! parsing it. This one mixes whole words, and starts from a per-process random seed so a
//! set file cannot be crafted in advance to make every prefix collide.

use std::{
    collections::{HashMap, HashSet},
    hash::{BuildHasher, Hasher, RandomState},
};

pub(crate) type QuickMap<K, V> = HashMap<K, V, Seeded>;
pub(crate) type QuickSet<T> = HashSet<T, Seeded>;

/// Builds [`Quick`] hashers that share one random seed.
#[derive(Clone)]
pub(crate) struct Seeded(u64);

impl Default for Seeded {
    fn default() -> Self {
        // std's RandomState is seeded from the OS; its output serves as our seed.
        Self(RandomState::new().hash_one(0x706f_7274_6677_u64))
    }
}

impl BuildHasher for Seeded {
    type Hasher = Quick;

    fn build_hasher(&self) -> Quick {
        Quick(self.0)
    }
}

pub(crate) struct Quick(u64);

impl Quick {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(29);
    }
}

impl Hasher for Quick {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.mix(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.mix(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.mix(n);
    }

    fn write_u128(&mut self, n: u128) {
        self.mix(n as u64);
        self.mix((n >> 64) as u64);
    }

    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }

    fn write_isize(&mut self, n: isize) {
        self.mix(n as u64);
    }

    fn finish(&self) -> u64 {
        // MurmurHash3's finaliser: every input bit reaches the low bits the table indexes by.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;
    use crate::policy::Cidr;

    #[test]
    fn nearby_prefixes_spread_over_the_low_bits() {
        let seeded = Seeded::default();
        let mut buckets = [0usize; 256];
        for i in 0..65_536u32 {
            let [_, _, c, d] = i.to_be_bytes();
            let cidr: Cidr = format!("10.0.{c}.{d}").parse().expect("cidr");
            buckets[(seeded.hash_one(cidr) & 0xff) as usize] += 1;
        }
        // 256 per bucket on average; a poor hash leaves most buckets empty.
        assert!(
            buckets.iter().all(|&n| (128..=384).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn sets_and_maps_work() {
        let mut set = QuickSet::default();
        assert!(set.insert("10.0.0.0/8".parse::<Cidr>().expect("cidr")));
        assert!(!set.insert("10.1.2.3/8".parse::<Cidr>().expect("cidr")));
        let mut map: QuickMap<u32, u32> = QuickMap::default();
        map.insert(1, 2);
        assert_eq!(map.get(&1), Some(&2));
    }
}
