//! Tests of policy validation: exact positions of errors, several errors at once, warnings.

mod defences;
mod flows;
mod shadowing;
mod sources;

use portfw_common::MAX_RULES;

use crate::policy::{
    Action, Location, LogMode, Policy, PortRange,
    Protocol::{self, Sctp, Tcp, Udp, UdpLite},
    Severity, parse,
};

/// Each error as "LINE:COL: message".
fn errors(source: &str) -> Vec<String> {
    match parse(source, "p.yaml") {
        Ok(parsed) => panic!("parsed: {:?}", parsed.policy),
        Err(diagnostics) => diagnostics
            .iter()
            .inspect(|d| assert_eq!(d.severity, Severity::Error))
            .map(|d| format!("{}: {}", d.location, d.message))
            .collect(),
    }
}

fn warnings(source: &str) -> Vec<String> {
    match parse(source, "p.yaml") {
        Ok(parsed) => parsed
            .warnings
            .iter()
            .inspect(|d| assert_eq!(d.severity, Severity::Warning))
            .map(|d| format!("{}: {}", d.location, d.message))
            .collect(),
        Err(e) => panic!("{e}"),
    }
}

fn policy(source: &str) -> Policy {
    match parse(source, "p.yaml") {
        Ok(parsed) => parsed.policy,
        Err(e) => panic!("{e}"),
    }
}

fn range(protocol: Protocol, low: u16, high: u16) -> PortRange {
    PortRange {
        protocol,
        low,
        high,
    }
}

#[test]
fn minimal_policy_takes_the_documented_defaults() {
    let p = policy("default: drop\n");
    assert_eq!(p.file, "p.yaml");
    assert_eq!(p.default, Action::Drop);
    assert_eq!(p.log, LogMode::Drops);
    assert!(p.interfaces.is_empty() && p.rules.is_empty());
    assert_eq!(
        (p.icmp, p.fragments, p.other_ip, p.non_ip),
        (Action::Allow, Action::Allow, Action::Drop, Action::Allow)
    );
    let p = policy("default: allow\nrules:\n");
    assert_eq!(p.other_ip, Action::Allow);
    assert!(p.rules.is_empty());
    let p = policy("default: allow\nrules: []\nother-ip: drop\n");
    assert_eq!(p.other_ip, Action::Drop);
}

#[test]
fn every_key_is_read() {
    let p = policy(
        "default: allow\nlog: all\ninterfaces: [eth0, \"wlan0\"]\nicmp: drop\n\
         fragments: drop\nother-ip: allow\nnon-ip: drop\n",
    );
    assert_eq!(p.log, LogMode::All);
    assert_eq!(p.interfaces, ["eth0", "wlan0"]);
    assert_eq!(
        (p.icmp, p.fragments, p.other_ip, p.non_ip),
        (Action::Drop, Action::Drop, Action::Allow, Action::Drop)
    );
    assert_eq!(policy("default: drop\nlog: none\n").log, LogMode::None);
    assert_eq!(
        policy("default: drop\ninterfaces: eth1\n").interfaces,
        ["eth1"]
    );
}

#[test]
fn the_documented_example_parses() {
    let source = "\
default: drop
log: drops
interfaces: [eth0]
rules:
  - allow: [ssh, 80/tcp, https/tcp]
  - allow: 53
  - drop: 8000-8999/tcp
  - allow: dynamic/udp
  - name: web
    allow: [http, https]
    log: true
";
    let p = policy(source);
    assert_eq!(p.rules.len(), 5);
    let r = &p.rules[0];
    assert_eq!(r.action, Action::Allow);
    assert_eq!(
        r.ports,
        [range(Tcp, 22, 22), range(Tcp, 80, 80), range(Tcp, 443, 443)]
    );
    assert_eq!(r.location, Location::new(5, 5));
    assert_eq!(r.summary, "allow ssh, 80/tcp, https/tcp");
    assert_eq!(p.rules[1].ports, [range(Tcp, 53, 53), range(Udp, 53, 53)]);
    assert_eq!(p.rules[1].summary, "allow 53");
    assert_eq!(p.rules[2].action, Action::Drop);
    assert_eq!(p.rules[2].ports, [range(Tcp, 8000, 8999)]);
    assert_eq!(p.rules[3].ports, [range(Udp, 49152, 65535)]);
    let web = &p.rules[4];
    assert_eq!(web.name.as_deref(), Some("web"));
    assert_eq!(web.log, Some(true));
    assert_eq!(web.location, Location::new(9, 5));
    assert_eq!(
        web.ports,
        [
            range(Tcp, 80, 80),
            range(Tcp, 443, 443),
            range(Udp, 443, 443)
        ]
    );
    assert_eq!(p.rules[0].log, None);
}

#[test]
fn quoted_and_plain_numbers_and_other_protocols() {
    let p = policy("default: drop\nrules:\n  - drop: ['80', 0443/sctp, \"1-2/udplite\"]\n");
    assert_eq!(
        p.rules[0].ports,
        [
            range(Tcp, 80, 80),
            range(Udp, 80, 80),
            range(Sctp, 443, 443),
            range(UdpLite, 1, 2)
        ]
    );
    assert_eq!(p.rules[0].summary, "drop 80, 0443/sctp, 1-2/udplite");
}

#[test]
fn unknown_keys_list_the_allowed_ones() {
    assert_eq!(
        errors("defualt: drop\n"),
        [
            "1:1: unknown key `defualt`; expected one of: default, log, interfaces, sets, \
             rules, icmp, fragments, other-ip, non-ip, replies, flows, enforce, scan, log-limit, knock",
            "1:1: missing required key `default`: the verdict for ports no rule names \
             (`allow` or `drop`)",
        ]
    );
    assert_eq!(
        errors("default: drop\nrules:\n  - allow: 22\n    port: 5\n"),
        ["4:5: unknown key `port` in rule 1; expected one of: name, allow, drop, from, log, limit"]
    );
}

#[test]
fn duplicate_keys_point_at_the_second() {
    assert_eq!(
        errors("default: drop\nlog: all\ndefault: allow\n"),
        ["3:1: duplicate key `default` (first given at line 1)"]
    );
    assert_eq!(
        errors("default: drop\nrules:\n  - allow: 1\n    log: true\n    log: false\n"),
        ["5:5: duplicate key `log` (first given at line 4)"]
    );
}

#[test]
fn port_errors_point_at_the_spec() {
    assert_eq!(
        errors("default: drop\nrules:\n  - allow: 70000\n"),
        ["3:12: port 70000 is out of range 0-65535"]
    );
    assert_eq!(
        errors("default: drop\nrules:\n  - allow: [22, \"70000/tcp\"]\n"),
        ["3:17: port 70000 is out of range 0-65535"]
    );
    assert_eq!(
        errors("default: drop\nrules:\n  - drop: -1\n  - drop: 1.5\n  - drop: abc\n"),
        [
            "3:11: port -1 is out of range 0-65535",
            "4:11: port `1.5` is not a whole number",
            "5:11: unknown service `abc`; expected a port number, a range LOW-HIGH, a range \
             name (any, well-known, registered, dynamic) or a service name from docs/policy.md",
        ]
    );
    assert_eq!(
        errors("default: drop\nrules:\n  - drop: 9000-8000/tcp\n"),
        ["3:11: port range 9000-8000 is reversed; write the lower port first (8000-9000)"]
    );
    assert_eq!(
        errors("default: drop\nrules:\n  - allow:\n      - ssh\n      - htpps\n"),
        [
            "5:9: unknown service `htpps`; expected a port number, a range LOW-HIGH, a range \
             name (any, well-known, registered, dynamic) or a service name from docs/policy.md; \
             did you mean `https`?"
        ]
    );
}

#[test]
fn rule_shape_errors() {
    assert_eq!(
        errors("default: drop\nrules:\n  - allow: 1\n    drop: 2\n"),
        ["4:5: rule 1 has both `allow` and `drop`; a rule takes exactly one"]
    );
    assert_eq!(
        errors("default: drop\nrules:\n  - name: x\n    log: true\n"),
        ["3:5: rule 1 has neither `allow` nor `drop`; a rule needs exactly one"]
    );
    assert_eq!(
        errors("default: drop\nrules:\n  - allow: []\n"),
        ["3:12: the `allow` list of rule 1 is empty; name at least one port"]
    );
    assert_eq!(
        errors("default: drop\nrules:\n  - drop:\n"),
        ["3:5: `drop` in rule 1 expects a port spec, found nothing"]
    );
    assert_eq!(
        errors("default: drop\nrules:\n  - 22\n  - [allow, 22]\n"),
        [
            "3:5: rule 1 must be a mapping with `allow:` or `drop:`, found `22`",
            "4:5: rule 2 must be a mapping with `allow:` or `drop:`, found a list",
        ]
    );
}

#[test]
fn bad_value_types() {
    let source = "\
default: 5
log: yes
icmp: [allow]
fragments:
other-ip: Drop
rules: {allow: 22}
interfaces: {eth0: x}
";
    assert_eq!(
        errors(source),
        [
            "1:10: `default` must be `allow` or `drop`, found `5`",
            "2:6: `log` must be `none`, `drops` or `all`, found `yes`",
            "3:7: `icmp` must be `allow` or `drop`, found a list",
            "4:1: `fragments` must be `allow` or `drop`, found nothing",
            "5:11: `other-ip` must be `allow` or `drop`, found `Drop`",
            "6:8: `rules` must be a list of rules, found a mapping",
            "7:13: `interfaces` must be a list of interface names, found a mapping",
        ]
    );
    assert_eq!(
        errors(
            "default: drop\nrules:\n  - allow: [true, [1], {a: 1}, ~]\n    log: \"yes\"\n    \
             name: [a]\n"
        ),
        [
            "3:13: `allow` in rule 1 expects a port spec, found `true`",
            "3:19: `allow` in rule 1 expects a port spec, found a list",
            "3:24: `allow` in rule 1 expects a port spec, found a mapping",
            "3:32: `allow` in rule 1 expects a port spec, found nothing",
            "4:10: `log` in rule 1 must be `true` or `false`, found `yes`",
            "5:11: the `name` of rule 1 must be a string, found a list",
        ]
    );
}

#[test]
fn top_level_shape_errors() {
    assert_eq!(
        errors(""),
        ["1:1: the policy is empty; it needs at least `default: allow` or `default: drop`"]
    );
    assert_eq!(
        errors("# nothing\n"),
        ["1:1: the policy is empty; it needs at least `default: allow` or `default: drop`"]
    );
    assert_eq!(
        errors("- default: drop\n"),
        [
            "1:1: a policy is a mapping of keys (default, log, interfaces, sets, rules, icmp, \
             fragments, other-ip, non-ip, replies, flows, enforce, scan, log-limit, knock), but this is a list"
        ]
    );
    assert_eq!(
        errors("log: all\n"),
        [
            "1:1: missing required key `default`: the verdict for ports no rule names \
             (`allow` or `drop`)"
        ]
    );
}

#[test]
fn yaml_syntax_errors_have_positions() {
    assert_eq!(
        errors("default: drop\nrules:\n  - allow: [22, 80\n  - drop: 1\n"),
        ["4:9: YAML syntax error: illegal placement of ':' indicator"]
    );
    assert_eq!(
        errors("default: drop\n  log: all\n"),
        ["2:6: YAML syntax error: mapping values are not allowed in this context"]
    );
}

#[test]
fn many_errors_are_reported_in_one_pass() {
    let source = "\
default: maybe
logg: all
rules:
  - allow: [ssh, 70000]
  - drop: 9000-8000
  - name: web
    allow: htp
    drop: 80
  - allow: 22/icmp
";
    let messages = errors(source);
    assert_eq!(
        messages,
        [
            "1:10: `default` must be `allow` or `drop`, found `maybe`",
            "2:1: unknown key `logg`; expected one of: default, log, interfaces, sets, rules, icmp, \
             fragments, other-ip, non-ip, replies, flows, enforce, scan, log-limit, knock",
            "4:18: port 70000 is out of range 0-65535",
            "5:11: port range 9000-8000 is reversed; write the lower port first (8000-9000)",
            "7:12: unknown service `htp`; expected a port number, a range LOW-HIGH, a range \
             name (any, well-known, registered, dynamic) or a service name from docs/policy.md; \
             did you mean `http`?",
            "8:5: rule 3 has both `allow` and `drop`; a rule takes exactly one",
            "9:12: unknown protocol `icmp` in `22/icmp`; expected one of: tcp, udp, sctp, \
             udplite; ICMP has no ports and is set with the top-level `icmp:` key",
        ]
    );
    let shown = match parse(source, "policy.yaml") {
        Err(diagnostics) => diagnostics.to_string(),
        Ok(_) => String::new(),
    };
    let first_two = "\
policy.yaml:1:10: `default` must be `allow` or `drop`, found `maybe`
  1 | default: maybe
    |          ^
policy.yaml:2:1: unknown key `logg`; expected one of: default, log, interfaces, sets, rules, icmp, \
fragments, other-ip, non-ip, replies, flows, enforce, scan, log-limit, knock
  2 | logg: all
    | ^
policy.yaml:4:18: port 70000 is out of range 0-65535
  4 |   - allow: [ssh, 70000]
    |                  ^
";
    assert!(shown.starts_with(first_two), "{shown}");
}

#[test]
fn interface_names_are_checked() {
    let source = "\
default: drop
interfaces:
  - eth0
  - a-very-long-interface-name
  - 'has space'
  - a/b
  - ..
  - ''
  - eth0
  - [x]
";
    assert_eq!(
        errors(source),
        [
            "4:5: invalid interface name `a-very-long-interface-name`: it is 26 bytes long \
             and Linux allows at most 15",
            "5:5: invalid interface name `has space`: it contains whitespace",
            "6:5: invalid interface name `a/b`: it contains `/`",
            "7:5: invalid interface name `..`: `.` and `..` are reserved",
            "8:5: invalid interface name ``: it is empty",
            "9:5: interface `eth0` is listed twice (first at line 3)",
            "10:5: expected an interface name, found a list",
        ]
    );
    assert_eq!(
        policy("default: drop\ninterfaces: [enp0s31f6, veth-lab.1, '15-bytes-long-x']\n")
            .interfaces
            .len(),
        3
    );
}

#[test]
fn rule_names_are_checked() {
    let source = "\
default: drop
rules:
  - name: web
    allow: 80
  - name: web
    allow: 81
  - name: 'bad name'
    allow: 82
";
    assert_eq!(
        errors(source),
        [
            "5:11: rule name `web` is already used by rule 1 (line 3)",
            "7:11: invalid rule name `bad name`: use 1 to 64 letters, digits, `_`, `.` or `-`",
        ]
    );
    let long = "x".repeat(65);
    assert_eq!(
        errors(&format!(
            "default: drop\nrules:\n  - name: {long}\n    allow: 1\n"
        ))
        .len(),
        1
    );
    let p = policy("default: drop\nrules:\n  - name: Web_1.v-2\n    allow: 1\n");
    assert_eq!(p.rules[0].name.as_deref(), Some("Web_1.v-2"));
}

#[test]
fn too_many_rules_is_an_error() {
    let mut source = String::from("default: drop\nrules:\n");
    for _ in 0..=MAX_RULES {
        source.push_str("- allow: 1\n");
    }
    assert_eq!(
        errors(&source),
        [format!(
            "2:1: the policy has {} rules; at most {MAX_RULES} are supported",
            MAX_RULES + 1
        )]
    );
}

#[test]
fn shadowed_rules_are_warned_about() {
    let source = "\
default: drop
rules:
  - allow: 80
  - allow: 443/tcp
  - drop: 80
  - name: late
    drop: [80/tcp, 443/tcp]
  - drop: 80/sctp
";
    assert_eq!(
        warnings(source),
        [
            "5:5: rule 3 (`drop: 80`) never matches: every port it names is decided by \
             earlier rules (rule 1 at line 3)",
            "6:5: rule 4 `late` (`drop: [80/tcp, 443/tcp]`) never matches: every port it \
             names is decided by earlier rules (rule 1 at line 3 and rule 2 at line 4)",
        ]
    );
}

#[test]
fn partly_shadowed_rules_are_fine() {
    assert!(
        warnings("default: drop\nrules:\n  - allow: 80/tcp\n  - drop: 80\n  - drop: 1-100/tcp\n")
            .is_empty()
    );
}

#[test]
fn shadowing_by_many_rules_is_summarised() {
    let source = "\
default: drop
rules:
  - allow: 1/udp
  - allow: 2/udp
  - allow: 3/udp
  - allow: 4/udp
  - allow: 5/udp
  - drop: 1-5/udp
";
    assert_eq!(
        warnings(source),
        [
            "8:5: rule 6 (`drop: 1-5/udp`) never matches: every port it names is decided by \
             earlier rules (rule 1 at line 3, rule 2 at line 4, rule 3 at line 5 and others)"
        ]
    );
}

#[test]
fn tcp_port_zero_is_warned_about() {
    let source = "\
default: drop
rules:
  - allow: [0, 0/udp, 0/tcp, 0-10/tcp]
";
    assert_eq!(
        warnings(source),
        [
            "3:13: tcp port 0 never matches: portfw drops TCP packets to port 0 as malformed \
             before any rule is consulted",
            "3:23: tcp port 0 never matches: portfw drops TCP packets to port 0 as malformed \
             before any rule is consulted",
        ]
    );
}

#[test]
fn warnings_render_with_the_warning_tag() {
    let parsed = parse("default: drop\nrules:\n  - allow: 0/tcp\n", "w.yaml");
    let text = parsed
        .map(|p| {
            p.warnings
                .iter()
                .map(ToString::to_string)
                .collect::<String>()
        })
        .unwrap_or_default();
    assert!(
        text.starts_with("w.yaml:3:12: warning: tcp port 0 never matches"),
        "{text}"
    );
}

#[test]
fn icmp_types_are_named_with_positions_for_every_mistake() {
    let p = policy(
        "default: drop\nicmp:\n  default: drop\n  allow: echo-request\n  drop: [icmpv6/135]\n",
    );
    assert_eq!(p.icmp, Action::Drop);
    assert_eq!(p.icmp_types.allow.len(), 2);
    assert_eq!(p.icmp_types.drop.len(), 1);
    assert_eq!(
        errors(
            "default: drop\nicmp:\n  defualt: drop\n  allow: [echo-requst, icmp/300]\n  drop: [echo-request]\n  allow: [tcp/1]\n"
        ),
        [
            "3:3: unknown key `defualt` in `icmp`; expected one of: default, allow, drop",
            "4:11: unknown ICMP type `echo-requst`; expected a name (echo-request, destination-unreachable, neighbor-solicitation, ... see docs/policy.md), `icmp/TYPE` or `icmpv6/TYPE`",
            "4:24: ICMP type `300` in `icmp/300` is not a number 0-255",
            "6:3: duplicate key `allow` (first given at line 4)",
        ]
    );
    assert_eq!(
        errors("default: drop\nicmp:\n  allow: [redirect]\n  drop: [redirect]\n"),
        ["4:10: ICMP type `redirect` is both allowed and dropped (the other at line 3)"]
    );
}

#[test]
fn enforce_is_true_unless_the_policy_says_false() {
    assert!(policy("default: drop\n").enforce);
    assert!(policy("default: drop\nenforce: true\n").enforce);
    assert!(!policy("default: drop\nenforce: false\n").enforce);
    assert_eq!(
        errors("default: drop\nenforce: maybe\n"),
        ["2:10: `enforce` must be `true` or `false`, found `maybe`"]
    );
}
