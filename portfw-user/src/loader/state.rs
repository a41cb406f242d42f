//! What `portfw apply` recorded about the running filter, for `status` and `events`.
//!
//! The kernel's PFW_ACTIVE map is the truth about which policy runs; the state keeps one
//! record per generation, so whichever generation is active, its description is on file,
//! even if an apply was killed half-way.
use std::{fmt, fs, io, path::Path};

use portfw_common::GENERATIONS;
use serde::{Deserialize, Serialize};

use super::{
    error::{LoaderError, io_err},
    iface::ifname,
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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub mode: AttachMode,
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

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct State {
    pub abi: u32,
    pub program_id: u32,
    pub attachments: Vec<Attachment>,
    /// The record of each table generation, indexed by generation.
    pub generations: [Option<PolicyRecord>; GENERATIONS as usize],
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
}

#[cfg(test)]
mod tests {
    use super::{AttachMode, Attachment, State};

    #[test]
    fn attach_modes_keep_their_names_on_file() {
        let attachment = Attachment {
            iface: "eth0".into(),
            ifindex: 2,
            mode: AttachMode::Generic,
        };
        let json = serde_json::to_value(&attachment).unwrap_or_default();
        assert_eq!(json["mode"], "generic");
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
