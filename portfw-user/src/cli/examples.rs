//! The `Examples:` blocks at the end of each command's `--help`.

pub const PORTFW: &str = "\
Examples:
  portfw check /etc/portfw/policy.yaml
  portfw apply /etc/portfw/policy.yaml --iface eth0
  portfw status
  nsenter --net=/run/netns/web portfw status --json

Exit status: 0 success; 1 an error running the command; 2 a usage error or an invalid policy.";

pub const APPLY: &str = "\
Examples:
  portfw apply /etc/portfw/policy.yaml
  portfw apply policy.yaml --iface eth0 --iface eth1 --mode native

Exit status: 0 applied; 1 it could not be applied (nothing changed); 2 the policy is invalid.";

pub const CHECK: &str = "\
Examples:
  portfw check policy.yaml
  portfw check --strict policy.yaml || echo \"policy rejected (exit $?)\"

Exit status: 0 valid; 1 the file could not be read; 2 the policy is invalid (with --strict,
also when it has warnings).";

pub const STATUS: &str = "\
Examples:
  portfw status
  portfw status --json | jq '.counters'
  nsenter --net=/run/netns/web portfw status";

pub const DETACH: &str = "\
Examples:
  portfw detach
  portfw detach --iface eth1";

pub const EVENTS: &str = "\
Examples:
  portfw events
  portfw events --json --count 100 | jq -c 'select(.verdict == \"would-drop\")'
  portfw events --timeout 30";

pub const EXPLAIN: &str = "\
Examples:
  portfw explain policy.yaml --from 203.0.113.7 --to 22
  portfw explain --from 2001:db8::1 --to 53/udp     # asks the running filter";

pub const FLOWS: &str = "\
Examples:
  portfw flows
  portfw flows --json | jq length";
