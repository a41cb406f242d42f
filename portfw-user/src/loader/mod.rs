//! The loader: owns the kernel objects. Loads the XDP program, pins it per network namespace,
//! attaches it to interfaces, writes compiled policies into its tables, and detaches it.
//!
//! One module per concern, layered so that none imports a module above it: `error`,
//! `bpfsys` (bpf(2) commands aya lacks), `fsafe` (portfw's directories, used without
//! following links) and `interrupt` (signals during an apply); then `bpffs` (where pins
//! live), `iface`, `state` (what apply recorded) and `tables` (the memory-mapped policy
//! tables); then `object` (the kernel object and its maps), `attach` (links to interfaces),
//! `health` (whether the records are this namespace's and its links really attached) and
//! `flows` (reading the flow table), `hostdeps` (the addresses the scan guard never blocks)
//! and `defences` (the active defences' state: blocks, doors, what a re-apply keeps, the
//! entry points of `portfw agent` and the events reader); then `apply` (changing the filter) and `query` (asking
//! it), which do not import each other. Beside `apply`: `reattach` (the pinned programs onto
//! an interface again) and `trial` (`apply --try`'s rollback, which `apply` consults first
//! and which undoes a fresh load with `apply`'s own detach).
mod apply;
mod attach;
mod bpffs;
pub(crate) mod bpfsys;
mod defences;
mod error;
mod flows;
mod fsafe;
mod health;
mod hostdeps;
mod iface;
mod interrupt;
mod netlink;
mod object;
mod query;
mod reattach;
mod scrape;
mod sockets;
mod state;
mod tables;
mod tc;
mod trial;

pub use apply::{ApplyOutcome, ApplyRequest, DetachOutcome, apply, detach};
pub use attach::{EGRESS_ATTACH_ENV, EgressAttach, Mode};
pub use bpffs::{
    BPFFS, BPFFS_MOUNT_OPTIONS, PIN_ROOT, Paths, STATE_ROOT, ensure_mounted, netns_cookie,
    netns_inode,
};
pub use defences::{
    BlockOutcome, BlockStatus, BlockTarget, OpenDoor, UnblockOutcome, applied_doors, block,
    key_addr, masked_source_key, open_door, source_key, unblock,
};
pub use error::LoaderError;
pub use flows::{FlowRecord, FlowTableStatus};
pub use hostdeps::host_dependencies;
pub use iface::{Link, ifname};
pub use interrupt::PAUSE_ENV;
pub use object::{Loaded, monotonic_ns, open_tables};
pub use query::{
    AttachmentStatus, RunningPolicy, RunningVerdict, Status, TrialStatus, explain_running, flows,
    open_events, running_policy, status,
};
pub use reattach::reattach;
pub use scrape::StatusCache;
pub use state::{
    AttachMode, Attachment, DefenceRecord, DoorRecord, Egress, EgressMode, PolicyRecord,
    RuleRecord, State, Trial,
};
pub use tables::Tables;
pub use trial::{
    Confirmed, RolledBack, TrialError, TrialRequest, confirm, roll_back_due, trial_recorded,
};
