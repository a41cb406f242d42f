//! `cargo xtask test` and `cargo xtask lint`: the staged runs CI calls.

use std::{ffi::OsString, process::Command};

use crate::{
    lab::Lab,
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
                    run_checked(
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
