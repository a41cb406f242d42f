//! The `Examples:` blocks at the end of each command's `--help`.

pub const PORTFW: &str = "\
Examples:
  portfw check /etc/portfw/policy.yaml
  portfw apply /etc/portfw/policy.yaml --iface eth0 --try 120
  portfw confirm
  portfw status
  nsenter --net=/run/netns/web portfw status --json

Exit status: 0 success; 1 an error running the command; 2 a usage error or an invalid policy.";

pub const APPLY: &str = "\
Examples:
  portfw apply /etc/portfw/policy.yaml
  portfw apply policy.yaml --iface eth0 --iface eth1 --mode native
  portfw apply new.yaml --try 120     # rolled back in 2 minutes unless `portfw confirm`

With --try, a second apply is refused until the trial is confirmed or rolled back: the
previous policy, which the rollback returns to, is kept in the generation a new apply writes.

Environment: PORTFW_EGRESS_ATTACH chooses how the egress program that records the host's
flows is attached: tcx (a pinned tcx link, Linux 6.6+), clsact (a filter on the interface's
clsact qdisc, which portfw adds if it is missing), or auto, the default (tcx, and clsact where
the kernel has no tcx). `portfw status` shows which each interface has.

Exit status: 0 applied; 1 it could not be applied (nothing changed); 2 the policy is invalid.";

pub const CONFIRM: &str = "\
Examples:
  portfw apply new.yaml --try 60     # then, from a new SSH session that still gets in:
  portfw confirm
  nsenter --net=/run/netns/web portfw confirm

Exit status: 0 confirmed; 1 no trial was pending, or it had already expired (and was rolled
back).";

pub const CHECK: &str = "\
Examples:
  portfw check policy.yaml
  portfw check --strict policy.yaml || echo \"policy rejected (exit $?)\"

Exit status: 0 valid; 1 the file could not be read; 2 the policy is invalid (with --strict,
also when it has warnings).";

pub const STATUS: &str = "\
Examples:
  portfw status
  portfw status --json | jq '.trial'
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

pub const AGENT: &str = "\
Examples:
  portfw agent --policy /etc/portfw/policy.yaml --metrics-listen 127.0.0.1:9713
  portfw agent --policy /etc/portfw/policy.yaml --iface eth0 --metrics-listen [::]:9713
  portfw agent --metrics-listen 127.0.0.1:9713    # metrics for a filter applied by hand
  curl -s http://127.0.0.1:9713/metrics | grep portfw_packets_total

It logs one line per event to stderr (`level=... msg=\"...\" key=value`), re-reads the policy
on SIGHUP, and exits on SIGTERM or SIGINT leaving the filter in force.";

pub const COMPLETIONS: &str = "\
Examples:
  portfw completions bash > /etc/bash_completion.d/portfw
  portfw completions zsh > \"${fpath[1]}/_portfw\"
  portfw completions fish > ~/.config/fish/completions/portfw.fish
  source <(portfw completions bash)      # this bash session only

The Debian package installs all three where the shells look for them.";
