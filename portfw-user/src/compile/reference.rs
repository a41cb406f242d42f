//! The specification of what the compiled tables must say: plain first-match over the rules.
//!
//! Deliberately naive and slow. The compiler's tests compare it with [`super::compile`], so
//! this is the code to read when in doubt about semantics.
//!
//! [`evaluate`] is stateless: it decides a packet that belongs to no flow the host opened,
//! which is every packet under `replies: drop`. [`judge`] adds the active defences on a
//! given [`DefenceState`] (blocks, knock progress, open doors, limit buckets, scan windows)
//! in the kernel's order, and says how the state changes: it is what the differential tests
//! compare the kernel with. Whether a packet is a reply is the caller's to say.

use std::{collections::HashMap, net::IpAddr};

use portfw_common::{
    BLOCKS_MAX, BlockValue, DoorKey, DoorValue, KnockState, LimitKey, MAX_DOORS, RULE_BLOCKED,
    RULE_DEFAULT, RULE_DOOR, RULE_KNOCK, RULE_REPLY, RULE_SPA, ScanPortKey, ScanValue, SourceKey,
    action, block_reason, counter, opens_id, reason,
};

use crate::policy::{Action, Cidr, Door, DoorKind, LogMode, Policy, Protocol, ScanGuard};

/// The verdict for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Index into `policy.rules`; `None` when the default decided.
    pub rule: Option<usize>,
    /// Whether the verdict goes to the event stream.
    pub log: bool,
}

/// The first rule that names `(protocol, port)` and admits `source` decides; with none, the
/// policy default does. A rule without `from` admits every source; one with `from` admits
/// the sources inside any of its prefixes (an IPv4 prefix never admits an IPv6 source).
pub fn evaluate(policy: &Policy, protocol: Protocol, port: u16, source: IpAddr) -> Decision {
    for (index, rule) in policy.rules.iter().enumerate() {
        let names_port = rule
            .ports
            .iter()
            .any(|range| range.protocol == protocol && range.low <= port && port <= range.high);
        let admits_source = match &rule.from {
            None => true,
            Some(cidrs) => cidrs.iter().any(|cidr| cidr.contains(source)),
        };
        if names_port && admits_source {
            let log = match rule.log {
                Some(explicit) => explicit,
                None => mode_logs(policy.log, rule.action),
            };
            return Decision {
                action: rule.action,
                rule: Some(index),
                log,
            };
        }
    }
    Decision {
        action: policy.default,
        rule: None,
        log: mode_logs(policy.log, policy.default),
    }
}

fn mode_logs(mode: LogMode, action: Action) -> bool {
    match mode {
        LogMode::None => false,
        LogMode::Drops => action == Action::Drop,
        LogMode::All => true,
    }
}

/// What the tables must hold for a packet, before any state: [`evaluate`], then what the
/// knock doors make of the port. The compiler's tests compare [`super::CompiledPolicy`]
/// lookups with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableVerdict {
    /// The deciding rule's index, or [`RULE_DEFAULT`], [`RULE_KNOCK`] or [`RULE_SPA`].
    pub rule: u32,
    pub action: Action,
    pub log: bool,
    /// The door the port is a knock of: `1 +` its index in `policy.doors`, or 0.
    pub knocks: u8,
    /// Doors that open the port.
    pub opens: u8,
    /// The deciding rule's `limit`: `1 +` its index among the limited rules, or 0.
    pub limit: u16,
}

/// The [`TableVerdict`] of a (protocol, port, source).
pub fn table_verdict(
    policy: &Policy,
    protocol: Protocol,
    port: u16,
    source: IpAddr,
) -> TableVerdict {
    let mut knocks = 0u8;
    let mut opens = 0u8;
    let mut spa = false;
    for (d, door) in policy.doors.iter().take(MAX_DOORS as usize).enumerate() {
        if door.knocks_at(protocol, port) {
            knocks = d as u8 + 1;
        }
        if door.opens == (protocol, port) {
            opens |= 1 << d;
        }
        spa |= door.spa_at(protocol, port);
    }
    if spa {
        return TableVerdict {
            rule: RULE_SPA,
            action: Action::Allow,
            log: mode_logs(policy.log, Action::Allow),
            knocks: 0,
            opens: 0,
            limit: 0,
        };
    }
    let decision = evaluate(policy, protocol, port, source);
    let limit = decision.rule.map_or(0, |index| {
        if policy.rules[index].limit.is_none() {
            return 0;
        }
        let before = policy.rules[..index]
            .iter()
            .filter(|r| r.limit.is_some())
            .count();
        u16::try_from(before + 1).unwrap_or(u16::MAX)
    });
    let mut verdict = TableVerdict {
        rule: decision.rule.map_or(RULE_DEFAULT, |r| r as u32),
        action: decision.action,
        log: decision.log,
        knocks,
        opens,
        limit,
    };
    if knocks != 0 && decision.action == Action::Drop {
        // A knock port stays closed, and its drops are knocks.
        verdict.rule = RULE_KNOCK;
        verdict.log = mode_logs(policy.log, Action::Drop);
        verdict.limit = 0;
    }
    verdict
}

/// The state the active defences build up, as the kernel's maps hold it, keyed the same
/// way. LRU eviction is not modelled: tests stay below the maps' sizes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DefenceState {
    /// `PFW_BLOCKS`: sources by [`source_key`] (IPv6 by /64).
    pub blocks: HashMap<SourceKey, BlockValue>,
    /// `PFW_BLOCK_NETS`: blocked prefixes (full addresses), longest match wins.
    pub block_nets: Vec<(Cidr, BlockValue)>,
    /// `PFW_KNOCKS`: knock progress per (door, full source).
    pub knocks: HashMap<DoorKey, KnockState>,
    /// `PFW_DOORS`: open doors per (opened port's [`opens_id`], full source), whichever
    /// door opened it.
    pub doors: HashMap<DoorKey, DoorValue>,
    /// `PFW_LIMITS`: each bucket's theoretical arrival time.
    pub limits: HashMap<LimitKey, u64>,
    /// `PFW_SCAN`: each source's window.
    pub scan: HashMap<SourceKey, ScanValue>,
    /// `PFW_SCAN_PORTS`: when a (source, port) was last counted.
    pub scan_ports: HashMap<ScanPortKey, u64>,
}

/// One change [`judge`] made to a [`DefenceState`], in the order made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// An expired block was found and deleted.
    BlockExpired(SourceKey),
    /// The scan guard blocked the source.
    Blocked(SourceKey, BlockValue),
    /// The block table was full: the block was refused.
    BlockRefused(SourceKey),
    Knock(DoorKey, KnockState),
    KnockCleared(DoorKey),
    DoorOpened(DoorKey, DoorValue),
    Bucket(LimitKey, u64),
    ScanPort(ScanPortKey, u64),
    ScanWindow(SourceKey, ScanValue),
    ScanCleared(SourceKey),
}

impl DefenceState {
    fn apply(&mut self, changes: &mut Vec<Change>, change: Change) {
        match &change {
            Change::BlockExpired(key) => {
                self.blocks.remove(key);
            }
            Change::Blocked(key, value) => {
                self.blocks.insert(*key, *value);
            }
            Change::BlockRefused(_) => {}
            Change::Knock(key, value) => {
                self.knocks.insert(*key, *value);
            }
            Change::KnockCleared(key) => {
                self.knocks.remove(key);
            }
            Change::DoorOpened(key, value) => {
                self.doors.insert(*key, *value);
            }
            Change::Bucket(key, tat) => {
                self.limits.insert(*key, *tat);
            }
            Change::ScanPort(key, seen) => {
                self.scan_ports.insert(*key, *seen);
            }
            Change::ScanWindow(key, value) => {
                self.scan.insert(*key, *value);
            }
            Change::ScanCleared(key) => {
                self.scan.remove(key);
            }
        }
        changes.push(change);
    }

    /// Opens `door` for `source` at `now`, as `portfw agent` does for a good single-packet
    /// knock.
    pub fn open_door(&mut self, door: &Door, source: IpAddr, now: u64) {
        let (key, value) = opened(door, source, now);
        self.doors.insert(key, value);
    }

    /// Blocks `source` (its /64 for IPv6) by hand until `expires_ns` (0: for ever), as
    /// `portfw block ADDR` does.
    pub fn block(&mut self, source: IpAddr, expires_ns: u64, now: u64) {
        self.blocks.insert(
            source_key(source, true),
            BlockValue {
                expires_ns,
                created_ns: now,
                reason: block_reason::MANUAL,
                _pad: [0; 7],
            },
        );
    }

    /// Whether the kernel looks sources up in the block tables: the scan guard is on, or the
    /// loader set `guard::BLOCKS`/`NETS` because the tables hold entries.
    fn guarded(&self, policy: &Policy) -> bool {
        policy.scan.is_some() || !self.blocks.is_empty() || !self.block_nets.is_empty()
    }
}

/// The open-door entry `door` makes for `source` at `now`.
fn opened(door: &Door, source: IpAddr, now: u64) -> (DoorKey, DoorValue) {
    let (protocol, port) = door.opens;
    let key = DoorKey {
        // Slots are 0..4.
        id: opens_id(protocol.slot() as u8, port),
        source: source_key(source, false),
    };
    let value = DoorValue {
        opened_ns: now,
        expires_ns: now.saturating_add(nanos(door.open_for)),
        door: door.id(),
        _pad: 0,
    };
    (key, value)
}

/// A source as the state maps key it; `masked`: IPv6 by its /64 (blocks, scan, limits).
pub fn source_key(source: IpAddr, masked: bool) -> SourceKey {
    SourceKey::of(source, masked)
}

/// A packet with ports, as [`judge`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub protocol: Protocol,
    pub port: u16,
    pub source: IpAddr,
    /// TCP flags (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10), 0 for other protocols.
    pub tcp_flags: u8,
    /// The flow table vouches for it: a reply to a flow the host opened (only counts under
    /// `replies: allow`).
    pub reply: bool,
}

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

impl Packet {
    /// A new connection, for limits: a TCP SYN without ACK, or any other packet.
    fn opens_connection(&self) -> bool {
        self.protocol != Protocol::Tcp || self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
}

/// How the kernel judged a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// [`action::ALLOW`], [`action::DROP`] or (audit mode) [`action::WOULD_DROP`].
    pub action: u8,
    /// A rule index or one of the `RULE_*` markers.
    pub rule: u32,
    /// The verdict counter bumped ([`counter`]).
    pub counter: u32,
    /// [`reason`].
    pub reason: u8,
    pub log: bool,
    /// Other counters bumped: [`counter::DOORS_OPENED`], [`counter::SCAN_BLOCKS`],
    /// [`counter::BLOCKS_FULL`].
    pub bumped: Vec<u32>,
    /// What the packet changed in the state, in order.
    pub changes: Vec<Change>,
}

impl Outcome {
    fn new(action: Action, rule: u32, counter: u32, reason: u8, log: bool) -> Self {
        Self {
            action: action.to_kernel(),
            rule,
            counter,
            reason,
            log,
            bumped: Vec::new(),
            changes: Vec::new(),
        }
    }

    /// Audit mode: a drop passes as a would-drop, under its would-drop counter.
    fn audited(mut self, policy: &Policy) -> Self {
        if !policy.enforce && self.action == action::DROP {
            self.action = action::WOULD_DROP;
            self.counter = counter::would_drop(self.counter);
        }
        self
    }
}

/// Step 1, the block check: `Some` when `source` is blocked. Expired blocks met on the way
/// are deleted.
fn blocked(
    policy: &Policy,
    state: &mut DefenceState,
    source: IpAddr,
    now: u64,
    changes: &mut Vec<Change>,
) -> bool {
    if !state.guarded(policy) {
        return false;
    }
    let live = |v: &BlockValue| v.expires_ns == 0 || v.expires_ns > now;
    let key = source_key(source, true);
    if let Some(value) = state.blocks.get(&key).copied() {
        if live(&value) {
            return true;
        }
        state.apply(changes, Change::BlockExpired(key));
    }
    let hit = state
        .block_nets
        .iter()
        .filter(|(cidr, _)| cidr.contains(source))
        .max_by_key(|(cidr, _)| cidr.len)
        .copied();
    // Expired prefix blocks are only ignored: `portfw` removes the ones it finds.
    hit.is_some_and(|(_, value)| live(&value))
}

fn blocked_outcome(policy: &Policy, changes: Vec<Change>) -> Outcome {
    let mut outcome = Outcome::new(
        Action::Drop,
        RULE_BLOCKED,
        counter::DROP_BLOCKED,
        reason::BLOCKED,
        policy.log != LogMode::None,
    );
    outcome.changes = changes;
    outcome.audited(policy)
}

/// The block check for a packet without ports (ICMP, fragments, other IP protocols):
/// `Some` when its source is blocked, `None` when the settings decide as usual.
pub fn judge_portless(
    policy: &Policy,
    state: &mut DefenceState,
    source: IpAddr,
    now: u64,
) -> Option<Outcome> {
    let mut changes = Vec::new();
    if blocked(policy, state, source, now, &mut changes) {
        return Some(blocked_outcome(policy, changes));
    }
    // Expired blocks found on the way are gone; the settings decide.
    None
}

/// Judges a packet with ports against `policy` and `state` at `now` (nanoseconds of the
/// kernel's clock), updating `state`, in the kernel's order: the block check, knocks, the
/// rules, the rule's limit, the knock doors, replies, then the scan guard.
pub fn judge(policy: &Policy, state: &mut DefenceState, packet: &Packet, now: u64) -> Outcome {
    let mut changes = Vec::new();
    let mut bumped = Vec::new();
    let source = packet.source;
    // 1. Blocked sources: everything from them is dropped.
    if blocked(policy, state, source, now, &mut changes) {
        return blocked_outcome(policy, changes);
    }
    let table = table_verdict(policy, packet.protocol, packet.port, source);
    // 2. Knocks: TCP SYNs without ACK, or any UDP datagram.
    if let Some(door) = usize::from(table.knocks)
        .checked_sub(1)
        .and_then(|d| policy.doors.get(d))
        && packet.opens_connection()
    {
        knock(door, state, packet, now, &mut changes, &mut bumped);
    }
    // 3. The rules.
    let counter = match (table.rule, table.action) {
        (RULE_KNOCK, _) => counter::DROP_KNOCK,
        (RULE_SPA, _) => counter::ALLOW_SPA,
        (RULE_DEFAULT, Action::Allow) => counter::ALLOW_DEFAULT,
        (RULE_DEFAULT, Action::Drop) => counter::DROP_DEFAULT,
        (_, Action::Allow) => counter::ALLOW_RULE,
        (_, Action::Drop) => counter::DROP_RULE,
    };
    let reason = match table.rule {
        RULE_KNOCK => reason::KNOCK,
        RULE_SPA => reason::SPA,
        _ => reason::NONE,
    };
    let mut outcome = Outcome::new(table.action, table.rule, counter, reason, table.log);
    // 4. The rule's limit, on new connections.
    if table.action == Action::Allow && table.limit != 0 && packet.opens_connection() {
        let limited = policy.rules.iter().filter_map(|r| r.limit.as_ref());
        if let Some(limit) = limited.clone().nth(usize::from(table.limit) - 1) {
            let key = LimitKey {
                id: limit.id,
                source: source_key(source, true),
            };
            let tat = state.limits.get(&key).copied();
            let interval = limit.rate.interval_ns();
            if tat.is_none_or(|t| t <= now.saturating_add(limit.rate.tolerance_ns())) {
                let next = tat.unwrap_or(now).max(now).saturating_add(interval);
                state.apply(&mut changes, Change::Bucket(key, next));
            } else {
                // Over the limit: dropped, and nothing after counts it (no door, no reply,
                // no scan).
                let mut outcome = Outcome::new(
                    Action::Drop,
                    table.rule,
                    counter::DROP_LIMIT,
                    reason::LIMIT,
                    policy.log != LogMode::None,
                );
                outcome.bumped = bumped;
                outcome.changes = changes;
                return outcome.audited(policy);
            }
        }
    }
    // 5. Knock doors: a drop of a port a door opens, from a source that opened one. The
    // open-door map is keyed by the opened port, so that is one lookup whatever opened it.
    if outcome.action == action::DROP && table.opens != 0 {
        let key = DoorKey {
            // Slots are 0..4.
            id: opens_id(packet.protocol.slot() as u8, packet.port),
            source: source_key(source, false),
        };
        if state.doors.get(&key).is_some_and(|v| v.expires_ns > now) {
            let mut outcome = Outcome::new(
                Action::Allow,
                RULE_DOOR,
                counter::ALLOW_DOOR,
                reason::DOOR,
                policy.log == LogMode::All,
            );
            outcome.bumped = bumped;
            outcome.changes = changes;
            return outcome;
        }
    }
    // 6. Replies to the host's own flows pass whatever dropped them.
    if outcome.action == action::DROP && packet.reply && policy.replies == Action::Allow {
        outcome = Outcome::new(
            Action::Allow,
            RULE_REPLY,
            counter::ALLOW_REPLY,
            reason::NONE,
            policy.log == LogMode::All,
        );
    }
    // 7. The scan guard counts what the port table dropped (not knocks, limits or blocks).
    let counted = matches!(outcome.counter, counter::DROP_RULE | counter::DROP_DEFAULT);
    if let Some(scan) = policy.scan.as_ref().filter(|_| counted)
        && !scan.all_except().any(|cidr| cidr.contains(source))
    {
        // The packet that completes the count is dropped like the others before it; the
        // block shows in `bumped` and in the state.
        scan_count(scan, state, packet, now, &mut changes, &mut bumped);
    }
    outcome.bumped = bumped;
    outcome.changes = changes;
    outcome.audited(policy)
}

/// One knock at a door's port: advances, completes, restarts or resets the source's
/// progress.
fn knock(
    door: &Door,
    state: &mut DefenceState,
    packet: &Packet,
    now: u64,
    changes: &mut Vec<Change>,
    bumped: &mut Vec<u32>,
) {
    let DoorKind::Sequence { steps, within } = &door.kind else {
        return;
    };
    let key = DoorKey {
        id: door.id(),
        source: source_key(packet.source, false),
    };
    let here = (packet.protocol, packet.port);
    let start = KnockState {
        start_ns: now,
        step: 1,
        _pad: [0; 7],
    };
    let first = steps.first() == Some(&here);
    let Some(progress) = state.knocks.get(&key).copied() else {
        if first {
            state.apply(changes, Change::Knock(key, start));
        }
        return;
    };
    if now.saturating_sub(progress.start_ns) > nanos(*within) || progress.step == 0 {
        // Too slow: only a first knock starts over.
        let change = if first {
            Change::Knock(key, start)
        } else {
            Change::KnockCleared(key)
        };
        state.apply(changes, change);
        return;
    }
    let k = usize::from(progress.step);
    if steps.get(k) == Some(&here) {
        if k + 1 >= steps.len() {
            let (opened_key, value) = opened(door, packet.source, now);
            state.apply(changes, Change::DoorOpened(opened_key, value));
            state.apply(changes, Change::KnockCleared(key));
            bumped.push(counter::DOORS_OPENED);
        } else {
            let next = KnockState {
                step: progress.step + 1,
                ..progress
            };
            state.apply(changes, Change::Knock(key, next));
        }
    } else if k > 0 && steps.get(k - 1) == Some(&here) {
        // A retransmitted knock.
    } else if first {
        state.apply(changes, Change::Knock(key, start));
    } else {
        state.apply(changes, Change::KnockCleared(key));
    }
}

/// Counts a dropped port for the scan guard; true when it blocked the source.
fn scan_count(
    scan: &ScanGuard,
    state: &mut DefenceState,
    packet: &Packet,
    now: u64,
    changes: &mut Vec<Change>,
    bumped: &mut Vec<u32>,
) -> bool {
    let source = source_key(packet.source, true);
    let within = nanos(scan.within);
    let port_key = ScanPortKey {
        family: source.family,
        // Slots are 0..4.
        slot: packet.protocol.slot() as u8,
        port: packet.port,
        addr: source.addr,
    };
    if state
        .scan_ports
        .get(&port_key)
        .is_some_and(|&seen| now.saturating_sub(seen) <= within)
    {
        return false;
    }
    state.apply(changes, Change::ScanPort(port_key, now));
    let window = match state.scan.get(&source) {
        Some(w) if now.saturating_sub(w.start_ns) <= within => ScanValue {
            ports: w.ports + 1,
            ..*w
        },
        _ => ScanValue {
            start_ns: now,
            ports: 1,
            _pad: 0,
        },
    };
    if window.ports < scan.ports {
        state.apply(changes, Change::ScanWindow(source, window));
        return false;
    }
    let full = state.blocks.len() >= BLOCKS_MAX as usize;
    if full {
        state.apply(changes, Change::BlockRefused(source));
        bumped.push(counter::BLOCKS_FULL);
    } else {
        let value = BlockValue {
            expires_ns: now.saturating_add(nanos(scan.block)),
            created_ns: now,
            reason: block_reason::SCAN,
            _pad: [0; 7],
        };
        state.apply(changes, Change::Blocked(source, value));
        bumped.push(counter::SCAN_BLOCKS);
    }
    state.apply(changes, Change::ScanCleared(source));
    !full
}

fn nanos(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
