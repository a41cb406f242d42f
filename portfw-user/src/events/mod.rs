//! Decoding and rendering of the kernel's drop/allow event records (and `pinned`: the
//! kernel state the reader reads beside them).
pub mod pinned;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use portfw_common::{
    AggKey, Event, RULE_BLOCKED, RULE_DEFAULT, RULE_DOOR, RULE_KNOCK, RULE_MALFORMED, RULE_REPLY,
    RULE_SETTING, RULE_SPA, action, ipproto, reason,
};
use serde::Serialize;

use crate::policy::escape;

/// What decided an event's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecidedBy {
    /// Rule index (0-based).
    Rule(u32),
    Default,
    Setting,
    Malformed,
    /// A reply to, or an ICMP error about, a flow the host opened (`replies: allow`).
    Reply,
    /// The source is in the block table (the scan guard or `portfw block`).
    Blocked,
    /// A knock port of a knock sequence, which no rule names.
    Knock,
    /// A single-packet knock's port, passed to `portfw agent`.
    Spa,
    /// A knock door the source opened.
    Door,
}

impl DecidedBy {
    pub fn from_raw(rule: u32) -> Self {
        match rule {
            RULE_DEFAULT => Self::Default,
            RULE_SETTING => Self::Setting,
            RULE_MALFORMED => Self::Malformed,
            RULE_REPLY => Self::Reply,
            RULE_BLOCKED => Self::Blocked,
            RULE_KNOCK => Self::Knock,
            RULE_SPA => Self::Spa,
            RULE_DOOR => Self::Door,
            n => Self::Rule(n),
        }
    }

    /// How a person reads it, for what is not a rule.
    pub fn describe(&self) -> Option<&'static str> {
        Some(match self {
            Self::Rule(_) => return None,
            Self::Default => "default",
            Self::Setting => "setting",
            Self::Malformed => "malformed",
            Self::Reply => "reply to a flow the host opened",
            Self::Blocked => "blocked source",
            Self::Knock => "knock",
            Self::Spa => "single-packet knock",
            Self::Door => "knock door open",
        })
    }
}

/// The name of an event's [`reason`], `None` for [`reason::NONE`].
pub fn reason_name(value: u8) -> Option<&'static str> {
    Some(match value {
        reason::BLOCKED => "blocked",
        reason::LIMIT => "limit",
        reason::KNOCK => "knock",
        reason::DOOR => "door",
        reason::SPA => "spa",
        reason::SCAN => "scan",
        reason::NONE => return None,
        _ => "other",
    })
}

/// An event, decoded and ready to print.
#[derive(Clone, Debug, Serialize)]
pub struct EventView {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub iface: String,
    pub ifindex: u32,
    /// `allow`, `drop`, or `would-drop`: a drop that audit mode (`enforce: false`) let
    /// through.
    pub verdict: &'static str,
    pub decided_by: DecidedBy,
    /// 1-based rule number, when a rule decided.
    pub rule: Option<u32>,
    pub rule_name: Option<String>,
    pub ip_version: u8,
    pub protocol: String,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub tcp_flags: Vec<&'static str>,
    /// Packets this event stands for: 1, or more when the kernel aggregated repeats of the
    /// same (source, port, protocol, verdict, rule) within a second.
    pub count: u32,
    /// What beyond the rule decided: `blocked`, `limit`, `knock`, `door`, `spa`, `scan`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Logged packets in no event (over `log-limit`, or lost to a full ring) since the
    /// reader's last report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
    /// Packets of a key that went quiet, flushed by the reader from the kernel's
    /// aggregation table rather than sent by the kernel: no interface, destination address,
    /// source port or TCP flags.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub flushed: bool,
}

/// A record saying only that events were suppressed, when no event carried the news.
#[derive(Clone, Debug, Serialize)]
pub struct SuppressedSummary {
    pub summary: bool,
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    pub suppressed: u64,
}

impl SuppressedSummary {
    pub fn new(time_ns: u64, suppressed: u64) -> Self {
        Self {
            summary: true,
            time_ns,
            suppressed,
        }
    }

    /// `12:00:01.123 (+40 suppressed)`.
    pub fn human_line(&self) -> String {
        format!("{} (+{} suppressed)", clock(self.time_ns), self.suppressed)
    }
}

impl EventView {
    /// Marks the view of a [`flushed_event`]: the aggregation key has no interface,
    /// destination address, source port or TCP flags, so none is shown.
    pub fn mark_flushed(&mut self) {
        self.flushed = true;
        self.iface = "-".into();
        self.dst = None;
        self.src_port = None;
        self.tcp_flags.clear();
    }
}

/// The event a flushed aggregation key stands for: its `pending` packets, at
/// `timestamp_ns` (CLOCK_MONOTONIC), judged by `generation`.
pub fn flushed_event(key: &AggKey, pending: u32, timestamp_ns: u64, generation: u8) -> Event {
    Event {
        timestamp_ns,
        rule: key.rule,
        verdict: key.verdict,
        ip_version: key.family,
        protocol: key.protocol,
        dst_port: key.dst_port,
        src_addr: key.src,
        generation,
        reason: key.reason,
        count: pending,
        ..Event::default()
    }
}

const TCP_FLAG_NAMES: [(u8, &str); 8] = [
    (0x02, "SYN"),
    (0x10, "ACK"),
    (0x01, "FIN"),
    (0x04, "RST"),
    (0x08, "PSH"),
    (0x20, "URG"),
    (0x40, "ECE"),
    (0x80, "CWR"),
];

/// The name of an event's verdict ([`action`] value).
pub fn verdict_name(verdict: u8) -> &'static str {
    match verdict {
        action::DROP => "drop",
        action::WOULD_DROP => "would-drop",
        _ => "allow",
    }
}

pub fn protocol_name(protocol: u8) -> String {
    match protocol {
        ipproto::ICMP => "icmp".into(),
        ipproto::TCP => "tcp".into(),
        ipproto::UDP => "udp".into(),
        ipproto::ICMPV6 => "icmpv6".into(),
        ipproto::SCTP => "sctp".into(),
        ipproto::UDPLITE => "udplite".into(),
        n => format!("proto-{n}"),
    }
}

fn has_ports(protocol: u8) -> bool {
    matches!(
        protocol,
        ipproto::TCP | ipproto::UDP | ipproto::SCTP | ipproto::UDPLITE
    )
}

/// Decodes `event`. `mono_to_wall_ns` is added to the kernel's monotonic timestamp;
/// `ifname` and `rule_name` resolve names (both may return `None`).
pub fn decode(
    event: &Event,
    mono_to_wall_ns: i128,
    ifname: impl Fn(u32) -> Option<String>,
    rule_name: impl Fn(u32) -> Option<String>,
) -> EventView {
    let (src, dst) = match event.ip_version {
        4 => {
            let s: [u8; 4] = [
                event.src_addr[0],
                event.src_addr[1],
                event.src_addr[2],
                event.src_addr[3],
            ];
            let d: [u8; 4] = [
                event.dst_addr[0],
                event.dst_addr[1],
                event.dst_addr[2],
                event.dst_addr[3],
            ];
            (
                Some(IpAddr::V4(Ipv4Addr::from(s))),
                Some(IpAddr::V4(Ipv4Addr::from(d))),
            )
        }
        6 => (
            Some(IpAddr::V6(Ipv6Addr::from(event.src_addr))),
            Some(IpAddr::V6(Ipv6Addr::from(event.dst_addr))),
        ),
        _ => (None, None),
    };
    let ports = has_ports(event.protocol) && event.ip_version != 0;
    let decided_by = DecidedBy::from_raw(event.rule);
    let (rule, rule_name) = match decided_by {
        DecidedBy::Rule(n) => (Some(n + 1), rule_name(n)),
        _ => (None, None),
    };
    let time_ns = (i128::from(event.timestamp_ns) + mono_to_wall_ns).max(0) as u64;
    EventView {
        time_ns,
        iface: ifname(event.ifindex).unwrap_or_else(|| format!("if{}", event.ifindex)),
        ifindex: event.ifindex,
        verdict: verdict_name(event.verdict),
        decided_by,
        rule,
        rule_name,
        ip_version: event.ip_version,
        protocol: if event.ip_version == 0 {
            "-".into()
        } else {
            protocol_name(event.protocol)
        },
        src,
        dst,
        src_port: ports.then_some(event.src_port),
        dst_port: ports.then_some(event.dst_port),
        tcp_flags: if event.protocol == ipproto::TCP {
            TCP_FLAG_NAMES
                .iter()
                .filter(|(bit, _)| event.tcp_flags & bit != 0)
                .map(|(_, name)| *name)
                .collect()
        } else {
            Vec::new()
        },
        count: event.count.max(1),
        reason: reason_name(event.reason),
        suppressed: None,
        flushed: false,
    }
}

fn endpoint(addr: Option<IpAddr>, port: Option<u16>) -> String {
    match (addr, port) {
        (Some(IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        (None, Some(p)) => format!("*:{p}"),
        (None, None) => "?".into(),
    }
}

fn local_time(secs: u64) -> Option<libc::tm> {
    let secs = secs as libc::time_t;
    // SAFETY: an all-zero `tm` is valid; localtime_r writes into the struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call.
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    ok.then_some(tm)
}

/// `HH:MM:SS.mmm` in local time.
pub fn clock(time_ns: u64) -> String {
    let secs = time_ns / 1_000_000_000;
    let millis = (time_ns / 1_000_000) % 1000;
    match local_time(secs) {
        Some(tm) => format!(
            "{:02}:{:02}:{:02}.{millis:03}",
            tm.tm_hour, tm.tm_min, tm.tm_sec
        ),
        None => format!("{secs}.{millis:03}"),
    }
}

/// `YYYY-MM-DD HH:MM:SS` in local time.
pub fn datetime(secs: u64) -> String {
    match local_time(secs) {
        Some(tm) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday,
            tm.tm_hour,
            tm.tm_min,
            tm.tm_sec
        ),
        None => secs.to_string(),
    }
}

/// Nanoseconds to add to a CLOCK_MONOTONIC timestamp (what `bpf_ktime_get_ns` returns) to get
/// wall-clock time.
pub fn mono_to_wall_offset() -> i128 {
    let read = |clock| {
        // SAFETY: an all-zero timespec is valid and clock_gettime fills it.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointer; both clocks always exist on Linux.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

/// One human line, e.g. `12:00:01.123 eth0 DROP tcp 10.0.0.1:51234 -> 10.0.0.2:8080 rule 3 [SYN]`;
/// in audit mode the verdict reads `WOULD-DROP`. The interface name is escaped: Linux allows
/// control characters in it, and anyone with CAP_NET_ADMIN in a container can name an
/// interface to rewrite the reader's terminal.
pub fn human_line(view: &EventView) -> String {
    let decided = match &view.decided_by {
        DecidedBy::Rule(_) => match (&view.rule, &view.rule_name) {
            (Some(n), Some(name)) => format!("rule {n} ({})", escape(name)),
            (Some(n), None) => format!("rule {n}"),
            _ => "rule ?".into(),
        },
        other => other.describe().unwrap_or("?").into(),
    };
    let count = if view.count > 1 {
        format!(" ×{}", view.count)
    } else {
        String::new()
    };
    let mut line = format!(
        "{} {} {}{count} {} {} -> {} {decided}",
        clock(view.time_ns),
        escape(&view.iface),
        view.verdict.to_uppercase(),
        view.protocol,
        endpoint(view.src, view.src_port),
        endpoint(view.dst, view.dst_port),
    );
    // The rule markers name these already.
    let said = matches!(
        (&view.decided_by, view.reason),
        (DecidedBy::Blocked, Some("blocked"))
            | (DecidedBy::Knock, Some("knock"))
            | (DecidedBy::Spa, Some("spa"))
            | (DecidedBy::Door, Some("door"))
    );
    if let Some(reason) = view.reason.filter(|_| !said) {
        line.push_str(&format!(" ({reason})"));
    }
    if !view.tcp_flags.is_empty() {
        line.push_str(&format!(" [{}]", view.tcp_flags.join(",")));
    }
    if let Some(n) = view.suppressed.filter(|&n| n > 0) {
        line.push_str(&format!(" (+{n} suppressed)"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut e = Event {
            timestamp_ns: 5_000_000_000,
            ifindex: 7,
            rule: 2,
            verdict: action::DROP,
            ip_version: 4,
            protocol: ipproto::TCP,
            tcp_flags: 0x02,
            src_port: 51234,
            dst_port: 8080,
            ..Default::default()
        };
        e.src_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        e.dst_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        e
    }

    #[test]
    fn human_line_reads_like_the_docs() {
        let view = decode(&sample(), 0, |_| Some("eth0".into()), |_| None);
        let line = human_line(&view);
        let rest = line.split_once(' ').map(|(_, r)| r).unwrap_or_default();
        assert_eq!(
            rest,
            "eth0 DROP tcp 10.0.0.1:51234 -> 10.0.0.2:8080 rule 3 [SYN]"
        );
    }

    #[test]
    fn named_rules_and_markers() {
        let view = decode(&sample(), 0, |_| None, |i| (i == 2).then(|| "web".into()));
        assert!(human_line(&view).contains("if7 DROP"));
        assert!(human_line(&view).contains("rule 3 (web)"));
        let mut e = sample();
        e.rule = RULE_DEFAULT;
        assert_eq!(
            decode(&e, 0, |_| None, |_| None).decided_by,
            DecidedBy::Default
        );
        e.rule = RULE_MALFORMED;
        assert!(human_line(&decode(&e, 0, |_| None, |_| None)).contains("malformed"));
        e.rule = RULE_REPLY;
        let view = decode(&e, 0, |_| None, |_| None);
        assert_eq!(view.decided_by, DecidedBy::Reply);
        assert!(human_line(&view).contains("reply to a flow the host opened"));
    }

    #[test]
    fn ipv6_endpoints_are_bracketed() {
        let mut e = sample();
        e.ip_version = 6;
        e.protocol = ipproto::UDP;
        e.src_addr = "2001:2::2"
            .parse::<Ipv6Addr>()
            .map(|a| a.octets())
            .unwrap_or_default();
        e.dst_addr = "2001:2::1"
            .parse::<Ipv6Addr>()
            .map(|a| a.octets())
            .unwrap_or_default();
        let line = human_line(&decode(&e, 0, |_| None, |_| None));
        assert!(
            line.contains("udp [2001:2::2]:51234 -> [2001:2::1]:8080"),
            "{line}"
        );
        assert!(!line.contains('['.to_string().repeat(2).as_str()));
    }

    #[test]
    fn interface_names_are_escaped_in_text_and_json() {
        let name = "ev\u{1b}]0;PWNED\u{7}";
        let view = decode(&sample(), 0, |_| Some(name.into()), |_| None);
        let line = human_line(&view);
        let rest = line.split_once(' ').map(|(_, r)| r).unwrap_or_default();
        assert!(
            rest.starts_with("ev\\u{1b}]0;PWNED\\u{7} DROP tcp"),
            "{line:?}"
        );
        assert!(!line.chars().any(char::is_control), "{line:?}");
        let json = serde_json::to_string(&view).unwrap_or_default();
        assert!(
            json.contains(r#""iface":"ev\u001b]0;PWNED\u0007""#),
            "{json}"
        );
    }

    #[test]
    fn would_drops_say_so_in_text_and_json() {
        let mut e = sample();
        e.verdict = action::WOULD_DROP;
        let view = decode(&e, 0, |_| Some("eth0".into()), |_| None);
        assert_eq!(
            serde_json::to_value(&view).unwrap_or_default()["verdict"],
            "would-drop"
        );
        assert!(
            human_line(&view).contains("eth0 WOULD-DROP tcp 10.0.0.1:51234"),
            "{}",
            human_line(&view)
        );
        assert_eq!(verdict_name(action::ALLOW), "allow");
        assert_eq!(verdict_name(action::DROP), "drop");
    }

    #[test]
    fn defence_markers_are_named() {
        for (rule, by, text) in [
            (RULE_BLOCKED, DecidedBy::Blocked, "blocked source"),
            (RULE_KNOCK, DecidedBy::Knock, "knock"),
            (RULE_SPA, DecidedBy::Spa, "single-packet knock"),
            (RULE_DOOR, DecidedBy::Door, "knock door open"),
        ] {
            let mut e = sample();
            e.rule = rule;
            let view = decode(&e, 0, |_| None, |_| None);
            assert_eq!(view.decided_by, by);
            assert_eq!(view.rule, None);
            assert!(
                human_line(&view).ends_with(&format!("{text} [SYN]")),
                "{}",
                human_line(&view)
            );
        }
        let mut e = sample();
        e.rule = RULE_BLOCKED;
        let json = serde_json::to_value(decode(&e, 0, |_| None, |_| None)).unwrap_or_default();
        assert_eq!(json["decided_by"], "blocked");
    }

    #[test]
    fn counts_reasons_and_suppressed_in_json() {
        let view = decode(&sample(), 0, |_| None, |_| None);
        let json = serde_json::to_value(&view).unwrap_or_default();
        // An event from an older kernel object (count 0) stands for its one packet.
        assert_eq!(json["count"], 1);
        assert!(json.get("reason").is_none(), "{json}");
        assert!(json.get("suppressed").is_none(), "{json}");
        assert!(json.get("flushed").is_none(), "{json}");
        let mut e = sample();
        e.count = 42;
        e.reason = reason::LIMIT;
        let mut view = decode(&e, 0, |_| None, |_| None);
        view.suppressed = Some(7);
        view.flushed = true;
        let json = serde_json::to_value(&view).unwrap_or_default();
        assert_eq!(json["count"], 42);
        assert_eq!(json["reason"], "limit");
        assert_eq!(json["suppressed"], 7);
        assert_eq!(json["flushed"], true);
        for (value, name) in [
            (reason::BLOCKED, "blocked"),
            (reason::KNOCK, "knock"),
            (reason::DOOR, "door"),
            (reason::SPA, "spa"),
            (reason::SCAN, "scan"),
        ] {
            assert_eq!(reason_name(value), Some(name));
        }
        assert_eq!(reason_name(reason::NONE), None);
    }

    #[test]
    fn text_shows_aggregated_counts_and_suppressed() {
        let mut e = sample();
        e.count = 1;
        let one = human_line(&decode(&e, 0, |_| Some("eth0".into()), |_| None));
        assert!(!one.contains('×'), "{one}");
        e.count = 250;
        e.reason = reason::LIMIT;
        let mut view = decode(&e, 0, |_| Some("eth0".into()), |_| None);
        view.suppressed = Some(12);
        let line = human_line(&view);
        let rest = line.split_once(' ').map(|(_, r)| r).unwrap_or_default();
        assert_eq!(
            rest,
            "eth0 DROP ×250 tcp 10.0.0.1:51234 -> 10.0.0.2:8080 rule 3 (limit) [SYN] (+12 suppressed)"
        );
        let summary = SuppressedSummary::new(5_000_000_000, 99);
        assert!(summary.human_line().ends_with(" (+99 suppressed)"));
        let json = serde_json::to_value(&summary).unwrap_or_default();
        assert_eq!(json["summary"], true);
        assert_eq!(json["suppressed"], 99);
    }

    #[test]
    fn flushed_keys_read_as_events() {
        let mut key = AggKey {
            rule: 2,
            dst_port: 8080,
            protocol: ipproto::TCP,
            verdict: action::DROP,
            reason: reason::NONE,
            family: 4,
            ..AggKey::default()
        };
        key.src[..4].copy_from_slice(&[10, 0, 0, 1]);
        let e = flushed_event(&key, 17, 9, 1);
        assert_eq!((e.count, e.generation, e.timestamp_ns), (17, 1, 9));
        let mut view = decode(&e, 0, |_| None, |i| (i == 2).then(|| "web".into()));
        view.mark_flushed();
        let line = human_line(&view);
        let rest = line.split_once(' ').map(|(_, r)| r).unwrap_or_default();
        assert_eq!(rest, "- DROP ×17 tcp 10.0.0.1 -> *:8080 rule 3 (web)");
        let json = serde_json::to_value(&view).unwrap_or_default();
        assert_eq!(json["count"], 17);
        assert_eq!(json["flushed"], true);
        assert_eq!(json["dst"], serde_json::Value::Null);
        assert_eq!(json["src_port"], serde_json::Value::Null);
        assert_eq!(json["dst_port"], 8080);
    }

    #[test]
    fn json_has_the_fields() {
        let view = decode(&sample(), 1_000, |_| Some("eth0".into()), |_| None);
        let json = serde_json::to_value(&view).unwrap_or_default();
        assert_eq!(json["verdict"], "drop");
        assert_eq!(json["dst_port"], 8080);
        assert_eq!(json["src"], "10.0.0.1");
        assert_eq!(json["time_ns"], 5_000_001_000u64);
        assert_eq!(json["tcp_flags"][0], "SYN");
    }
}
