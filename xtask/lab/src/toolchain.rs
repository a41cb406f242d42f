//! Picks the nightly toolchain that builds the eBPF crate: for `cargo xtask setup`, which
//! installs it, and for portfw-user's build script, which builds with it. std only.

use std::process::Command;

/// The nightly whose LLVM matches the one bpf-linker is built against. A newer
/// nightly emits bitcode that bpf-linker's LLVM cannot read, so setup never
/// installs anything newer than this.
pub const PINNED_NIGHTLY: &str = "nightly-2026-05-20";

/// The LLVM major version of bpf-linker (built from Debian's llvm-22-dev).
pub const LLVM_MAJOR: u32 = 22;

/// The toolchain the eBPF build should use: the pinned nightly when it is
/// installed, else a plain `nightly`, else `None` (run `cargo xtask setup`).
pub fn ebpf_toolchain() -> Option<String> {
    let installed = installed_toolchains().ok()?;
    if installed.iter().any(|t| is_pinned(t)) {
        Some(PINNED_NIGHTLY.to_owned())
    } else if installed.iter().any(|t| is_plain_nightly(t)) {
        Some("nightly".to_owned())
    } else {
        None
    }
}

/// Names printed by `rustup toolchain list`, with markers like "(default)" removed.
pub fn installed_toolchains() -> std::io::Result<Vec<String>> {
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "`rustup toolchain list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// The LLVM major version that `rustc -vV` of `toolchain` reports.
pub fn llvm_major(toolchain: &str) -> Option<u32> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-vV"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version: "))
        .and_then(|version| version.split('.').next())
        .and_then(|major| major.trim().parse().ok())
}

/// Whether a listed name is the pinned nightly (rustup appends the host triple).
pub fn is_pinned(listed: &str) -> bool {
    listed == PINNED_NIGHTLY
        || listed
            .strip_prefix(PINNED_NIGHTLY)
            .is_some_and(|rest| rest.starts_with('-'))
}

/// Whether a listed name is the moving `nightly` channel rather than a dated one.
pub fn is_plain_nightly(listed: &str) -> bool {
    listed == "nightly"
        || listed
            .strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::{PINNED_NIGHTLY, is_pinned, is_plain_nightly};

    #[test]
    fn listed_names_are_told_apart() {
        let host = "x86_64-unknown-linux-gnu";
        assert!(is_pinned(PINNED_NIGHTLY));
        assert!(is_pinned(&format!("{PINNED_NIGHTLY}-{host}")));
        assert!(!is_pinned(&format!("{PINNED_NIGHTLY}0-{host}")));
        assert!(is_plain_nightly("nightly"));
        assert!(is_plain_nightly(&format!("nightly-{host}")));
        assert!(!is_plain_nightly(&format!("{PINNED_NIGHTLY}-{host}")));
        assert!(!is_plain_nightly(&format!("stable-{host}")));
    }
}
