//! Connection limits: a burst of connections from one source gets no more than the rule's
//! `limit:` through, another source still connects, the over-limit packets count as
//! `drop_limit`, and a rule without `limit:` is not limited.

use std::net::IpAddr;

use crate::{Rig, counter, parallel};

const LIMITED: u16 = 8022;
const UNLIMITED: u16 = 8080;
const LIMITED_UDP: u16 = 8053;

const POLICY: &str = "\
default: drop
log: drops
rules:
  - allow: 8022/tcp
    limit: 5/10s
  - allow: 8053/udp
    limit: 3/10s
  - allow: 8080/tcp
";

/// A burst of `count` simultaneous connections from `src` to `port`; how many connected.
fn burst(rig: &Rig, src: impl Into<IpAddr>, port: u16, count: u32) -> u64 {
    let seen = rig.tool(
        "burst",
        src,
        &[
            "--port",
            &port.to_string(),
            "--count",
            &count.to_string(),
            // Short of the SYN retransmission at 1 s, which the bucket would see too.
            "--timeout",
            "0.9",
        ],
    );
    seen["connected"].as_u64().expect("burst result")
}

#[test]
fn a_burst_of_connections_is_limited_per_source() {
    let mut rig = Rig::new("df-limit", 2);
    rig.lab
        .start_responder(&[LIMITED, UNLIMITED], &[LIMITED_UDP])
        .expect("responder");
    let (flooder, other) = (rig.src(1), rig.src(2));
    let _policy = rig.apply("limit.yaml", POLICY);
    let before = rig.status();

    let through = burst(&rig, flooder, LIMITED, 10);
    assert!(
        (1..=5).contains(&through),
        "limit 5/10s let {through} of a burst of 10 connections through"
    );
    // The flooder stays limited while its bucket is empty (it regains one connection every
    // 2 s); the other source has a bucket of its own.
    let [limited, reached] = parallel(vec![
        Box::new(|| rig.silent(flooder, LIMITED)),
        Box::new(|| rig.reaches(other, LIMITED)),
    ])[..] else {
        unreachable!()
    };
    assert!(
        limited,
        "the flooder's next connection right after its burst got through"
    );
    assert!(
        reached,
        "another source is limited by the first one's burst"
    );
    let after = rig.status();
    let dropped = counter(&after, "drop_limit") - counter(&before, "drop_limit");
    assert!(
        dropped > 10 - through,
        "drop_limit grew by {dropped}: {} SYNs of the burst and one more were over the limit",
        10 - through
    );

    // A rule without `limit:` is not limited.
    let all = burst(&rig, flooder, UNLIMITED, 10);
    assert_eq!(all, 10, "a burst to the unlimited rule");

    // UDP: every datagram counts.
    let seen = rig.tool(
        "udp-burst",
        flooder,
        &["--port", &LIMITED_UDP.to_string(), "--count", "8"],
    );
    let answers = seen["answers"].as_u64().expect("udp-burst result");
    assert!(
        (1..=3).contains(&answers),
        "limit 3/10s answered {answers} of 8 datagrams"
    );
    let seen = rig.tool(
        "udp-burst",
        other,
        &["--port", &LIMITED_UDP.to_string(), "--count", "1"],
    );
    assert_eq!(seen["answers"], 1, "another source's datagram: {seen}");
    let last = rig.status();
    assert!(
        counter(&last, "drop_limit") - counter(&after, "drop_limit") >= 8 - answers,
        "the UDP datagrams over the limit count as drop_limit"
    );
}

#[test]
fn ipv6_sources_share_a_limit_by_their_64() {
    let mut rig = Rig::new("df-limit-v6", 0);
    rig.lab.start_responder(&[LIMITED], &[]).expect("responder");
    let [flooder, neighbour, other] = rig.v6_sources();
    let _policy = rig.apply("limit.yaml", POLICY);
    let through = burst(&rig, flooder, LIMITED, 10);
    assert!(
        (1..=5).contains(&through),
        "limit 5/10s let {through} of an IPv6 burst of 10 through"
    );
    let [same, reached] = parallel(vec![
        Box::new(|| rig.silent(neighbour, LIMITED)),
        Box::new(|| rig.reaches(other, LIMITED)),
    ])[..] else {
        unreachable!()
    };
    assert!(
        same,
        "{neighbour} shares the /64 of {flooder} and its empty bucket"
    );
    assert!(
        reached,
        "{other}, in another /64, is limited by {flooder}'s burst"
    );
}
