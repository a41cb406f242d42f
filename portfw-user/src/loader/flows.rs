//! The flow table as user space sees it: the flows the host opened (`portfw flows`), and the
//! table's fill and evictions (`portfw status`).
use std::{
    borrow::BorrowMut,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::{HashMap, MapData, MapError};
use portfw_common::{FlowKey, FlowTimeouts, FlowValue, MapNames, counter, flow_state, ipproto};
use serde::Serialize;

use super::{
    bpffs::Paths,
    error::LoaderError,
    iface::ifname,
    object::{
        flow_map_slack, monotonic_ns, pinned_active, pinned_counters, pinned_flow_map_size,
        pinned_flows, pinned_settings,
    },
    sockets,
};
use crate::compile::CompiledPolicy;

/// `BPF_NOEXIST`: insert only where the key is absent.
const BPF_NOEXIST: u32 = 1;

/// One tracked flow, as `conntrack -L` would show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowRecord {
    /// `tcp`, `udp`, `udplite`, `sctp`, `icmp` or `icmpv6`.
    pub protocol: String,
    /// `addr:port` of the host's side (`[addr]:port` for IPv6; for ICMP echo, the address).
    pub local: String,
    /// `addr:port` of the peer.
    pub remote: String,
    pub local_addr: IpAddr,
    pub local_port: Option<u16>,
    pub remote_addr: IpAddr,
    pub remote_port: Option<u16>,
    /// ICMP echo: the identifier.
    pub echo_id: Option<u16>,
    /// `syn-sent`, `established`, `closing` or `open`.
    pub state: &'static str,
    /// Seconds since the host opened the flow.
    pub age_s: f64,
    /// Seconds until the flow expires unless a packet refreshes it.
    pub expires_in_s: f64,
    /// The interface the flow left through.
    pub iface: Option<String>,
    pub ifindex: u32,
}

/// The flow table's fill, for `portfw status`.
#[derive(Clone, Debug, Serialize)]
pub struct FlowTableStatus {
    /// Whether the active policy tracks flows (`replies: allow`).
    pub tracking: bool,
    /// Entries in the table, live or expired-but-not-yet-reclaimed.
    pub entries: usize,
    /// Entries that are still live.
    pub live: usize,
    /// `flows: max:`, the capacity the table guarantees.
    pub max: u32,
    /// Flows recorded since the filter was loaded.
    pub created: u64,
    /// Flows the table dropped to make room for new ones (created minus held).
    pub evicted: u64,
}

fn addr(family: u8, bytes: [u8; 16]) -> IpAddr {
    if family == 6 {
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    }
}

fn endpoint(addr: IpAddr, port: Option<u16>) -> String {
    match (addr, port) {
        (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
        (a, Some(p)) => format!("{a}:{p}"),
        (a, None) => a.to_string(),
    }
}

fn state_name(state: u8) -> &'static str {
    match state {
        flow_state::SYN_SENT => "syn-sent",
        flow_state::ESTABLISHED => "established",
        flow_state::CLOSING => "closing",
        _ => "open",
    }
}

/// A flow as shown, or `None` when it has expired at `now`.
fn record(
    key: &FlowKey,
    value: &FlowValue,
    timeouts: &FlowTimeouts,
    now: u64,
) -> Option<FlowRecord> {
    let timeout = timeouts.for_flow(key.protocol, value.state);
    let idle = now.saturating_sub(value.seen_ns);
    if idle > timeout {
        return None;
    }
    let icmp = matches!(key.protocol, ipproto::ICMP | ipproto::ICMPV6);
    let (local_port, remote_port, echo_id) = if icmp {
        (None, None, Some(key.local_port))
    } else {
        (Some(key.local_port), Some(key.remote_port), None)
    };
    let local_addr = addr(key.family, key.local);
    let remote_addr = addr(key.family, key.remote);
    Some(FlowRecord {
        protocol: crate::events::protocol_name(key.protocol),
        local: endpoint(local_addr, local_port),
        remote: endpoint(remote_addr, remote_port),
        local_addr,
        local_port,
        remote_addr,
        remote_port,
        echo_id,
        state: state_name(value.state),
        age_s: now.saturating_sub(value.created_ns) as f64 / 1e9,
        expires_in_s: (timeout - idle) as f64 / 1e9,
        iface: ifname(value.ifindex),
        ifindex: value.ifindex,
    })
}

/// The live flows of the filter pinned at `paths`, oldest first.
pub(super) fn live_flows(paths: &Paths) -> Result<Vec<FlowRecord>, LoaderError> {
    let timeouts = pinned_settings(paths, pinned_active(paths)?)?.flow_timeouts;
    let now = monotonic_ns();
    let mut flows: Vec<FlowRecord> = pinned_flows(paths)?
        .iter()
        .filter_map(|(k, v)| record(k, v, &timeouts, now))
        .collect();
    flows.sort_by(|a, b| b.age_s.total_cmp(&a.age_s));
    Ok(flows)
}

/// The fill of the flow table of the filter pinned at `paths`.
pub(super) fn table_status(paths: &Paths) -> Result<FlowTableStatus, LoaderError> {
    let settings = pinned_settings(paths, pinned_active(paths)?)?;
    let now = monotonic_ns();
    let all = pinned_flows(paths)?;
    let live = all
        .iter()
        .filter(|(k, v)| record(k, v, &settings.flow_timeouts, now).is_some())
        .count();
    let created = pinned_counters(paths)?
        .get(counter::FLOWS_CREATED as usize)
        .copied()
        .unwrap_or(0);
    Ok(FlowTableStatus {
        tracking: settings.replies == portfw_common::action::ALLOW,
        entries: all.len(),
        live,
        max: pinned_flow_map_size(paths)?.saturating_sub(flow_map_slack()?),
        created,
        evicted: created.saturating_sub(all.len() as u64),
    })
}

/// Puts the host's connections that the flow table does not hold yet into `table`, as the
/// egress program would have recorded them, when `compiled` tracks replies: those on local
/// ports whose replies its rules may drop ([`sockets::replies_need_a_flow`]). At most half
/// of `flows: max`, so that a host with a great many sockets leaves room for new flows.
/// Returns how many went in, or why the host's sockets could not be read (the socket lookup
/// still vouches for older TCP connections then).
pub(super) fn seed_connections<T: BorrowMut<MapData>>(
    table: &mut HashMap<T, FlowKey, FlowValue>,
    compiled: &CompiledPolicy,
) -> Result<usize, String> {
    if compiled.settings.replies != portfw_common::action::ALLOW {
        return Ok(0);
    }
    let connections = sockets::connections().map_err(|e| format!("sock_diag: {e}"))?;
    let now = monotonic_ns();
    let room = (compiled.flows_max / 2) as usize;
    let mut seeded = 0;
    for connection in connections
        .iter()
        .filter(|c| sockets::replies_need_a_flow(compiled, c))
    {
        if seeded == room {
            break;
        }
        let (key, value) = connection.flow(now);
        match table.insert(key, value, u64::from(BPF_NOEXIST)) {
            Ok(()) => seeded += 1,
            // Recorded already, by the egress program or a carried-over table.
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(format!("{}: {e}", MapNames::FLOWS)),
        }
    }
    Ok(seeded)
}

/// The note `apply` gives about [`seed_connections`].
pub(super) fn seed_note(seeded: Result<usize, String>) -> Option<String> {
    match seeded {
        Ok(0) => None,
        Ok(n) => Some(format!(
            "tracking {n} connection{} the host already had open, for their replies",
            if n == 1 { "" } else { "s" }
        )),
        Err(e) => Some(format!(
            "could not read the host's open connections ({e}): older TCP connections are \
             still vouched for by their sockets, older connected UDP sockets get their replies \
             once they send"
        )),
    }
}
