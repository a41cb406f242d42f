//! Opening a knock door for one source: an entry of the pinned open-door table
//! (`PFW_DOORS`), which the kernel reads on the door's `opens` port. The table is keyed by
//! the opened port ([`opens_id`]) and the source, so that a port several doors open costs
//! the kernel one lookup; the value names the door that opened it.
//!
//! This writes the pinned map itself, by path, so that the agent needs nothing of the
//! loader but the pin locations. `loader::defences::open_door` takes its place once the
//! loader has it.
use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData};
use portfw_common::{DefenceMaps, DoorDef, DoorKey, DoorValue, SourceKey, opens_id};

use crate::loader::{LoaderError, Paths};

/// The key of `id` (the open-door table's: [`opens_id`]) for `source`: the full address (doors are per address, even in
/// IPv6, unlike blocks and limits, which go by /64). An IPv4 address mapped into IPv6, as
/// a dual-stack socket reports one, is keyed as the IPv4 address the kernel sees.
pub fn door_key(id: u32, source: IpAddr) -> DoorKey {
    let mut key = SourceKey::default();
    match source.to_canonical() {
        IpAddr::V4(v4) => {
            key.family = 4;
            key.addr[..4].copy_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            key.family = 6;
            key.addr = v6.octets();
        }
    }
    DoorKey { id, source: key }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's state tables.
pub fn monotonic_ns() -> u64 {
    // SAFETY: an all-zero timespec is valid and clock_gettime fills it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Opens `door` (its `opens` port) for `source` for `for_ns` (the door's `for:`,
/// [`DoorDef::open_ns`]) from now, in the filter pinned at `paths`. Opening an open door
/// again extends it. Returns the entry written.
pub fn open_door(
    paths: &Paths,
    door: &DoorDef,
    source: IpAddr,
    for_ns: u64,
) -> Result<DoorValue, LoaderError> {
    const MAP: &str = DefenceMaps::DOORS;
    let map_err = |source| LoaderError::Map {
        map: MAP,
        source: Box::new(source),
    };
    let data = MapData::from_pin(paths.map(MAP)).map_err(map_err)?;
    let mut doors =
        HashMap::<MapData, DoorKey, DoorValue>::try_from(Map::LruHashMap(data)).map_err(map_err)?;
    let now = monotonic_ns();
    let value = DoorValue {
        opened_ns: now,
        expires_ns: now.saturating_add(for_ns),
        door: door.id,
        _pad: 0,
    };
    doors
        .insert(
            door_key(opens_id(door.opens_slot, door.opens_port), source),
            value,
            0,
        )
        .map_err(map_err)?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn door_keys_hold_the_full_address() {
        let v4 = door_key(7, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)));
        assert_eq!(v4.id, 7);
        assert_eq!(v4.source.family, 4);
        assert_eq!(&v4.source.addr[..4], &[192, 0, 2, 9]);
        assert_eq!(&v4.source.addr[4..], &[0; 12]);
        let mapped: IpAddr = "::ffff:192.0.2.9".parse().expect("addr");
        assert_eq!(door_key(7, mapped), v4);
        let v6: Ipv6Addr = "2001:db8::1:2".parse().expect("addr");
        let key = door_key(7, IpAddr::V6(v6));
        assert_eq!(key.source.family, 6);
        assert_eq!(key.source.addr, v6.octets());
    }

    #[test]
    fn the_monotonic_clock_moves_forward() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
