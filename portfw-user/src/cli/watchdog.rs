//! The watchdog of `apply --try`: a `portfw __rollback-at` process in a session of its own,
//! with no terminal and its output on /dev/null, so that neither a hang-up, a closed SSH
//! session nor the death of `apply` stops it. It sleeps until the trial's deadline, then
//! rolls the trial back unless it was confirmed. The deadline itself is on file in the
//! state, so an overdue trial is also rolled back by the agent or the next apply or
//! confirm, should the watchdog be killed too.
use std::{
    fs, io,
    os::unix::{fs::MetadataExt as _, process::CommandExt as _},
    process::{Command, ExitCode, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};

use super::{EXIT_OK, RollbackAtArgs};
use crate::loader::{self, Paths, TrialRequest};

/// The hidden subcommand the watchdog runs as.
pub const SUBCOMMAND: &str = "__rollback-at";

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Sixteen hex digits from the kernel's random pool: a trial's name.
fn new_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom fills at most `bytes.len()` bytes of the buffer we own.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(io::Error::last_os_error()).context("drawing a trial id");
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Starts the watchdog of a trial of `secs` seconds from now and returns the trial to ask
/// the loader for.
pub fn start(secs: u64) -> anyhow::Result<TrialRequest> {
    let id = new_id()?;
    let deadline = unix_now().ceil() as u64 + secs;
    let netns = loader::netns_inode()?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.args([SUBCOMMAND, "--id", &id])
        .args(["--deadline", &deadline.to_string()])
        .args(["--netns", &netns.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Holding no directory busy (a test's temporary one, an unmounted share).
        .current_dir("/");
    // SAFETY: setsid is async-signal-safe, the only kind of call allowed between fork and
    // exec. A new session has no controlling terminal, so no hang-up reaches it.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .context("starting the watchdog of the trial (portfw __rollback-at)")?;
    // Never waited for: it outlives this process, and init reaps it.
    let pid = child.id();
    drop(child);
    Ok(TrialRequest {
        id,
        deadline,
        watchdog: Some(pid),
    })
}

/// After a failed apply: stops the watchdog unless the trial made it on file (its policy
/// was switched in before the failure, and the rollback must still come).
pub fn abandon(trial: &TrialRequest) {
    if loader::trial_recorded(&trial.id).unwrap_or(true) {
        return;
    }
    if let Some(pid) = trial.watchdog {
        // SAFETY: a plain kill(2) of the child we started a moment ago.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
}

/// The state file's identity, to re-read it only when it changed.
fn stamp(paths: &Paths) -> Option<(u64, i64, i64, u64)> {
    fs::metadata(&paths.state)
        .ok()
        .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

/// Says what the watchdog did where an operator will look: the system log.
fn syslog(priority: libc::c_int, message: &str) {
    let Ok(text) = std::ffi::CString::new(message.replace('\0', " ")) else {
        return;
    };
    // SAFETY: a static identity string and a valid C string passed through "%s".
    unsafe {
        libc::openlog(c"portfw".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON);
        libc::syslog(priority, c"%s".as_ptr(), text.as_ptr());
    }
}

pub fn run(args: RollbackAtArgs) -> anyhow::Result<ExitCode> {
    // SAFETY: ignoring a signal has no preconditions. The new session already has no
    // terminal to hang up; this also covers a SIGHUP sent by hand to the old group.
    unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
    let netns = loader::netns_inode()?;
    if netns != args.netns {
        bail!(
            "this watchdog is for network namespace {}, not {netns}",
            args.netns
        );
    }
    let paths = Paths::current()?;
    let mut seen = false;
    let mut last_stamp = None;
    loop {
        let now_stamp = stamp(&paths);
        if now_stamp != last_stamp {
            last_stamp = now_stamp;
            let recorded = loader::trial_recorded(&args.id).unwrap_or(seen);
            if recorded {
                seen = true;
            } else if seen {
                // Confirmed, or rolled back by someone else: nothing left to do.
                return Ok(ExitCode::from(EXIT_OK));
            }
        }
        let left = args.deadline as f64 - unix_now();
        if left <= 0.0 {
            break;
        }
        std::thread::sleep(Duration::from_secs_f64(left.min(1.0)));
    }
    match loader::roll_back_due(Some(&args.id)) {
        Ok(Some(done)) => {
            let mut message = format!(
                "the trial of {} was not confirmed by its deadline and was rolled back: {}",
                done.file, done.outcome
            );
            for note in &done.notes {
                message.push_str("; ");
                message.push_str(note);
            }
            syslog(libc::LOG_WARNING, &message);
        }
        // Confirmed in the meantime, or the apply never got as far as recording it.
        Ok(None) => {}
        Err(e) => {
            syslog(
                libc::LOG_ERR,
                &format!("rolling back the trial {} failed: {e}", args.id),
            );
            return Err(e.into());
        }
    }
    Ok(ExitCode::from(EXIT_OK))
}
