//! The `portfw` command line: argument definitions and dispatch to one module per subcommand.
mod apply;
mod check;
mod completions;
mod detach;
mod events;
mod explain;
mod flows;
mod status;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::loader;

/// Exit code of a successful run.
pub const EXIT_OK: u8 = 0;
/// Exit code when a policy is invalid, or any other error.
pub const EXIT_ERROR: u8 = 1;
/// Exit code of `status --check` when an interface on record is not really filtered.
pub const EXIT_NOT_FILTERED: u8 = 2;

/// portfw: an XDP firewall that filters by port at line rate.
///
/// A YAML policy is compiled into O(1) kernel tables; the XDP program judges each packet by
/// its protocol and destination port before the kernel network stack sees it. The filter
/// stays in force after `portfw apply` exits; `portfw detach` removes it. Filters belong to
/// a network namespace: run portfw inside the namespace it should filter (with
/// `nsenter --net=/run/netns/NAME`, which keeps /sys/fs/bpf visible).
#[derive(Debug, Parser)]
#[command(name = "portfw", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate and compile POLICY, then put it in force (replacing any running policy).
    Apply(ApplyArgs),
    /// Validate POLICY and print what it does, without touching the kernel.
    Check(CheckArgs),
    /// Show the running filter: interfaces, mode, program, policy, and counters.
    Status(StatusArgs),
    /// Remove the filter from some or all interfaces, with its pins.
    Detach(DetachArgs),
    /// Stream drop and allow events from the running filter until interrupted.
    Events(EventsArgs),
    /// Say which rule decides a packet, and why: from POLICY, or from the running filter.
    Explain(ExplainArgs),
    /// List the flows the host opened that the filter tracks, as `conntrack -L` does: their
    /// replies pass under `replies: allow` even where the rules drop.
    Flows(FlowsArgs),
    /// Print the completion script for bash, zsh or fish to stdout.
    Completions(completions::CompletionsArgs),
    /// Print the man page portfw.8 to stdout, or write every page into a directory (the
    /// package build uses it).
    #[command(hide = true)]
    Manpage(completions::ManpageArgs),
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
}

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
    /// filtered (both its links attached to it, as the kernel reports them).
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
        Command::Check(args) => check::run(args),
        Command::Status(args) => status::run(args),
        Command::Detach(args) => detach::run(args),
        Command::Events(args) => events::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Flows(args) => flows::run(args),
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
    ExitCode::from(EXIT_ERROR)
}
