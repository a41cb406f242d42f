//! Tests of `replies:` and `flows:`: defaults, every key, and the position of every error.

use std::time::Duration;

use super::{errors, policy, warnings};
use crate::policy::{Action, Flows};

fn flows(body: &str) -> String {
    format!("default: drop\nflows:\n{body}")
}

#[test]
fn replies_are_allowed_and_flows_take_the_defaults_unless_told() {
    let p = policy("default: drop\n");
    assert_eq!(p.replies, Action::Allow);
    assert_eq!(p.flows, Flows::DEFAULT);
    assert_eq!(
        Flows::DEFAULT,
        Flows {
            max: 262_144,
            tcp_timeout: Duration::from_secs(6 * 3600),
            tcp_closing: Duration::from_secs(10),
            udp_timeout: Duration::from_secs(60),
            icmp_timeout: Duration::from_secs(30),
        }
    );
    assert_eq!(Flows::default(), Flows::DEFAULT);
    assert_eq!(
        policy("default: drop\nreplies: drop\n").replies,
        Action::Drop
    );
    assert_eq!(
        policy("default: drop\nreplies: allow\n").replies,
        Action::Allow
    );
    // `flows:` with nothing after it, like `rules:`, changes nothing.
    assert_eq!(policy("default: drop\nflows:\n").flows, Flows::DEFAULT);
    assert_eq!(policy("default: drop\nflows: {}\n").flows, Flows::DEFAULT);
}

#[test]
fn every_flows_key_is_read() {
    let p = policy(&flows(
        "  max: 1024\n  tcp-timeout: 1d\n  tcp-closing: 30s\n  udp-timeout: 2m\n  \
         icmp-timeout: 5s\n",
    ));
    assert_eq!(
        p.flows,
        Flows {
            max: 1024,
            tcp_timeout: Duration::from_secs(86_400),
            tcp_closing: Duration::from_secs(30),
            udp_timeout: Duration::from_secs(120),
            icmp_timeout: Duration::from_secs(5),
        }
    );
    // Keys left out keep their defaults.
    let p = policy(&flows("  udp-timeout: 5s\n"));
    assert_eq!(
        p.flows,
        Flows {
            udp_timeout: Duration::from_secs(5),
            ..Flows::DEFAULT
        }
    );
    // Flow style, a quoted number, and the bounds themselves.
    let p = policy("default: drop\nflows: {max: '16', icmp-timeout: \"365d\"}\n");
    assert_eq!(p.flows.max, Flows::MIN_MAX);
    assert_eq!(p.flows.icmp_timeout, Duration::from_secs(365 * 86_400));
    assert_eq!(
        policy(&flows("  max: 16777216\n")).flows.max,
        Flows::MAX_MAX
    );
}

#[test]
fn bad_replies_values_point_at_the_value() {
    assert_eq!(
        errors("default: drop\nreplies: maybe\n"),
        ["2:10: `replies` must be `allow` or `drop`, found `maybe`"]
    );
    // An empty value has no position of its own, so the key's is given.
    assert_eq!(
        errors("default: drop\nreplies:\n"),
        ["2:1: `replies` must be `allow` or `drop`, found nothing"]
    );
    assert_eq!(
        errors("default: drop\nreplies: [allow]\n"),
        ["2:10: `replies` must be `allow` or `drop`, found a list"]
    );
    assert_eq!(
        errors("default: drop\nreplies: true\n"),
        ["2:10: `replies` must be `allow` or `drop`, found `true`"]
    );
}

#[test]
fn flows_must_be_a_mapping_of_known_keys() {
    assert_eq!(
        errors("default: drop\nflows: 1000\n"),
        [
            "2:8: `flows` must be a mapping of max, tcp-timeout, tcp-closing, udp-timeout, \
             icmp-timeout, found `1000`"
        ]
    );
    assert_eq!(
        errors("default: drop\nflows: [max]\n"),
        [
            "2:8: `flows` must be a mapping of max, tcp-timeout, tcp-closing, udp-timeout, \
             icmp-timeout, found a list"
        ]
    );
    assert_eq!(
        errors(&flows("  max: 1000\n  tcp_timeout: 1h\n  size: 5\n")),
        [
            "4:3: unknown key `tcp_timeout` in `flows`; expected one of: max, tcp-timeout, \
             tcp-closing, udp-timeout, icmp-timeout",
            "5:3: unknown key `size` in `flows`; expected one of: max, tcp-timeout, \
             tcp-closing, udp-timeout, icmp-timeout",
        ]
    );
    assert_eq!(
        errors(&flows("  max: 1000\n  max: 2000\n")),
        ["4:3: duplicate key `max` (first given at line 3)"]
    );
}

#[test]
fn max_out_of_bounds_says_the_bounds() {
    assert_eq!(
        errors(&flows("  max: 8\n")),
        ["3:8: `max` in `flows` is 8; it must be from 16 to 16777216"]
    );
    assert_eq!(
        errors(&flows("  max: 0\n")),
        ["3:8: `max` in `flows` is 0; it must be from 16 to 16777216"]
    );
    assert_eq!(
        errors(&flows("  max: 16777217\n")),
        ["3:8: `max` in `flows` is 16777217; it must be from 16 to 16777216"]
    );
    // Past u32, and past u64.
    assert_eq!(
        errors(&flows("  max: 4294967296\n")),
        ["3:8: `max` in `flows` is 4294967296; it must be from 16 to 16777216"]
    );
    assert_eq!(
        errors(&flows("  max: 99999999999999999999999\n")),
        ["3:8: `max` in `flows` is 99999999999999999999999; it must be from 16 to 16777216"]
    );
}

#[test]
fn max_must_be_a_whole_number() {
    for (value, found) in [
        ("-5", "`-5`"),
        ("1.5", "`1.5`"),
        ("1e6", "`1e6`"),
        ("0x1000", "`0x1000`"),
        ("lots", "`lots`"),
        ("'256k'", "`256k`"),
        ("true", "`true`"),
        ("", "nothing"),
        ("[1]", "a list"),
    ] {
        assert_eq!(
            errors(&flows(&format!("  max: {value}\n"))),
            [format!(
                "3:{}: `max` in `flows` must be a whole number of flows from 16 to 16777216, \
                 found {found}",
                if value.is_empty() { 3 } else { 8 }
            )],
            "{value}"
        );
    }
}

#[test]
fn bad_durations_point_at_the_value() {
    assert_eq!(
        errors(&flows("  udp-timeout: 60\n")),
        ["3:16: duration `60` has no unit; write `60s` for seconds, or use `m`, `h` or `d`"]
    );
    assert_eq!(
        errors(&flows("  tcp-timeout: 0h\n")),
        ["3:16: duration `0h` must be longer than zero"]
    );
    assert_eq!(
        errors(&flows("  tcp-closing: 10x\n")),
        ["3:16: unknown unit `x` in duration `10x`; expected `s`, `m`, `h` or `d`"]
    );
    assert_eq!(
        errors(&flows("  icmp-timeout: 1.5m\n")),
        ["3:17: duration `1.5m` is not a whole number of its unit; write `90s`"]
    );
    assert_eq!(
        errors(&flows("  tcp-timeout: 400d\n")),
        ["3:16: duration `400d` is too long; at most 365d"]
    );
    assert_eq!(
        errors(&flows("  tcp-timeout: 99999999999999999999h\n")),
        ["3:16: duration `99999999999999999999h` is too long; at most 365d"]
    );
    assert_eq!(
        errors(&flows("  udp-timeout: -1s\n")),
        ["3:16: duration `-1s` must be written without a sign"]
    );
    assert_eq!(
        errors(&flows("  udp-timeout: \"\"\n")),
        [
            "3:16: empty duration; expected a whole number and a unit: `s`, `m`, `h` or `d`, \
             as in `90s`, `5m`, `6h`"
        ]
    );
    assert_eq!(
        errors(&flows("  udp-timeout:\n")),
        [
            "3:3: `udp-timeout` in `flows` must be a duration such as `90s`, `5m`, `6h` or `1d`, found nothing"
        ]
    );
    assert_eq!(
        errors(&flows("  udp-timeout: {s: 5}\n")),
        [
            "3:16: `udp-timeout` in `flows` must be a duration such as `90s`, `5m`, `6h` or `1d`, found a mapping"
        ]
    );
}

#[test]
fn every_flows_error_is_reported_in_one_run() {
    assert_eq!(
        errors(&flows(
            "  max: 1\n  tcp-timeout: 6\n  tcp-closing: 0s\n  udp-timeout: 1h30m\n  \
             icmp-timeout: 30S\nreplies: perhaps\n"
        )),
        [
            "3:8: `max` in `flows` is 1; it must be from 16 to 16777216",
            "4:16: duration `6` has no unit; write `6s` for seconds, or use `m`, `h` or `d`",
            "5:16: duration `0s` must be longer than zero",
            "6:16: duration `1h30m` combines units; write it in one unit, as in `90m` for \
             `1h30m`",
            "7:17: unknown unit `S` in duration `30S`; expected `s`, `m`, `h` or `d`; units are \
             lowercase: `30s`",
            "8:10: `replies` must be `allow` or `drop`, found `perhaps`",
        ]
    );
}

#[test]
fn flows_under_replies_drop_draw_a_warning() {
    assert_eq!(
        warnings("default: drop\nreplies: drop\nflows:\n  max: 1024\n"),
        ["3:1: `flows` has no effect under `replies: drop`, which keeps no flow table"]
    );
    assert!(warnings("default: drop\nreplies: allow\nflows:\n  max: 1024\n").is_empty());
    assert!(warnings("default: drop\nreplies: drop\n").is_empty());
}
