//! `cargo xtask fuzz`: a long differential run of the kernel program against the reference
//! classifier (`portfw-user/tests/differential.rs`), in a release build.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    setup,
    util::{self, run_checked, run_stages},
};

/// Setup, then the differential test with `packets` frames from `seed` (the test's own
/// default seed when `None`), its output shown as it runs.
pub fn run(packets: u64, seed: Option<u64>) -> Result<()> {
    util::require_root("fuzz")?;
    if packets == 0 {
        bail!("--packets must be at least 1");
    }
    run_stages(
        "fuzz",
        vec![
            ("setup", Box::new(|| setup::run(setup::Mode::Install))),
            (
                "differential",
                Box::new(move || {
                    let mut cmd = Command::new(util::cargo());
                    cmd.args([
                        "test",
                        "--release",
                        "-p",
                        "portfw-user",
                        "--test",
                        "differential",
                        "--",
                        "--nocapture",
                    ])
                    .env("PORTFW_FUZZ_PACKETS", packets.to_string())
                    .current_dir(util::workspace_root());
                    if let Some(seed) = seed {
                        cmd.env("PORTFW_FUZZ_SEED", format!("{seed:#x}"));
                    }
                    run_checked(&mut cmd)
                }),
            ),
        ],
    )
}

/// A seed as typed: decimal, or hexadecimal with `0x` (as failures print it); `_` allowed.
pub fn parse_seed(text: &str) -> Result<u64, String> {
    let digits = text.trim().replace('_', "");
    let parsed = match digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => digits.parse(),
    };
    parsed.map_err(|_| format!("`{text}` is not a seed: expected a decimal or 0x-hex u64"))
}

#[cfg(test)]
mod tests {
    use super::parse_seed;

    #[test]
    fn seeds_read_as_printed() {
        assert_eq!(
            parse_seed("0x7066_7734_f022_0001"),
            Ok(0x7066_7734_f022_0001)
        );
        assert_eq!(parse_seed("42"), Ok(42));
        assert_eq!(parse_seed("0XfF"), Ok(255));
        assert!(parse_seed("seven").is_err());
        assert!(parse_seed("0x1_0000_0000_0000_0000").is_err());
    }
}
