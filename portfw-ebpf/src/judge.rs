//! The verdict: a [`Packet`] looked up in one generation's tables, each table at most once.
//!
//! Ports go to the port table, and to a source trie when the port's rules name sources;
//! everything else is decided by the generation's settings, read only on those paths, so the
//! common path (a port without source rules) costs one array lookup.

use aya_ebpf::{btf_maps::lpm_trie::Key, programs::XdpContext};
use portfw_common::{
    FlowTimeouts, LogLimit, MAX_RULES, NO_SOURCE_GROUP, PortEntry, RULE_BLOCKED, RULE_DOOR,
    RULE_KNOCK, RULE_MALFORMED, RULE_REPLY, RULE_SETTING, RULE_SPA, SOURCE_GROUP_BITS,
    ScanSettings, Settings, action, counter, guard, port_flags, port_index, reason, settings_log,
    source_key4, source_key6,
};

use crate::{
    defence::{self, Who, pfw_blocked, pfw_door_open, pfw_knock, pfw_scan, pfw_within_limit},
    flows,
    maps::{PFW_PORTS, PFW_SETTINGS, PFW_SRC4, PFW_SRC6},
    parse::{Frame, Kind, Packet},
};

/// How a packet was judged.
#[derive(Clone, Copy)]
pub struct Judgement {
    /// [`action::ALLOW`] or [`action::DROP`].
    pub action: u8,
    /// The deciding rule, or one of the `RULE_*` markers.
    pub rule: u32,
    /// The verdict counter to bump.
    pub counter: u32,
    /// Whether the verdict goes to the event stream.
    pub log: bool,
    /// Audit mode: a drop lets the packet through as a would-drop.
    audit: bool,
    /// [`reason`]: which defence, if any, decided.
    pub reason: u8,
}

impl Judgement {
    /// In audit mode (`enforce: false`) a drop passes as [`action::WOULD_DROP`], under its
    /// own counter; anything else is unchanged. An allowed packet pays one comparison.
    #[inline(always)]
    fn audited(mut self) -> Self {
        if self.action == action::DROP && self.audit {
            self.action = action::WOULD_DROP;
            self.counter = counter::would_drop(self.counter);
        }
        self
    }
}

/// Judges `packet` against `generation`'s tables. `ctx` is only for the kernel's socket
/// table, which vouches for TCP connections older than the flow table.
#[inline(always)]
pub fn judge(ctx: &XdpContext, packet: &Packet, generation: u32) -> Judgement {
    decide(ctx, packet, generation).audited()
}

#[inline(always)]
fn decide(ctx: &XdpContext, packet: &Packet, generation: u32) -> Judgement {
    match packet.kind() {
        Kind::Ports => {
            let Some(entry) = port_entry(generation, packet.slot(), packet.dst_port()) else {
                return malformed(settings(generation));
            };
            ports(ctx, packet, generation, entry)
        }
        Kind::Icmp => {
            // Per type: the compiler has already let neighbour discovery and path-MTU
            // messages through a drop default, unless the policy named them.
            let s = settings(generation);
            if s.guard != 0 && blocked_source(packet, s) {
                return blocked(s);
            }
            let v6 = packet.ip().is_some_and(|h| h.is_v6());
            if !s.icmp_drops(v6, packet.icmp_type(), packet.icmp_code()) {
                return by_setting(s, action::ALLOW, counter::ICMP_ALLOW, counter::ICMP_DROP);
            }
            if s.replies == action::ALLOW {
                if let Some(counter) = flows::is_related(Frame::new(ctx), packet, s) {
                    return reply(s, counter);
                }
            }
            by_setting(s, action::DROP, counter::ICMP_ALLOW, counter::ICMP_DROP)
        }
        Kind::Fragment => {
            let s = settings(generation);
            if s.guard != 0 && blocked_source(packet, s) {
                return blocked(s);
            }
            by_setting(
                s,
                s.fragments,
                counter::FRAGMENT_ALLOW,
                counter::FRAGMENT_DROP,
            )
        }
        Kind::OtherIp => {
            let s = settings(generation);
            if s.guard != 0 && blocked_source(packet, s) {
                return blocked(s);
            }
            by_setting(
                s,
                s.other_ip,
                counter::OTHER_IP_ALLOW,
                counter::OTHER_IP_DROP,
            )
        }
        Kind::NonIp => {
            let s = settings(generation);
            by_setting(s, s.non_ip, counter::NON_IP_ALLOW, counter::NON_IP_DROP)
        }
        Kind::Malformed | Kind::BadTransport => malformed(settings(generation)),
    }
}

/// The port table's entry for a (protocol slot, destination port). Every port has one, so
/// `None` only guards the verifier's view of the lookup.
#[inline(always)]
pub fn port_entry(generation: u32, slot: u32, dst_port: u16) -> Option<&'static PortEntry> {
    PFW_PORTS.get(port_index(generation, slot, dst_port))
}

/// A packet with ports, in the order the defences need: the block table, knocks, the
/// rules, the rule's limit, knock doors, the flow table, then the scan guard counts what
/// is still dropped. Each step after the rules runs only for entries that ask for it.
#[inline(always)]
fn ports(ctx: &XdpContext, packet: &Packet, generation: u32, entry: &PortEntry) -> Judgement {
    let guarded = entry.flags & port_flags::GUARD != 0;
    // The common path: a port without source rules or defences is its entry's verdict, and
    // a drop there only asks the flow table. Nothing is copied off the packet.
    if entry.group == NO_SOURCE_GROUP
        && !guarded
        && entry.knocks == 0
        && entry.limit == 0
        && entry.opens == 0
    {
        return unanswered(ctx, packet, generation, of_entry(entry));
    }
    let Some(hdr) = packet.ip() else {
        return malformed(settings(generation));
    };
    let who = Who::of(hdr, packet);
    if guarded {
        let s = settings(generation);
        if pfw_blocked(&who, u32::from(s.guard)) != 0 {
            return blocked(s);
        }
    }
    if entry.knocks != 0 {
        pfw_knock(&who, generation, u32::from(entry.knocks));
    }
    let decided = by_sources(packet, generation, entry);
    let judgement = of_entry(&decided);
    if judgement.action != action::DROP {
        if decided.limit != 0
            && defence::opens_connection(packet)
            && pfw_within_limit(&who, generation, u32::from(decided.limit)) == 0
        {
            return limited(settings(generation), judgement);
        }
        return judgement;
    }
    if decided.opens != 0 && pfw_door_open(&who) != 0 {
        let s = settings(generation);
        return Judgement {
            action: action::ALLOW,
            rule: RULE_DOOR,
            counter: counter::ALLOW_DOOR,
            log: s.log & settings_log::ALLOW != 0,
            audit: false,
            reason: reason::DOOR,
        };
    }
    let judgement = unanswered(ctx, packet, generation, judgement);
    if judgement.action == action::DROP
        && guarded
        && settings(generation).guard & guard::SCAN != 0
        && decided.rule != RULE_KNOCK
    {
        pfw_scan(&who, generation);
    }
    judgement
}

/// A drop by the rules, unless the flow table says the packet answers the host: the table
/// is read only for what the rules drop, so an allowed port costs what it did without it.
#[inline(always)]
fn unanswered(
    ctx: &XdpContext,
    packet: &Packet,
    generation: u32,
    judgement: Judgement,
) -> Judgement {
    if judgement.action != action::DROP {
        return judgement;
    }
    let s = settings(generation);
    if s.replies == action::ALLOW && flows::is_reply(ctx, packet, s) {
        return reply(s, counter::ALLOW_REPLY);
    }
    judgement
}

/// Whether the source of a packet without ports is blocked.
#[inline(always)]
fn blocked_source(packet: &Packet, s: &Settings) -> bool {
    let Some(hdr) = packet.ip() else {
        return false;
    };
    pfw_blocked(&Who::of(hdr, packet), u32::from(s.guard)) != 0
}

/// The entry that decides a port: the port's own, or, for ports whose rules restrict
/// sources, the longest prefix under the port's group, then under its tail group; a miss
/// in both leaves the port's own verdict (the first rule without `from`, or the default).
#[inline(always)]
fn by_sources(packet: &Packet, generation: u32, port: &PortEntry) -> PortEntry {
    let mut entry = *port;
    if port.group != NO_SOURCE_GROUP {
        if let Some(hit) = source_lookup(packet, generation, port.group) {
            entry = hit;
        } else if port.tail != NO_SOURCE_GROUP {
            if let Some(hit) = source_lookup(packet, generation, port.tail) {
                entry = hit;
            }
        }
    }
    entry
}

/// The verdict a port or source entry gives.
#[inline(always)]
fn of_entry(entry: &PortEntry) -> Judgement {
    let drop = entry.action == action::DROP;
    let (counter, reason) = match (entry.rule < MAX_RULES, drop) {
        (true, false) => (counter::ALLOW_RULE, reason::NONE),
        (true, true) => (counter::DROP_RULE, reason::NONE),
        _ if entry.rule == RULE_KNOCK => (counter::DROP_KNOCK, reason::KNOCK),
        _ if entry.rule == RULE_SPA => (counter::ALLOW_SPA, reason::SPA),
        (false, false) => (counter::ALLOW_DEFAULT, reason::NONE),
        (false, true) => (counter::DROP_DEFAULT, reason::NONE),
    };
    Judgement {
        action: if drop { action::DROP } else { action::ALLOW },
        rule: entry.rule,
        counter,
        log: entry.flags & port_flags::LOG != 0,
        audit: entry.flags & port_flags::AUDIT != 0,
        reason,
    }
}

/// A packet from a blocked source: dropped whatever the rules say.
#[inline(always)]
fn blocked(s: &Settings) -> Judgement {
    defence_drop(s, RULE_BLOCKED, counter::DROP_BLOCKED, reason::BLOCKED)
}

/// A new connection over its rule's limit: dropped, under the rule, with its own counter.
#[inline(always)]
fn limited(s: &Settings, allowed: Judgement) -> Judgement {
    defence_drop(s, allowed.rule, counter::DROP_LIMIT, reason::LIMIT)
}

/// A drop decided by a defence: logged as the policy logs drops, a would-drop in audit mode.
#[inline(always)]
fn defence_drop(s: &Settings, rule: u32, counter: u32, reason: u8) -> Judgement {
    Judgement {
        action: action::DROP,
        rule,
        counter,
        log: s.log & settings_log::DROP != 0,
        audit: s.audit != 0,
        reason,
    }
}

/// Looks the source address up in the generation's trie of its family, under `group`.
#[inline(always)]
pub fn source_lookup(packet: &Packet, generation: u32, group: u16) -> Option<PortEntry> {
    let hdr = packet.ip()?;
    let value = if hdr.is_v6() {
        let key = Key::new(SOURCE_GROUP_BITS + 128, source_key6(group, hdr.src6()));
        PFW_SRC6.get_value_ptr_mut(generation, &key)?
    } else {
        let key = Key::new(SOURCE_GROUP_BITS + 32, source_key4(group, hdr.src4()));
        PFW_SRC4.get_value_ptr_mut(generation, &key)?
    };
    // SAFETY: a pointer to a trie value from a successful lookup; the trie outlives this
    // program run (RCU), and we only read it.
    Some(unsafe { *value })
}

/// All-allow settings for a generation that was never written (the map always has both
/// slots, so this only guards the lookup's `None`).
static NO_SETTINGS: Settings = Settings {
    fragments: action::ALLOW,
    other_ip: action::ALLOW,
    non_ip: action::ALLOW,
    log: 0,
    icmp_frag_needed: action::ALLOW,
    replies: action::DROP,
    audit: 0,
    guard: 0,
    icmp4_drop: [0; 32],
    icmp6_drop: [0; 32],
    flow_timeouts: FlowTimeouts {
        tcp_ns: 0,
        tcp_closing_ns: 0,
        udp_ns: 0,
        icmp_ns: 0,
        refresh_ns: 0,
        cache_ns: 0,
    },
    scan: ScanSettings {
        ports: 0,
        _pad: 0,
        within_ns: 0,
        block_ns: 0,
    },
    log_limit: LogLimit {
        interval_ns: 0,
        tolerance_ns: 0,
        src_interval_ns: 0,
        src_tolerance_ns: 0,
    },
};

/// The generation's settings, by reference: copying the 72-byte struct at every use would
/// bloat each call site.
#[inline(always)]
pub fn settings(generation: u32) -> &'static Settings {
    PFW_SETTINGS.get(generation).unwrap_or(&NO_SETTINGS)
}

#[inline(always)]
fn malformed(s: &Settings) -> Judgement {
    Judgement {
        action: action::DROP,
        rule: RULE_MALFORMED,
        counter: counter::MALFORMED,
        log: s.log & settings_log::DROP != 0,
        audit: s.audit != 0,
        reason: reason::NONE,
    }
}

/// A packet the flow table lets through: a reply to, or an ICMP error about, a flow the host
/// opened.
#[inline(always)]
fn reply(s: &Settings, counter: u32) -> Judgement {
    Judgement {
        action: action::ALLOW,
        rule: RULE_REPLY,
        counter,
        log: s.log & settings_log::ALLOW != 0,
        audit: false,
        reason: reason::NONE,
    }
}

/// A verdict that comes from a policy setting rather than the port table.
#[inline(always)]
fn by_setting(s: &Settings, verdict: u8, allow_counter: u32, drop_counter: u32) -> Judgement {
    let drop = verdict == action::DROP;
    let (counter, bit) = if drop {
        (drop_counter, settings_log::DROP)
    } else {
        (allow_counter, settings_log::ALLOW)
    };
    Judgement {
        action: if drop { action::DROP } else { action::ALLOW },
        rule: RULE_SETTING,
        counter,
        log: s.log & bit != 0,
        audit: s.audit != 0,
        reason: reason::NONE,
    }
}
