//! The specification of what a compiled table must say: plain first-match over the rules.
//!
//! Deliberately naive and slow. The compiler's tests compare it with [`super::compile`] on
//! every (protocol, port), so this is the code to read when in doubt about semantics.

use crate::policy::{Action, LogMode, Policy, Protocol};

/// The verdict for one packet's (protocol, destination port).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Index into `policy.rules`; `None` when the default decided.
    pub rule: Option<usize>,
    /// Whether the verdict goes to the event stream.
    pub log: bool,
}

/// The first rule naming `(protocol, port)` decides; with none, the policy default does.
pub fn evaluate(policy: &Policy, protocol: Protocol, port: u16) -> Decision {
    for (index, rule) in policy.rules.iter().enumerate() {
        for range in &rule.ports {
            if range.protocol == protocol && range.low <= port && port <= range.high {
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
