//! The knock datagram ([`portfw_common::SPA_MAGIC`]'s layout): building and signing it,
//! parsing it, and checking its signature and its clock.
//!
//! ```text
//! "PFWK" | version u8 | UNIX seconds u64 BE | nonce [16] | name length u8 | name | HMAC-SHA256 [32]
//! ```
//! The HMAC covers every byte before it. Parsing checks only the layout; nothing in a
//! datagram is trusted until [`Parsed::verify`] has checked its HMAC.
use hmac::{Hmac, Mac as _};
use portfw_common::{SPA_MAC_LEN, SPA_MAGIC, SPA_NONCE_LEN, SPA_VERSION};
use sha2::Sha256;

use super::Key;

type HmacSha256 = Hmac<Sha256>;

/// Bytes before the door name: magic, version, timestamp, nonce and the name's length.
pub const HEADER_LEN: usize = SPA_MAGIC.len() + 1 + 8 + SPA_NONCE_LEN + 1;
/// The shortest knock: a one-byte door name.
pub const MIN_LEN: usize = HEADER_LEN + 1 + SPA_MAC_LEN;
/// The longest knock: a 255-byte door name.
pub const MAX_LEN: usize = HEADER_LEN + u8::MAX as usize + SPA_MAC_LEN;

#[derive(Debug, thiserror::Error)]
pub enum SpaError {
    /// Not a knock at all, or a truncated one.
    #[error("malformed knock: {why}")]
    Malformed { why: &'static str },
    /// The HMAC does not match: a wrong key, or a forged or altered knock.
    #[error("the knock's HMAC does not match the door's key")]
    BadMac,
    /// The sender's clock is too far from ours: a late replay, or a clock that is off.
    #[error("the knock's timestamp is {skew_secs} s off this host's clock (at most ±{window} s)")]
    Stale { skew_secs: i64, window: u64 },
    /// The nonce was seen already: a replayed capture.
    #[error("the knock's nonce was seen before: a replay")]
    Replay,
    /// `portfw knock`: the door name does not fit the length byte.
    #[error("door name `{name}` is {len} bytes long; a knock carries at most 255")]
    DoorName { name: String, len: usize },
    #[error("reading random bytes from the operating system")]
    Random {
        #[source]
        source: getrandom::Error,
    },
}

/// What a knock says: when it was sent, its nonce, and the door it asks to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Knock {
    /// The sender's UNIX time, in seconds.
    pub timestamp: u64,
    pub nonce: [u8; SPA_NONCE_LEN],
    /// The door's name, as the policy spells it.
    pub door: Vec<u8>,
}

impl Knock {
    /// A knock for `door` sent at `timestamp`, with a fresh random nonce.
    pub fn new(door: &str, timestamp: u64) -> Result<Self, SpaError> {
        if door.is_empty() || door.len() > usize::from(u8::MAX) {
            return Err(SpaError::DoorName {
                name: door.to_string(),
                len: door.len(),
            });
        }
        let mut nonce = [0u8; SPA_NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|source| SpaError::Random { source })?;
        Ok(Self {
            timestamp,
            nonce,
            door: door.as_bytes().to_vec(),
        })
    }

    /// The datagram, signed with `key`.
    pub fn encode(&self, key: &Key) -> Result<Vec<u8>, SpaError> {
        let len = u8::try_from(self.door.len())
            .ok()
            .filter(|&len| len != 0)
            .ok_or_else(|| SpaError::DoorName {
                name: String::from_utf8_lossy(&self.door).into_owned(),
                len: self.door.len(),
            })?;
        let mut out = Vec::with_capacity(HEADER_LEN + self.door.len() + SPA_MAC_LEN);
        out.extend_from_slice(&SPA_MAGIC);
        out.push(SPA_VERSION);
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        out.push(len);
        out.extend_from_slice(&self.door);
        let mac = mac(key, &out).finalize().into_bytes();
        out.extend_from_slice(&mac);
        Ok(out)
    }
}

fn mac(key: &Key, signed: &[u8]) -> HmacSha256 {
    // HMAC pads a key shorter than the hash's block with zeros (RFC 2104), so this is HMAC
    // with the 32-byte key, through the constructor that takes a whole block and cannot fail.
    let mut block = [0u8; 64];
    block[..key.bytes().len()].copy_from_slice(key.bytes());
    let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new(&block.into());
    mac.update(signed);
    mac
}

/// A datagram laid out as a knock, its HMAC not checked yet.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub knock: Knock,
    signed: &'a [u8],
    mac: &'a [u8],
}

/// Reads `datagram` as a knock. Checks the layout only: see [`Parsed::verify`].
pub fn parse(datagram: &[u8]) -> Result<Parsed<'_>, SpaError> {
    let malformed = |why| Err(SpaError::Malformed { why });
    if datagram.len() < MIN_LEN {
        return malformed("too short");
    }
    if datagram.len() > MAX_LEN {
        return malformed("too long");
    }
    if datagram[..SPA_MAGIC.len()] != SPA_MAGIC {
        return malformed("not a portfw knock (wrong magic)");
    }
    let mut at = SPA_MAGIC.len();
    if datagram[at] != SPA_VERSION {
        return malformed("unknown version");
    }
    at += 1;
    let mut timestamp = [0u8; 8];
    timestamp.copy_from_slice(&datagram[at..at + 8]);
    at += 8;
    let mut nonce = [0u8; SPA_NONCE_LEN];
    nonce.copy_from_slice(&datagram[at..at + SPA_NONCE_LEN]);
    at += SPA_NONCE_LEN;
    let name_len = usize::from(datagram[at]);
    at += 1;
    if name_len == 0 {
        return malformed("empty door name");
    }
    if datagram.len() != at + name_len + SPA_MAC_LEN {
        return malformed("the door name's length does not match the datagram's");
    }
    let door = datagram[at..at + name_len].to_vec();
    at += name_len;
    Ok(Parsed {
        knock: Knock {
            timestamp: u64::from_be_bytes(timestamp),
            nonce,
            door,
        },
        signed: &datagram[..at],
        mac: &datagram[at..],
    })
}

impl Parsed<'_> {
    /// Checks the HMAC with `key`, in constant time.
    pub fn verify(&self, key: &Key) -> Result<(), SpaError> {
        mac(key, self.signed)
            .verify_slice(self.mac)
            .map_err(|_| SpaError::BadMac)
    }
}

/// Checks that a knock sent at `timestamp` is within `window` seconds of `now` (both UNIX
/// seconds), either way.
pub fn check_clock(timestamp: u64, now: u64, window: u64) -> Result<(), SpaError> {
    let skew = i128::from(timestamp) - i128::from(now);
    if skew.unsigned_abs() <= u128::from(window) {
        Ok(())
    } else {
        Err(SpaError::Stale {
            skew_secs: skew.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
            window,
        })
    }
}

#[cfg(test)]
mod tests {
    use portfw_common::SPA_WINDOW_SECS;

    use super::*;

    fn key(byte: u8) -> Key {
        Key::from_bytes([byte; 32])
    }

    #[test]
    fn a_knock_survives_the_round_trip() {
        let knock = Knock::new("spa", 1_700_000_000).expect("knock");
        let datagram = knock.encode(&key(7)).expect("encode");
        assert_eq!(datagram.len(), HEADER_LEN + 3 + SPA_MAC_LEN);
        assert_eq!(&datagram[..4], b"PFWK");
        assert_eq!(datagram[4], SPA_VERSION);
        assert_eq!(&datagram[5..13], &1_700_000_000u64.to_be_bytes());
        assert_eq!(datagram[29], 3);
        assert_eq!(&datagram[30..33], b"spa");
        let parsed = parse(&datagram).expect("parse");
        assert_eq!(parsed.knock, knock);
        parsed.verify(&key(7)).expect("verify");
    }

    #[test]
    fn the_mac_is_hmac_sha256_over_everything_before_it() {
        let knock = Knock {
            timestamp: 1,
            nonce: [9; SPA_NONCE_LEN],
            door: b"d".to_vec(),
        };
        let datagram = knock.encode(&key(1)).expect("encode");
        let (signed, mac) = datagram.split_at(datagram.len() - SPA_MAC_LEN);
        let mut expected =
            <HmacSha256 as hmac::digest::KeyInit>::new_from_slice(&[1; 32]).expect("key");
        expected.update(signed);
        assert_eq!(mac, &expected.finalize().into_bytes()[..]);
    }

    #[test]
    fn nonces_differ() {
        let a = Knock::new("spa", 1).expect("knock");
        let b = Knock::new("spa", 1).expect("knock");
        assert_ne!(a.nonce, b.nonce);
    }

    #[test]
    fn a_wrong_key_or_a_changed_byte_fails_the_mac() {
        let datagram = Knock::new("spa", 5)
            .and_then(|k| k.encode(&key(7)))
            .expect("knock");
        assert!(matches!(
            parse(&datagram).and_then(|p| p.verify(&key(8))),
            Err(SpaError::BadMac)
        ));
        // Every byte is covered: the timestamp, the nonce, the name, the MAC itself.
        for at in [5, 12, 13, 28, 30, datagram.len() - 1] {
            let mut altered = datagram.clone();
            altered[at] ^= 1;
            assert!(
                matches!(
                    parse(&altered).and_then(|p| p.verify(&key(7))),
                    Err(SpaError::BadMac)
                ),
                "byte {at}"
            );
        }
    }

    #[test]
    fn malformed_datagrams_are_refused() {
        let good = Knock::new("door", 5)
            .and_then(|k| k.encode(&key(7)))
            .expect("knock");
        let mut cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            good[..good.len() - 1].to_vec(),
            [good.clone(), vec![0]].concat(),
            vec![0; MAX_LEN + 1],
        ];
        let mut magic = good.clone();
        magic[0] = b'X';
        cases.push(magic);
        let mut version = good.clone();
        version[4] = 2;
        cases.push(version);
        let mut length = good.clone();
        length[29] = 5;
        cases.push(length);
        let mut empty = good.clone();
        empty[29] = 0;
        cases.push(empty);
        for case in cases {
            assert!(
                matches!(parse(&case), Err(SpaError::Malformed { .. })),
                "{case:?}"
            );
        }
    }

    #[test]
    fn door_names_must_fit_the_length_byte() {
        assert!(matches!(
            Knock::new("", 1),
            Err(SpaError::DoorName { len: 0, .. })
        ));
        assert!(matches!(
            Knock::new(&"d".repeat(256), 1),
            Err(SpaError::DoorName { len: 256, .. })
        ));
        let longest = Knock::new(&"d".repeat(255), 1)
            .and_then(|k| k.encode(&key(1)))
            .expect("255 bytes fit");
        assert_eq!(longest.len(), MAX_LEN);
        assert!(parse(&longest).is_ok());
    }

    #[test]
    fn stale_timestamps_are_refused_both_ways() {
        let now = 1_700_000_000;
        let w = SPA_WINDOW_SECS;
        assert!(check_clock(now, now, w).is_ok());
        assert!(check_clock(now - w, now, w).is_ok());
        assert!(check_clock(now + w, now, w).is_ok());
        assert!(matches!(
            check_clock(now - w - 1, now, w),
            Err(SpaError::Stale { skew_secs: -31, .. })
        ));
        assert!(matches!(
            check_clock(now + 3600, now, w),
            Err(SpaError::Stale {
                skew_secs: 3600,
                ..
            })
        ));
        assert!(check_clock(u64::MAX, 0, w).is_err());
        assert!(check_clock(0, u64::MAX, w).is_err());
    }
}
