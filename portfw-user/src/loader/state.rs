//! What `portfw apply` recorded about the running filter, for `status` and `events`.
//!
//! The kernel's PFW_ACTIVE map is the truth about which policy runs; the state keeps one
//! record per generation, so whichever generation is active, its description is on file,
//! even if an apply was killed half-way.
use std::{
    fmt, fs,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use portfw_common::GENERATIONS;
use serde::{Deserialize, Serialize};

use super::{
    error::LoaderError,
    fsafe::Dir,
    iface::{Link, ifname},
};
use crate::{
    compile::{CompiledPolicy, DoorInfo, RuleInfo},
    policy::{self, SetFileRead},
};

/// The XDP mode an interface was attached in.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AttachMode {
    /// In the driver.
    Native,
    /// In the kernel stack (skb mode).
    Generic,
}

impl AttachMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
        }
    }
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the TC egress program that records the host's flows is attached to an interface.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum EgressMode {
    /// A tcx `bpf_link` (Linux 6.6+), pinned beside the XDP link.
    #[default]
    Tcx,
    /// A filter on a clsact qdisc, added over netlink: kernels without tcx.
    Clsact,
}

impl EgressMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcx => "tcx",
            Self::Clsact => "clsact",
        }
    }
}

impl fmt::Display for EgressMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The egress attachment of an interface. A clsact filter cannot be pinned: it stays
/// attached as long as its qdisc, and what finds it again (and tells it from other
/// filters, which portfw never touches) is recorded here.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(
    tag = "mode",
    rename_all = "kebab-case",
    rename_all_fields = "kebab-case"
)]
pub enum Egress {
    /// The link is pinned as [`super::bpffs::Paths::egress_link`].
    #[default]
    Tcx,
    Clsact {
        /// The filter's priority and handle on the clsact egress hook.
        priority: u16,
        handle: u32,
        /// The program the filter runs.
        program_id: u32,
        /// portfw added the clsact qdisc (it had none), so `detach` removes the qdisc too
        /// once it holds no other filter.
        created_qdisc: bool,
    },
}

impl Egress {
    pub fn mode(&self) -> EgressMode {
        match self {
            Self::Tcx => EgressMode::Tcx,
            Self::Clsact { .. } => EgressMode::Clsact,
        }
    }

    /// portfw added the clsact qdisc its filter is on.
    pub fn created_qdisc(&self) -> bool {
        matches!(
            self,
            Self::Clsact {
                created_qdisc: true,
                ..
            }
        )
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    /// Which header the interface's frames start with, so which programs filter it.
    #[serde(default)]
    pub link: Link,
    /// How the egress program is attached; tcx in files written before clsact was known.
    #[serde(default)]
    pub egress: Egress,
}

impl Attachment {
    /// The interface still exists under its name, so the link still filters it.
    pub fn is_live(&self) -> bool {
        ifname(self.ifindex).as_deref() == Some(self.iface.as_str())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct RuleRecord {
    pub name: Option<String>,
    pub summary: String,
    pub line: usize,
}

impl From<&RuleInfo> for RuleRecord {
    fn from(rule: &RuleInfo) -> Self {
        Self {
            name: rule.name.clone(),
            summary: rule.summary.clone(),
            line: rule.line,
        }
    }
}

/// Description of the policy loaded into one generation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct PolicyRecord {
    pub file: String,
    /// [`policy::digest`]: of the policy's bytes, and of its set files if it has any.
    pub sha256: String,
    /// Seconds since the Unix epoch.
    pub applied_at: u64,
    pub default: String,
    pub rules: Vec<RuleRecord>,
}

/// The active defences of the policy loaded into one generation.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct DefenceRecord {
    /// The policy's knock doors, so that `status` names open doors and `portfw agent`
    /// finds a single-packet door's id, port and key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub knock_doors: Vec<DoorRecord>,
    /// The addresses the host depends on (gateways, nameservers, its own addresses) that
    /// apply added to the scan guard's `except`, as prefixes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_except: Vec<String>,
}

impl DefenceRecord {
    pub fn new(compiled: &CompiledPolicy, host_except: &[crate::policy::Cidr]) -> Self {
        Self {
            knock_doors: compiled.doors.iter().map(DoorRecord::from).collect(),
            host_except: host_except.iter().map(ToString::to_string).collect(),
        }
    }
}

/// A knock door as applied.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct DoorRecord {
    pub name: String,
    /// [`portfw_common::DoorDef::id`]: keys its open doors and knock progress.
    pub id: u32,
    /// `sequence` or `spa`.
    pub kind: String,
    /// How long a knock opens it for (`for:`), in nanoseconds.
    pub open_ns: u64,
    /// A single-packet door's UDP port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spa_port: Option<u16>,
    /// A single-packet door's key file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
}

impl From<&DoorInfo> for DoorRecord {
    fn from(door: &DoorInfo) -> Self {
        Self {
            name: door.name.clone(),
            id: door.def.id,
            kind: match &door.spa {
                Some(_) => "spa",
                None => "sequence",
            }
            .to_string(),
            open_ns: door.def.open_ns,
            spa_port: door.spa.as_ref().map(|s| s.port),
            key_file: door.spa.as_ref().map(|s| s.key_file.display().to_string()),
        }
    }
}

impl PolicyRecord {
    /// The record of `compiled`, compiled from `source`, the bytes of `file`, with the set
    /// files `set_files` ([`policy::Policy::set_files`]), applied now. The hash covers the
    /// set files too, so a changed block list shows as a changed policy.
    pub fn new(
        file: &Path,
        source: &[u8],
        set_files: &[SetFileRead],
        compiled: &CompiledPolicy,
    ) -> Self {
        Self {
            file: fs::canonicalize(file)
                .unwrap_or_else(|_| file.to_path_buf())
                .display()
                .to_string(),
            sha256: policy::digest(source, set_files),
            applied_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            default: compiled.default.to_string(),
            rules: compiled.rules.iter().map(RuleRecord::from).collect(),
        }
    }
}

/// A policy on trial (`portfw apply --try`). Unless `portfw confirm` clears this record first,
/// the rollback due at `deadline` switches back to `rollback_to` and restores the previous
/// interfaces, or, when the trial loaded the filter, removes it. The deadline lives here
/// rather than in the process that ran apply, so that it holds when that process is gone.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Trial {
    /// Names this trial, so that a watchdog of an earlier trial never acts on a later one.
    pub id: String,
    /// Seconds since the Unix epoch.
    pub started_at: u64,
    /// Seconds since the Unix epoch.
    pub deadline: u64,
    /// The generation the trial put in force.
    pub generation: u32,
    /// The generation to switch back to; `None` when the trial loaded the filter.
    pub rollback_to: Option<u32>,
    /// The interfaces as they were before the trial.
    pub previous_attachments: Vec<Attachment>,
    /// The `portfw __rollback-at` process waiting for the deadline.
    pub watchdog: Option<u32>,
}

impl Trial {
    /// The watchdog process still runs (and is ours: its command line names this trial).
    pub fn watchdog_alive(&self) -> bool {
        self.watchdog.is_some_and(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|&b| b == 0)
                    .any(|arg| arg == self.id.as_bytes())
            })
        })
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct State {
    pub abi: u32,
    /// The cookie of the network namespace the filter belongs to (`SO_NETNS_COOKIE`): the
    /// inode that names the files is reused once a namespace is gone, the cookie is not.
    /// Absent from files written before it was recorded.
    #[serde(default)]
    pub netns_cookie: Option<u64>,
    pub program_id: u32,
    pub attachments: Vec<Attachment>,
    /// The record of each table generation, indexed by generation.
    pub generations: [Option<PolicyRecord>; GENERATIONS as usize],
    /// The pending trial, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<Trial>,
    /// The active defences of each generation's policy, indexed by generation. Absent from
    /// files written before them.
    #[serde(default)]
    pub defences: [Option<DefenceRecord>; GENERATIONS as usize],
}

/// The directory of `path` (checked, and created when `create`) and the file's name in it.
fn dir_and_name(path: &Path, create: bool) -> Result<(Option<Dir>, String), LoaderError> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(LoaderError::Internal(format!(
            "state file {} has no directory",
            path.display()
        )));
    };
    let dir = if create {
        Some(Dir::create(dir)?)
    } else {
        Dir::open(dir)?
    };
    Ok((dir, name.to_string()))
}

impl State {
    /// Reads the state file at `path`, refusing a link or a directory anyone but root could
    /// have put it in.
    pub fn read(path: &Path) -> Result<Option<Self>, LoaderError> {
        let (Some(dir), name) = dir_and_name(path, false)? else {
            return Ok(None);
        };
        match dir.read(&name)? {
            Some(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| LoaderError::State {
                        path: path.to_path_buf(),
                        message: e.to_string(),
                    })
            }
            None => Ok(None),
        }
    }

    /// Writes via a new temporary file and a rename, so a reader never sees half a file.
    pub fn write(&self, path: &Path) -> Result<(), LoaderError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| LoaderError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let (Some(dir), name) = dir_and_name(path, true)? else {
            return Err(LoaderError::Internal(format!(
                "{} vanished",
                path.display()
            )));
        };
        dir.write_atomic(&name, &json)
    }

    pub fn remove(path: &Path) -> Result<(), LoaderError> {
        match dir_and_name(path, false)? {
            (Some(dir), name) => dir.remove_file(&name),
            (None, _) => Ok(()),
        }
    }

    /// The defences of `generation`'s policy, if on file.
    pub fn defences(&self, generation: u32) -> Option<&DefenceRecord> {
        self.defences
            .get(generation as usize)
            .and_then(Option::as_ref)
    }

    /// The record of `generation`, if one is on file.
    pub fn record(&self, generation: u32) -> Option<&PolicyRecord> {
        self.generations
            .get(generation as usize)
            .and_then(Option::as_ref)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{AttachMode, Attachment, Egress, PolicyRecord, RuleRecord, State};
    use crate::{compile, policy};

    #[test]
    fn a_record_names_the_file_hashes_its_bytes_and_lists_the_rules() {
        let yaml = "default: drop\nrules:\n  - name: web\n    allow: 80/tcp\n  - allow: 53\n";
        let compiled = policy::parse(yaml, "p.yaml")
            .ok()
            .and_then(|parsed| compile::compile(&parsed.policy).ok());
        let Some(compiled) = compiled else {
            panic!("the test policy must compile");
        };
        // The hash is of the bytes given, whatever they compiled to: here, of no bytes.
        let record = PolicyRecord::new(Path::new("no/such/p.yaml"), b"", &[], &compiled);
        assert_eq!(record.file, "no/such/p.yaml");
        assert_eq!(
            record.sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(record.default, "drop");
        assert_eq!(
            record.rules.first(),
            Some(&RuleRecord {
                name: Some("web".into()),
                summary: "allow 80/tcp".into(),
                line: 3,
            })
        );
        assert_eq!(record.rules.len(), 2);
    }

    #[test]
    fn the_hash_covers_the_set_files() {
        let dir = std::env::temp_dir().join(format!("portfw-state-hash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let yaml = "default: drop\nsets:\n  bl: {file: block.txt}\nrules:\n  - drop: any\n    \
                    from: $bl\n";
        let policy_path = dir.join("p.yaml");
        std::fs::write(&policy_path, yaml).expect("write policy");
        let record_with = |block: &str| {
            std::fs::write(dir.join("block.txt"), block).expect("write set file");
            let parsed = policy::load(&policy_path).unwrap_or_else(|e| panic!("{e}"));
            let compiled = compile::compile(&parsed.policy).unwrap_or_else(|e| panic!("{e}"));
            let record = PolicyRecord::new(
                &policy_path,
                yaml.as_bytes(),
                &parsed.policy.set_files,
                &compiled,
            );
            (parsed.policy.set_files, record.sha256)
        };
        let (files, first) = record_with("192.0.2.0/24\n");
        let (_, again) = record_with("192.0.2.0/24\n");
        let (_, changed) = record_with("192.0.2.0/24\n198.51.100.7\n");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, "block.txt");
        assert_eq!(first, again, "the same files hash the same");
        assert_ne!(first, changed, "a changed set file changes the hash");
        // Not the policy's bytes alone, which is what a policy without set files hashes to.
        let plain = policy::digest(yaml.as_bytes(), &[]);
        assert_ne!(first, plain);
        assert_eq!(plain.len(), 64);
    }

    #[test]
    fn attach_modes_keep_their_names_on_file() {
        use crate::loader::Link;
        let attachment = Attachment {
            iface: "eth0".into(),
            ifindex: 2,
            mode: AttachMode::Generic,
            link: Link::Ip,
            egress: Egress::Clsact {
                priority: 1,
                handle: 2,
                program_id: 3,
                created_qdisc: true,
            },
        };
        let json = serde_json::to_value(&attachment).unwrap_or_default();
        assert_eq!(json["mode"], "generic");
        assert_eq!(json["link"], "ip");
        assert_eq!(json["egress"]["mode"], "clsact");
        assert_eq!(json["egress"]["created-qdisc"], true);
        let back: Result<Attachment, _> = serde_json::from_value(json);
        assert_eq!(back.ok().as_ref(), Some(&attachment));
        let state: Result<State, _> = serde_json::from_str(
            r#"{"abi": 3, "program-id": 7, "generations": [null, null],
                "attachments": [{"iface": "eth0", "ifindex": 2, "mode": "native"}]}"#,
        );
        let first = state.ok().and_then(|s| s.attachments.first().cloned());
        assert_eq!(first.as_ref().map(|a| a.mode), Some(AttachMode::Native));
        // Written before clsact was known: the egress link is tcx.
        assert_eq!(first.map(|a| a.egress), Some(Egress::Tcx));
    }
}
