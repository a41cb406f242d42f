//! Knock key files: 32 random bytes written as 64 hex digits and a newline, mode 0600.
//!
//! Hex text rather than raw bytes, so that a key can be copied between hosts through a
//! terminal or a secrets manager, and checked by eye, without an encoding step.
use std::{
    fmt,
    fs::{self, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

/// Bytes of a key.
pub const KEY_LEN: usize = 32;

/// A knock key. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading the key file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "{} is not a knock key: expected {} hex digits (as `portfw knock-key` writes)",
        path.display(),
        KEY_LEN * 2
    )]
    Format { path: PathBuf },
    #[error("{} exists; give --force to replace it", path.display())]
    Exists { path: PathBuf },
    #[error("writing the key file {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading random bytes from the operating system")]
    Random {
        #[source]
        source: getrandom::Error,
    },
}

impl Key {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A new key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(|source| KeyError::Random { source })?;
        Ok(Self(bytes))
    }

    /// The key file's text: 64 lowercase hex digits and a newline.
    pub fn to_text(&self) -> String {
        let mut text: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        text.push('\n');
        text
    }

    /// Reads a key file's text: hex digits, with white space around them ignored.
    pub fn parse(text: &str) -> Option<Self> {
        let digits = text.trim().as_bytes();
        // from_str_radix would take a sign; only digits are a key.
        if digits.len() != KEY_LEN * 2 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let mut bytes = [0u8; KEY_LEN];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self(bytes))
    }

    /// Reads the key file at `path`.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).ok_or_else(|| KeyError::Format {
            path: path.to_path_buf(),
        })
    }

    /// Writes the key to `path`, mode 0600, atomically: the file appears whole or not at all.
    /// An existing file is replaced only with `force`. The key is written to a new file
    /// beside `path`, then linked (no `force`: refused if `path` exists, in the same step)
    /// or renamed into place.
    pub fn write_new(&self, path: &Path, force: bool) -> Result<(), KeyError> {
        let write_err = |source| KeyError::Write {
            path: path.to_path_buf(),
            source,
        };
        let name = path
            .file_name()
            .ok_or_else(|| write_err(io::Error::other("the path names no file")))?;
        let temp = path.with_file_name(format!(
            ".{}.tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)?;
            // The umask may have taken bits away; 0600 exactly, whatever it is.
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            file.write_all(self.to_text().as_bytes())?;
            file.sync_all()
        })();
        let placed = written.and_then(|()| {
            if force {
                fs::rename(&temp, path)
            } else {
                fs::hard_link(&temp, path)
            }
        });
        let _ = fs::remove_file(&temp);
        match placed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(KeyError::Exists {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(write_err(e)),
        }
    }
}

/// Whether the key file at `path` can be read by others than its owner (group or world
/// bits): the agent warns, as ssh does for a private key.
pub fn readable_by_others(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.mode() & 0o077 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("portfw-key-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn key_files_are_hex_and_mode_0600() {
        let dir = scratch("mode");
        let path = dir.join("knock.key");
        let key = Key::generate().expect("key");
        key.write_new(&path, false).expect("write");
        let meta = fs::metadata(&path).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert!(text.trim().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(Key::read(&path).expect("read key"), key);
        assert!(!readable_by_others(&path));
        // No temporary file is left beside it.
        assert_eq!(fs::read_dir(&dir).expect("list").count(), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_existing_file_is_replaced_only_with_force() {
        let dir = scratch("force");
        let path = dir.join("knock.key");
        let first = Key::generate().expect("key");
        first.write_new(&path, false).expect("write");
        let second = Key::generate().expect("key");
        assert!(matches!(
            second.write_new(&path, false),
            Err(KeyError::Exists { .. })
        ));
        assert_eq!(Key::read(&path).expect("read"), first);
        second.write_new(&path, true).expect("force");
        assert_eq!(Key::read(&path).expect("read"), second);
        assert_eq!(fs::metadata(&path).expect("stat").mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(&dir).expect("list").count(), 1);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn keys_parse_from_hex_only() {
        let key = Key::from_bytes([0xab; KEY_LEN]);
        assert_eq!(Key::parse(&key.to_text()), Some(key.clone()));
        assert_eq!(
            Key::parse(&format!("  {}\r\n", key.to_text().trim().to_uppercase())),
            Some(key)
        );
        assert_eq!(Key::parse(""), None);
        assert_eq!(Key::parse(&"ab".repeat(31)), None);
        assert_eq!(Key::parse(&"zz".repeat(32)), None);
        assert_eq!(Key::parse(&"é".repeat(32)), None);
        assert_eq!(Key::parse(&"+f".repeat(32)), None);
        assert_eq!(format!("{:?}", Key::from_bytes([1; KEY_LEN])), "Key(..)");
    }
}
