//! Map layouts, constants and event records shared by the kernel program and userspace.
//!
//! Everything here is `#[repr(C)]` and read by both sides, so it is the single source of
//! truth for the kernel ABI of portfw. Changing a layout means bumping [`ABI_VERSION`].
#![no_std]

pub mod defence;

pub use defence::*;

/// Bumped whenever a map layout or the meaning of a field changes, so that `portfw apply`
/// knows it must load a fresh program instead of updating maps in place.
pub const ABI_VERSION: u32 = 6;

/// Verdict actions stored in the tables.
pub mod action {
    /// Let the packet through (`XDP_PASS`).
    pub const ALLOW: u8 = 0;
    /// Drop the packet (`XDP_DROP`).
    pub const DROP: u8 = 1;
    /// Event verdict only: a drop that audit mode (`enforce: false`) let through.
    pub const WOULD_DROP: u8 = 2;
}

/// Protocol slots of the port table. Each slot holds [`PORTS_PER_PROTO`] entries.
pub mod proto {
    pub const TCP: u32 = 0;
    pub const UDP: u32 = 1;
    pub const SCTP: u32 = 2;
    pub const UDPLITE: u32 = 3;
    /// Number of protocol slots per generation.
    pub const COUNT: u32 = 4;
}

/// IP protocol numbers the kernel program looks at.
pub mod ipproto {
    pub const HOPOPTS: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NONE: u8 = 59;
    pub const DSTOPTS: u8 = 60;
    pub const SCTP: u8 = 132;
    pub const MOBILITY: u8 = 135;
    pub const UDPLITE: u8 = 136;
}

pub const PORTS_PER_PROTO: u32 = 65536;

/// Entries of one generation of the port table.
pub const PORT_TABLE_GEN_ENTRIES: u32 = proto::COUNT * PORTS_PER_PROTO;

/// The port table is double-buffered: generation 0 and 1 live side by side and
/// the map named [`MapNames::ACTIVE`] says which one the kernel reads.
pub const GENERATIONS: u32 = 2;

/// Index of the port-table entry for `(generation, protocol slot, port)`.
#[inline(always)]
pub const fn port_index(generation: u32, proto_slot: u32, port: u16) -> u32 {
    generation * PORT_TABLE_GEN_ENTRIES + proto_slot * PORTS_PER_PROTO + port as u32
}

/// Most rules a policy may have. Rule hit counters are sized by it: each CPU has
/// `GENERATIONS * MAX_RULES` of them (256 KiB).
pub const MAX_RULES: u32 = 16384;

/// Rule index used when no rule decided the packet and the policy default did.
pub const RULE_DEFAULT: u32 = u32::MAX;
/// Rule index used when a policy setting (icmp, fragments, non-ip, other-ip) decided.
pub const RULE_SETTING: u32 = u32::MAX - 1;
/// Rule index used for packets judged malformed.
pub const RULE_MALFORMED: u32 = u32::MAX - 2;
/// Rule index used for replies to, and ICMP errors about, a flow the host opened
/// (`replies: allow`): the flow table decided, ahead of the rules.
pub const RULE_REPLY: u32 = u32::MAX - 3;
/// Rule index used for packets from a blocked source (the scan guard or `portfw block`).
pub const RULE_BLOCKED: u32 = u32::MAX - 4;
/// Rule index of a knock port's own verdict (no rule names the port).
pub const RULE_KNOCK: u32 = u32::MAX - 5;
/// Rule index of a single-packet knock port, passed to `portfw agent`.
pub const RULE_SPA: u32 = u32::MAX - 6;
/// Rule index used for packets a knock door let through.
pub const RULE_DOOR: u32 = u32::MAX - 7;

/// Flags of a [`PortEntry`].
pub mod port_flags {
    /// Send an event for every packet this entry judges.
    pub const LOG: u8 = 1 << 0;
    /// Audit mode (`enforce: false`): this entry's drop lets the packet through, counted and
    /// logged as a would-drop.
    pub const AUDIT: u8 = 1 << 1;
    /// Look the source up in the block tables first ([`Settings::guard`] says which), and
    /// count this entry's drops for the scan guard. Set on every entry of a generation
    /// whose `guard` is non-zero, so that without defences the common path reads nothing
    /// more.
    pub const GUARD: u8 = 1 << 2;
}

/// One slot of the port table: the verdict for a (protocol, destination port).
///
/// Every port of every protocol has an entry, so a lookup never misses: ports no rule
/// covers carry the policy default with `rule == RULE_DEFAULT`.
///
/// When `group` is not [`NO_SOURCE_GROUP`], rules that match only some source addresses
/// come before the verdict held here: the kernel looks the source address up in the
/// generation's source trie under `group`, then, on a miss, under `tail` (when set), and
/// only a miss in both falls back to this entry. The same layout is the value type of the
/// source tries (with the group fields unused).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortEntry {
    /// Index of the deciding rule, or [`RULE_DEFAULT`].
    pub rule: u32,
    /// Source-rule group to look up first, or [`NO_SOURCE_GROUP`].
    pub group: u16,
    /// Source-rule group to look up when `group` misses, or [`NO_SOURCE_GROUP`]. Set only
    /// when a large address set leads the port's source rules, so that the set is stored
    /// once for every port it leads rather than once per combination of rules.
    pub tail: u16,
    /// [`action::ALLOW`] or [`action::DROP`].
    pub action: u8,
    /// [`port_flags`] bits.
    pub flags: u8,
    /// `1 +` the door (slot of the generation's `PFW_DOOR_DEFS`) whose sequence this port
    /// is a knock of, or 0. A port knocks for one door at most.
    pub knocks: u8,
    /// Non-zero when knock doors open this port: a source with an open door (in
    /// `PFW_DOORS`, keyed by `opens_id` of this port) passes although the verdict is drop.
    pub opens: u8,
    /// `1 +` the index of the rule's limit in the generation's `PFW_LIMIT_DEFS`, or 0.
    pub limit: u16,
    /// Array maps store values at 8-byte strides; padding to 16 keeps the memory-mapped
    /// table a plain `[PortEntry]`.
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<PortEntry>() == 16);

/// [`PortEntry::group`] of ports whose verdict does not depend on the source address.
pub const NO_SOURCE_GROUP: u16 = 0;

/// Most source-rule groups a policy may compile to (group ids are `1..=MAX_SOURCE_GROUPS`).
pub const MAX_SOURCE_GROUPS: u32 = u16::MAX as u32 - 1;

/// The source group holding `scan: except:` (and the addresses the host depends on): a
/// hit in it means the scan guard never blocks the source.
pub const SCAN_EXCEPT_GROUP: u16 = u16::MAX;

/// Key data of the IPv4 source trie: the group (big-endian) then the address.
/// The trie's prefix length counts the 32 group bits plus the address prefix.
pub type SourceKey4 = [u8; 8];
/// Key data of the IPv6 source trie: the group (big-endian) then the address.
pub type SourceKey6 = [u8; 20];

/// Most (group, prefix) entries in one generation's source trie of one address family.
/// The tries are not preallocated: memory follows the entries actually used.
pub const SOURCE_TRIE_ENTRIES: u32 = 1 << 20;

/// Bits of the trie prefix taken by the group in front of the address.
pub const SOURCE_GROUP_BITS: u32 = 32;

/// Builds the IPv4 trie key data for `group` and `addr` (network order).
#[inline(always)]
pub const fn source_key4(group: u16, addr: [u8; 4]) -> SourceKey4 {
    let g = (group as u32).to_be_bytes();
    [g[0], g[1], g[2], g[3], addr[0], addr[1], addr[2], addr[3]]
}

/// Builds the IPv6 trie key data for `group` and `addr` (network order).
#[inline(always)]
pub const fn source_key6(group: u16, addr: [u8; 16]) -> SourceKey6 {
    let g = (group as u32).to_be_bytes();
    let mut key = [0u8; 20];
    key[0] = g[0];
    key[1] = g[1];
    key[2] = g[2];
    key[3] = g[3];
    let mut i = 0;
    while i < 16 {
        key[4 + i] = addr[i];
        i += 1;
    }
    key
}

/// What a generation does with packets that the port table does not judge.
///
/// Each verdict is an [`action`] value; `log` holds [`settings_log`] bits. ICMP verdicts are
/// per message type: a set bit in `icmp4_drop` / `icmp6_drop` (bit `type % 8` of byte
/// `type / 8`) drops that type; `icmp_frag_needed` overrides IPv4 type 3 for code 4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Non-first IPv4/IPv6 fragments, which carry no ports.
    pub fragments: u8,
    /// IP protocols other than TCP, UDP, SCTP, UDP-Lite, ICMP and ICMPv6.
    pub other_ip: u8,
    /// Frames whose EtherType is not IPv4 or IPv6 (ARP, LLDP, ...).
    pub non_ip: u8,
    /// Which setting-decided and malformed verdicts produce events.
    pub log: u8,
    /// IPv4 destination-unreachable with code fragmentation-needed (path MTU discovery).
    pub icmp_frag_needed: u8,
    /// [`action::ALLOW`]: record the flows that leave and pass their replies (`replies:
    /// allow`); [`action::DROP`]: stateless, the flow table is neither written nor read.
    /// Flow-table verdicts are allowed ones, logged under [`settings_log::ALLOW`] (`log: all`).
    pub replies: u8,
    /// Non-zero in audit mode (`enforce: false`): drops decided by these settings (and
    /// malformed packets) pass, counted and logged as would-drops. Port entries carry
    /// [`port_flags::AUDIT`] instead, so the common path reads no setting.
    pub audit: u8,
    /// [`guard`] bits: which active defences the generation's packets go through.
    pub guard: u8,
    pub icmp4_drop: [u8; 32],
    pub icmp6_drop: [u8; 32],
    /// How long a flow lives after its last packet, by [`flow_state`], in nanoseconds.
    pub flow_timeouts: FlowTimeouts,
    /// `scan:`.
    pub scan: ScanSettings,
    /// `log-limit:`.
    pub log_limit: LogLimit,
}

/// Idle timeouts of the flow table, in nanoseconds of `bpf_ktime_get_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowTimeouts {
    /// An established TCP connection.
    pub tcp_ns: u64,
    /// A TCP connection that has seen a FIN or RST, or only our SYN so far.
    pub tcp_closing_ns: u64,
    /// UDP, UDP-Lite and SCTP.
    pub udp_ns: u64,
    /// ICMP and ICMPv6 echo.
    pub icmp_ns: u64,
    /// How stale a flow's timestamp may get before a packet refreshes it: [`FLOW_REFRESH_NS`],
    /// or half the shortest timeout when that is shorter, so that a busy flow is always
    /// refreshed before it could expire.
    pub refresh_ns: u64,
    /// How long the flow cache may trust a flow the table vouched for: [`FLOW_CACHE_NS`], or
    /// half of `refresh_ns` when that is shorter (0 turns the cache off). The cache never
    /// outlives the flow's own timeout.
    pub cache_ns: u64,
}

impl FlowTimeouts {
    /// [`FlowTimeouts::refresh_ns`] for these timeouts.
    pub const fn refresh_for(tcp_ns: u64, tcp_closing_ns: u64, udp_ns: u64, icmp_ns: u64) -> u64 {
        let mut shortest = tcp_ns;
        if tcp_closing_ns < shortest {
            shortest = tcp_closing_ns;
        }
        if udp_ns < shortest {
            shortest = udp_ns;
        }
        if icmp_ns < shortest {
            shortest = icmp_ns;
        }
        if shortest / 2 < FLOW_REFRESH_NS {
            shortest / 2
        } else {
            FLOW_REFRESH_NS
        }
    }

    /// [`FlowTimeouts::cache_ns`] for a refresh interval.
    pub const fn cache_for(refresh_ns: u64) -> u64 {
        if refresh_ns / 2 < FLOW_CACHE_NS {
            refresh_ns / 2
        } else {
            FLOW_CACHE_NS
        }
    }

    /// The idle timeout of a flow in `state` of IP protocol `protocol`.
    #[inline(always)]
    pub fn for_flow(&self, protocol: u8, state: u8) -> u64 {
        match state {
            flow_state::ESTABLISHED => self.tcp_ns,
            flow_state::SYN_SENT | flow_state::CLOSING => self.tcp_closing_ns,
            _ if protocol == ipproto::ICMP || protocol == ipproto::ICMPV6 => self.icmp_ns,
            _ => self.udp_ns,
        }
    }
}

const _: () = assert!(core::mem::size_of::<Settings>().is_multiple_of(8));

impl Settings {
    /// Whether an ICMP (`v6 == false`) or ICMPv6 message of this type and code is dropped.
    #[inline(always)]
    pub fn icmp_drops(&self, v6: bool, kind: u8, code: u8) -> bool {
        if !v6 && kind == 3 && code == 4 {
            return self.icmp_frag_needed == action::DROP;
        }
        let bits = if v6 {
            &self.icmp6_drop
        } else {
            &self.icmp4_drop
        };
        bits[(kind >> 3) as usize] >> (kind & 7) & 1 != 0
    }
}

/// Bits of [`Settings::log`].
pub mod settings_log {
    /// Log allowed packets decided by a setting.
    pub const ALLOW: u8 = 1 << 0;
    /// Log dropped packets decided by a setting, and malformed packets.
    pub const DROP: u8 = 1 << 1;
}

/// Indices of the per-CPU verdict counters.
pub mod counter {
    /// Allowed by a rule.
    pub const ALLOW_RULE: u32 = 0;
    /// Dropped by a rule.
    pub const DROP_RULE: u32 = 1;
    /// Allowed by the policy default.
    pub const ALLOW_DEFAULT: u32 = 2;
    /// Dropped by the policy default.
    pub const DROP_DEFAULT: u32 = 3;
    /// Dropped as malformed or truncated.
    pub const MALFORMED: u32 = 4;
    /// ICMP/ICMPv6 allowed.
    pub const ICMP_ALLOW: u32 = 5;
    /// ICMP/ICMPv6 dropped.
    pub const ICMP_DROP: u32 = 6;
    /// Non-IP frames allowed.
    pub const NON_IP_ALLOW: u32 = 7;
    /// Non-IP frames dropped.
    pub const NON_IP_DROP: u32 = 8;
    /// Other IP protocols allowed.
    pub const OTHER_IP_ALLOW: u32 = 9;
    /// Other IP protocols dropped.
    pub const OTHER_IP_DROP: u32 = 10;
    /// Non-first fragments allowed.
    pub const FRAGMENT_ALLOW: u32 = 11;
    /// Non-first fragments dropped.
    pub const FRAGMENT_DROP: u32 = 12;
    /// Events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 13;
    /// Replies to a flow the host opened, passed although the port table said drop.
    pub const ALLOW_REPLY: u32 = 14;
    /// ICMP errors about a flow the host opened, passed although `icmp:` said drop.
    pub const ALLOW_RELATED: u32 = 15;
    /// Flows recorded by the egress program (new entries in the flow table).
    pub const FLOWS_CREATED: u32 = 16;
    /// Dropped because the source is in the block table.
    pub const DROP_BLOCKED: u32 = 17;
    /// Dropped because the source went over a rule's `limit:`.
    pub const DROP_LIMIT: u32 = 18;
    /// Knocks at a knock port, dropped (the port stays closed).
    pub const DROP_KNOCK: u32 = 19;
    /// Allowed because the source opened a knock door.
    pub const ALLOW_DOOR: u32 = 20;
    /// Single-packet knocks passed to `portfw agent`.
    pub const ALLOW_SPA: u32 = 21;
    /// Sources the scan guard blocked.
    pub const SCAN_BLOCKS: u32 = 22;
    /// Knock sequences completed (doors opened by the kernel).
    pub const DOORS_OPENED: u32 = 23;
    /// Blocks refused because the block table was full.
    pub const BLOCKS_FULL: u32 = 24;
    /// Logged packets folded into another event's `count`.
    pub const EVENTS_AGGREGATED: u32 = 25;
    /// Logged packets in no event: over `log-limit`, or lost to a full ring. Reported as
    /// `suppressed` by the reader.
    pub const EVENTS_SUPPRESSED: u32 = 26;
    /// In audit mode a drop passes and is counted at its drop counter plus this offset
    /// (`would_drop_rule` is `DROP_RULE + WOULD_DROP_OFFSET`, and so on).
    pub const WOULD_DROP_OFFSET: u32 = 32;
    /// Number of counters.
    pub const COUNT: u32 = 64;

    /// Whether counter `index` counts what happened to events (lost, aggregated,
    /// suppressed) rather than a verdict or a defence: these move with logging, not with
    /// packets' fates.
    #[inline(always)]
    pub const fn is_event_log(index: u32) -> bool {
        matches!(index, EVENTS_LOST | EVENTS_AGGREGATED | EVENTS_SUPPRESSED)
    }

    /// The would-drop counter of drop counter `drop`.
    #[inline(always)]
    pub const fn would_drop(drop: u32) -> u32 {
        drop + WOULD_DROP_OFFSET
    }

    /// Human names, indexed by counter.
    pub const NAMES: [&str; COUNT as usize] = [
        "allow_rule",
        "drop_rule",
        "allow_default",
        "drop_default",
        "malformed",
        "icmp_allow",
        "icmp_drop",
        "non_ip_allow",
        "non_ip_drop",
        "other_ip_allow",
        "other_ip_drop",
        "fragment_allow",
        "fragment_drop",
        "events_lost",
        "allow_reply",
        "allow_related",
        "flows_created",
        "drop_blocked",
        "drop_limit",
        "drop_knock",
        "allow_door",
        "allow_spa",
        "scan_blocks",
        "doors_opened",
        "blocks_full",
        "events_aggregated",
        "events_suppressed",
        "reserved27",
        "reserved28",
        "reserved29",
        "reserved30",
        "reserved31",
        "reserved32",
        "would_drop_rule",
        "reserved34",
        "would_drop_default",
        "would_drop_malformed",
        "reserved37",
        "would_drop_icmp",
        "reserved39",
        "would_drop_non_ip",
        "reserved41",
        "would_drop_other_ip",
        "reserved43",
        "would_drop_fragment",
        "reserved45",
        "reserved46",
        "reserved47",
        "reserved48",
        "would_drop_blocked",
        "would_drop_limit",
        "would_drop_knock",
        "reserved52",
        "reserved53",
        "reserved54",
        "reserved55",
        "reserved56",
        "reserved57",
        "reserved58",
        "reserved59",
        "reserved60",
        "reserved61",
        "reserved62",
        "reserved63",
    ];
}

/// States of a flow-table entry.
pub mod flow_state {
    /// TCP: only our SYN has been seen; the remote may answer with SYN-ACK or RST.
    pub const SYN_SENT: u8 = 1;
    /// TCP: our side has acknowledged the remote's SYN-ACK, or the connection predates apply.
    pub const ESTABLISHED: u8 = 2;
    /// TCP: a FIN or RST has been seen in either direction.
    pub const CLOSING: u8 = 3;
    /// UDP, UDP-Lite, SCTP, ICMP echo: open until idle for its timeout.
    pub const OPEN: u8 = 4;
}

/// Key of the flow table: the same from both directions without swapping, because it names
/// the host's side (`local`) and the peer's (`remote`) rather than source and destination.
/// For ICMP echo, `local_port` holds the echo identifier and `remote_port` is 0. Padding is
/// explicit and always zero, so that equal flows hash equally.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number.
    pub protocol: u8,
    /// Host byte order.
    pub local_port: u16,
    /// Host byte order.
    pub remote_port: u16,
    pub _pad: [u8; 2],
    /// Network order; IPv4 in the first 4 bytes, the rest zero.
    pub local: [u8; 16],
    pub remote: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// Value of the flow table.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// When the flow was recorded, by [`Clock`] (CLOCK_MONOTONIC nanoseconds at tick
    /// resolution).
    pub created_ns: u64,
    /// When a recent packet passed, by [`Clock`], refreshed at most every
    /// [`FLOW_REFRESH_NS`], so that a busy flow does not write its cache line per packet.
    pub seen_ns: u64,
    /// Interface the flow left through.
    pub ifindex: u32,
    /// One of [`flow_state`].
    pub state: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<FlowValue>() == 24);

/// How the programs tell time for the flow table: `jiffies * ns_per_jiffy + offset_ns`, which
/// follows CLOCK_MONOTONIC at tick resolution. Reading jiffies is one load (the verifier
/// inlines `bpf_jiffies64`), where `bpf_ktime_get_coarse_ns` cost a reply 15 ns. The loader
/// calibrates it when it loads the programs; with `ns_per_jiffy` 0 the programs fall back
/// to `bpf_ktime_get_coarse_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Clock {
    pub ns_per_jiffy: u64,
    pub offset_ns: u64,
    /// Written by the calibration program: jiffies when it last ran.
    pub sample: u64,
    /// Bumped by the loader whenever it writes the flow table or this clock: the flow cache
    /// ([`FLOW_CACHE_SLOTS`]) trusts only what it remembered under the current epoch.
    pub epoch: u64,
}

/// Slots of the per-CPU exact-match cache in front of the flow table: a busy flow's packets
/// are recognised without the hash lookup, for at most [`FlowTimeouts::cache_ns`] after the
/// table last vouched for it.
pub const FLOW_CACHE_SLOTS: u32 = 256;

/// The longest a flow-cache slot is trusted, when the timeouts allow it.
pub const FLOW_CACHE_NS: u64 = 10_000_000;

/// One slot of the flow cache ([`MapNames::FLOW_CACHE`]): a flow key the table vouched for,
/// as the five words of its [`FlowKey`], and until when (flow clock) and under which loader
/// epoch ([`Clock::epoch`]) it may be trusted.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheSlot {
    pub key: [u64; 5],
    pub until_ns: u64,
    pub epoch: u64,
}

const _: () = assert!(core::mem::size_of::<FlowCacheSlot>() == 56);

/// How stale a flow's `seen_ns` may get before a packet refreshes it.
pub const FLOW_REFRESH_NS: u64 = 1_000_000_000;

/// Default `flows: max:`.
pub const FLOWS_DEFAULT_MAX: u32 = 262_144;

/// Flow-table entries beyond `flows: max:`: the kernel's LRU hash keeps free nodes in
/// per-CPU lists of up to 128 and starts evicting when the shared free list runs short, so a
/// table sized exactly to `max` would evict before it holds `max` flows.
#[inline(always)]
pub const fn flow_map_entries(max: u32, cpus: u32) -> u32 {
    max.saturating_add(cpus.saturating_add(1).saturating_mul(128))
}

/// Rule hit counters of one CPU: one per rule per generation. `PFW_RULE_HITS` holds one
/// such region per possible CPU, CPU `c`'s at `c * RULE_HIT_SLOTS`.
pub const RULE_HIT_SLOTS: u32 = GENERATIONS * MAX_RULES;

/// Index of the hit counter of `rule` in `generation` on `cpu`.
#[inline(always)]
pub const fn rule_hit_index(cpu: u32, generation: u32, rule: u32) -> u32 {
    cpu * RULE_HIT_SLOTS + generation * MAX_RULES + rule
}

/// One drop or allow event, written to the ring buffer by the kernel program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub timestamp_ns: u64,
    /// Interface the packet arrived on.
    pub ifindex: u32,
    /// Deciding rule, or one of the `RULE_*` markers.
    pub rule: u32,
    /// [`action::ALLOW`] or [`action::DROP`].
    pub verdict: u8,
    /// 4, 6, or 0 when the packet was malformed before the IP header was read.
    pub ip_version: u8,
    /// IP protocol number (after IPv6 extension headers).
    pub protocol: u8,
    /// TCP flags byte (FIN=0x01 ... CWR=0x80), 0 for other protocols.
    pub tcp_flags: u8,
    /// Source port, host byte order (0 when the protocol has none).
    pub src_port: u16,
    /// Destination port, host byte order.
    pub dst_port: u16,
    /// Source address: IPv4 in the first 4 bytes, network order.
    pub src_addr: [u8; 16],
    /// Destination address: IPv4 in the first 4 bytes, network order.
    pub dst_addr: [u8; 16],
    /// The policy generation that judged the packet, so a reader names the rule from the
    /// policy that was in force then, even across a re-apply.
    pub generation: u8,
    /// [`reason`]: what beyond the rule decided (a block, a limit, a knock, a door).
    pub reason: u8,
    pub _reserved: [u8; 2],
    /// How many packets this event stands for: 1, or more when the kernel aggregated
    /// repeats of the same (source, port, protocol, verdict, rule) within a second.
    pub count: u32,
}

const _: () = assert!(core::mem::size_of::<Event>() == 64);

/// Size of the event ring buffer in bytes (a power-of-two number of pages).
pub const EVENT_RING_BYTES: u32 = 1 << 20;

/// Names of the maps in the object file, which are also their pin names.
pub struct MapNames;

impl MapNames {
    /// `Array<u32>`, one entry, mmapable: the generation the kernel reads (0 or 1).
    pub const ACTIVE: &'static str = "PFW_ACTIVE";
    /// `Array<Settings>`, one entry per generation, mmapable.
    pub const SETTINGS: &'static str = "PFW_SETTINGS";
    /// `Array<PortEntry>` of `GENERATIONS * PORT_TABLE_GEN_ENTRIES`, mmapable.
    pub const PORTS: &'static str = "PFW_PORTS";
    /// `PerCpuArray<u64>` of `counter::COUNT`.
    pub const COUNTERS: &'static str = "PFW_COUNTERS";
    /// `Array<u64>` of `possible CPUs * RULE_HIT_SLOTS`, mmapable: a per-CPU array laid out
    /// by hand, because the kernel's per-CPU arrays allocate every element separately, which
    /// made loading take 100 ms, and cannot be memory-mapped for reading and resetting.
    pub const RULE_HITS: &'static str = "PFW_RULE_HITS";
    /// Ring buffer of [`Event`]s.
    pub const EVENTS: &'static str = "PFW_EVENTS";
    /// Array of maps, one IPv4 source trie (`LpmTrie<SourceKey4, PortEntry>`) per generation.
    pub const SOURCES4: &'static str = "PFW_SRC4";
    /// Array of maps, one IPv6 source trie (`LpmTrie<SourceKey6, PortEntry>`) per generation.
    pub const SOURCES6: &'static str = "PFW_SRC6";
    /// `LruHashMap<FlowKey, FlowValue>`: flows the host opened, recorded by the egress program
    /// and looked up by the XDP program. Outside the generations: it survives a re-apply.
    pub const FLOWS: &'static str = "PFW_FLOWS";
    /// `Array<Clock>`, one entry: the flow table's clock.
    pub const CLOCK: &'static str = "PFW_CLOCK";
    /// `PerCpuArray<FlowCacheSlot>` of [`FLOW_CACHE_SLOTS`]: the exact-match cache in front
    /// of the flow table. Not pinned; a new object starts with an empty cache.
    pub const FLOW_CACHE: &'static str = "PFW_FLOW_CACHE";
}

/// portfw's directory on bpffs: one subdirectory of pins per network namespace.
pub const PIN_ROOT: &str = "/sys/fs/bpf/portfw";
/// Where `portfw apply` records what it applied (one state file and one lock per network
/// namespace); like the pins, nothing there outlives a reboot.
pub const STATE_ROOT: &str = "/run/portfw";

/// Name of the XDP program in the object file.
pub const PROGRAM_NAME: &str = "portfw";
/// Name of the TC egress program that records flows.
pub const EGRESS_PROGRAM_NAME: &str = "portfw_egress";
/// The XDP program that samples jiffies, run by the loader to calibrate [`Clock`].
pub const CLOCK_PROGRAM_NAME: &str = "portfw_clock";
/// The XDP program for devices whose frames start at the IP header (tun, WireGuard, ...).
pub const L3_PROGRAM_NAME: &str = "portfw_l3";
/// The TC egress program for those devices.
pub const L3_EGRESS_PROGRAM_NAME: &str = "portfw_egress_l3";

/// `BPF_F_MMAPABLE`: lets userspace write whole tables through a memory mapping.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, every bit pattern valid, no padding left implicit.
    unsafe impl aya::Pod for super::PortEntry {}
    unsafe impl aya::Pod for super::Settings {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowValue {}
    unsafe impl aya::Pod for super::Clock {}
    unsafe impl aya::Pod for super::FlowCacheSlot {}
}
