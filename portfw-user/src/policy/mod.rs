//! The policy model and its YAML language: parsing, validation and diagnostics.
//!
//! [`parse`] turns a policy file into a [`Policy`] or into every error it can find at once,
//! each pointing at a line and column. See docs/policy.md for the language itself.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    time::Duration,
};

use portfw_common::{FLOWS_DEFAULT_MAX, action, ipproto, proto};
use thiserror::Error;

pub mod cidr;
pub mod defences;
pub mod diag;
pub mod duration;
mod file;
pub mod icmp;
pub mod ports;
mod quickhash;
pub mod services;
mod setfile;
mod validate;
mod yaml;

pub use cidr::{Cidr, CidrError};
pub use defences::{
    Door, DoorKind, LOG_LIMIT_DEFAULT, Limit, ScanGuard, protect_except, protecting_prefix,
};
pub use diag::{Diagnostic, Diagnostics, Location, Severity, escape};
pub use duration::{
    DurationError, MAX_DURATION, Rate, RateError, format_duration, parse_duration, parse_rate,
};
pub use file::{POLICY_MAX_BYTES, SET_FILE_MAX_BYTES};
pub use icmp::{IcmpMatch, IcmpPolicy};

/// The most addresses and CIDRs a policy may hold: every set's entries once, plus, for each
/// rule, the entries of the sets its `from` names and the addresses it lists itself.
pub const MAX_CIDRS: usize = 1_000_000;

/// What happens to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Drop,
}

impl Action {
    /// The [`portfw_common::action`] value the kernel tables hold.
    pub fn to_kernel(self) -> u8 {
        match self {
            Action::Allow => action::ALLOW,
            Action::Drop => action::DROP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Drop => "drop",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which verdicts go to the event stream when a rule does not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LogMode {
    None,
    #[default]
    Drops,
    All,
}

impl LogMode {
    /// Whether a verdict of `action` is logged under this mode.
    pub fn logs(self, action: Action) -> bool {
        match self {
            LogMode::None => false,
            LogMode::Drops => action == Action::Drop,
            LogMode::All => true,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            LogMode::None => "none",
            LogMode::Drops => "drops",
            LogMode::All => "all",
        }
    }
}

impl fmt::Display for LogMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A transport protocol with ports, one slot of the kernel port table each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    UdpLite,
}

impl Protocol {
    /// In slot order.
    pub const ALL: [Protocol; 4] = [
        Protocol::Tcp,
        Protocol::Udp,
        Protocol::Sctp,
        Protocol::UdpLite,
    ];

    /// The protocol's slot in the port table ([`portfw_common::proto`]).
    pub fn slot(self) -> u32 {
        match self {
            Protocol::Tcp => proto::TCP,
            Protocol::Udp => proto::UDP,
            Protocol::Sctp => proto::SCTP,
            Protocol::UdpLite => proto::UDPLITE,
        }
    }

    /// The IP protocol number.
    pub fn ip_proto(self) -> u8 {
        match self {
            Protocol::Tcp => ipproto::TCP,
            Protocol::Udp => ipproto::UDP,
            Protocol::Sctp => ipproto::SCTP,
            Protocol::UdpLite => ipproto::UDPLITE,
        }
    }

    /// The protocol for an IP protocol number, if it has ports.
    pub fn from_ip_proto(number: u8) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.ip_proto() == number)
    }

    /// The name used in policies: `tcp`, `udp`, `sctp` or `udplite`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
            Protocol::UdpLite => "udplite",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Ports `low..=high` of one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub protocol: Protocol,
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && (self.low..=self.high).contains(&port)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub name: Option<String>,
    pub action: Action,
    /// Every (protocol, range) the rule names, in the order written; may overlap.
    pub ports: Vec<PortRange>,
    /// The sources the rule is limited to: `None` for any source. Otherwise never empty,
    /// with sets expanded and duplicates removed; IPv4 and IPv6 prefixes may mix, and a packet
    /// matches only a prefix of its own family.
    pub from: Option<Vec<Cidr>>,
    /// The `from:` value as written, e.g. "$admins" or "[10.0.0.0/8, $app]".
    pub from_text: Option<String>,
    /// The rule's own `log:`, which overrides the policy's log mode.
    pub log: Option<bool>,
    /// `limit:`, new connections per source (allow rules only).
    pub limit: Option<Limit>,
    pub location: Location,
    /// The rule as written, e.g. "allow ssh, 80/tcp" or "allow ssh from $admins".
    pub summary: String,
}

impl Rule {
    /// Whether packets this rule decides are logged under `mode`.
    pub fn logs(&self, mode: LogMode) -> bool {
        self.log.unwrap_or_else(|| mode.logs(self.action))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The file name shown in diagnostics.
    pub file: String,
    /// The verdict for a port no rule names.
    pub default: Action,
    pub log: LogMode,
    /// Interfaces the policy asks to be attached to; empty when it leaves that to the CLI.
    pub interfaces: Vec<String>,
    /// The `icmp` default: the verdict for ICMP and ICMPv6 types not named in `icmp_types`
    /// (with `drop`, essential messages still pass; see [`icmp`]).
    pub icmp: Action,
    /// ICMP types the policy names explicitly.
    pub icmp_types: IcmpPolicy,
    /// Non-first IP fragments, which carry no ports.
    pub fragments: Action,
    /// IP protocols other than TCP, UDP, SCTP, UDP-Lite and ICMP.
    pub other_ip: Action,
    /// Frames that are not IPv4 or IPv6.
    pub non_ip: Action,
    /// Replies to flows the host opened: `Allow` passes them ahead of the rules, `Drop`
    /// keeps portfw stateless.
    pub replies: Action,
    /// `enforce: false` is audit mode: everything is judged and counted as usual, but what
    /// the policy drops passes, counted and logged as a would-drop.
    pub enforce: bool,
    /// The flow table behind `replies: allow`.
    pub flows: Flows,
    /// Named address sets, in the order defined. Rules hold their own expanded copies, so
    /// these are for display.
    pub sets: Vec<AddressSet>,
    /// First match wins.
    pub rules: Vec<Rule>,
    /// The set files read, in the order read, with what was read from each: the policy's
    /// hash ([`digest`]) covers them.
    pub set_files: Vec<SetFileRead>,
    /// `scan:`, the port-scan guard.
    pub scan: Option<ScanGuard>,
    /// `log-limit:`: events at most at this rate; `None` for `log-limit: none`.
    pub log_limit: Option<Rate>,
    /// `knock:`, in the order written: door `d` is bit `d` of the kernel's door masks.
    pub doors: Vec<Door>,
}

/// A set file as a policy was read with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetFileRead {
    /// As written in the policy (relative to the policy's directory, or absolute), so that
    /// the hash does not depend on where portfw was run from.
    pub path: String,
    /// The SHA-256 of the bytes read.
    pub sha256: [u8; 32],
}

/// The SHA-256 `portfw status` shows for a policy, in hex: of the policy's bytes alone when
/// it names no set file (so it matches `sha256sum`), otherwise of the policy's bytes followed,
/// for each set file in the order read, by a NUL, its path as written, a NUL and the SHA-256
/// of its bytes. Editing a set file changes it, as applying the policy again would change
/// what the filter does.
pub fn digest(source: &[u8], set_files: &[SetFileRead]) -> String {
    use sha2::{Digest as _, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(source);
    for set_file in set_files {
        hasher.update([0u8]);
        hasher.update(set_file.path.as_bytes());
        hasher.update([0u8]);
        hasher.update(set_file.sha256);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Policy {
    /// The verdict for an ICMP (`v6 == false`) or ICMPv6 message.
    pub fn icmp_verdict(&self, v6: bool, kind: u8, code: u8) -> Action {
        self.icmp_types.verdict(self.icmp, v6, kind, code)
    }
}

/// The flow table's size and idle timeouts (`flows:`). See docs/policy.md for why the
/// defaults are what they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Flows {
    /// How many flows the table holds before it evicts the least recently used; the kernel
    /// map is sized a little above it ([`portfw_common::flow_map_entries`]).
    pub max: u32,
    /// Established TCP.
    pub tcp_timeout: Duration,
    /// TCP after a FIN or RST, or with only our SYN seen.
    pub tcp_closing: Duration,
    /// UDP, UDP-Lite and SCTP.
    pub udp_timeout: Duration,
    /// ICMP and ICMPv6 echo.
    pub icmp_timeout: Duration,
}

impl Flows {
    /// The smallest `max` a policy may ask for.
    pub const MIN_MAX: u32 = 16;
    /// The largest `max` a policy may ask for: 2^24 flows take over 2 GiB of kernel memory.
    pub const MAX_MAX: u32 = 1 << 24;

    /// What a policy gets for every key it leaves out.
    pub const DEFAULT: Flows = Flows {
        max: FLOWS_DEFAULT_MAX,
        tcp_timeout: Duration::from_secs(6 * 3600),
        tcp_closing: Duration::from_secs(10),
        udp_timeout: Duration::from_secs(60),
        icmp_timeout: Duration::from_secs(30),
    };
}

impl Default for Flows {
    fn default() -> Self {
        Flows::DEFAULT
    }
}

/// A named list of prefixes from `sets:`, which rules name as `$name` in `from:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressSet {
    pub name: String,
    /// Duplicates removed, otherwise in the order written. May be empty.
    pub cidrs: Vec<Cidr>,
    /// Where the set's name is written.
    pub location: Location,
    /// The set file's path as written in the policy, when the set was read from one.
    pub file: Option<String>,
}

/// A valid policy and the warnings found on the way.
#[derive(Clone, Debug)]
pub struct Parsed {
    pub policy: Policy,
    pub warnings: Vec<Diagnostic>,
}

/// Parses and validates a policy. `file` labels diagnostics, and set files named in the
/// policy are read relative to its directory; each must be a regular file of at most
/// [`SET_FILE_MAX_BYTES`].
///
/// On failure the error holds every error found, in file order (past
/// [`diag::ERRORS_SHOWN`], a count of the rest).
pub fn parse(source: &str, file: &str) -> Result<Parsed, Diagnostics> {
    parse_with(source, file, &|path| {
        file::read_text(path, file::Kind::SetFile)
    })
}

/// [`parse`], reading set files with `read_file`. The path it is given is the set file's path
/// joined to the policy's directory.
pub fn parse_with(
    source: &str,
    file: &str,
    read_file: &dyn Fn(&Path) -> io::Result<String>,
) -> Result<Parsed, Diagnostics> {
    validate::parse(source, file, read_file)
}

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("cannot read policy {}", escape(&path.display().to_string()))]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Reads the policy file at `path`: a regular file of at most [`POLICY_MAX_BYTES`], in
/// UTF-8. Anything else is refused before it is read, so `/dev/zero` or a FIFO fail at once.
pub fn read_source(path: &Path) -> Result<String, LoadError> {
    file::read_text(path, file::Kind::Policy).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads and parses the policy at `path`; diagnostics name the path as given.
pub fn load(path: &Path) -> Result<Parsed, LoadError> {
    let source = read_source(path)?;
    parse(&source, &path.display().to_string()).map_err(LoadError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_constants_match_the_kernel_abi() {
        let slots: Vec<u32> = Protocol::ALL.iter().map(|p| p.slot()).collect();
        assert_eq!(slots, [0, 1, 2, 3]);
        assert_eq!(Protocol::Tcp.ip_proto(), 6);
        assert_eq!(Protocol::Udp.ip_proto(), 17);
        assert_eq!(Protocol::Sctp.ip_proto(), 132);
        assert_eq!(Protocol::UdpLite.ip_proto(), 136);
        assert_eq!(Protocol::from_ip_proto(132), Some(Protocol::Sctp));
        assert_eq!(Protocol::from_ip_proto(1), None);
        assert_eq!(Protocol::UdpLite.to_string(), "udplite");
    }

    #[test]
    fn action_and_log_mode() {
        assert_eq!(Action::Allow.to_kernel(), action::ALLOW);
        assert_eq!(Action::Drop.to_kernel(), action::DROP);
        assert_eq!(Action::Drop.to_string(), "drop");
        assert!(LogMode::Drops.logs(Action::Drop));
        assert!(!LogMode::Drops.logs(Action::Allow));
        assert!(LogMode::All.logs(Action::Allow));
        assert!(!LogMode::None.logs(Action::Drop));
    }

    #[test]
    fn load_names_the_file() {
        let missing = Path::new("/nonexistent/portfw-policy.yaml");
        let err = load(missing).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("cannot read policy /nonexistent/portfw-policy.yaml")
        );

        let dir = std::env::temp_dir().join(format!("portfw-policy-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bad.yaml");
        std::fs::write(&path, "default: maybe\n").expect("write policy");
        let err = load(&path).err().map(|e| e.to_string()).unwrap_or_default();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            err.starts_with(&format!("{}:1:10: `default` must be", path.display())),
            "{err}"
        );
    }

    #[test]
    fn example_policies_parse_cleanly() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("policies/ exists") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                let parsed = load(&path).unwrap_or_else(|e| panic!("{e}"));
                assert!(parsed.warnings.is_empty(), "{:?}", parsed.warnings);
                seen += 1;
            }
        }
        assert!(
            seen >= 4,
            "expected the example policies in {}",
            dir.display()
        );
    }
}
