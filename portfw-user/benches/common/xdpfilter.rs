//! xdp-filter (from xdp-tools) as a peer: loaded in deny mode on a lab interface with the
//! ports to let through, opened from its pin for BPF_PROG_TEST_RUN, and unloaded on drop.
//!
//! It is loaded with `LIBXDP_SKIP_DISPATCHER=1`, so its own program sits on the interface
//! without libxdp's dispatcher in front: the cheapest form of xdp-filter, and one that
//! BPF_PROG_TEST_RUN can run directly.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::programs::Xdp;
use aya_obj::programs::XdpAttachType;
use portfw_lab::{Lab, Side};

/// Where xdp-filter pins its maps and programs; one tree for the whole machine.
pub const PIN_ROOT: &str = "/sys/fs/bpf/xdp-filter";

/// xdp-filter loads on lab interfaces, undone on drop.
pub struct XdpFilter {
    /// (network namespace path, interface) of each load.
    loaded: Vec<(PathBuf, String)>,
}

fn nsenter(netns: &Path) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display()))
        .arg("--")
        .env("LIBXDP_SKIP_DISPATCHER", "1")
        .stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("could not start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl XdpFilter {
    /// Refuses when xdp-filter is already in use on this machine: its pins are global, and
    /// unloading ours could then take someone else's maps.
    pub fn new() -> Result<Self> {
        ensure!(
            !Path::new(PIN_ROOT).exists(),
            "{PIN_ROOT} exists: xdp-filter is in use on this machine; unload it first (`xdp-filter unload --all` \
             where it runs), or, if a killed benchmark left it behind, remove it (`rm -r {PIN_ROOT}`)"
        );
        Ok(Self { loaded: Vec::new() })
    }

    /// `xdp-filter version x using libbpf y`.
    pub fn version() -> String {
        Command::new("xdp-filter")
            .args(["load", "--version"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// Loads xdp-filter in deny mode (listed ports pass, all else drops) with `features`
    /// (`tcp,udp`, `tcp`, ...) in `mode` (`native` or `skb`) on `iface` of the side's
    /// namespace. Every load must be in one namespace: xdp-filter removes the pins of
    /// interfaces it cannot see.
    pub fn load(
        &mut self,
        lab: &Lab,
        side: Side,
        iface: &str,
        features: &str,
        mode: &str,
    ) -> Result<()> {
        let netns = lab.netns_path(side);
        let iface = iface.to_owned();
        run(nsenter(&netns).args([
            "xdp-filter",
            "load",
            "--policy",
            "deny",
            "--features",
            features,
            "--mode",
            mode,
            &iface,
        ]))
        .context("loading xdp-filter")?;
        self.loaded.push((netns, iface));
        Ok(())
    }

    /// Lets `tcp` and `udp` destination ports through (one `xdp-filter port` per port, as a
    /// user would).
    pub fn allow_ports(&self, lab: &Lab, side: Side, tcp: &[u16], udp: &[u16]) -> Result<()> {
        let netns = lab.netns_path(side);
        let mut all: Vec<(u16, &str)> = Vec::new();
        for &p in tcp {
            all.push((p, if udp.contains(&p) { "tcp,udp" } else { "tcp" }));
        }
        for &p in udp.iter().filter(|p| !tcp.contains(p)) {
            all.push((p, "udp"));
        }
        for (port, proto) in all {
            run(nsenter(&netns).args([
                "xdp-filter",
                "port",
                "--mode",
                "dst",
                "--proto",
                proto,
                &port.to_string(),
            ]))
            .with_context(|| format!("adding port {port}/{proto} to xdp-filter"))?;
        }
        Ok(())
    }

    /// The program xdp-filter runs on `iface`, opened from its pin.
    pub fn program(&self, iface: &str) -> Result<(String, Xdp)> {
        let dir = Path::new(PIN_ROOT).join("programs").join(iface);
        let pin = fs::read_dir(&dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .next()
            .with_context(|| format!("no program pinned in {}", dir.display()))?;
        let name = pin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let program = Xdp::from_pin(&pin, XdpAttachType::Interface)
            .with_context(|| format!("opening {}", pin.display()))?;
        Ok((name, program))
    }

    /// Unloads from `iface` of the side's namespace.
    pub fn unload(&mut self, lab: &Lab, side: Side, iface: &str) -> Result<()> {
        let netns = lab.netns_path(side);
        let iface = iface.to_owned();
        self.loaded.retain(|(n, i)| !(n == &netns && i == &iface));
        run(nsenter(&netns).args(["xdp-filter", "unload", &iface]))
            .context("unloading xdp-filter")
            .map(drop)
    }
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        for (netns, iface) in std::mem::take(&mut self.loaded) {
            if let Err(e) = run(nsenter(&netns).args(["xdp-filter", "unload", &iface])) {
                eprintln!("bench: unloading xdp-filter from {iface}: {e:#}");
            }
        }
        // The last unload removes the tree; one left behind by a failed unload is ours (new()
        // refused to start when it existed).
        if Path::new(PIN_ROOT).exists()
            && let Err(e) = fs::remove_dir_all(PIN_ROOT)
        {
            eprintln!("bench: removing {PIN_ROOT}: {e}");
        }
    }
}
