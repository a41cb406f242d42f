//! Prometheus metrics (text format 0.0.4), read from the pinned maps at scrape time.
//!
//! Each scrape asks the loader for the running filter's status (counters summed over CPUs,
//! per-rule hits from the memory-mapped table, the flow table's fill) and encodes it with
//! prometheus-client. Kernel counters become `_total` counters; no address or port ever
//! becomes a label, so the number of series is bounded by the policy's rules.
use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::Shared;
use crate::loader::{Status, StatusCache};

/// What scrapes keep between them: the state file as last parsed, and the rule labels of
/// the policy it describes (keyed by its hash, time of apply and rule count).
#[derive(Debug, Default)]
pub struct ScrapeCache {
    status: StatusCache,
    labels: Option<(PolicyKey, Arc<Vec<String>>)>,
}

/// Which policy a set of rule labels belongs to: its hash, time of apply and rule count.
type PolicyKey = (String, u64, usize);

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `(verdict, reason)` labels of `portfw_packets_total` for kernel counter `name`; `None`
/// for counters that are not packet verdicts.
pub fn packet_labels(name: &str) -> Option<(&'static str, &'static str)> {
    Some(match name {
        "allow_rule" => ("allow", "rule"),
        "drop_rule" => ("drop", "rule"),
        "allow_default" => ("allow", "default"),
        "drop_default" => ("drop", "default"),
        "malformed" => ("drop", "malformed"),
        "icmp_allow" => ("allow", "icmp"),
        "icmp_drop" => ("drop", "icmp"),
        "non_ip_allow" => ("allow", "non-ip"),
        "non_ip_drop" => ("drop", "non-ip"),
        "other_ip_allow" => ("allow", "other-ip"),
        "other_ip_drop" => ("drop", "other-ip"),
        "fragment_allow" => ("allow", "fragment"),
        "fragment_drop" => ("drop", "fragment"),
        "allow_reply" => ("allow", "reply"),
        "allow_related" => ("allow", "related"),
        "drop_blocked" => ("drop", "blocked"),
        "drop_limit" => ("drop", "limit"),
        "drop_knock" => ("drop", "knock"),
        "allow_door" => ("allow", "door"),
        "allow_spa" => ("allow", "spa"),
        "would_drop_rule" => ("would-drop", "rule"),
        "would_drop_default" => ("would-drop", "default"),
        "would_drop_malformed" => ("would-drop", "malformed"),
        "would_drop_icmp" => ("would-drop", "icmp"),
        "would_drop_non_ip" => ("would-drop", "non-ip"),
        "would_drop_other_ip" => ("would-drop", "other-ip"),
        "would_drop_fragment" => ("would-drop", "fragment"),
        "would_drop_blocked" => ("would-drop", "blocked"),
        "would_drop_limit" => ("would-drop", "limit"),
        "would_drop_knock" => ("would-drop", "knock"),
        _ => return None,
    })
}

/// Kernel counters that are not packet verdicts, each its own metric.
const EVENTS_LOST: &str = "events_lost";
const FLOWS_CREATED: &str = "flows_created";
/// The same, of the active defences: (counter, metric, help).
const DEFENCE_COUNTERS: [(&str, &str, &str); 5] = [
    (
        "scan_blocks",
        "portfw_scan_blocks",
        "Sources the scan guard blocked.",
    ),
    (
        "doors_opened",
        "portfw_knock_doors_opened",
        "Knock sequences completed (doors the kernel opened).",
    ),
    (
        "blocks_full",
        "portfw_blocks_refused",
        "Blocks refused because the block table was full.",
    ),
    (
        "events_aggregated",
        "portfw_events_aggregated",
        "Logged packets folded into another event's count.",
    ),
    (
        "events_suppressed",
        "portfw_events_suppressed",
        "Logged packets in no event: over log-limit, or lost to a full ring buffer.",
    ),
];

/// What became of a single-packet knock that reached the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaOutcome {
    /// Verified: the door is open for its source.
    Opened,
    /// The HMAC did not match the door's key.
    BadMac,
    /// The timestamp was too far from the agent's clock.
    Stale,
    /// The nonce was seen before.
    Replay,
    /// No single-packet door of that name at that port.
    UnknownDoor,
    /// Not a knock.
    Malformed,
    /// Verified, but the door could not be opened: no key file, no filter loaded, a map
    /// error, a full replay cache.
    Failed,
}

impl SpaOutcome {
    pub const ALL: [Self; 7] = [
        Self::Opened,
        Self::BadMac,
        Self::Stale,
        Self::Replay,
        Self::UnknownDoor,
        Self::Malformed,
        Self::Failed,
    ];

    /// Its `outcome` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Opened => "opened",
            Self::BadMac => "bad-mac",
            Self::Stale => "stale",
            Self::Replay => "replay",
            Self::UnknownDoor => "unknown-door",
            Self::Malformed => "malformed",
            Self::Failed => "failed",
        }
    }
}

/// The agent's single-packet knock counts, by outcome.
#[derive(Debug, Default)]
pub struct SpaCounters([AtomicU64; SpaOutcome::ALL.len()]);

impl SpaCounters {
    pub fn add(&self, outcome: SpaOutcome) {
        self.0[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, outcome: SpaOutcome) -> u64 {
        self.0[outcome as usize].load(Ordering::Relaxed)
    }
}

/// What one scrape reports.
#[derive(Debug)]
struct Snapshot {
    status: Option<Status>,
    /// The `rule` label of each rule of the running policy.
    rule_labels: Arc<Vec<String>>,
    policy_file: Option<String>,
    in_sync: bool,
    refusals: u64,
    applies: u64,
    /// Single-packet knocks by outcome.
    spa: Vec<(&'static str, u64)>,
}

/// One metric family: its descriptor, then each series.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, M)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in series {
        // An empty label set encodes as a bare metric name.
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(value: i64) -> ConstGauge {
    ConstGauge::new(value)
}

/// The one series of a metric without labels.
fn one<M>(value: M) -> [([(&'static str, &'static str); 0], M); 1] {
    [([], value)]
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        let loaded = self.status.is_some();
        family(
            &mut e,
            "portfw_filter_loaded",
            "Whether a portfw filter is loaded in this network namespace.",
            MetricType::Gauge,
            one(gauge(i64::from(loaded))),
        )?;
        if self.policy_file.is_some() {
            family(
                &mut e,
                "portfw_agent_policy_in_sync",
                "Whether the policy file's current content is what the filter enforces (0 after \
                 a refused edit, or while another policy runs).",
                MetricType::Gauge,
                one(gauge(i64::from(self.in_sync))),
            )?;
            family(
                &mut e,
                "portfw_agent_policy_refused",
                "Edits of the policy file the agent refused (invalid, or not fitting the kernel \
                 tables).",
                MetricType::Counter,
                one(ConstCounter::new(self.refusals)),
            )?;
            family(
                &mut e,
                "portfw_agent_policy_applied",
                "Policies the agent put in force.",
                MetricType::Counter,
                one(ConstCounter::new(self.applies)),
            )?;
        }
        family(
            &mut e,
            "portfw_spa_knocks",
            "Single-packet knocks the agent received, by outcome (opened, bad-mac, stale, \
             replay, unknown-door, malformed, failed).",
            MetricType::Counter,
            self.spa
                .iter()
                .map(|(outcome, n)| ([("outcome", *outcome)], ConstCounter::new(*n))),
        )?;
        let Some(status) = &self.status else {
            return Ok(());
        };
        let counter = |name: &str| {
            status
                .counters
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, v)| *v)
        };
        family(
            &mut e,
            "portfw_packets",
            "Packets judged by the filter, by verdict (allow, drop, would-drop in audit mode) \
             and by what decided it.",
            MetricType::Counter,
            status.counters.iter().filter_map(|(name, value)| {
                packet_labels(name).map(|(verdict, reason)| {
                    (
                        [("verdict", verdict), ("reason", reason)],
                        ConstCounter::new(*value),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "portfw_rule_packets",
            "Packets each rule of the running policy decided, since that policy was applied; \
             rules are named by their `name:` or as #N (1-based).",
            MetricType::Counter,
            self.rule_labels.iter().enumerate().map(|(i, label)| {
                (
                    [("rule", label.as_str())],
                    ConstCounter::new(status.rule_hits.get(i).copied().unwrap_or(0)),
                )
            }),
        )?;
        family(
            &mut e,
            "portfw_events_lost",
            "Events the kernel could not queue because the ring buffer was full.",
            MetricType::Counter,
            one(ConstCounter::new(counter(EVENTS_LOST))),
        )?;
        for (name, metric, help) in DEFENCE_COUNTERS {
            family(
                &mut e,
                metric,
                help,
                MetricType::Counter,
                one(ConstCounter::new(counter(name))),
            )?;
        }
        family(
            &mut e,
            "portfw_policy_generation",
            "The table generation the kernel reads (0 or 1): it flips at every apply.",
            MetricType::Gauge,
            one(gauge(i64::from(status.generation))),
        )?;
        if let Some(policy) = &status.policy {
            family(
                &mut e,
                "portfw_policy_info",
                "The running policy: its file and the SHA-256 of its bytes.",
                MetricType::Gauge,
                [(
                    [
                        ("file", policy.file.as_str()),
                        ("sha256", policy.sha256.as_str()),
                    ],
                    gauge(1),
                )],
            )?;
        }
        family(
            &mut e,
            "portfw_policy_enforced",
            "1 when the running policy enforces its drops, 0 in audit mode (enforce: false).",
            MetricType::Gauge,
            one(gauge(i64::from(!status.audit))),
        )?;
        family(
            &mut e,
            "portfw_interfaces",
            "Interfaces the filter is attached to, by XDP mode: 1 while the interface exists, \
             0 when it is gone (and so not filtered).",
            MetricType::Gauge,
            status.attachments.iter().map(|a| {
                (
                    [
                        ("iface", a.attachment.iface.as_str()),
                        ("mode", a.attachment.mode.name()),
                    ],
                    gauge(i64::from(a.live)),
                )
            }),
        )?;
        let flows = &status.flows;
        family(
            &mut e,
            "portfw_flows",
            "Live flows the host opened that the flow table tracks (replies: allow).",
            MetricType::Gauge,
            one(gauge(flows.live as i64)),
        )?;
        family(
            &mut e,
            "portfw_flows_max",
            "Flows the flow table holds before it evicts (flows: max).",
            MetricType::Gauge,
            one(gauge(i64::from(flows.max))),
        )?;
        family(
            &mut e,
            "portfw_flows_created",
            "Flows recorded since the filter was loaded.",
            MetricType::Counter,
            one(ConstCounter::new(counter(FLOWS_CREATED))),
        )?;
        family(
            &mut e,
            "portfw_flows_evicted",
            "Flows the table dropped to make room for new ones: their replies meet the rules.",
            MetricType::Counter,
            one(ConstCounter::new(flows.evicted)),
        )?;
        family(
            &mut e,
            "portfw_trial_pending",
            "1 while a policy is on trial (apply --try) and not yet confirmed.",
            MetricType::Gauge,
            one(gauge(i64::from(status.trial.is_some()))),
        )?;
        if let Some(trial) = &status.trial {
            family(
                &mut e,
                "portfw_trial_deadline_seconds",
                "When the pending trial is rolled back unless confirmed, in seconds since the \
                 Unix epoch.",
                MetricType::Gauge,
                one(gauge(trial.deadline as i64)),
            )?;
        }
        Ok(())
    }
}

/// Whether the policy file's current content runs: it was valid, and the running policy's
/// hash is its hash.
fn in_sync(shared: &Shared, status: Option<&Status>) -> bool {
    if shared.refused.load(Ordering::Relaxed) {
        return false;
    }
    let expected = shared.lock_expected().clone();
    match (expected, status.and_then(|s| s.policy.as_ref())) {
        (Some(sha), Some(running)) => sha == running.sha256,
        _ => false,
    }
}

/// The `rule` label of each rule of `status`'s policy: its name, or `#N`. Kept between
/// scrapes for as long as the same policy runs.
fn rule_labels(shared: &Shared, status: Option<&Status>) -> Arc<Vec<String>> {
    let Some(policy) = status.and_then(|s| s.policy.as_ref()) else {
        return Arc::default();
    };
    let mut cache = shared.lock_scrape();
    let key = (policy.sha256.clone(), policy.applied_at, policy.rules.len());
    if let Some((cached, labels)) = &cache.labels
        && *cached == key
    {
        return labels.clone();
    }
    let labels: Arc<Vec<String>> = Arc::new(
        policy
            .rules
            .iter()
            .enumerate()
            .map(|(i, rule)| rule.name.clone().unwrap_or_else(|| format!("#{}", i + 1)))
            .collect(),
    );
    cache.labels = Some((key, labels.clone()));
    labels
}

/// The body of `/metrics`.
pub fn render(shared: &Shared) -> String {
    let status = shared.lock_scrape().status.status().ok();
    let snapshot = Snapshot {
        rule_labels: rule_labels(shared, status.as_ref()),
        in_sync: in_sync(shared, status.as_ref()),
        policy_file: shared.policy_file.clone(),
        refusals: shared.refusals.load(Ordering::Relaxed),
        applies: shared.applies.load(Ordering::Relaxed),
        spa: SpaOutcome::ALL
            .iter()
            .map(|&o| (o.name(), shared.spa.get(o)))
            .collect(),
        status,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut out = String::new();
    // Writing into a String does not fail; a collector error would be a bug shown as such.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        out = format!("# encoding failed: {e}\n");
    }
    out
}

/// `/ready`: whether this node is filtered as asked, and why not.
pub fn readiness(shared: &Shared) -> (bool, String) {
    let status = shared.lock_scrape().status.status();
    let status = match status {
        Ok(status) => status,
        Err(e) => return (false, format!("not ready: {e}\n")),
    };
    let wanted = shared.lock_wanted().clone();
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|iface| {
            !status
                .attachments
                .iter()
                .any(|a| &a.attachment.iface == *iface && a.live)
        })
        .collect();
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
        return (
            false,
            format!("not ready: not filtering {}\n", names.join(", ")),
        );
    }
    if shared.policy_file.is_some() && !in_sync(shared, Some(&status)) {
        return (
            false,
            "not ready: the policy file's current content is not in force (refused, waiting for \
             a trial, or not applied yet)\n"
                .to_string(),
        );
    }
    let policy = status.policy.as_ref().map_or_else(String::new, |p| {
        format!(" {} (sha256 {})", p.file, p.sha256)
    });
    (
        true,
        format!("ready: generation {}{policy}\n", status.generation),
    )
}

#[cfg(test)]
mod tests {
    use portfw_common::counter::NAMES;

    use super::{
        DEFENCE_COUNTERS, EVENTS_LOST, FLOWS_CREATED, SpaCounters, SpaOutcome, packet_labels,
    };

    #[test]
    fn every_kernel_counter_is_exported() {
        for name in NAMES {
            if name.starts_with("reserved")
                || name == EVENTS_LOST
                || name == FLOWS_CREATED
                || DEFENCE_COUNTERS.iter().any(|(n, _, _)| *n == name)
            {
                continue;
            }
            assert!(
                packet_labels(name).is_some(),
                "kernel counter {name} has no portfw_packets_total series"
            );
        }
    }

    #[test]
    fn labels_name_the_verdict_and_reason() {
        assert_eq!(packet_labels("drop_default"), Some(("drop", "default")));
        assert_eq!(
            packet_labels("would_drop_other_ip"),
            Some(("would-drop", "other-ip"))
        );
        assert_eq!(packet_labels("events_lost"), None);
        assert_eq!(packet_labels("drop_blocked"), Some(("drop", "blocked")));
        assert_eq!(packet_labels("allow_spa"), Some(("allow", "spa")));
    }

    #[test]
    fn spa_outcomes_are_counted_apart() {
        let counters = SpaCounters::default();
        counters.add(SpaOutcome::Opened);
        counters.add(SpaOutcome::Replay);
        counters.add(SpaOutcome::Replay);
        assert_eq!(counters.get(SpaOutcome::Opened), 1);
        assert_eq!(counters.get(SpaOutcome::Replay), 2);
        assert_eq!(counters.get(SpaOutcome::BadMac), 0);
        let names: Vec<&str> = SpaOutcome::ALL.iter().map(|o| o.name()).collect();
        assert_eq!(
            names,
            [
                "opened",
                "bad-mac",
                "stale",
                "replay",
                "unknown-door",
                "malformed",
                "failed"
            ]
        );
    }

    #[test]
    fn spa_knocks_are_exported_without_a_filter() {
        let shared = super::Shared::default();
        shared.spa.add(SpaOutcome::BadMac);
        let body = super::render(&shared);
        assert!(
            body.contains("portfw_spa_knocks_total{outcome=\"bad-mac\"} 1"),
            "{body}"
        );
    }
}
