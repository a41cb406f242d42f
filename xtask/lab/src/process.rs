//! Processes in the lab: commands run inside a namespace, children kept for teardown, and
//! the `ip` calls that build the lab.

use std::{
    ffi::{OsStr, OsString},
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{Lab, Side};

/// A process started in the lab; the lab kills it on teardown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildId(usize);

impl Lab {
    /// A command that runs `args` inside the side's namespace.
    pub fn command<I, S>(&self, side: Side, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("nsenter");
        let mut net = OsString::from("--net=");
        net.push(self.netns_path(side));
        cmd.arg(net).arg("--").args(args);
        cmd
    }

    pub fn server<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(Side::Server, args)
    }

    pub fn client<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(Side::Client, args)
    }

    /// Runs `args` in the side's namespace to completion and returns its stdout;
    /// fails with the command line and its stderr unless it exits 0.
    pub fn run<I, S>(&self, side: Side, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(side, args);
        output_checked(cmd.stdin(Stdio::null()))
    }

    /// Starts `cmd` (usually from [`Lab::command`]) and keeps it for teardown.
    pub fn spawn(&mut self, mut cmd: Command) -> Result<ChildId> {
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start `{}`", show(&cmd)))?;
        self.children.push(Some(child));
        Ok(ChildId(self.children.len() - 1))
    }

    /// Starts `args` in the server namespace with stdin closed and output inherited.
    pub fn spawn_server<I, S>(&mut self, args: I) -> Result<ChildId>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.server(args);
        cmd.stdin(Stdio::null());
        self.spawn(cmd)
    }

    /// Starts `args` in the client namespace with stdin closed and output inherited.
    pub fn spawn_client<I, S>(&mut self, args: I) -> Result<ChildId>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.client(args);
        cmd.stdin(Stdio::null());
        self.spawn(cmd)
    }

    /// Starts `cmd` and waits until it prints the line `marker` on stdout. The
    /// rest of its stdout is drained in the background and discarded.
    pub fn spawn_ready(
        &mut self,
        mut cmd: Command,
        marker: &str,
        timeout: Duration,
    ) -> Result<ChildId> {
        let shown = show(&cmd);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let id = self.spawn(cmd)?;
        let stdout = self
            .child_mut(id)
            .and_then(|child| child.stdout.take())
            .with_context(|| format!("no stdout pipe for `{shown}`"))?;
        let (tx, rx) = mpsc::channel();
        let marker_owned = marker.to_owned();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim() == marker_owned
                    && let Some(tx) = tx.take()
                {
                    // The receiver may have given up already; nothing to do then.
                    let _ = tx.send(());
                }
            }
        });
        match rx.recv_timeout(timeout) {
            Ok(()) => Ok(id),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.kill(id);
                bail!("`{shown}` did not print `{marker}` within {timeout:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.kill(id);
                bail!("`{shown}` ended ({status}) before printing `{marker}`")
            }
        }
    }

    /// A started child, e.g. to take its stdout pipe; `None` once it was stopped.
    pub fn child_mut(&mut self, id: ChildId) -> Option<&mut Child> {
        self.children.get_mut(id.0).and_then(Option::as_mut)
    }

    /// Sends SIGINT (so the child can flush and clean up) and waits up to
    /// `timeout` for it to exit; kills it after that and fails.
    pub fn interrupt(&mut self, id: ChildId, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.children.get_mut(id.0).and_then(Option::take) else {
            bail!("lab child {id:?} was already stopped");
        };
        let result = interrupt_and_wait(&mut child, timeout);
        if result.is_err() {
            // The child is no longer in the registry, so nothing else would reap it.
            let _ = child.kill();
            let _ = child.wait();
        }
        result
    }

    /// Waits up to `timeout` for a child to exit by itself; kills it after that and fails.
    pub fn wait(&mut self, id: ChildId, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.children.get_mut(id.0).and_then(Option::take) else {
            bail!("lab child {id:?} was already stopped");
        };
        let pid = child.id();
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                outcome => {
                    // Not in the registry any more, so nothing else would reap it.
                    let _ = child.kill();
                    let _ = child.wait();
                    return match outcome {
                        Err(err) => Err(err).context(format!("waiting for process {pid}")),
                        _ => bail!("process {pid} did not exit within {timeout:?}; killed it"),
                    };
                }
            }
        }
    }

    /// Kills a child now and reaps it; returns how it ended, for messages.
    pub fn kill(&mut self, id: ChildId) -> String {
        match self.children.get_mut(id.0).and_then(Option::take) {
            Some(mut child) => {
                // kill fails only if it already exited, which wait then reports.
                let _ = child.kill();
                match child.wait() {
                    Ok(status) => status.to_string(),
                    Err(err) => format!("wait failed: {err}"),
                }
            }
            None => "already stopped".to_owned(),
        }
    }
}

fn interrupt_and_wait(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let pid = child.id();
    if child.try_wait().context("polling a lab child")?.is_none() {
        // std has no way to send SIGINT; kill(1) keeps this module free of libc.
        output_checked(Command::new("kill").args(["-INT", &pid.to_string()]))?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a lab child")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            bail!("process {pid} did not exit within {timeout:?} of SIGINT; killing it");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

pub(crate) fn ip(args: &[&str]) -> Result<()> {
    output_checked(Command::new("ip").args(args).stdin(Stdio::null())).map(drop)
}

/// Runs several `ip` commands in one process inside `ns`.
pub(crate) fn ip_batch(ns: &str, batch: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start `ip -batch`")?;
    child
        .stdin
        .take()
        .context("no stdin pipe for `ip -batch`")?
        .write_all(batch.as_bytes())
        .context("writing to `ip -batch`")?;
    let out = child
        .wait_with_output()
        .context("waiting for `ip -batch`")?;
    if !out.status.success() {
        bail!(
            "`ip -n {ns} -batch -` failed ({}) on:\n{batch}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `cmd`, returns stdout, and fails with the command line and stderr unless it exits 0.
pub fn output_checked(cmd: &mut Command) -> Result<String> {
    let shown = show(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command line as a user would type it, for messages.
pub fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}
