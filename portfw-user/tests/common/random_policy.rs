//! The tests' one random-policy generator: valid policies as YAML, drawn from a seeded
//! [`Rng`], with rules, sets, sources and settings over the ports and prefixes that the
//! generated frames aim at.

use std::fmt::Write as _;

use portfw_lab::Rng;

/// Ports that policies name and packets aim at, so that rules and packets meet often.
pub const HOT_PORTS: [u16; 20] = [
    0, 1, 7, 22, 23, 53, 80, 123, 443, 1023, 1024, 2905, 5001, 7000, 8000, 8080, 8999, 49151,
    49152, 65535,
];

/// A port drawn mostly from [`HOT_PORTS`] and next to them, sometimes anywhere.
pub fn port(rng: &Rng) -> u16 {
    match rng.weighted(&[60, 15, 25]) {
        0 => rng.pick(&HOT_PORTS),
        1 => rng.pick(&HOT_PORTS).wrapping_add(rng.range(0, 3) as u16),
        _ => rng.u16(),
    }
}

fn action(rng: &Rng) -> &'static str {
    rng.pick(&["allow", "drop"])
}

fn port_spec(rng: &Rng) -> String {
    let target = match rng.weighted(&[40, 35, 15, 10]) {
        0 => port(rng).to_string(),
        1 => {
            let a = port(rng);
            let b = if rng.percent(50) {
                a.saturating_add(rng.range(0, 200) as u16)
            } else {
                port(rng)
            };
            format!("{}-{}", a.min(b), a.max(b))
        }
        2 => rng
            .pick(&[
                "ssh", "dns", "https", "http", "ntp", "snmp", "domain", "sip",
            ])
            .to_owned(),
        _ => rng
            .pick(&["well-known", "registered", "dynamic", "any"])
            .to_owned(),
    };
    match rng.weighted(&[35, 25, 20, 10, 10]) {
        0 => target,
        n => format!("{target}/{}", ["tcp", "udp", "sctp", "udplite"][n - 1]),
    }
}

/// A random valid policy, as YAML: that text is what a failure prints and what replays.
pub fn random_policy(rng: &Rng) -> String {
    let mut y = String::new();
    let _ = writeln!(y, "default: {}", action(rng));
    if rng.percent(70) {
        let _ = writeln!(y, "log: {}", rng.pick(&["none", "drops", "all"]));
    }
    for key in ["icmp", "fragments", "other-ip", "non-ip"] {
        if key == "icmp" && rng.percent(30) {
            // Named types, essential ones among them, override the default.
            let names = [
                "echo-request",
                "echo-reply",
                "destination-unreachable",
                "frag-needed",
                "packet-too-big",
                "neighbor-solicitation",
                "router-advertisement",
                "icmp/13",
                "icmpv6/136",
                "icmpv6/200",
            ];
            let _ = writeln!(y, "icmp:\n  default: {}", action(rng));
            let mut used = Vec::new();
            for verb in ["allow", "drop"] {
                let picked: Vec<&str> = (0..rng.range(0, 3))
                    .map(|_| rng.pick(&names))
                    .filter(|n| !used.contains(n))
                    .collect();
                if !picked.is_empty() {
                    let _ = writeln!(y, "  {verb}: [{}]", picked.join(", "));
                    used.extend(picked);
                }
            }
        } else if rng.percent(60) {
            let _ = writeln!(y, "{key}: {}", action(rng));
        }
    }
    let sets = rng.pick(&[0, 0, 1, 2]);
    if sets > 0 {
        y.push_str("sets:\n");
        for index in 0..sets {
            let members: Vec<&str> = (0..rng.range(1, 3)).map(|_| rng.pick(&PREFIXES)).collect();
            let _ = writeln!(y, "  s{index}: [{}]", members.join(", "));
        }
    }
    let rules = rng.pick(&[0, 1, 2, 3, 4, 6, 8, 12]);
    if rules > 0 || rng.percent(50) {
        y.push_str("rules:\n");
    }
    for index in 0..rules {
        let specs: Vec<String> = (0..rng.range(1, 4)).map(|_| port_spec(rng)).collect();
        let list = if specs.len() == 1 && rng.percent(50) {
            specs[0].clone()
        } else {
            format!("[{}]", specs.join(", "))
        };
        if rng.percent(40) {
            let _ = writeln!(y, "  - name: r{index}");
            let _ = writeln!(y, "    {}: {list}", action(rng));
        } else {
            let _ = writeln!(y, "  - {}: {list}", action(rng));
        }
        if rng.percent(25) {
            let _ = writeln!(y, "    from: {}", sources(rng, sets));
        }
        if rng.percent(20) {
            let _ = writeln!(y, "    log: {}", rng.pick(&["true", "false"]));
        }
    }
    y
}

/// Prefixes around the addresses `source4` and `source6` draw from, nested and overlapping,
/// of both families, so that `from:` rules meet members and strangers alike.
const PREFIXES: [&str; 16] = [
    "198.18.0.2",
    "198.18.0.0/15",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.128.0/17",
    "192.0.2.0/24",
    "192.0.2.128/25",
    "192.0.2.77",
    "0.0.0.0/0",
    "2001:2::2",
    "2001:db8::/32",
    "2001:db8:1::/48",
    "2001:db8:1::8000/113",
    "fd00::/8",
    "fd00:0:0:5::/64",
    "::/0",
];

/// A rule's `from:`: one prefix, or a list that may name the policy's sets.
fn sources(rng: &Rng, sets: usize) -> String {
    let item = |rng: &Rng| {
        if sets > 0 && rng.percent(25) {
            format!("$s{}", rng.below(sets as u64))
        } else {
            rng.pick(&PREFIXES).to_owned()
        }
    };
    if rng.percent(40) {
        item(rng)
    } else {
        let items: Vec<String> = (0..rng.range(1, 4)).map(|_| item(rng)).collect();
        format!("[{}]", items.join(", "))
    }
}
