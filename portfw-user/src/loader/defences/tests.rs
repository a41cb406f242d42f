//! Unit tests of the defence state helpers: block targets, purge selection, guard bits.
use std::net::Ipv4Addr;

use super::*;
use crate::loader::tables::staged_guard;

fn cidr(text: &str) -> Cidr {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

#[test]
fn hosts_go_to_the_hash_and_ipv6_is_masked_to_its_64() {
    let v4 = BlockTarget::of(cidr("198.51.100.7")).ok();
    let Some(BlockTarget::Source(key)) = v4 else {
        panic!("{v4:?}");
    };
    assert_eq!(key.family, 4);
    assert_eq!(&key.addr[..4], &[198, 51, 100, 7]);
    assert!(key.addr[4..].iter().all(|&b| b == 0));
    assert_eq!(
        v4.map(|t| t.cidr().to_string()).as_deref(),
        Some("198.51.100.7/32")
    );
    for text in [
        "2001:db8:1:2:3:4:5:6",
        "2001:db8:1:2::/64",
        "2001:db8:1:2:ff::/80",
    ] {
        let target = BlockTarget::of(cidr(text)).ok();
        let Some(BlockTarget::Source(key)) = target else {
            panic!("{text}: {target:?}");
        };
        assert_eq!(key.family, 6);
        assert!(key.addr[8..].iter().all(|&b| b == 0), "{text}");
        assert_eq!(
            target.map(|t| t.cidr().to_string()).as_deref(),
            Some("2001:db8:1:2::/64")
        );
    }
}

#[test]
fn other_prefixes_go_to_the_trie_after_the_family() {
    let target = BlockTarget::of(cidr("10.1.2.3/8")).ok();
    let Some(BlockTarget::Net(data, len)) = target else {
        panic!("{target:?}");
    };
    assert_eq!(len, 8);
    assert_eq!(&data[..8], &[4, 0, 0, 0, 10, 0, 0, 0]);
    assert_eq!(
        target.map(|t| t.cidr().to_string()).as_deref(),
        Some("10.0.0.0/8")
    );
    let target = BlockTarget::of(cidr("2001:db8::/32")).ok();
    let Some(BlockTarget::Net(data, 32)) = target else {
        panic!("{target:?}");
    };
    assert_eq!(data[0], 6);
    assert_eq!(&data[4..8], &[0x20, 0x01, 0x0d, 0xb8]);
    assert_eq!(net_cidr(&data, 64).to_string(), "2001:db8::/32");
    assert!(matches!(
        BlockTarget::of(cidr("0.0.0.0/0")),
        Err(LoaderError::BlockEverything(_))
    ));
    assert!(BlockTarget::of(cidr("::/0")).is_err());
}

#[test]
fn a_reapply_keeps_manual_blocks_and_its_own_doors() {
    let block = |reason, expires_ns| BlockValue {
        expires_ns,
        created_ns: 1,
        reason,
        _pad: [0; 7],
    };
    let door = |id| DoorKey {
        id,
        source: source_key(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
    };
    let no_scan = Purge {
        doors: [7].into(),
        scan: false,
    };
    let now = 1_000;
    assert!(no_scan.keeps_block(&block(block_reason::MANUAL, 0), now));
    assert!(no_scan.keeps_block(&block(block_reason::MANUAL, 2_000), now));
    assert!(
        !no_scan.keeps_block(&block(block_reason::MANUAL, 999), now),
        "expired"
    );
    assert!(!no_scan.keeps_block(&block(block_reason::SCAN, 2_000), now));
    let scan = Purge {
        scan: true,
        ..no_scan.clone()
    };
    assert!(scan.keeps_block(&block(block_reason::SCAN, 2_000), now));
    assert!(no_scan.keeps_knock(&door(7)));
    assert!(!no_scan.keeps_knock(&door(8)));
    let open = |door| DoorValue {
        opened_ns: 1,
        expires_ns: 2,
        door,
        _pad: 0,
    };
    assert!(no_scan.keeps_door(&open(7)));
    assert!(!no_scan.keeps_door(&open(8)));
}

#[test]
fn the_staged_guard_looks_blocks_up_when_there_are_any() {
    assert_eq!(staged_guard(0, false, false), 0);
    assert_eq!(staged_guard(0, true, false), guard::BLOCKS);
    assert_eq!(staged_guard(0, false, true), guard::NETS);
    // The scan guard adds blocks at any time: its generation always looks them up.
    assert_eq!(
        staged_guard(guard::SCAN, false, false),
        guard::SCAN | guard::BLOCKS
    );
}

#[test]
fn expiry_is_rounded_down_to_the_millisecond() {
    assert_eq!(seconds_left(10_000_999_999, 0), 10.0);
    assert_eq!(seconds_left(5, 10), 0.0);
    let shown = block_status(
        cidr("198.51.100.7"),
        &BlockValue {
            expires_ns: 0,
            created_ns: 0,
            reason: block_reason::SCAN,
            _pad: [0; 7],
        },
        5,
    );
    assert_eq!(
        serde_json::to_value(&shown).unwrap_or_default(),
        serde_json::json!({"address": "198.51.100.7/32", "reason": "scan", "expires_in": null})
    );
}
