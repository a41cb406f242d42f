//! Interruptions of `apply`: while one runs, SIGINT, SIGTERM and SIGHUP are noted instead of
//! killing the process, and the apply looks at them at the points where it can still roll
//! back, so an interrupted apply changes nothing.
//!
//! A test hook: with `PORTFW_TEST_PAUSE_AT=<point>` in its environment, an apply stops at
//! that point (saying so on stderr) until a signal comes or 60 s pass, so that tests can
//! interrupt or kill it exactly there. The points are the names given to
//! [`Signals::check`] and [`Signals::pause`] in `apply.rs`.
use std::{
    sync::atomic::{AtomicI32, Ordering},
    time::{Duration, Instant},
};

use super::error::LoaderError;

const CAUGHT_SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];
/// The environment variable of the test hook.
pub const PAUSE_ENV: &str = "PORTFW_TEST_PAUSE_AT";

/// The last signal caught, or 0.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    CAUGHT.store(signal, Ordering::SeqCst);
}

fn name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// While held, SIGINT, SIGTERM and SIGHUP are caught and noted; on drop their previous
/// handling comes back.
pub(super) struct Signals {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl Signals {
    pub(super) fn catch() -> Result<Self, LoaderError> {
        CAUGHT.store(0, Ordering::SeqCst);
        let mut signals = Self {
            previous: Vec::new(),
        };
        for signal in CAUGHT_SIGNALS {
            // SAFETY: an all-zero sigaction is valid; we fill in the handler and an empty mask.
            let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
            action.sa_sigaction = note as extern "C" fn(libc::c_int) as libc::sighandler_t;
            // Restart interrupted system calls: the points below decide, not EINTR.
            action.sa_flags = libc::SA_RESTART;
            // SAFETY: a valid sigset to clear.
            unsafe { libc::sigemptyset(&mut action.sa_mask) };
            // SAFETY: an all-zero sigaction is valid to receive the old one.
            let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers; the handler only stores to an atomic.
            if unsafe { libc::sigaction(signal, &action, &mut old) } != 0 {
                return Err(LoaderError::Io {
                    what: format!("catching {}", name(signal)),
                    source: std::io::Error::last_os_error(),
                });
            }
            signals.previous.push((signal, old));
        }
        Ok(signals)
    }

    /// The signal caught so far, by name.
    pub(super) fn caught(&self) -> Option<&'static str> {
        match CAUGHT.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(name(signal)),
        }
    }

    /// A point where the apply can still roll back: fails with
    /// [`LoaderError::Interrupted`] if a signal came (after the test hook's pause).
    pub(super) fn check(&self, point: &'static str) -> Result<(), LoaderError> {
        self.pause(point);
        match self.caught() {
            None => Ok(()),
            Some(signal) => Err(LoaderError::Interrupted { signal }),
        }
    }

    /// The test hook alone, at a point past rolling back.
    pub(super) fn pause(&self, point: &'static str) {
        if std::env::var_os(PAUSE_ENV).is_none_or(|at| at != point) {
            return;
        }
        eprintln!("portfw: test hook: paused at {point} ({PAUSE_ENV})");
        let started = Instant::now();
        while self.caught().is_none() && started.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for (signal, old) in self.previous.drain(..) {
            // SAFETY: restoring the action sigaction gave us.
            unsafe { libc::sigaction(signal, &old, std::ptr::null_mut()) };
        }
    }
}
