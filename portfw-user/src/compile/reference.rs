//! The specification of what the compiled tables must say: plain first-match over the rules.
//!
//! Deliberately naive and slow. The compiler's tests compare it with [`super::compile`], so
//! this is the code to read when in doubt about semantics.
//!
//! It is stateless: it decides a packet that belongs to no flow the host opened, which is
//! every packet under `replies: drop`. Under `replies: allow` (`policy.replies`) a reply to
//! such a flow passes ahead of all this; modelling that needs a flow table beside the policy.

use std::net::IpAddr;

use crate::policy::{Action, LogMode, Policy, Protocol};

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
