//! Small helpers shared by the xtask commands: running commands, root check, paths.

use std::{
    ffi::OsString,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use portfw_lab::show;

/// Runs `cmd` with inherited stdio and fails, naming the command, unless it exits 0.
pub fn run_checked(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` to completion and returns its stdout; the lab's, which the tests use too.
pub use portfw_lab::output_checked;

/// Runs `cmd` with `input` on its stdin; returns whether it exited 0, and its stderr.
pub fn output_with_input(cmd: &mut Command, input: &[u8]) -> Result<(bool, String)> {
    use std::{io::Write as _, process::Stdio};

    let shown = show(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    child
        .stdin
        .take()
        .context("no stdin pipe")?
        .write_all(input)
        .with_context(|| format!("writing to `{shown}`"))?;
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{shown}`"))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Fails early, before any work, when a command needs root.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask {what}` must run as root: attaching XDP programs, pinning under \
             /sys/fs/bpf and creating network namespaces all need it (try `sudo -E cargo xtask {what}`)"
        );
    }
    Ok(())
}

/// The cargo that runs us, so a `+toolchain` override carries over to sub-builds.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The workspace root: xtask sits one level below it.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Where cargo puts build output, honouring CARGO_TARGET_DIR.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// One named stage of a multi-step command, for the closing summary.
pub struct Stage {
    pub name: String,
    pub elapsed: Duration,
    pub ok: bool,
}

/// The body of one stage.
pub type StageFn<'a> = Box<dyn FnOnce() -> Result<()> + 'a>;

/// Runs stages in order, stops at the first failure, and prints a summary either way.
pub fn run_stages(task: &str, stages: Vec<(&str, StageFn<'_>)>) -> Result<()> {
    let names: Vec<String> = stages.iter().map(|(name, _)| (*name).to_owned()).collect();
    let mut done: Vec<Stage> = Vec::new();
    let mut failure = None;
    for (name, stage) in stages {
        println!("xtask {task}: ── {name} ──");
        let start = Instant::now();
        let result = stage();
        let ok = result.is_ok();
        done.push(Stage {
            name: name.to_owned(),
            elapsed: start.elapsed(),
            ok,
        });
        if let Err(err) = result {
            failure = Some((name.to_owned(), err));
            break;
        }
    }
    println!("xtask {task}: summary");
    for stage in &done {
        println!(
            "  {:<8} {:<20} {:>7.1}s",
            if stage.ok { "ok" } else { "FAILED" },
            stage.name,
            stage.elapsed.as_secs_f64()
        );
    }
    for name in names.iter().skip(done.len()) {
        println!("  {:<8} {name}", "skipped");
    }
    match failure {
        Some((name, err)) => Err(err.context(format!("xtask {task}: stage `{name}` failed"))),
        None => Ok(()),
    }
}
