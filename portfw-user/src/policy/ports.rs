//! The port-spec grammar: `PORT`, `LOW-HIGH`, a service or a range name, then `/PROTOCOL`.

use std::cmp::Reverse;

use thiserror::Error;

use super::{Protocol, services};

/// What a port spec names, before it is split into one range per protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSpec {
    pub low: u16,
    pub high: u16,
    /// Never empty, in [`Protocol::ALL`] order.
    pub protocols: Vec<Protocol>,
    pub form: SpecForm,
}

/// How a spec was written, which decides what a missing protocol means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecForm {
    Port,
    Range,
    RangeName(&'static str),
    Service(&'static str),
}

/// Protocols a spec without `/PROTOCOL` covers, unless it names a service.
pub const DEFAULT_PROTOCOLS: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SpecError {
    #[error("empty port spec; expected a port, a range LOW-HIGH or a name")]
    Empty,
    #[error("port {0} is out of range 0-65535")]
    OutOfRange(String),
    #[error("port `{0}` is not a whole number")]
    NotWhole(String),
    #[error("port `{0}` must be written in decimal")]
    NotDecimal(String),
    #[error("port `{0}` must be written without a sign")]
    Signed(String),
    #[error("port range {low}-{high} is reversed; write the lower port first ({high}-{low})")]
    Reversed { low: u16, high: u16 },
    #[error(
        "unknown protocol `{protocol}` in `{spec}`; expected one of: tcp, udp, sctp, udplite{hint}"
    )]
    UnknownProtocol {
        protocol: String,
        spec: String,
        hint: String,
    },
    #[error(
        "unknown service `{name}`; expected a port number, a range LOW-HIGH, a range name \
         (any, well-known, registered, dynamic) or a service name from docs/policy.md{hint}"
    )]
    UnknownService { name: String, hint: String },
    #[error(
        "cannot read port spec `{0}`; expected PORT, LOW-HIGH, a service name or a range name, \
         optionally followed by /tcp, /udp, /sctp or /udplite"
    )]
    Malformed(String),
}

/// Parses one port spec as written in a policy (the text of a YAML integer or string).
pub fn parse_spec(text: &str) -> Result<PortSpec, SpecError> {
    if text.is_empty() {
        return Err(SpecError::Empty);
    }
    let (item, protocol) = match text.split_once('/') {
        Some((item, protocol)) => (item, Some(parse_protocol(protocol, text)?)),
        None => (text, None),
    };
    let (low, high, form) = parse_item(item, text)?;
    let protocols = match (protocol, form) {
        (Some(protocol), _) => vec![protocol],
        (None, SpecForm::Service(name)) => services::lookup(name)
            .map(|s| s.protocols.to_vec())
            .unwrap_or_else(|| DEFAULT_PROTOCOLS.to_vec()),
        (None, _) => DEFAULT_PROTOCOLS.to_vec(),
    };
    Ok(PortSpec {
        low,
        high,
        protocols,
        form,
    })
}

fn parse_protocol(protocol: &str, spec: &str) -> Result<Protocol, SpecError> {
    if let Some(p) = Protocol::ALL.iter().find(|p| p.name() == protocol) {
        return Ok(*p);
    }
    let lower = protocol.to_ascii_lowercase();
    let hint = if Protocol::ALL.iter().any(|p| p.name() == lower) {
        format!("; protocols are lowercase: `{lower}`")
    } else if lower.starts_with("icmp") {
        "; ICMP has no ports and is set with the top-level `icmp:` key".to_owned()
    } else {
        String::new()
    };
    Err(SpecError::UnknownProtocol {
        protocol: protocol.to_owned(),
        spec: spec.to_owned(),
        hint,
    })
}

fn parse_item(item: &str, spec: &str) -> Result<(u16, u16, SpecForm), SpecError> {
    if item.is_empty() {
        return Err(SpecError::Malformed(spec.to_owned()));
    }
    if is_digits(item) {
        let port = parse_port(item)?;
        return Ok((port, port, SpecForm::Port));
    }
    if let Some(negative) = item.strip_prefix('-')
        && is_digits(negative)
    {
        return Err(SpecError::OutOfRange(item.to_owned()));
    }
    if let Some((low, high)) = item.split_once('-')
        && is_digits(low)
        && is_digits(high)
    {
        let (low, high) = (parse_port(low)?, parse_port(high)?);
        if low > high {
            return Err(SpecError::Reversed { low, high });
        }
        return Ok((low, high, SpecForm::Range));
    }
    if item.strip_prefix('+').is_some_and(is_digits) {
        return Err(SpecError::Signed(item.to_owned()));
    }
    if looks_numeric(item) {
        let hex_or_octal = ["0x", "0o", "0X", "0O"].iter().any(|p| item.starts_with(p));
        return Err(if hex_or_octal {
            SpecError::NotDecimal(item.to_owned())
        } else {
            SpecError::NotWhole(item.to_owned())
        });
    }
    if let Some(range) = services::range_name(item) {
        return Ok((range.low, range.high, SpecForm::RangeName(range.name)));
    }
    if let Some(service) = services::lookup(item) {
        return Ok((service.port, service.port, SpecForm::Service(service.name)));
    }
    let is_name = item.starts_with(|c: char| c.is_ascii_alphabetic())
        && item
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !is_name {
        return Err(SpecError::Malformed(spec.to_owned()));
    }
    Err(SpecError::UnknownService {
        name: item.to_owned(),
        hint: suggestion(item),
    })
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Floats, signed, hex and octal numbers: things a user meant as a number.
fn looks_numeric(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    body.starts_with(|c: char| c.is_ascii_digit() || c == '.') && body.parse::<f64>().is_ok()
        || ["0x", "0o", "0X", "0O"].iter().any(|p| {
            body.strip_prefix(p)
                .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_hexdigit()))
        })
}

fn parse_port(digits: &str) -> Result<u16, SpecError> {
    digits
        .parse::<u16>()
        .map_err(|_| SpecError::OutOfRange(digits.trim_start_matches('0').to_owned()))
}

/// "; did you mean `x`?" for a near miss among the known names, else nothing.
fn suggestion(name: &str) -> String {
    // No known name is within reach of a long one (a near miss differs in at most a quarter
    // of its characters), and the edit distance of a megabyte-long name would take minutes.
    if name.len() > 64 {
        return String::new();
    }
    let lower = name.to_ascii_lowercase();
    if lower != name && services::all_names().any(|n| n == lower) {
        return format!("; names are lowercase: `{lower}`");
    }
    // Ties go to the name sharing the longest prefix: `htp` is more likely `http` than `ftp`.
    let best = services::all_names()
        .map(|candidate| {
            let prefix = lower
                .chars()
                .zip(candidate.chars())
                .take_while(|(a, b)| a == b)
                .count();
            (edit_distance(&lower, candidate), Reverse(prefix), candidate)
        })
        .min();
    match best {
        Some((distance, _, candidate)) if distance <= 1 + name.len() / 4 => {
            format!("; did you mean `{candidate}`?")
        }
        _ => String::new(),
    }
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Protocol::{Sctp, Tcp, Udp, UdpLite};

    fn ok(text: &str) -> (u16, u16, Vec<Protocol>) {
        let spec = parse_spec(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        (spec.low, spec.high, spec.protocols)
    }

    fn err(text: &str) -> String {
        match parse_spec(text) {
            Ok(spec) => panic!("{text} parsed as {spec:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn single_ports() {
        assert_eq!(ok("80"), (80, 80, vec![Tcp, Udp]));
        assert_eq!(ok("0"), (0, 0, vec![Tcp, Udp]));
        assert_eq!(ok("65535"), (65535, 65535, vec![Tcp, Udp]));
        assert_eq!(ok("0080"), (80, 80, vec![Tcp, Udp]));
        assert_eq!(parse_spec("80").map(|s| s.form), Ok(SpecForm::Port));
    }

    #[test]
    fn every_protocol_suffix() {
        assert_eq!(ok("80/tcp"), (80, 80, vec![Tcp]));
        assert_eq!(ok("53/udp"), (53, 53, vec![Udp]));
        assert_eq!(ok("3868/sctp"), (3868, 3868, vec![Sctp]));
        assert_eq!(ok("5000/udplite"), (5000, 5000, vec![UdpLite]));
        assert_eq!(ok("1-2/sctp"), (1, 2, vec![Sctp]));
    }

    #[test]
    fn ranges() {
        assert_eq!(ok("8000-8999"), (8000, 8999, vec![Tcp, Udp]));
        assert_eq!(ok("8000-8999/tcp"), (8000, 8999, vec![Tcp]));
        assert_eq!(ok("5-5"), (5, 5, vec![Tcp, Udp]));
        assert_eq!(ok("0-65535/udp"), (0, 65535, vec![Udp]));
        assert_eq!(parse_spec("1-2").map(|s| s.form), Ok(SpecForm::Range));
    }

    #[test]
    fn range_names() {
        assert_eq!(ok("any"), (0, 65535, vec![Tcp, Udp]));
        assert_eq!(ok("any/sctp"), (0, 65535, vec![Sctp]));
        assert_eq!(ok("well-known"), (0, 1023, vec![Tcp, Udp]));
        assert_eq!(ok("registered/tcp"), (1024, 49151, vec![Tcp]));
        assert_eq!(ok("dynamic/udp"), (49152, 65535, vec![Udp]));
        assert_eq!(
            parse_spec("dynamic").map(|s| s.form),
            Ok(SpecForm::RangeName("dynamic"))
        );
    }

    #[test]
    fn services_expand_to_their_table_protocols() {
        assert_eq!(ok("ssh"), (22, 22, vec![Tcp]));
        assert_eq!(ok("domain"), (53, 53, vec![Tcp, Udp]));
        assert_eq!(ok("dns"), (53, 53, vec![Tcp, Udp]));
        assert_eq!(ok("ntp"), (123, 123, vec![Udp]));
        assert_eq!(ok("http-alt"), (8080, 8080, vec![Tcp]));
        assert_eq!(
            parse_spec("www").map(|s| s.form),
            Ok(SpecForm::Service("http"))
        );
    }

    #[test]
    fn explicit_protocol_overrides_the_table() {
        assert_eq!(ok("ssh/udp"), (22, 22, vec![Udp]));
        assert_eq!(ok("https/tcp"), (443, 443, vec![Tcp]));
        assert_eq!(ok("ntp/sctp"), (123, 123, vec![Sctp]));
    }

    #[test]
    fn out_of_range_ports() {
        assert_eq!(err("70000"), "port 70000 is out of range 0-65535");
        assert_eq!(err("65536/tcp"), "port 65536 is out of range 0-65535");
        assert_eq!(err("-1"), "port -1 is out of range 0-65535");
        assert_eq!(err("1-70000"), "port 70000 is out of range 0-65535");
        assert_eq!(
            err("99999999999999999999999"),
            "port 99999999999999999999999 is out of range 0-65535"
        );
        assert_eq!(err("070000"), "port 70000 is out of range 0-65535");
    }

    #[test]
    fn numbers_that_are_not_ports() {
        assert_eq!(err("1.5"), "port `1.5` is not a whole number");
        assert_eq!(err("1e3"), "port `1e3` is not a whole number");
        assert_eq!(err("+80"), "port `+80` must be written without a sign");
        assert_eq!(err("-1.5"), "port `-1.5` is not a whole number");
        assert_eq!(err(".5/tcp"), "port `.5` is not a whole number");
        assert_eq!(err("0x50"), "port `0x50` must be written in decimal");
    }

    #[test]
    fn reversed_range() {
        assert_eq!(
            err("9000-8000/tcp"),
            "port range 9000-8000 is reversed; write the lower port first (8000-9000)"
        );
    }

    #[test]
    fn unknown_protocols() {
        assert_eq!(
            err("80/tpc"),
            "unknown protocol `tpc` in `80/tpc`; expected one of: tcp, udp, sctp, udplite"
        );
        assert!(err("80/TCP").ends_with("; protocols are lowercase: `tcp`"));
        assert!(err("0/icmp").ends_with("set with the top-level `icmp:` key"));
        assert!(err("80/").starts_with("unknown protocol ``"));
    }

    #[test]
    fn unknown_services_with_suggestions() {
        assert_eq!(
            err("abc"),
            "unknown service `abc`; expected a port number, a range LOW-HIGH, a range name \
             (any, well-known, registered, dynamic) or a service name from docs/policy.md"
        );
        assert!(err("postgress").ends_with("; did you mean `postgres`?"));
        assert!(err("ssj/tcp").ends_with("; did you mean `ssh`?"));
        assert!(err("SSH").ends_with("; names are lowercase: `ssh`"));
        assert!(err("dynamc/udp").ends_with("; did you mean `dynamic`?"));
    }

    #[test]
    fn malformed_specs() {
        assert_eq!(
            err(""),
            "empty port spec; expected a port, a range LOW-HIGH or a name"
        );
        for text in [
            "80 /tcp",
            "1-2-3",
            "/tcp",
            "80/tcp/udp",
            "a b",
            "80,443",
            "1-",
        ] {
            assert!(
                parse_spec(text).is_err(),
                "{text} should not parse: {:?}",
                parse_spec(text)
            );
        }
        assert!(err("1-2-3").starts_with("cannot read port spec `1-2-3`"));
        assert!(err("80,443").starts_with("cannot read port spec `80,443`"));
    }

    #[test]
    fn edit_distance_basics() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("ssh", "ssh"), 0);
        assert_eq!(edit_distance("htps", "https"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
