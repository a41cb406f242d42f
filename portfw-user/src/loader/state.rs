//! What `portfw apply` recorded about the running filter, for `status` and `events`.
//!
//! The kernel's PFW_ACTIVE map is the truth about which policy runs; the state keeps one
//! record per generation, so whichever generation is active, its description is on file,
//! even if an apply was killed half-way.
use std::{
    fmt, fs, io,
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use portfw_common::GENERATIONS;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::{
    error::{LoaderError, io_err},
    iface::{Link, ifname},
};
use crate::compile::{CompiledPolicy, RuleInfo};

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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub mode: AttachMode,
    /// Which header the interface's frames start with, so which programs filter it.
    #[serde(default)]
    pub link: Link,
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
    pub sha256: String,
    /// Seconds since the Unix epoch.
    pub applied_at: u64,
    pub default: String,
    pub rules: Vec<RuleRecord>,
}

impl PolicyRecord {
    /// The record of `compiled`, compiled from `source`, the bytes of `file`, applied now.
    pub fn new(file: &Path, source: &[u8], compiled: &CompiledPolicy) -> Self {
        Self {
            file: fs::canonicalize(file)
                .unwrap_or_else(|_| file.to_path_buf())
                .display()
                .to_string(),
            sha256: Sha256::digest(source)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
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
    pub program_id: u32,
    pub attachments: Vec<Attachment>,
    /// The record of each table generation, indexed by generation.
    pub generations: [Option<PolicyRecord>; GENERATIONS as usize],
    /// The pending trial, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial: Option<Trial>,
}

impl State {
    pub fn read(path: &Path) -> Result<Option<Self>, LoaderError> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| LoaderError::State {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
        }
    }

    /// Writes via a temporary file and a rename, so a reader never sees half a file.
    pub fn write(&self, path: &Path) -> Result<(), LoaderError> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        let json = serde_json::to_vec_pretty(self).map_err(|e| LoaderError::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        fs::write(&tmp, json).map_err(io_err(format!("writing {}", tmp.display())))?;
        fs::rename(&tmp, path).map_err(io_err(format!(
            "renaming {} to {}",
            tmp.display(),
            path.display()
        )))
    }

    pub fn remove(path: &Path) -> Result<(), LoaderError> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("removing {}", path.display()))(e)),
        }
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

    use super::{AttachMode, Attachment, PolicyRecord, RuleRecord, State};
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
        let record = PolicyRecord::new(Path::new("no/such/p.yaml"), b"", &compiled);
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
    fn attach_modes_keep_their_names_on_file() {
        use crate::loader::Link;
        let attachment = Attachment {
            iface: "eth0".into(),
            ifindex: 2,
            mode: AttachMode::Generic,
            link: Link::Ip,
        };
        let json = serde_json::to_value(&attachment).unwrap_or_default();
        assert_eq!(json["mode"], "generic");
        assert_eq!(json["link"], "ip");
        let state: Result<State, _> = serde_json::from_str(
            r#"{"abi": 3, "program-id": 7, "generations": [null, null],
                "attachments": [{"iface": "eth0", "ifindex": 2, "mode": "native"}]}"#,
        );
        assert_eq!(
            state
                .ok()
                .and_then(|s| s.attachments.first().map(|a| a.mode)),
            Some(AttachMode::Native)
        );
    }
}
