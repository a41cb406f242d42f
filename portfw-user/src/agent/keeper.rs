//! Keeping the policy file in force: reading it when it may have changed, refusing a broken
//! edit with its diagnostics (the running policy stays), applying a good one, and attaching
//! again to an interface that was deleted and re-created.
use std::{
    collections::HashMap,
    ffi::CString,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use sha2::{Digest as _, Sha256};

use super::{Config, Shared, log};
use crate::{
    compile::{self, CompiledPolicy},
    loader::{self, ApplyRequest, LoaderError, Mode, Paths, State, TrialError},
    policy,
};

/// A valid policy, compiled, with what it was compiled from.
#[derive(Clone)]
struct Good {
    compiled: CompiledPolicy,
    bytes: Vec<u8>,
    /// The set files it read, which the policy's hash covers.
    set_files: Vec<crate::policy::SetFileRead>,
    interfaces: Vec<String>,
    enforce: bool,
}

/// What `stat` says about a file: a change of any of it means the file may have changed.
type Stamp = Option<(u64, u64, i64, i64, u64)>;

fn stamp(path: &Path) -> Stamp {
    fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

/// The interface's index in this namespace, 0 when it does not exist.
fn ifindex(iface: &str) -> u32 {
    CString::new(iface).map_or(0, |name| {
        // SAFETY: a valid C string.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The longest wait between two attempts at an apply that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long past a trial's deadline the agent leaves the rollback to the trial's watchdog.
const TRIAL_GRACE_SECS: u64 = 2;

pub struct Keeper {
    file: Option<PathBuf>,
    cli_ifaces: Vec<String>,
    mode: Mode,
    shared: Arc<Shared>,
    /// The set files the policy named when it was last read.
    set_files: Vec<PathBuf>,
    /// Of the policy and its set files, when last examined.
    stamps: Vec<Stamp>,
    /// The hash of the inputs last examined, valid or not.
    examined: Option<[u8; 32]>,
    /// The last policy put in force, re-applied when an interface comes back.
    good: Option<Good>,
    /// A valid policy not in force yet: the apply failed or had to wait, and is retried.
    pending: Option<Good>,
    retry_at: Instant,
    backoff: Duration,
    /// The last problem logged, so that a retry failing the same way stays quiet.
    last_problem: Option<String>,
    /// The interfaces to keep filtered.
    wanted: Vec<String>,
    /// Whether `wanted` follows the state file (no --policy, no --iface).
    wanted_from_state: bool,
    /// The index each wanted interface had when last looked at (0: missing).
    observed: HashMap<String, u32>,
    /// The index each interface was attached at.
    attached: HashMap<String, u32>,
    /// The state file as last read: its stamp and its pending trial's deadline.
    state_stamp: Stamp,
    trial_deadline: Option<u64>,
}

impl Keeper {
    pub fn new(config: &Config, shared: Arc<Shared>) -> Self {
        Self {
            file: config.policy.clone(),
            cli_ifaces: config.ifaces.clone(),
            mode: config.mode,
            shared,
            set_files: Vec::new(),
            stamps: Vec::new(),
            examined: None,
            good: None,
            pending: None,
            retry_at: Instant::now(),
            backoff: Duration::from_secs(1),
            last_problem: None,
            wanted: config.ifaces.clone(),
            wanted_from_state: config.policy.is_none() && config.ifaces.is_empty(),
            observed: HashMap::new(),
            attached: HashMap::new(),
            state_stamp: None,
            trial_deadline: None,
        }
    }

    /// The knock doors of the policy this agent put in force; `None` when it keeps no
    /// policy file (it follows the running filter).
    pub fn doors(&self) -> Option<&[compile::DoorInfo]> {
        self.file.as_ref()?;
        Some(self.good.as_ref().map_or(&[], |g| &g.compiled.doors))
    }

    /// The files whose change means a new policy: the policy file and its set files.
    pub fn inputs(&self) -> Vec<PathBuf> {
        self.file
            .iter()
            .cloned()
            .chain(self.set_files.iter().cloned())
            .collect()
    }

    fn file_name(&self) -> String {
        self.file
            .as_ref()
            .map_or_else(String::new, |f| f.display().to_string())
    }

    /// The first look: the policy file applied, or the running filter's interfaces adopted.
    pub fn start(&mut self) {
        self.read_state(true);
        if self.file.is_some() {
            self.examine(true);
        } else {
            if self.wanted_from_state && self.wanted.is_empty() {
                log::warn(
                    "no portfw filter is loaded in this network namespace yet; serving metrics \
                     and watching for one",
                    &[],
                );
            }
            self.check_interfaces();
        }
    }

    /// Logs `problem` unless it is the one logged last.
    fn problem(
        &mut self,
        level: log::Level,
        problem: String,
        fields: &[(&str, &dyn std::fmt::Display)],
    ) {
        if self.last_problem.as_deref() != Some(problem.as_str()) {
            log::log(level, &problem, fields);
            self.last_problem = Some(problem);
        }
    }

    /// Reads the policy and its set files and, when they differ from what was examined last
    /// (or `force`), validates and applies them. A broken policy is logged, diagnostic by
    /// diagnostic, and changes nothing.
    pub fn examine(&mut self, force: bool) {
        let Some(file) = self.file.clone() else {
            return;
        };
        let name = self.file_name();
        let bytes = match fs::read(&file) {
            Ok(bytes) => bytes,
            Err(e) => {
                self.shared.refused.store(true, Ordering::Relaxed);
                self.problem(
                    log::Level::Error,
                    format!("cannot read {name}: {e}; the running policy stays"),
                    &[("file", &name)],
                );
                return;
            }
        };
        let fingerprint = self.fingerprint(&bytes);
        if !force && self.examined == Some(fingerprint) {
            self.stamps = self.inputs().iter().map(|p| stamp(p)).collect();
            return;
        }
        self.examined = Some(fingerprint);
        self.last_problem = None;
        let sha = hex(&Sha256::digest(&bytes));
        let source = String::from_utf8_lossy(&bytes).into_owned();
        let parsed = match policy::parse(&source, &name) {
            Ok(parsed) => parsed,
            Err(diagnostics) => {
                for d in diagnostics.iter() {
                    let first = d.to_string();
                    let first = first.lines().next().unwrap_or_default();
                    let level = if d.is_error() {
                        log::Level::Error
                    } else {
                        log::Level::Warn
                    };
                    log::log(
                        level,
                        first,
                        &[
                            ("file", &name),
                            ("line", &d.location.line),
                            ("column", &d.location.column),
                        ],
                    );
                }
                self.refuse(
                    &format!(
                        "refused {name}: {} error{} (above); the running policy stays in force",
                        diagnostics.error_count(),
                        if diagnostics.error_count() == 1 {
                            ""
                        } else {
                            "s"
                        }
                    ),
                    &sha,
                );
                return;
            }
        };
        for w in &parsed.warnings {
            let text = w.to_string();
            log::warn(
                text.lines().next().unwrap_or_default(),
                &[
                    ("file", &name),
                    ("line", &w.location.line),
                    ("column", &w.location.column),
                ],
            );
        }
        let dir = super::watch::dir_of(&file);
        self.set_files = parsed
            .policy
            .sets
            .iter()
            .filter_map(|s| s.file.as_ref().map(|f| dir.join(f)))
            .collect();
        // With the set files now known, so that an edit of one of them is seen.
        self.examined = Some(self.fingerprint(&bytes));
        self.stamps = self.inputs().iter().map(|p| stamp(p)).collect();
        let interfaces = if self.cli_ifaces.is_empty() {
            parsed.policy.interfaces.clone()
        } else {
            self.cli_ifaces.clone()
        };
        if interfaces.is_empty() {
            self.refuse(
                &format!(
                    "refused {name}: no interface to filter (list them under `interfaces:` or \
                     give --iface); the running policy stays in force"
                ),
                &sha,
            );
            return;
        }
        let compiled = match compile::compile(&parsed.policy) {
            Ok(compiled) => compiled,
            Err(e) => {
                self.refuse(
                    &format!(
                        "refused {name}: it does not fit the kernel tables: {e}; the running \
                         policy stays in force"
                    ),
                    &sha,
                );
                return;
            }
        };
        self.shared.refused.store(false, Ordering::Relaxed);
        *self.shared.lock_expected() = Some(sha);
        // Watched from now on, so that an interface that appears later triggers the apply.
        self.wanted = interfaces.clone();
        *self.shared.lock_wanted() = self.wanted.clone();
        self.pending = Some(Good {
            compiled,
            bytes,
            set_files: parsed.policy.set_files.clone(),
            interfaces,
            enforce: parsed.policy.enforce,
        });
        self.retry_at = Instant::now();
        self.backoff = Duration::from_secs(1);
        self.try_apply();
    }

    fn refuse(&mut self, message: &str, sha: &str) {
        log::error(message, &[("file", &self.file_name()), ("sha256", &sha)]);
        self.shared.refused.store(true, Ordering::Relaxed);
        self.shared.refusals.fetch_add(1, Ordering::Relaxed);
        self.pending = None;
    }

    /// Hash of the policy's bytes and of the set files it named when last read.
    fn fingerprint(&self, policy: &[u8]) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update((policy.len() as u64).to_le_bytes());
        hash.update(policy);
        for path in &self.set_files {
            hash.update(path.as_os_str().as_encoded_bytes());
            match fs::read(path) {
                Ok(bytes) => {
                    hash.update((bytes.len() as u64).to_le_bytes());
                    hash.update(&bytes);
                }
                Err(_) => hash.update(u64::MAX.to_le_bytes()),
            }
        }
        hash.finalize().into()
    }

    /// Applies the pending policy, unless a failed attempt asks to wait a little longer.
    fn try_apply(&mut self) {
        if self.pending.is_none() || Instant::now() < self.retry_at {
            return;
        }
        let Some(file) = self.file.clone() else {
            return;
        };
        let Some(good) = self.pending.clone() else {
            return;
        };
        let name = self.file_name();
        let result = loader::apply(ApplyRequest {
            compiled: &good.compiled,
            file: &file,
            source: &good.bytes,
            set_files: &good.set_files,
            interfaces: &good.interfaces,
            mode: self.mode,
            trial: None,
        });
        match result {
            Ok(outcome) => {
                let ifaces: Vec<String> = outcome
                    .attachments
                    .iter()
                    .map(|a| format!("{}({})", a.iface, a.mode))
                    .collect();
                log::info(
                    &format!("applied {name}"),
                    &[
                        ("generation", &outcome.generation),
                        ("sha256", &outcome.policy.sha256),
                        ("rules", &good.compiled.rules.len()),
                        ("enforce", &good.enforce),
                        ("interfaces", &ifaces.join(",")),
                        ("program", &outcome.program_id),
                        ("load", &if outcome.fresh { "fresh" } else { "in-place" }),
                    ],
                );
                for note in &outcome.notes {
                    log::info(note, &[("file", &name)]);
                }
                if !outcome.detached.is_empty() {
                    log::info(
                        "detached from interfaces the policy no longer names",
                        &[("interfaces", &outcome.detached.join(","))],
                    );
                }
                self.attached = outcome
                    .attachments
                    .iter()
                    .map(|a| (a.iface.clone(), a.ifindex))
                    .collect();
                self.wanted = good.interfaces.clone();
                for iface in &self.wanted {
                    self.observed.insert(iface.clone(), ifindex(iface));
                }
                self.good = Some(good);
                self.pending = None;
                self.last_problem = None;
                self.backoff = Duration::from_secs(1);
                self.shared.applies.fetch_add(1, Ordering::Relaxed);
                *self.shared.lock_wanted() = self.wanted.clone();
            }
            Err(LoaderError::Trial(e @ TrialError::Pending { .. })) => {
                self.retry_at = Instant::now() + Duration::from_secs(1);
                self.problem(
                    log::Level::Warn,
                    format!("waiting to apply {name}: {e}"),
                    &[("file", &name)],
                );
            }
            Err(e) => {
                self.retry_at = Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                let e = anyhow::Error::from(e);
                self.problem(
                    log::Level::Error,
                    format!("applying {name} failed: {e:#}; trying again"),
                    &[("file", &name)],
                );
            }
        }
    }

    /// Once a second: a change the watcher missed, an apply to retry, an interface that
    /// came back, a trial past its deadline.
    pub fn tick(&mut self) {
        if self.file.is_some() {
            let stamps: Vec<Stamp> = self.inputs().iter().map(|p| stamp(p)).collect();
            if stamps != self.stamps {
                self.examine(false);
            }
        }
        self.try_apply();
        self.read_state(false);
        self.check_trial();
        self.check_interfaces();
    }

    /// Re-reads the state file when it changed: the trial's deadline and, when the agent
    /// follows the running filter, its interfaces.
    fn read_state(&mut self, force: bool) {
        let Ok(paths) = Paths::current() else {
            return;
        };
        let now = stamp(&paths.state);
        if !force && now == self.state_stamp {
            return;
        }
        self.state_stamp = now;
        let state = State::read(&paths.state).ok().flatten();
        self.trial_deadline = state
            .as_ref()
            .and_then(|s| s.trial.as_ref())
            .map(|t| t.deadline);
        if self.wanted_from_state {
            let attachments = state.map(|s| s.attachments).unwrap_or_default();
            self.wanted = attachments.iter().map(|a| a.iface.clone()).collect();
            self.attached = attachments
                .iter()
                .map(|a| (a.iface.clone(), a.ifindex))
                .collect();
            *self.shared.lock_wanted() = self.wanted.clone();
        }
    }

    /// Rolls back a trial whose watchdog let its deadline pass.
    fn check_trial(&mut self) {
        let Some(deadline) = self.trial_deadline else {
            return;
        };
        if super::unix_now() < deadline + TRIAL_GRACE_SECS {
            return;
        }
        match loader::roll_back_due(None) {
            Ok(Some(done)) => {
                log::warn(
                    &format!(
                        "rolled back the overdue trial of {} (its watchdog was gone): {}",
                        done.file, done.outcome
                    ),
                    &[("trial", &done.trial.id)],
                );
                for note in &done.notes {
                    log::warn(note, &[("trial", &done.trial.id)]);
                }
            }
            Ok(None) => {}
            Err(e) => {
                let e = anyhow::Error::from(e);
                self.problem(
                    log::Level::Error,
                    format!("rolling back an overdue trial failed: {e:#}"),
                    &[],
                );
            }
        }
        self.read_state(true);
    }

    /// Attaches again to every wanted interface whose index changed: it was deleted and
    /// re-created, or it appeared.
    fn check_interfaces(&mut self) {
        for iface in self.wanted.clone() {
            let index = ifindex(&iface);
            let before = self.observed.insert(iface.clone(), index);
            if before == Some(index) {
                continue;
            }
            if index == 0 {
                if before.is_some_and(|b| b != 0) {
                    log::warn(
                        "interface is gone; the filter is attached again when it comes back",
                        &[("iface", &iface)],
                    );
                }
                continue;
            }
            if self.attached.get(&iface) == Some(&index) {
                continue;
            }
            log::info(
                "interface appeared or was re-created; attaching the filter again",
                &[("iface", &iface), ("ifindex", &index)],
            );
            if self.file.is_some() {
                if self.pending.is_none() {
                    self.pending = self.good.clone();
                }
                self.retry_at = Instant::now();
                self.try_apply();
            } else {
                self.reattach(&iface);
            }
        }
    }

    fn reattach(&mut self, iface: &str) {
        match loader::reattach(&[iface.to_string()], self.mode) {
            Ok(done) => {
                for a in done {
                    log::info(
                        "attached the running filter",
                        &[
                            ("iface", &a.iface),
                            ("ifindex", &a.ifindex),
                            ("mode", &a.mode),
                        ],
                    );
                    self.attached.insert(a.iface.clone(), a.ifindex);
                }
            }
            Err(e) => {
                // Looked at again when the interface changes next.
                self.observed.remove(iface);
                let e = anyhow::Error::from(e);
                self.problem(
                    log::Level::Error,
                    format!("attaching the filter to {iface} failed: {e:#}"),
                    &[("iface", &iface)],
                );
            }
        }
    }
}
