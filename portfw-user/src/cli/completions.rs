//! `portfw completions` and the hidden `portfw manpage`: shell completions and man pages,
//! generated from the clap definitions so they never drift from the parser.
use std::{
    fs,
    io::{self, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, ValueEnum};
use clap_mangen::{
    Man,
    roff::{Roff, bold, italic, roman},
};

use super::{Cli, EXIT_OK};

/// The section of the man pages: portfw is a system administration command.
const MAN_SECTION: &str = "8";

#[derive(Debug, Args)]
#[command(after_help = super::examples::COMPLETIONS)]
pub struct CompletionsArgs {
    /// The shell to write the script for.
    pub shell: Shell,
}

/// The shells `portfw completions` writes scripts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl From<Shell> for clap_complete::Shell {
    fn from(shell: Shell) -> Self {
        match shell {
            Shell::Bash => Self::Bash,
            Shell::Zsh => Self::Zsh,
            Shell::Fish => Self::Fish,
        }
    }
}

#[derive(Debug, Args)]
pub struct ManpageArgs {
    /// Write portfw.8 and one portfw-COMMAND.8 per command into DIR, instead of printing
    /// portfw.8 to stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Prints the completion script for one shell to stdout.
pub fn run(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = completion_command();
    let mut out = io::stdout().lock();
    clap_complete::generate(
        clap_complete::Shell::from(args.shell),
        &mut cmd,
        "portfw",
        &mut out,
    );
    out.flush()
        .context("writing the completion script to stdout")?;
    Ok(ExitCode::from(EXIT_OK))
}

/// The command line as the completions offer it. clap_complete lists hidden subcommands
/// too, and clap has no way to remove one, so the tree is rebuilt from the visible ones.
fn completion_command() -> clap::Command {
    let full = Cli::command();
    clap::Command::new("portfw")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(full.is_subcommand_required_set())
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
}

/// Prints portfw.8, or writes every page into a directory (the package build's use).
pub fn run_manpage(args: ManpageArgs) -> anyhow::Result<ExitCode> {
    match args.dir {
        None => {
            let mut out = io::stdout().lock();
            out.write_all(&main_page()?)
                .and_then(|()| out.flush())
                .context("writing the man page to stdout")?;
        }
        Some(dir) => {
            for (name, page) in pages()? {
                let path = dir.join(name);
                fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
                println!("{}", path.display());
            }
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}

/// The command tree the pages describe: no `help` subcommand, which has no page of its own,
/// and a NAME line that says what portfw is rather than what the crate holds.
fn command() -> clap::Command {
    let mut cmd = Cli::command()
        .about("an XDP firewall that filters by port at line rate")
        .disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// A page for `cmd`, titled in capitals as man pages are (`.TH PORTFW-APPLY 8`).
fn man(cmd: clap::Command) -> Man {
    let title = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_uppercase();
    Man::new(cmd)
        .title(title)
        .section(MAN_SECTION)
        .source(concat!("portfw ", env!("CARGO_PKG_VERSION")))
}

/// portfw.8: the description and the list of commands from clap, then the files, examples
/// and cross-references that only a page carries.
pub fn main_page() -> anyhow::Result<Vec<u8>> {
    let mut page = Vec::new();
    man(command())
        .render(&mut page)
        .context("rendering portfw.8")?;
    extra_sections()
        .to_writer(&mut page)
        .context("rendering portfw.8")?;
    Ok(page)
}

/// Every page as (file name, roff): portfw.8 first, then portfw-COMMAND.8 for each visible
/// command, recursively.
pub fn pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let page_of = man(sub.clone());
            let name = page_of.get_filename();
            let mut page = Vec::new();
            page_of
                .render(&mut page)
                .with_context(|| format!("rendering {name}"))?;
            see_also(&["portfw(8)"])
                .to_writer(&mut page)
                .with_context(|| format!("rendering {name}"))?;
            out.push((name, page));
            walk(sub, out)?;
        }
        Ok(())
    }
    let mut out = vec![(format!("portfw.{MAN_SECTION}"), main_page()?)];
    walk(&command(), &mut out)?;
    Ok(out)
}

fn extra_sections() -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["FILES"]);
    for (path, what) in [
        (
            "/etc/portfw/policy.yaml",
            "The policy portfw.service keeps in force (a conffile of the Debian package). \
             As shipped it allows everything and names no interface, so the service refuses \
             to start until an interface is chosen.",
        ),
        (
            "/sys/fs/bpf/portfw/NETNS/",
            "The pinned program, maps and links of the filter of the network namespace whose \
             inode is NETNS. They keep the filter in force after portfw exits; \
             portfw detach removes them.",
        ),
        (
            "/run/portfw/",
            "What was applied where (policy file, hash, interfaces), and the lock that \
             serialises apply and detach.",
        ),
        (
            "/usr/lib/systemd/system/portfw.service",
            "Runs portfw agent with /etc/portfw/policy.yaml. Installed disabled.",
        ),
    ] {
        roff.control("TP", []);
        roff.text([italic(path)]);
        roff.text([roman(what)]);
    }
    roff.control("SH", ["EXAMPLES"]);
    for (what, example) in [
        (
            "Check a policy, then put it in force on eth0:",
            "portfw check /etc/portfw/policy.yaml\nportfw apply /etc/portfw/policy.yaml --iface eth0",
        ),
        (
            "Keep the packaged policy in force with the service, from boot on:",
            "systemctl enable --now portfw.service",
        ),
        ("Remove the filter everywhere:", "portfw detach"),
    ] {
        roff.control("PP", []);
        roff.text([roman(what)]);
        roff.control("PP", []);
        roff.control("RS", ["4"]);
        roff.control("nf", []);
        for line in example.lines() {
            roff.text([bold(line)]);
        }
        roff.control("fi", []);
        roff.control("RE", []);
    }
    roff.extend([see_also(&[])]);
    roff
}

/// The closing section: `pages` first (the main page for a command's page), then the
/// neighbours every page shares and where the package puts the longer documents.
fn see_also(pages: &[&str]) -> Roff {
    let mut refs = pages.to_vec();
    refs.extend([
        "systemctl(1)",
        "systemd.exec(5)",
        "ip-link(8)",
        "bpftool(8)",
        "nft(8)",
    ]);
    let mut roff = Roff::new();
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(format!("{}.", refs.join(", ")))]);
    roff.control("PP", []);
    roff.text([roman(
        "The policy format is described in /usr/share/doc/portfw/policy.md, running portfw \
         as a service and on a fleet in /usr/share/doc/portfw/operations.md; example \
         policies are in /usr/share/doc/portfw/examples/.",
    )]);
    roff
}
