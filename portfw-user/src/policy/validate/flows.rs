//! `flows:`, the flow table's size and timeouts, and the duration values other keys share.

use std::time::Duration;

use super::Validator;
use crate::policy::{
    Flows,
    duration::parse_duration,
    yaml::{Entry, Value},
};

const FLOW_KEYS: &[&str] = &[
    "max",
    "tcp-timeout",
    "tcp-closing",
    "udp-timeout",
    "icmp-timeout",
];

impl Validator<'_, '_, '_> {
    /// `flows:` with any of [`FLOW_KEYS`]; what it leaves out keeps [`Flows::DEFAULT`].
    pub(super) fn flows(&mut self, entry: &Entry) -> Flows {
        let mut flows = Flows::DEFAULT;
        if Self::is_null(&entry.value) {
            return flows;
        }
        let Value::Mapping(entries) = &entry.value.value else {
            self.invalid(
                &entry.value,
                format!("`flows` must be a mapping of {}", FLOW_KEYS.join(", ")),
            );
            return flows;
        };
        for inner in entries {
            let place = " in `flows`";
            let slot = match inner.key.as_str() {
                "max" => {
                    flows.max = self.flows_max(inner).unwrap_or(flows.max);
                    continue;
                }
                "tcp-timeout" => &mut flows.tcp_timeout,
                "tcp-closing" => &mut flows.tcp_closing,
                "udp-timeout" => &mut flows.udp_timeout,
                "icmp-timeout" => &mut flows.icmp_timeout,
                _ => {
                    self.unknown_key(inner, place, FLOW_KEYS);
                    continue;
                }
            };
            if let Some(duration) = self.duration(inner, place) {
                *slot = duration;
            }
        }
        flows
    }

    fn flows_max(&mut self, entry: &Entry) -> Option<u32> {
        let (min, max) = (Flows::MIN_MAX, Flows::MAX_MAX);
        let text = Self::text(&entry.value).filter(|t| !t.is_empty());
        let Some(digits) = text.filter(|t| t.bytes().all(|b| b.is_ascii_digit())) else {
            self.invalid(
                &entry.value,
                format!("`max` in `flows` must be a whole number of flows from {min} to {max}"),
            );
            return None;
        };
        // Digits too many for a u64 are out of range too.
        let value = digits.parse::<u64>().ok();
        match value.and_then(|v| u32::try_from(v).ok()) {
            Some(v) if (min..=max).contains(&v) => Some(v),
            _ => {
                let shown = digits.trim_start_matches('0');
                self.reporter.error(
                    entry.value.location,
                    format!(
                        "`max` in `flows` is {}; it must be from {min} to {max}",
                        if shown.is_empty() { "0" } else { shown }
                    ),
                );
                None
            }
        }
    }

    /// A duration value such as `90s` (see [`parse_duration`]); `place` says where the key
    /// is, as in " in `flows`", for the message about a value that is not a scalar.
    pub(super) fn duration(&mut self, entry: &Entry, place: &str) -> Option<Duration> {
        let Some(text) = Self::text(&entry.value) else {
            self.invalid(
                &entry.value,
                format!(
                    "`{}`{place} must be a duration such as `90s`, `5m`, `6h` or `1d`",
                    entry.key
                ),
            );
            return None;
        };
        match parse_duration(text) {
            Ok(duration) => Some(duration),
            Err(error) => {
                self.reporter.error(entry.value.location, error.to_string());
                None
            }
        }
    }
}
