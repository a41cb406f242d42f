//! The kernel's flow table as the tests see it: the clock its entries are stamped with, its
//! keys built from the reference's flows and back, seeding it, and the reference's view of it.
#![allow(dead_code, reason = "each test crate uses a different part")]

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use portfw::{loader::Loaded, policy::Policy};
use portfw_common::{FlowKey, FlowValue, flow_state};

use super::reference::{self, FlowId, FlowState, FlowTable};

/// How far the flow table's clock may lag CLOCK_MONOTONIC: it follows CLOCK_MONOTONIC at
/// tick resolution (jiffies once calibrated, `bpf_ktime_get_coarse_ns` before), and a tick
/// is at most 10 ms (HZ 100).
pub const CLOCK_TICK_NS: u64 = 10_000_000;

/// CLOCK_MONOTONIC in nanoseconds, which the flow table's clock follows to within
/// [`CLOCK_TICK_NS`].
pub fn monotonic_ns() -> u64 {
    // SAFETY: an all-zero timespec is valid, and clock_gettime only writes it.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An address as the key stores it: network order, IPv4 in the first 4 bytes, zeros after.
pub fn addr_bytes(a: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

/// The kernel key of a flow, laid out as portfw_common documents it, padding zero.
pub fn to_key(id: &FlowId) -> FlowKey {
    FlowKey {
        family: if id.local.is_ipv6() { 6 } else { 4 },
        protocol: id.protocol,
        local_port: id.local_port,
        remote_port: id.remote_port,
        _pad: [0; 2],
        local: addr_bytes(id.local),
        remote: addr_bytes(id.remote),
    }
}

pub fn state_byte(state: FlowState) -> u8 {
    match state {
        FlowState::SynSent => flow_state::SYN_SENT,
        FlowState::Established => flow_state::ESTABLISHED,
        FlowState::Closing => flow_state::CLOSING,
        FlowState::Open => flow_state::OPEN,
    }
}

/// A kernel entry as the reference's flow and state.
pub fn from_key(k: &FlowKey, v: &FlowValue) -> (FlowId, FlowState) {
    let addr = |b: [u8; 16]| -> IpAddr {
        if k.family == 6 {
            Ipv6Addr::from(b).into()
        } else {
            Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()
        }
    };
    let state = match v.state {
        flow_state::SYN_SENT => FlowState::SynSent,
        flow_state::ESTABLISHED => FlowState::Established,
        flow_state::CLOSING => FlowState::Closing,
        _ => FlowState::Open,
    };
    let id = FlowId {
        protocol: k.protocol,
        local: addr(k.local),
        remote: addr(k.remote),
        local_port: k.local_port,
        remote_port: k.remote_port,
    };
    (id, state)
}

/// The reference's view of a kernel table at `now`: a flow is live while its idle time is
/// within the timeout the documentation gives its state.
pub fn model_of(table: &[(FlowKey, FlowValue)], policy: &Policy, now: u64) -> FlowTable {
    let mut model = FlowTable::default();
    for (k, v) in table {
        let (id, state) = from_key(k, v);
        let idle = now.wrapping_sub(v.seen_ns);
        let timeout = reference::flow_timeout(policy, k.protocol, state);
        model.insert(id, state, u128::from(idle) <= timeout.as_nanos());
    }
    model
}

/// Every entry of the loaded object's flow table, in key order.
pub fn entries(loaded: &mut Loaded) -> Vec<(FlowKey, FlowValue)> {
    let mut all = loaded.flow_entries().expect("flow table");
    all.sort_by_key(|(k, _)| {
        (
            k.family,
            k.protocol,
            k.local,
            k.remote,
            k.local_port,
            k.remote_port,
        )
    });
    all
}

/// Empties the loaded object's flow table.
pub fn clear(loaded: &mut Loaded) {
    let keys: Vec<FlowKey> = entries(loaded).into_iter().map(|(k, _)| k).collect();
    let mut map = loaded.flows().expect("flow table");
    for k in keys {
        map.remove(&k).expect("remove flow");
    }
}

/// Puts a flow in the table whose last packet was `idle` ago (wrapping, as the kernel's
/// clock arithmetic does, so that an idle time longer than the uptime still reads right).
pub fn seed(loaded: &mut Loaded, key: FlowKey, state: u8, idle: Duration) {
    let seen = monotonic_ns().wrapping_sub(idle.as_nanos() as u64);
    let value = FlowValue {
        created_ns: seen.wrapping_sub(1_000_000_000),
        seen_ns: seen,
        ifindex: 1,
        state,
        _pad: [0; 3],
    };
    loaded
        .flows()
        .expect("flow table")
        .insert(key, value, 0)
        .expect("seed flow");
}
