//! The active defences a policy configures: the scan guard, the event rate cap, connection
//! limits and knock doors (the model; `validate/defences.rs` reads them).

use std::{net::IpAddr, path::PathBuf, time::Duration};

use super::{Cidr, Location, Protocol, duration::Rate};

/// What `log-limit:` caps events at when a policy does not say: a stream a person or a
/// SIEM can take, far below the ~170,000 events/s the reader manages, so a flood cannot
/// hide the other sources' events.
pub const LOG_LIMIT_DEFAULT: Rate = Rate {
    count: 1000,
    per: Duration::from_secs(1),
};

/// `scan:`, the port-scan guard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanGuard {
    /// Distinct dropped ports from one source (IPv6: one /64) within `within` that block it.
    pub ports: u32,
    pub within: Duration,
    /// How long a block lasts.
    pub block: Duration,
    /// `except:` as written, sets expanded: sources never blocked.
    pub except: Vec<Cidr>,
    /// `except:` as written, for summaries; `None` when absent.
    pub except_text: Option<String>,
    /// Addresses the host depends on (gateways, resolvers, its own), added by the loader
    /// with [`protect_except`] before compiling.
    pub protected: Vec<Cidr>,
    pub location: Location,
}

/// `scan: within:` when a policy leaves it out.
pub const SCAN_WITHIN_DEFAULT: Duration = Duration::from_secs(5);
/// `scan: block:` when a policy leaves it out.
pub const SCAN_BLOCK_DEFAULT: Duration = Duration::from_secs(600);
/// A block longer than this with an empty `except:` gets a warning.
pub const LONG_BLOCK: Duration = Duration::from_secs(3600);

impl ScanGuard {
    /// Every excepted prefix: the policy's, then the protected addresses.
    pub fn all_except(&self) -> impl Iterator<Item = &Cidr> {
        self.except.iter().chain(&self.protected)
    }
}

/// A rule's `limit:`: new connections per source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    pub rate: Rate,
    /// [`portfw_common::door_id`] of the rule's canonical text (its summary, limit
    /// included), made unique within the policy: keys the buckets, so that they carry over
    /// a re-apply that keeps the rule.
    pub id: u32,
}

/// One entry of `knock:`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Door {
    pub name: String,
    pub kind: DoorKind,
    /// The port the door opens for the source that knocked.
    pub opens: (Protocol, u16),
    /// How long it stays open (`for:`).
    pub open_for: Duration,
    pub location: Location,
}

/// `for:` when a door leaves it out.
pub const DOOR_FOR_DEFAULT: Duration = Duration::from_secs(30);
/// `within:` when a sequence door leaves it out.
pub const KNOCK_WITHIN_DEFAULT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DoorKind {
    /// `sequence:`, followed by the kernel: every knock within `within` of the first.
    Sequence {
        steps: Vec<(Protocol, u16)>,
        within: Duration,
    },
    /// `spa:`, a single signed UDP datagram checked by `portfw agent`.
    Spa {
        port: u16,
        /// As written, joined to the policy file's directory when relative.
        key_file: PathBuf,
    },
}

impl Door {
    /// The door's stable id ([`portfw_common::door_id`] of its name).
    pub fn id(&self) -> u32 {
        portfw_common::door_id(self.name.as_bytes())
    }

    /// Whether `(protocol, port)` is a knock of this door's sequence.
    pub fn knocks_at(&self, protocol: Protocol, port: u16) -> bool {
        match &self.kind {
            DoorKind::Sequence { steps, .. } => steps.contains(&(protocol, port)),
            DoorKind::Spa { .. } => false,
        }
    }

    /// Whether `(protocol, port)` is this door's single-packet port.
    pub fn spa_at(&self, protocol: Protocol, port: u16) -> bool {
        matches!(self.kind, DoorKind::Spa { port: p, .. } if protocol == Protocol::Udp && p == port)
    }
}

/// The prefix that keeps `addr` from being blocked: blocks key IPv6 sources by their /64,
/// so an IPv6 address is only safe when its whole /64 is excepted.
pub fn protecting_prefix(addr: IpAddr) -> Cidr {
    match addr {
        IpAddr::V4(_) => Cidr::host(addr),
        IpAddr::V6(_) => Cidr::new(addr, 64).unwrap_or(Cidr::host(addr)),
    }
}

/// Adds the addresses the host depends on (its default gateways, its resolvers, its own
/// addresses) to the scan guard's except list, so that spoofed scans cannot make the host
/// block them. Does nothing without `scan:`. The loader calls it before compiling; the
/// compiler stays pure.
pub fn protect_except(policy: &mut super::Policy, addrs: &[IpAddr]) {
    let Some(scan) = policy.scan.as_mut() else {
        return;
    };
    for &addr in addrs {
        let prefix = protecting_prefix(addr);
        if !scan.protected.contains(&prefix) {
            scan.protected.push(prefix);
        }
    }
}
