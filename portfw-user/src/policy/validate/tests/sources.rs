//! Tests of `sets:`, set files and `from:`: positions of every error, warnings, expansion.

use std::{collections::HashMap, io, path::Path, time::Instant};

use super::{errors, policy, range, warnings};
use crate::policy::{
    Action, Cidr, Diagnostics, MAX_CIDRS, Parsed,
    Protocol::{Sctp, Tcp, Udp},
    Severity, load, parse_with,
};

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter()
        .map(|text| {
            text.parse()
                .unwrap_or_else(|e| panic!("{text} does not parse: {e}"))
        })
        .collect()
}

/// Parses `source` as `file`, with set files read from `files` (path => contents).
fn parse_files(source: &str, file: &str, files: &[(&str, &str)]) -> Result<Parsed, Diagnostics> {
    let files: HashMap<&str, &str> = files.iter().copied().collect();
    let read = |path: &Path| match path.to_str().and_then(|p| files.get(p)) {
        Some(text) => Ok((*text).to_owned()),
        None => Err(io::Error::from_raw_os_error(2)),
    };
    parse_with(source, file, &read)
}

/// Every diagnostic as "FILE:LINE:COL: [warning: ]message".
fn shown(result: &Result<Parsed, Diagnostics>) -> Vec<String> {
    let list = match result {
        Ok(parsed) => &parsed.warnings,
        Err(diagnostics) => &diagnostics.0,
    };
    list.iter()
        .map(|d| {
            let tag = if d.severity == Severity::Warning {
                "warning: "
            } else {
                ""
            };
            format!("{}:{}: {tag}{}", d.file, d.location, d.message)
        })
        .collect()
}

#[test]
fn sets_and_from_expand_to_prefixes() {
    let source = "\
default: drop
sets:
  admins: [10.0.0.0/8, 192.0.2.7, 2001:db8::/32]
  app: 192.168.10.0/24
rules:
  - name: ssh-admins
    allow: ssh
    from: $admins
  - allow: [http, https]
    from: [$admins, 203.0.113.9, 10.0.0.0/8]
  - allow: 8080/tcp
    from:
      - $app
      - 2001:db8::1
      - $app
  - drop: any
";
    let p = policy(source);
    let names: Vec<&str> = p.sets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["admins", "app"]);
    assert_eq!(
        p.sets[0].cidrs,
        cidrs(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"])
    );
    assert_eq!(p.sets[0].location, crate::policy::Location::new(3, 3));
    assert_eq!(p.sets[0].file, None);

    let ssh = &p.rules[0];
    assert_eq!(
        ssh.from,
        Some(cidrs(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]))
    );
    assert_eq!(ssh.from_text.as_deref(), Some("$admins"));
    assert_eq!(ssh.summary, "allow ssh from $admins");

    let web = &p.rules[1];
    assert_eq!(
        web.from,
        Some(cidrs(&[
            "10.0.0.0/8",
            "192.0.2.7",
            "2001:db8::/32",
            "203.0.113.9"
        ])),
        "mixed families, duplicates dropped"
    );
    assert_eq!(
        web.from_text.as_deref(),
        Some("[$admins, 203.0.113.9, 10.0.0.0/8]")
    );
    assert_eq!(
        web.summary,
        "allow http, https from [$admins, 203.0.113.9, 10.0.0.0/8]"
    );

    let block_list = &p.rules[2];
    assert_eq!(
        block_list.from,
        Some(cidrs(&["192.168.10.0/24", "2001:db8::1"]))
    );
    assert_eq!(
        block_list.from_text.as_deref(),
        Some("[$app, 2001:db8::1, $app]")
    );

    let rest = &p.rules[3];
    assert_eq!((rest.from.as_ref(), rest.from_text.as_ref()), (None, None));
    assert_eq!(rest.summary, "drop any");
    assert_eq!(rest.action, Action::Drop);
    assert_eq!(rest.ports, [range(Tcp, 0, 65535), range(Udp, 0, 65535)]);
    assert!(warnings(source).is_empty());
}

#[test]
fn any_names_every_port() {
    let p = policy("default: allow\nrules:\n  - drop: [any/sctp, any/udp]\n  - allow: any\n");
    assert_eq!(
        p.rules[0].ports,
        [range(Sctp, 0, 65535), range(Udp, 0, 65535)]
    );
    assert_eq!(
        p.rules[1].ports,
        [range(Tcp, 0, 65535), range(Udp, 0, 65535)]
    );
}

#[test]
fn long_from_lists_are_elided_in_summaries() {
    let p = policy(
        "default: drop\nrules:\n  - allow: 22\n    from: [10.0.0.1, 10.0.0.2, 10.0.0.3, \
         10.0.0.4, 10.0.0.5]\n",
    );
    assert_eq!(
        p.rules[0].from_text.as_deref(),
        Some("[10.0.0.1, 10.0.0.2, 10.0.0.3, 10.0.0.4, ...]")
    );
    assert_eq!(p.rules[0].from.as_ref().map(Vec::len), Some(5));
}

#[test]
fn bad_prefixes_point_at_themselves() {
    let source = "\
default: drop
sets:
  bad: [10.0.0.0/33, 300.1.1.1, 2001:db8::/129]
  worse:
    - 10.0.0.0/
    - /8
rules:
  - allow: ssh
    from: [$bad, $worse, 10.0.0.0/33]
  - allow: ssh
    from: 10.0.0.0/255.0.0.0
";
    assert_eq!(
        errors(source),
        [
            "3:9: prefix length 33 is out of range 0-32 for IPv4",
            "3:22: `300.1.1.1` is not an IP address or CIDR",
            "3:33: prefix length 129 is out of range 0-128 for IPv6",
            "5:7: `10.0.0.0/` has no prefix length after the `/`",
            "6:7: `/8` has no address before the `/`",
            "9:26: prefix length 33 is out of range 0-32 for IPv4",
            "11:11: prefix length `255.0.0.0` is not a number; write the netmask 255.0.0.0 as /8",
        ]
    );
}

#[test]
fn unknown_and_invalid_set_references() {
    let source = "\
default: drop
sets:
  admins: 10.0.0.0/8
rules:
  - allow: ssh
    from: $admin
  - allow: http
    from: [$admins, $zzz]
  - allow: 22
    from: $bad.name
";
    assert_eq!(
        errors(source),
        [
            "6:11: unknown set `$admin`; did you mean `$admins`?",
            "8:21: unknown set `$zzz`; the sets defined are: admins",
            "10:11: invalid set reference `$bad.name`: set names are 1 to 64 letters, digits, \
             `_` or `-`",
        ]
    );
    assert_eq!(
        errors("default: drop\nrules:\n  - drop: any\n    from: $x\n"),
        [
            "4:11: unknown set `$x`; the policy defines no sets (they go under the top-level \
             `sets:` key)"
        ]
    );
}

#[test]
fn set_definition_errors() {
    let source = "\
default: drop
sets:
  a: 10.0.0.1
  a: 10.0.0.2
  bad name: 10.0.0.3
  b: [10.0.0.4, $a]
  c:
  d: [true, {x: 1}]
rules:
  - drop: any
    from: [$a, $b, $c, $d]
";
    assert_eq!(
        errors(source),
        [
            "4:3: duplicate key `a` (first given at line 3)",
            "5:3: invalid set name `bad name`: use 1 to 64 letters, digits, `_` or `-`",
            "6:17: sets cannot nest: `$a` is a set reference; list the addresses here instead",
            "7:3: set `c` must be an address or CIDR, a list of them, or `{file: PATH}`, \
             found nothing",
            "8:7: set `d` expects an address or a CIDR, found `true`",
            "8:13: set `d` expects an address or a CIDR, found a mapping",
        ]
    );
    assert_eq!(
        errors("default: drop\nsets: [a]\n"),
        ["2:7: `sets` must be a mapping from set names to addresses, found a list"]
    );
    let long = "s".repeat(65);
    assert_eq!(
        errors(&format!("default: drop\nsets:\n  {long}: 10.0.0.1\n")),
        [
            "3:3: invalid set name `sssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssssss`: \
          use 1 to 64 letters, digits, `_` or `-`"
        ]
    );
    // An empty `sets:` is no sets at all.
    assert!(policy("default: drop\nsets:\n").sets.is_empty());
}

#[test]
fn from_errors() {
    let source = "\
default: drop
rules:
  - allow: ssh
    from: true
  - allow: ssh
    from: {a: 1}
  - allow: ssh
    from: [10.0.0.1, [1], ~, 5]
  - allow: ssh
    from:
  - allow: ssh
    from: []
";
    assert_eq!(
        errors(source),
        [
            "4:11: `from` in rule 1 expects a set reference (`$name`), an address or a CIDR, \
             found `true`",
            "6:11: `from` in rule 2 must be a set reference (`$name`), an address, a CIDR or \
             a list of them, found a mapping",
            "8:22: `from` in rule 3 expects a set reference (`$name`), an address or a CIDR, \
             found a list",
            "8:27: `from` in rule 3 expects a set reference (`$name`), an address or a CIDR, \
             found nothing",
            "8:30: `5` is not an IP address or CIDR",
            "10:5: `from` in rule 4 expects a set reference (`$name`), an address or a CIDR, \
             found nothing",
            "12:11: `from` is empty; omit it to match any source",
        ]
    );
}

#[test]
fn from_is_an_allowed_rule_key() {
    assert_eq!(
        errors("default: drop\nrules:\n  - allow: 22\n    form: 10.0.0.1\n"),
        ["4:5: unknown key `form` in rule 1; expected one of: name, allow, drop, from, log, limit"]
    );
}

#[test]
fn empty_sets() {
    let source = "\
default: drop
sets:
  none: []
  some: 192.0.2.1
rules:
  - drop: any
    from: $none
  - allow: ssh
    from: [$none, $some]
";
    assert_eq!(
        errors(source),
        ["7:11: set `$none` is empty, so rule 1 could never match"]
    );
    let source = "\
default: drop
sets:
  none: []
  some: 192.0.2.1
rules:
  - allow: ssh
    from: [$none, $some]
";
    assert_eq!(
        warnings(source),
        ["7:12: set `$none` is empty; it adds no sources to rule 1"]
    );
    assert_eq!(policy(source).rules[0].from, Some(cidrs(&["192.0.2.1"])));
    // A set file holding only comments is empty too.
    let result = parse_files(
        "default: drop\nsets:\n  bl: {file: bl.txt}\nrules:\n  - drop: any\n    from: $bl\n",
        "p.yaml",
        &[("bl.txt", "# nothing blocked today\n")],
    );
    assert_eq!(
        shown(&result),
        ["p.yaml:6:11: set `$bl` is empty, so rule 1 could never match"]
    );
}

#[test]
fn host_bits_unused_sets_and_duplicates() {
    let source = "\
default: drop
sets:
  unused: 192.0.2.0/24
  nets: [10.0.0.1/8, 10.0.0.0/8, 10.0.0.0/8]
rules:
  - drop: any
    from: [$nets, 172.16.5.4/12, 10.0.0.0/8]
";
    assert_eq!(
        warnings(source),
        [
            "3:3: set `unused` is defined but no rule uses it",
            "4:10: `10.0.0.1/8` has host bits set; it means 10.0.0.0/8",
            "7:19: `172.16.5.4/12` has host bits set; it means 172.16.0.0/12",
        ]
    );
    let p = policy(source);
    assert_eq!(p.sets[1].cidrs, cidrs(&["10.0.0.0/8"]));
    assert_eq!(
        p.rules[0].from,
        Some(cidrs(&["10.0.0.0/8", "172.16.0.0/12"]))
    );
}

#[test]
fn ipv6_addresses_ending_in_double_colon_must_be_quoted() {
    let source = "\
default: drop
sets:
  v6: [2001:db8::, '2001:db8::', fe80::/10]
rules:
  - drop: any
    from: $v6
";
    assert_eq!(
        errors(source),
        [
            "3:8: `2001:db8::` must be quoted ('2001:db8::'): unquoted, YAML reads a value \
             ending in `:` as a mapping key"
        ]
    );
    assert_eq!(
        errors("default: drop\nrules:\n  - drop: any\n    from: fe80::\n"),
        [
            "4:16: YAML syntax error: mapping values are not allowed in this context; an IPv6 \
             address ending in `::` must be quoted, as in '2001:db8::'"
        ]
    );
    let p = policy("default: drop\nrules:\n  - drop: any\n    from: ['::', \"fe80::\", ::1]\n");
    assert_eq!(
        p.rules[0].from,
        Some(cidrs(&["::/128", "fe80::/128", "::1"]))
    );
}

#[test]
fn set_files_are_read_relative_to_the_policy() {
    let source = "\
default: drop
sets:
  block: {file: block.txt}
  admins: {file: /etc/portfw/admins.txt}
rules:
  - drop: any
    from: $block
  - allow: ssh
    from: $admins
";
    let block =
        "# block list\n192.0.2.0/24\n192.0.2.0/24\n\n10.1.2.3/8   # too wide?\n2001:db8::/32\n";
    let result = parse_files(
        source,
        "conf/p.yaml",
        &[
            ("conf/block.txt", block),
            ("/etc/portfw/admins.txt", "198.51.100.7\n"),
        ],
    );
    assert_eq!(
        shown(&result),
        ["conf/block.txt:5:1: warning: `10.1.2.3/8` has host bits set; it means 10.0.0.0/8"]
    );
    let p = result
        .map(|parsed| parsed.policy)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(p.sets[0].file.as_deref(), Some("block.txt"));
    assert_eq!(
        p.sets[0].cidrs,
        cidrs(&["192.0.2.0/24", "10.0.0.0/8", "2001:db8::/32"])
    );
    assert_eq!(p.rules[0].from.as_ref(), Some(&p.sets[0].cidrs));
    assert_eq!(p.rules[0].summary, "drop any from $block");
    assert_eq!(p.sets[1].file.as_deref(), Some("/etc/portfw/admins.txt"));
    assert_eq!(p.rules[1].from, Some(cidrs(&["198.51.100.7"])));

    // A policy in the current directory reads set files from there.
    let result = parse_files(
        "default: drop\nsets:\n  b: {file: b.txt}\nrules:\n  - drop: any\n    from: $b\n",
        "p.yaml",
        &[("b.txt", "192.0.2.1\n")],
    );
    assert!(result.is_ok(), "{:?}", shown(&result));
}

#[test]
fn errors_inside_set_files_have_their_own_positions() {
    let source = "\
default: drop
sets:
  block: {file: block.txt}
rules:
  - drop: any
    from: $block
  - allow: 70000
";
    let block = "# comment\n192.0.2.0/24\n  198.51.100.300\n$other\n203.0.113.9/33 # bad\n";
    let result = parse_files(source, "conf/p.yaml", &[("conf/block.txt", block)]);
    assert_eq!(
        shown(&result),
        [
            "conf/block.txt:3:3: `198.51.100.300` is not an IP address or CIDR",
            "conf/block.txt:4:1: sets cannot nest: `$other` is a set reference; list the \
             addresses here instead",
            "conf/block.txt:5:1: prefix length 33 is out of range 0-32 for IPv4",
            "conf/p.yaml:7:12: port 70000 is out of range 0-65535",
        ]
    );
    let text = result.err().map(|d| d.to_string()).unwrap_or_default();
    assert!(
        text.starts_with(
            "conf/block.txt:3:3: `198.51.100.300` is not an IP address or CIDR\n  3 |   \
             198.51.100.300\n    |   ^\n"
        ),
        "{text}"
    );
}

#[test]
fn many_errors_in_a_set_file_are_summarised() {
    let text = "1.2.3.4.5\n".repeat(25);
    let result = parse_files(
        "default: drop\nsets:\n  bl: {file: bl.txt}\nrules:\n  - drop: any\n    from: $bl\n",
        "p.yaml",
        &[("bl.txt", &text)],
    );
    let messages = shown(&result);
    assert_eq!(messages.len(), 21);
    assert_eq!(
        messages[0],
        "bl.txt:1:1: `1.2.3.4.5` is not an IP address or CIDR"
    );
    assert_eq!(
        messages[20],
        "p.yaml:3:14: set file `bl.txt` has 5 more errors not shown"
    );
}

#[test]
fn set_file_mapping_errors() {
    let source = "\
default: drop
sets:
  a: {file: a.txt, format: plain}
  b: {path: b.txt}
  c: {file: [x]}
  d: {file: missing.txt}
  e: {}
rules:
  - drop: any
    from: [$a, $b, $c, $d, $e]
";
    let result = parse_files(source, "p.yaml", &[("a.txt", "10.0.0.1\n")]);
    assert_eq!(
        shown(&result),
        [
            "p.yaml:3:20: unknown key `format` in set `a`; expected only `file`",
            "p.yaml:4:7: unknown key `path` in set `b`; expected only `file`",
            "p.yaml:5:13: the `file` of set `c` must be a path, found a list",
            "p.yaml:6:13: cannot read set file `missing.txt`: No such file or directory (os \
             error 2)",
            "p.yaml:7:6: set `e` needs `file: PATH`, or a list of addresses instead of a \
             mapping",
        ]
    );
    let result = parse_files(
        "default: drop\nsets:\n  d: {file: missing.txt}\nrules:\n  - drop: any\n    from: $d\n",
        "conf/p.yaml",
        &[],
    );
    assert_eq!(
        shown(&result),
        [
            "conf/p.yaml:3:13: cannot read set file `missing.txt` (conf/missing.txt): No such \
             file or directory (os error 2)"
        ]
    );
}

#[test]
fn prefix_limit() {
    let half = MAX_CIDRS / 2;
    let mut big = String::with_capacity(half * 16);
    for i in 0..half as u32 {
        let [_, b, c, d] = i.to_be_bytes();
        big.push_str(&format!("10.{b}.{c}.{d}\n"));
    }
    let files = [("big.txt", big.as_str())];
    // Half in the set, half again in the one rule that uses it: exactly at the limit.
    let at_limit = "default: drop\nsets:\n  big: {file: big.txt}\nrules:\n  - drop: any\n    \
                    from: $big\n";
    assert!(parse_files(at_limit, "p.yaml", &files).is_ok());
    let over = "default: drop\nsets:\n  big: {file: big.txt}\nrules:\n  - drop: any\n    \
                from: [$big, 192.0.2.1]\n";
    assert_eq!(
        shown(&parse_files(over, "p.yaml", &files)),
        [format!(
            "p.yaml:6:5: the policy holds {} addresses and CIDRs in sets and `from` lists (a \
             set counts once, and again for each rule that uses it); at most {MAX_CIDRS} are \
             supported",
            MAX_CIDRS + 1
        )]
    );
}

#[test]
fn a_hundred_thousand_line_set_file_parses_quickly() {
    let dir = std::env::temp_dir().join(format!("portfw-setfile-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut text = String::from("# generated block list\n");
    for i in 0..100_000u32 {
        let [_, b, c, d] = i.to_be_bytes();
        if i % 4 == 0 {
            text.push_str(&format!("2001:db8:{b:x}{c:02x}:{d:x}::/64\n"));
        } else {
            text.push_str(&format!("10.{b}.{c}.{d}\n"));
        }
    }
    std::fs::write(dir.join("block.txt"), &text).expect("write set file");
    let policy_path = dir.join("policy.yaml");
    std::fs::write(
        &policy_path,
        "default: drop\nsets:\n  block: {file: block.txt}\nrules:\n  - drop: any\n    from: \
         $block\n  - allow: ssh\n    from: 192.0.2.0/24\n  - allow: https\n",
    )
    .expect("write policy");
    let start = Instant::now();
    let parsed = load(&policy_path);
    let took = start.elapsed();
    let _ = std::fs::remove_dir_all(&dir);
    println!("a policy with a 100,000-line set file parsed in {took:?}");
    let parsed = parsed.unwrap_or_else(|e| panic!("{e}"));
    assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
    assert_eq!(parsed.policy.sets[0].cidrs.len(), 100_000);
    assert_eq!(
        parsed.policy.rules[0].from.as_ref().map(Vec::len),
        Some(100_000)
    );
    if !cfg!(debug_assertions) {
        assert!(took.as_millis() < 100, "took {took:?}");
    }
}
