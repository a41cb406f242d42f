//! `cargo xtask test` and `cargo xtask lint`: the staged runs CI calls.

use std::{ffi::OsString, process::Command};

use portfw_lab::Lab;

use crate::{
    setup,
    util::{self, run_checked, run_stages},
};

/// Setup, then `cargo test` over the default members with `cargo_args` appended.
pub fn test(cargo_args: &[OsString]) -> anyhow::Result<()> {
    util::require_root("test")?;
    run_stages(
        "test",
        vec![
            ("setup", Box::new(|| setup::run(setup::Mode::Install))),
            (
                "cargo test",
                Box::new(|| {
                    // Namespaces of crashed runs would pile up; live runs are spared.
                    match Lab::cleanup_stale("pfw-") {
                        Ok(0) => {}
                        Ok(n) => println!("xtask test: removed {n} namespaces left by dead runs"),
                        Err(err) => eprintln!("xtask test: warning: {err:#}"),
                    }
                    cargo_test(
                        Command::new(util::cargo())
                            // Every failing test binary is reported, not only the first.
                            .args(["test", "--no-fail-fast"])
                            .args(cargo_args)
                            .current_dir(util::workspace_root()),
                    )
                }),
            ),
        ],
    )
}

/// Runs `cargo test`, echoing its output, and closes with one line totalling every test
/// binary's `test result:` line, so a reader sees at a glance how many tests ran.
fn cargo_test(cmd: &mut Command) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};

    use anyhow::Context as _;

    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child
        .stdout
        .take()
        .context("no stdout pipe for cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(count)) = (words.next(), words.next()) else {
                    continue;
                };
                let count: u64 = count.parse().unwrap_or(0);
                match what {
                    "passed" => passed += count,
                    "failed" => failed += count,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        anyhow::bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// Formatting and clippy with warnings denied; not part of `test`.
pub fn lint() -> anyhow::Result<()> {
    let root = util::workspace_root();
    run_stages(
        "lint",
        vec![
            (
                "cargo fmt --check",
                Box::new(|| {
                    run_checked(
                        Command::new(util::cargo())
                            .args(["fmt", "--all", "--", "--check"])
                            .current_dir(&root),
                    )
                }),
            ),
            (
                "cargo clippy",
                Box::new(|| {
                    run_checked(
                        Command::new(util::cargo())
                            .args(["clippy", "--all-targets", "--", "-D", "warnings"])
                            .current_dir(&root),
                    )
                }),
            ),
        ],
    )
}
