//! The `portfw` command line: argument definitions and dispatch to one module per subcommand.
mod agent;
mod apply;
mod block;
mod check;
mod completions;
mod confirm;
mod detach;
mod events;
mod examples;
mod explain;
mod flows;
mod knock;
mod status;
mod watchdog;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::loader;

/// Exit code of a successful run.
pub const EXIT_OK: u8 = 0;
/// Exit code of an error running the command: the kernel refused, a file could not be read,
/// no filter is loaded, a trial is pending, ...
pub const EXIT_ERROR: u8 = 1;
/// Exit code of `status --check` when an interface on record is not really filtered.
pub const EXIT_NOT_FILTERED: u8 = 2;
/// Exit code of a usage error: clap's own, for arguments it cannot parse.
pub const EXIT_USAGE: u8 = 2;
/// Exit code of an invalid policy: errors in the file, warnings under `check --strict`, or a
/// valid policy too big for the kernel's tables. The same as a usage error, since both mean
/// the input was wrong rather than the system, so CI can tell "bad policy" (2) from "could
/// not run" (1).
pub const EXIT_INVALID: u8 = 2;

/// portfw: an XDP firewall that filters by port at line rate.
///
/// A YAML policy is compiled into O(1) kernel tables; the XDP program judges each packet by
/// its protocol and destination port before the kernel network stack sees it. The filter
/// stays in force after `portfw apply` exits; `portfw detach` removes it. Filters belong to
/// a network namespace: run portfw inside the namespace it should filter (with
/// `nsenter --net=/run/netns/NAME`, which keeps /sys/fs/bpf visible).
#[derive(Debug, Parser)]
#[command(name = "portfw", version, about, long_about, after_help = examples::PORTFW)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate and compile POLICY, then put it in force (replacing any running policy).
    #[command(after_help = examples::APPLY)]
    Apply(ApplyArgs),
    /// Keep the policy on trial (`apply --try`), so that it is not rolled back.
    #[command(after_help = examples::CONFIRM)]
    Confirm,
    /// Validate POLICY and print what it does, without touching the kernel.
    #[command(after_help = examples::CHECK)]
    Check(CheckArgs),
    /// Show the running filter: interfaces, modes, program, policy, a pending trial, counters.
    #[command(after_help = examples::STATUS)]
    Status(StatusArgs),
    /// Remove the filter from some or all interfaces, with its pins.
    #[command(after_help = examples::DETACH)]
    Detach(DetachArgs),
    /// Stream drop and allow events from the running filter until interrupted.
    #[command(after_help = examples::EVENTS)]
    Events(EventsArgs),
    /// Say which rule decides a packet, and why: from POLICY, or from the running filter.
    #[command(after_help = examples::EXPLAIN)]
    Explain(ExplainArgs),
    /// List the flows the host opened that the filter tracks, as `conntrack -L` does: their
    /// replies pass under `replies: allow` even where the rules drop.
    #[command(after_help = examples::FLOWS)]
    Flows(FlowsArgs),
    /// Block a source address or prefix: every packet from it is dropped, for a while or
    /// until `portfw unblock`.
    #[command(after_help = block::BLOCK_EXAMPLES)]
    Block(block::BlockArgs),
    /// Lift the block of a source address or prefix (`portfw block`'s or the scan guard's).
    #[command(after_help = block::UNBLOCK_EXAMPLES)]
    Unblock(block::UnblockArgs),
    /// Write a new random key for single-packet knocks to FILE (mode 0600).
    #[command(after_help = knock::KNOCK_KEY_EXAMPLES)]
    KnockKey(knock::KnockKeyArgs),
    /// Send a single-packet knock: one signed UDP datagram that has the host's `portfw agent`
    /// open a knock door for this machine's address.
    #[command(after_help = knock::KNOCK_EXAMPLES)]
    Knock(knock::KnockArgs),
    /// Print the completion script for bash, zsh or fish to stdout.
    Completions(completions::CompletionsArgs),
    /// Print the man page portfw.8 to stdout, or write every page into a directory (the
    /// package build uses it).
    #[command(hide = true)]
    Manpage(completions::ManpageArgs),
    /// Keep a policy file in force in this network namespace: apply it, re-apply it when it
    /// changes or an interface comes back, and serve Prometheus metrics. Runs until SIGTERM,
    /// which leaves the filter in force.
    #[command(after_help = examples::AGENT)]
    Agent(AgentArgs),
    /// The watchdog `apply --try` leaves behind: waits for the deadline, then rolls the trial
    /// back unless it was confirmed. Not for people.
    #[command(name = "__rollback-at", hide = true)]
    RollbackAt(RollbackAtArgs),
}

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Policy file (YAML) to keep in force: applied at start and again whenever it changes.
    /// Without it, the agent keeps the running filter on its interfaces and serves metrics.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Interface to filter; repeat for several. Overrides the policy's `interfaces:` list.
    #[arg(long = "iface", short = 'i', value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// XDP attach mode, as for `apply`.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics and readiness at /ready.
    /// `:PORT` listens on every IPv4 address; a host name is resolved.
    #[arg(long, value_name = "ADDR:PORT", value_parser = agent::parse_listen)]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct RollbackAtArgs {
    /// The trial to roll back.
    #[arg(long)]
    pub id: String,
    /// Seconds since the Unix epoch.
    #[arg(long)]
    pub deadline: u64,
    /// The network namespace (inode) the trial belongs to.
    #[arg(long)]
    pub netns: u64,
}

#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// Print a JSON array with one object per flow.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Policy file (YAML).
    pub policy: PathBuf,
    /// Interface to filter; repeat for several. Overrides the policy's `interfaces:` list.
    #[arg(long = "iface", short = 'i', value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// XDP attach mode: native (in the driver), generic (in the kernel stack), or auto
    /// (native where the driver supports it, otherwise generic).
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    pub mode: Mode,
    /// Put POLICY in force on trial: unless `portfw confirm` is run (from any shell in this
    /// network namespace) within SECONDS, the previous policy comes back, or the filter is
    /// removed if there was none. The rollback happens even if this terminal goes away.
    #[arg(long = "try", value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=MAX_TRY_SECONDS))]
    pub try_secs: Option<u64>,
}

/// The longest trial `--try` accepts: a day.
pub const MAX_TRY_SECONDS: u64 = 86_400;

/// `--mode`: how to attach, as the command line spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    #[default]
    Auto,
    Native,
    Generic,
}

impl From<Mode> for loader::Mode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Auto => Self::Auto,
            Mode::Native => Self::Native,
            Mode::Generic => Self::Generic,
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Policy file (YAML).
    pub policy: PathBuf,
    /// Treat warnings as errors.
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// For monitoring: exit with status 2 unless every interface on record is really
    /// filtered (its XDP link and its egress tcx link or clsact filter attached to it, as the
    /// kernel reports them).
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Interface to detach from; repeat for several. Without it, detach everywhere.
    #[arg(long = "iface", short = 'i', value_name = "IFACE")]
    pub ifaces: Vec<String>,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Print one JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Exit after this many events.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Exit after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<f64>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Policy file to explain; without it, ask the filter running in this namespace.
    pub policy: Option<PathBuf>,
    /// Source address of the packet.
    #[arg(long, value_name = "ADDR")]
    pub from: std::net::IpAddr,
    /// Destination port and protocol of the packet, as PORT or PORT/PROTO (tcp by default).
    #[arg(long, value_name = "PORT[/PROTO]")]
    pub to: String,
}

/// Parses the command line and runs the subcommand.
pub fn run() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Apply(args) => apply::run(args),
        Command::Confirm => confirm::run(),
        Command::Agent(args) => agent::run(args),
        Command::RollbackAt(args) => watchdog::run(args),
        Command::Check(args) => check::run(args),
        Command::Status(args) => status::run(args),
        Command::Detach(args) => detach::run(args),
        Command::Events(args) => events::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Flows(args) => flows::run(args),
        Command::Block(args) => block::run_block(args),
        Command::Unblock(args) => block::run_unblock(args),
        Command::KnockKey(args) => knock::run_key(args),
        Command::Knock(args) => knock::run(args),
        Command::Completions(args) => completions::run(args),
        Command::Manpage(args) => completions::run_manpage(args),
    }
}

/// Prints the diagnostics of an invalid policy and returns the exit code for it.
fn report_invalid(file: &str, diagnostics: &crate::policy::Diagnostics, action: &str) -> ExitCode {
    eprintln!("{diagnostics}");
    // Those not shown included: past the first hundred, one line counts the rest.
    let errors = diagnostics.error_count();
    eprintln!(
        "portfw: {}: {errors} error{} found; {action}",
        crate::policy::escape(file),
        if errors == 1 { "" } else { "s" }
    );
    ExitCode::from(EXIT_INVALID)
}

/// Prints why a valid policy does not fit the kernel's tables and returns the exit code for
/// an invalid policy.
fn report_unfit(file: &str, error: &crate::compile::CompileError, action: &str) -> ExitCode {
    eprintln!("portfw: {file} is valid but does not fit the kernel tables: {error}; {action}");
    ExitCode::from(EXIT_INVALID)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::{Cli, EXIT_USAGE};

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn usage_errors_exit_with_exit_usage() {
        for args in [
            &["portfw", "no-such-command"][..],
            &["portfw", "apply"],
            &["portfw", "apply", "p.yaml", "--try", "0"],
            &["portfw", "apply", "p.yaml", "--try", "soon"],
        ] {
            let err = Cli::try_parse_from(args).err();
            assert_eq!(
                err.map(|e| e.exit_code()),
                Some(i32::from(EXIT_USAGE)),
                "{args:?}"
            );
        }
    }

    #[test]
    fn every_command_shows_examples_in_its_help() {
        let mut cli = Cli::command();
        for sub in cli.get_subcommands_mut() {
            if sub.is_hide_set() {
                continue;
            }
            let help = sub.render_help().to_string();
            assert!(
                help.contains("Examples:\n  portfw "),
                "`portfw {} --help` has no examples:\n{help}",
                sub.get_name()
            );
        }
    }
}
