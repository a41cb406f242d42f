//! Source-address prefixes (`10.0.0.0/8`, `2001:db8::/32`): their text form and containment.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use thiserror::Error;

/// An IPv4 or IPv6 prefix. Always normalised: the bits past `len` are zero, so two values
/// that admit the same addresses compare equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    /// The prefix of length `len` that contains `addr`; `None` if `len` is longer than the
    /// address (32 bits for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, len: u8) -> Option<Cidr> {
        let max = max_len(addr);
        if len > max {
            return None;
        }
        let bits = to_bits(addr) & mask(len, max);
        Some(Cidr {
            addr: from_bits(bits, addr.is_ipv4()),
            len,
        })
    }

    /// The prefix holding only `addr` (/32 or /128).
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            len: max_len(addr),
        }
    }

    pub fn is_ipv4(&self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` is inside this prefix; an address of the other family never is.
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.is_ipv4()
            && to_bits(ip) & mask(self.len, self.max_len()) == self.bits()
    }

    /// Whether every address of `other` is inside this prefix.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// 32 for IPv4, 128 for IPv6.
    pub fn max_len(&self) -> u8 {
        max_len(self.addr)
    }

    /// The address as a number; IPv4 sits in the low 32 bits.
    pub fn bits(&self) -> u128 {
        to_bits(self.addr)
    }

    /// Parses a prefix as a policy writes it and says whether the text had host bits set,
    /// which the returned (normalised) prefix no longer has: `10.0.0.1/8` gives
    /// (`10.0.0.0/8`, true). A bare address is a /32 or /128 and never has host bits.
    pub fn parse_noting_host_bits(text: &str) -> Result<(Cidr, bool), CidrError> {
        if text.is_empty() {
            return Err(CidrError::Empty);
        }
        let Some((address, prefix)) = text.split_once('/') else {
            return parse_addr(text)
                .map(|addr| (Cidr::host(addr), false))
                .ok_or_else(|| not_an_address(text));
        };
        if address.is_empty() {
            return Err(CidrError::MissingAddress(text.to_owned()));
        }
        if prefix.is_empty() {
            return Err(CidrError::MissingLength(text.to_owned()));
        }
        let Some(addr) = parse_addr(address) else {
            return Err(CidrError::NotAnAddress {
                address: address.to_owned(),
                text: text.to_owned(),
            });
        };
        let max = max_len(addr);
        if !prefix.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::BadLength {
                prefix: prefix.to_owned(),
                hint: netmask_hint(addr, prefix),
            });
        }
        let len = match prefix.parse::<u8>() {
            Ok(len) if len <= max => len,
            _ => {
                return Err(CidrError::LengthOutOfRange {
                    prefix: prefix.to_owned(),
                    max,
                    family: if addr.is_ipv4() { "IPv4" } else { "IPv6" },
                });
            }
        };
        let host_bits = to_bits(addr) & !mask(len, max) != 0;
        Ok((Cidr::host(addr).truncate(len), host_bits))
    }

    /// This prefix shortened to `len`, which must not be longer than it.
    fn truncate(self, len: u8) -> Cidr {
        let bits = self.bits() & mask(len, self.max_len());
        Cidr {
            addr: from_bits(bits, self.is_ipv4()),
            len,
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Accepts `ADDRESS` or `ADDRESS/LENGTH`; host bits are cleared, not refused.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Cidr::parse_noting_host_bits(text).map(|(cidr, _)| cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum CidrError {
    #[error("empty address; expected an IP address or CIDR")]
    Empty,
    #[error("`{text}` is not an IP address or CIDR{hint}")]
    NotAddressOrCidr { text: String, hint: &'static str },
    #[error("`{address}` in `{text}` is not an IP address")]
    NotAnAddress { address: String, text: String },
    #[error("`{0}` has no address before the `/`")]
    MissingAddress(String),
    #[error("`{0}` has no prefix length after the `/`")]
    MissingLength(String),
    #[error("prefix length `{prefix}` is not a number{hint}")]
    BadLength { prefix: String, hint: String },
    #[error("prefix length {prefix} is out of range 0-{max} for {family}")]
    LengthOutOfRange {
        prefix: String,
        max: u8,
        family: &'static str,
    },
}

fn parse_addr(text: &str) -> Option<IpAddr> {
    // Only a colon makes it IPv6; trying one parser keeps 100,000-line set files quick.
    if text.contains(':') {
        text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
    } else {
        text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
    }
}

fn not_an_address(text: &str) -> CidrError {
    let is_range = text
        .split_once('-')
        .is_some_and(|(a, b)| parse_addr(a).is_some() && parse_addr(b).is_some());
    let hint = if is_range {
        "; address ranges are not supported, write them as CIDRs"
    } else if !text.contains(':')
        && text
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b.to_ascii_lowercase() > b'f')
    {
        "; host names are not supported, write addresses"
    } else {
        ""
    };
    CidrError::NotAddressOrCidr {
        text: text.to_owned(),
        hint,
    }
}

/// Suggests `/N` for an IPv4 netmask written where the length belongs (`/255.0.0.0`).
fn netmask_hint(addr: IpAddr, prefix: &str) -> String {
    let Ok(mask) = prefix.parse::<Ipv4Addr>() else {
        return String::new();
    };
    let bits = u32::from(mask);
    let len = bits.leading_ones();
    if addr.is_ipv4() && bits.checked_shl(len).unwrap_or(0) == 0 {
        format!("; write the netmask {mask} as /{len}")
    } else {
        String::new()
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn to_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_bits(bits: u128, ipv4: bool) -> IpAddr {
    if ipv4 {
        // The mask keeps IPv4 values inside the low 32 bits.
        IpAddr::V4(Ipv4Addr::from(bits as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(bits))
    }
}

/// The network mask of a `len`-bit prefix of a `max`-bit address, in the low `max` bits.
fn mask(len: u8, max: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    (u128::MAX << (128 - u32::from(len))) >> (128 - u32::from(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(text: &str) -> Cidr {
        text.parse()
            .unwrap_or_else(|e| panic!("{text} does not parse: {e}"))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|e| panic!("{text} is not an address: {e}"))
    }

    fn err(text: &str) -> String {
        match text.parse::<Cidr>() {
            Ok(c) => panic!("{text} parsed as {c}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_and_displays_with_the_length() {
        assert_eq!(cidr("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("192.0.2.7").to_string(), "192.0.2.7/32");
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("2001:DB8::1").to_string(), "2001:db8::1/128");
        assert_eq!(cidr("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("::/0").to_string(), "::/0");
        assert_eq!(cidr("::").to_string(), "::/128");
        assert_eq!(cidr("10.0.0.0/08").len, 8);
        assert!(cidr("10.0.0.0/8").is_ipv4() && !cidr("::1").is_ipv4());
        assert_eq!(
            (cidr("1.2.3.4").max_len(), cidr("::1").max_len()),
            (32, 128)
        );
    }

    #[test]
    fn host_bits_are_cleared_and_noted() {
        assert_eq!(cidr("10.0.0.1/8"), cidr("10.0.0.0/8"));
        assert_eq!(cidr("10.255.255.255/8").to_string(), "10.0.0.0/8");
        assert_eq!(cidr("1.2.3.4/0").to_string(), "0.0.0.0/0");
        assert_eq!(cidr("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr("ffff::1/1").to_string(), "8000::/1");
        assert_eq!(cidr("1.2.3.255/31").to_string(), "1.2.3.254/31");
        let noted = |t| Cidr::parse_noting_host_bits(t).map(|(_, host_bits)| host_bits);
        assert_eq!(noted("10.0.0.1/8"), Ok(true));
        assert_eq!(noted("10.0.0.0/8"), Ok(false));
        assert_eq!(noted("10.0.0.1"), Ok(false));
        assert_eq!(noted("10.0.0.1/32"), Ok(false));
        assert_eq!(noted("::1/127"), Ok(true));
        assert_eq!(noted("::1/0"), Ok(true));
        assert_eq!(noted("::/0"), Ok(false));
    }

    #[test]
    fn new_normalises_and_checks_the_length() {
        assert_eq!(Cidr::new(ip("10.1.2.3"), 16), Some(cidr("10.1.0.0/16")));
        assert_eq!(Cidr::new(ip("10.1.2.3"), 32), Some(cidr("10.1.2.3")));
        assert_eq!(Cidr::new(ip("10.1.2.3"), 33), None);
        assert_eq!(Cidr::new(ip("::1"), 128), Some(cidr("::1/128")));
        assert_eq!(Cidr::new(ip("::1"), 129), None);
        assert_eq!(Cidr::new(ip("2001:db8::"), 0), Some(cidr("::/0")));
        assert_eq!(cidr("255.255.255.255").bits(), 0xffff_ffff);
        assert_eq!(cidr("::ffff:0:0/96").bits(), 0xffff_0000_0000);
        assert_eq!(cidr("ffff::/16").bits(), 0xffff << 112);
    }

    #[test]
    fn contains_addresses() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.0.0.0")) && net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")) && !net.contains(ip("9.255.255.255")));
        assert!(!net.contains(ip("::ffff:10.0.0.1")), "families never mix");
        assert!(cidr("0.0.0.0/0").contains(ip("255.255.255.255")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::")));
        assert!(cidr("::/0").contains(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(!cidr("::/0").contains(ip("0.0.0.0")));
        assert!(cidr("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!cidr("192.0.2.7").contains(ip("192.0.2.6")));
        let v6 = cidr("2001:db8::/127");
        assert!(v6.contains(ip("2001:db8::1")) && !v6.contains(ip("2001:db8::2")));
        assert!(
            cidr("8000::/1").contains(ip("ffff::")) && !cidr("8000::/1").contains(ip("7fff::"))
        );
    }

    #[test]
    fn contains_prefixes() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains_cidr(&cidr("10.1.0.0/16")));
        assert!(net.contains_cidr(&net));
        assert!(!cidr("10.1.0.0/16").contains_cidr(&net));
        assert!(!net.contains_cidr(&cidr("11.0.0.0/16")));
        assert!(!net.contains_cidr(&cidr("0.0.0.0/0")));
        assert!(cidr("0.0.0.0/0").contains_cidr(&cidr("0.0.0.0/0")));
        assert!(!cidr("0.0.0.0/0").contains_cidr(&cidr("::/0")));
        assert!(!cidr("::/0").contains_cidr(&cidr("0.0.0.0/0")));
        assert!(cidr("::/0").contains_cidr(&cidr("2001:db8::/32")));
        assert!(cidr("2001:db8::/32").contains_cidr(&cidr("2001:db8:ffff::1")));
        assert!(!cidr("2001:db8::/32").contains_cidr(&cidr("2001:db9::/32")));
        assert!(!cidr("2001:db8::/33").contains_cidr(&cidr("2001:db8::/32")));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            err("10.0.0.0/33"),
            "prefix length 33 is out of range 0-32 for IPv4"
        );
        assert_eq!(
            err("2001:db8::/129"),
            "prefix length 129 is out of range 0-128 for IPv6"
        );
        assert_eq!(
            err("10.0.0.0/999"),
            "prefix length 999 is out of range 0-32 for IPv4"
        );
        assert_eq!(err("300.1.1.1"), "`300.1.1.1` is not an IP address or CIDR");
        assert_eq!(
            err("300.1.1.1/8"),
            "`300.1.1.1` in `300.1.1.1/8` is not an IP address"
        );
        assert_eq!(
            err("10.0.0.0/"),
            "`10.0.0.0/` has no prefix length after the `/`"
        );
        assert_eq!(err("/8"), "`/8` has no address before the `/`");
        assert_eq!(err(""), "empty address; expected an IP address or CIDR");
        assert_eq!(err("10.0.0.0/x"), "prefix length `x` is not a number");
        assert_eq!(err("10.0.0.0/-1"), "prefix length `-1` is not a number");
        assert_eq!(
            err("10.0.0.0/255.0.0.0"),
            "prefix length `255.0.0.0` is not a number; write the netmask 255.0.0.0 as /8"
        );
        assert_eq!(
            err("10.0.0.0/255.0.255.0"),
            "prefix length `255.0.255.0` is not a number"
        );
        assert_eq!(
            err("10.0.0.1-10.0.0.9"),
            "`10.0.0.1-10.0.0.9` is not an IP address or CIDR; address ranges are not \
             supported, write them as CIDRs"
        );
        assert_eq!(
            err("example.com"),
            "`example.com` is not an IP address or CIDR; host names are not supported, \
             write addresses"
        );
        for bad in [
            "10.0.0",
            "010.0.0.1",
            "1.2.3.4.5",
            "fe80::1%eth0",
            ":::",
            "10.0.0.0/8/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn order_puts_ipv4_first() {
        let mut list = [cidr("::/0"), cidr("10.0.0.0/16"), cidr("10.0.0.0/8")];
        list.sort();
        assert_eq!(
            list.map(|c| c.to_string()),
            ["10.0.0.0/8", "10.0.0.0/16", "::/0"]
        );
    }
}
