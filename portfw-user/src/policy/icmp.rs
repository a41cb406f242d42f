//! ICMP and ICMPv6 message types in policies: names, numbers, and the verdict each gets.
//!
//! `icmp: allow|drop` sets the verdict for every type, except that with `drop` the messages a
//! host needs to stay reachable (neighbour discovery, packet-too-big, fragmentation-needed)
//! still pass. A policy may also name types explicitly, which always wins, essential or not:
//!
//! ```yaml
//! icmp:
//!   default: drop
//!   allow: [echo-request, echo-reply]
//!   drop: [redirect]
//! ```

use super::Action;

/// One ICMP message kind a policy can name: a type of one family, or, for IPv4
/// fragmentation-needed, one code of a type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    pub v6: bool,
    pub kind: u8,
    /// `Some(code)` narrows the match to one code (only fragmentation-needed does).
    pub code: Option<u8>,
}

impl IcmpMatch {
    pub const fn v4(kind: u8) -> Self {
        Self {
            v6: false,
            kind,
            code: None,
        }
    }

    pub const fn v6(kind: u8) -> Self {
        Self {
            v6: true,
            kind,
            code: None,
        }
    }

    fn covers(&self, v6: bool, kind: u8, code: u8) -> bool {
        self.v6 == v6 && self.kind == kind && self.code.is_none_or(|c| c == code)
    }
}

/// IPv4 destination-unreachable, code fragmentation-needed: path MTU discovery.
pub const FRAG_NEEDED: IcmpMatch = IcmpMatch {
    v6: false,
    kind: 3,
    code: Some(4),
};

/// Names a policy may use, with what each covers. A name defined in both families covers both.
pub const ICMP_NAMES: &[(&str, &[IcmpMatch])] = &[
    ("echo-reply", &[IcmpMatch::v4(0), IcmpMatch::v6(129)]),
    (
        "destination-unreachable",
        &[IcmpMatch::v4(3), IcmpMatch::v6(1)],
    ),
    ("frag-needed", &[FRAG_NEEDED]),
    ("fragmentation-needed", &[FRAG_NEEDED]),
    ("packet-too-big", &[IcmpMatch::v6(2)]),
    ("redirect", &[IcmpMatch::v4(5), IcmpMatch::v6(137)]),
    ("echo-request", &[IcmpMatch::v4(8), IcmpMatch::v6(128)]),
    (
        "router-advertisement",
        &[IcmpMatch::v4(9), IcmpMatch::v6(134)],
    ),
    (
        "router-solicitation",
        &[IcmpMatch::v4(10), IcmpMatch::v6(133)],
    ),
    ("time-exceeded", &[IcmpMatch::v4(11), IcmpMatch::v6(3)]),
    ("parameter-problem", &[IcmpMatch::v4(12), IcmpMatch::v6(4)]),
    ("timestamp-request", &[IcmpMatch::v4(13)]),
    ("timestamp-reply", &[IcmpMatch::v4(14)]),
    ("mld-query", &[IcmpMatch::v6(130)]),
    ("mld-report", &[IcmpMatch::v6(131), IcmpMatch::v6(143)]),
    ("mld-done", &[IcmpMatch::v6(132)]),
    ("neighbor-solicitation", &[IcmpMatch::v6(135)]),
    ("neighbour-solicitation", &[IcmpMatch::v6(135)]),
    ("neighbor-advertisement", &[IcmpMatch::v6(136)]),
    ("neighbour-advertisement", &[IcmpMatch::v6(136)]),
];

/// Parses one ICMP spec: a name from [`ICMP_NAMES`], `icmp/TYPE` or `icmpv6/TYPE`.
pub fn parse_icmp_spec(text: &str) -> Result<Vec<IcmpMatch>, String> {
    if let Some((family, number)) = text.split_once('/') {
        let v6 = match family {
            "icmp" => false,
            "icmpv6" => true,
            _ => {
                return Err(format!(
                    "unknown ICMP family `{family}` in `{text}`; expected `icmp/TYPE` or `icmpv6/TYPE`"
                ));
            }
        };
        let kind: u8 = number
            .parse()
            .map_err(|_| format!("ICMP type `{number}` in `{text}` is not a number 0-255"))?;
        return Ok(vec![IcmpMatch {
            v6,
            kind,
            code: None,
        }]);
    }
    ICMP_NAMES
        .iter()
        .find(|(name, _)| *name == text)
        .map(|(_, matches)| matches.to_vec())
        .ok_or_else(|| {
            let hint = ICMP_NAMES
                .iter()
                .map(|(name, _)| *name)
                .find(|name| name.starts_with(text) || text.starts_with(name))
                .map(|name| format!("did you mean `{name}`? "))
                .unwrap_or_default();
            format!(
                "unknown ICMP type `{text}`; {hint}expected a name (echo-request, \
                 destination-unreachable, neighbor-solicitation, ... see docs/policy.md), \
                 `icmp/TYPE` or `icmpv6/TYPE`"
            )
        })
}

/// Messages that pass with `icmp: drop` unless the policy names them: without them a host
/// cannot find its neighbours (ICMPv6 133-137) or learn path MTUs.
pub fn is_essential(v6: bool, kind: u8, code: u8) -> bool {
    if v6 {
        kind == 2 || (133..=137).contains(&kind)
    } else {
        kind == 3 && code == 4
    }
}

/// The ICMP part of a policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IcmpPolicy {
    /// Types named under `allow:`.
    pub allow: Vec<IcmpMatch>,
    /// Types named under `drop:`.
    pub drop: Vec<IcmpMatch>,
}

impl IcmpPolicy {
    /// The verdict for one message, given the `icmp` default. A code-specific name is more
    /// specific than a type name; a named type beats the essential-message exception.
    pub fn verdict(&self, default: Action, v6: bool, kind: u8, code: u8) -> Action {
        let named = |list: &[IcmpMatch], specific: bool| {
            list.iter()
                .any(|m| m.code.is_some() == specific && m.covers(v6, kind, code))
        };
        for specific in [true, false] {
            if named(&self.drop, specific) {
                return Action::Drop;
            }
            if named(&self.allow, specific) {
                return Action::Allow;
            }
        }
        if default == Action::Drop && is_essential(v6, kind, code) {
            return Action::Allow;
        }
        default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_errors() {
        assert_eq!(
            parse_icmp_spec("echo-request"),
            Ok(vec![IcmpMatch::v4(8), IcmpMatch::v6(128)])
        );
        assert_eq!(parse_icmp_spec("icmpv6/135"), Ok(vec![IcmpMatch::v6(135)]));
        assert_eq!(parse_icmp_spec("icmp/3"), Ok(vec![IcmpMatch::v4(3)]));
        assert!(parse_icmp_spec("icmp/300").is_err());
        assert!(parse_icmp_spec("tcp/3").is_err());
        let e = parse_icmp_spec("echo").err().unwrap_or_default();
        assert!(e.contains("did you mean `echo-reply`"), "{e}");
    }

    #[test]
    fn essentials_pass_a_drop_default_unless_named() {
        let none = IcmpPolicy::default();
        assert_eq!(none.verdict(Action::Drop, true, 135, 0), Action::Allow);
        assert_eq!(none.verdict(Action::Drop, true, 2, 0), Action::Allow);
        assert_eq!(none.verdict(Action::Drop, false, 3, 4), Action::Allow);
        assert_eq!(none.verdict(Action::Drop, false, 3, 3), Action::Drop);
        assert_eq!(none.verdict(Action::Drop, false, 8, 0), Action::Drop);
        assert_eq!(none.verdict(Action::Allow, false, 8, 0), Action::Allow);
        let named = IcmpPolicy {
            allow: vec![IcmpMatch::v4(8)],
            drop: vec![IcmpMatch::v6(135), IcmpMatch::v4(3)],
        };
        assert_eq!(named.verdict(Action::Drop, false, 8, 0), Action::Allow);
        assert_eq!(named.verdict(Action::Drop, true, 135, 0), Action::Drop);
        // Naming the whole type drops fragmentation-needed too...
        assert_eq!(named.verdict(Action::Drop, false, 3, 4), Action::Drop);
        // ...unless the code itself is named the other way.
        let specific = IcmpPolicy {
            allow: vec![FRAG_NEEDED],
            drop: vec![IcmpMatch::v4(3)],
        };
        assert_eq!(specific.verdict(Action::Allow, false, 3, 4), Action::Allow);
        assert_eq!(specific.verdict(Action::Allow, false, 3, 1), Action::Drop);
    }
}
