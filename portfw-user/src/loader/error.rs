//! What can go wrong in the loader: [`LoaderError`], and the helpers that wrap I/O, map and
//! program errors into it.
use std::{io, path::PathBuf};

use aya::{maps::MapError, programs::ProgramError};

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("this portfw binary was built without its kernel program (AYA_BUILD_SKIP); rebuild it")]
    NoProgram,
    #[error("loading the XDP program into the kernel failed")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("kernel program {what} failed")]
    Program {
        what: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
    #[error("map {0} is missing from the kernel object")]
    MissingMap(&'static str),
    #[error("interface `{0}` does not exist in this network namespace")]
    UnknownInterface(String),
    #[error(
        "interface `{iface}` has link type {arphrd} (ARPHRD), which portfw cannot parse: it \
         filters Ethernet and loopback devices, and devices whose frames start at the IP header \
         (tun, WireGuard, ipip, gre, sit, ppp)"
    )]
    UnsupportedLink { iface: String, arphrd: u16 },
    #[error("cannot attach to `{iface}` in {mode} mode: {reason}")]
    Attach {
        iface: String,
        mode: &'static str,
        reason: String,
        #[source]
        source: Option<Box<ProgramError>>,
    },
    #[error(
        "/sys/fs/bpf is not a bpf filesystem in this mount namespace (as under `ip netns exec`, \
         which remounts /sys). Pins made here would vanish with this command and the filter \
         with them. Run portfw with `nsenter --net=/run/netns/NAME portfw ...` instead, which \
         keeps the host's /sys/fs/bpf"
    )]
    BpffsPrivate,
    #[error(
        "refusing {path}: it {problem}. portfw keeps its pins and state only in directories \
         that root owns and no one else can write, and never follows a link there; find out \
         who made it, and remove it if it is not portfw's"
    )]
    Unsafe { path: PathBuf, problem: String },
    #[error("no portfw filter is loaded in this network namespace (nothing under {0})")]
    NotLoaded(PathBuf),
    #[error(
        "no portfw filter is loaded in this network namespace: the records under {0} were left \
         by a deleted namespace whose inode this one reuses, and filter nothing here (`portfw \
         apply` replaces them, `portfw detach` removes them)"
    )]
    Foreign(PathBuf),
    #[error(
        "an interrupted apply left a half-built filter in {0}; run `portfw detach` or apply \
         again"
    )]
    HalfBuilt(PathBuf),
    #[error("no filter is in force yet: an apply (pid {pid}) is building one in {dir}")]
    Building { dir: PathBuf, pid: i32 },
    #[error("interrupted by {signal}; rolled back, nothing was changed")]
    Interrupted { signal: &'static str },
    #[error("portfw is not attached to `{iface}` (attached: {attached}); nothing was changed")]
    NotAttached { iface: String, attached: String },
    /// `apply --try`, `confirm`, and applying while a trial is pending.
    #[error(transparent)]
    Trial(#[from] super::trial::TrialError),
    #[error("state file {path} is unreadable: {message}")]
    State { path: PathBuf, message: String },
    #[error(
        "policy has {rules} rules; at most {} are supported",
        portfw_common::MAX_RULES
    )]
    TooManyRules { rules: usize },
    #[error(
        "the kernel program has no map {map}, which {needs} needs: it was built without the \
         active defences (a filter loaded by an older portfw is reloaded by `portfw apply`)"
    )]
    DefenceMapMissing { map: &'static str, needs: String },
    #[error(
        "the block table {map} is full ({max} entries); unblock some sources, or wait for \
         timed blocks to expire"
    )]
    BlockTableFull { map: &'static str, max: u32 },
    #[error("refusing to block {0}: that is every source, the host's own gateway included")]
    BlockEverything(String),
    #[error(
        "{var}={value:?} is not an egress attach mode: use tcx, clsact or auto (the default: \
         tcx, or clsact where the kernel has no tcx)",
        var = super::attach::EGRESS_ATTACH_ENV
    )]
    EgressAttachEnv { value: String },
    #[error(
        "cannot attach to `{iface}` through clsact: priority {priority} handle {handle:#x} of \
         its clsact egress hook holds a filter that is not portfw's ({holder}); portfw leaves \
         it alone, so remove it or use tcx ({var}=tcx)",
        var = super::attach::EGRESS_ATTACH_ENV
    )]
    ClsactTaken {
        iface: String,
        priority: u16,
        handle: u32,
        holder: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

/// Wraps an I/O error as [`LoaderError::Io`], saying what was being done. Errors of other
/// kinds (pinning, links) go through `io::Error::other` first.
pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LoaderError {
    let what = what.into();
    move |source| LoaderError::Io { what, source }
}

/// Wraps an error of map `map` as [`LoaderError::Map`].
pub(super) fn map_err(map: &'static str) -> impl Fn(MapError) -> LoaderError + Copy {
    move |source| LoaderError::Map {
        map,
        source: Box::new(source),
    }
}

/// Wraps a program error as [`LoaderError::Program`], saying what failed.
pub(super) fn program_err(what: impl Into<String>) -> impl FnOnce(ProgramError) -> LoaderError {
    let what = what.into();
    move |source| LoaderError::Program {
        what,
        source: Box::new(source),
    }
}
