//! The lab itself: two network namespaces joined by a veth pair, their addresses, and their
//! teardown with whatever portfw left pinned for them.

use std::{
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use portfw_common::{PIN_ROOT, STATE_ROOT};

use crate::{
    NETNS_DIR,
    process::{ip, ip_batch, output_checked},
};

/// Makes names and subnets unique among the labs of one process.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// One end of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// The namespaces, veth pair and addresses of one lab, torn down on drop.
pub struct Lab {
    pub(crate) server_ns: String,
    pub(crate) client_ns: String,
    pub(crate) server_iface: String,
    pub(crate) client_iface: String,
    pub(crate) server_mac: String,
    pub(crate) client_mac: String,
    pub(crate) server_v4: Ipv4Addr,
    pub(crate) client_v4: Ipv4Addr,
    pub(crate) server_v6: Ipv6Addr,
    pub(crate) client_v6: Ipv6Addr,
    pub(crate) server_netns_inode: u64,
    pub(crate) children: Vec<Option<Child>>,
    /// Set for `cargo xtask lab up`: leave the namespaces behind on drop.
    pub(crate) keep: bool,
}

impl Lab {
    /// A fresh lab with names unique to this process and `tag`, and its own subnet.
    pub fn new(tag: &str) -> Result<Lab> {
        Self::build(tag, None)
    }

    /// Like [`Lab::new`] with a chosen subnet: 198.18.`subnet`.0/24 and 2001:2:0:`subnet`::/64.
    pub fn with_subnet(tag: &str, subnet: u8) -> Result<Lab> {
        Self::build(tag, Some(subnet))
    }

    fn build(tag: &str, subnet: Option<u8>) -> Result<Lab> {
        if tag.is_empty()
            || !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            bail!("lab tag {tag:?} must be non-empty ASCII letters, digits, '-' or '_'");
        }
        let pid = std::process::id();
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("pfw-{tag}-{pid}-{n}");
        // Interface names are limited to 15 bytes; the veths are created
        // directly inside the namespaces, so they only need to be unique there,
        // but distinct names keep captures and logs readable.
        let short = format!("pf{}", pid % 100_000);
        let subnet =
            subnet.unwrap_or_else(|| (pid.wrapping_mul(7).wrapping_add(n) % 255 + 1) as u8);
        let spec = Spec {
            server_ns: format!("{base}-srv"),
            client_ns: format!("{base}-cli"),
            server_iface: format!("{short}s{}", n % 10_000),
            client_iface: format!("{short}c{}", n % 10_000),
            subnet,
        };
        // Same pid and counter means a leftover from a dead process whose pid we reuse.
        for ns in [&spec.server_ns, &spec.client_ns] {
            if netns_path(ns).exists() {
                remove_namespaces(&[ns.as_str()]);
            }
        }
        Self::create(spec, false)
    }

    /// The long-lived lab of `cargo xtask lab up`: namespaces `NAME-srv` and
    /// `NAME-cli`, interfaces `veth-srv` and `veth-cli`, subnet 0. It stays after drop.
    pub fn persistent(name: &str) -> Result<Lab> {
        let spec = Spec {
            server_ns: format!("{name}-srv"),
            client_ns: format!("{name}-cli"),
            server_iface: "veth-srv".to_owned(),
            client_iface: "veth-cli".to_owned(),
            subnet: 0,
        };
        for ns in [&spec.server_ns, &spec.client_ns] {
            if netns_path(ns).exists() {
                bail!(
                    "network namespace {ns} already exists; remove the old lab first \
                     (`cargo xtask lab down` for pfw-lab)"
                );
            }
        }
        Self::create(spec, true)
    }

    /// Removes a lab made by [`Lab::persistent`]: its processes, pins and
    /// namespaces. Returns false if there was nothing to remove.
    pub fn remove_persistent(name: &str) -> Result<bool> {
        let server = format!("{name}-srv");
        let client = format!("{name}-cli");
        let existed = netns_path(&server).exists() || netns_path(&client).exists();
        let errors = remove_namespaces(&[&server, &client]);
        if errors.is_empty() {
            Ok(existed)
        } else {
            bail!("removing lab {name}: {}", errors.join("; "))
        }
    }

    /// Removes `PREFIX*-<pid>-<n>-srv|cli` namespaces whose creating process is
    /// gone, left behind by crashed runs. Returns how many namespaces went.
    pub fn cleanup_stale(prefix: &str) -> Result<usize> {
        let entries = match fs::read_dir(NETNS_DIR) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err).with_context(|| format!("listing {NETNS_DIR}")),
        };
        let me = std::process::id();
        let mut stale = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {NETNS_DIR}"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(prefix) {
                continue;
            }
            let Some(pid) = creator_pid(&name) else {
                continue;
            };
            if pid != me && !Path::new(&format!("/proc/{pid}")).exists() {
                stale.push(name);
            }
        }
        let names: Vec<&str> = stale.iter().map(String::as_str).collect();
        for err in remove_namespaces(&names) {
            eprintln!("lab: cleaning stale namespaces: {err}");
        }
        Ok(stale.len())
    }

    fn create(spec: Spec, keep: bool) -> Result<Lab> {
        let x = spec.subnet;
        let mut lab = Lab {
            server_mac: format!("02:70:66:{x:02x}:00:01"),
            client_mac: format!("02:70:66:{x:02x}:00:02"),
            server_v4: Ipv4Addr::new(198, 18, x, 1),
            client_v4: Ipv4Addr::new(198, 18, x, 2),
            server_v6: Ipv6Addr::new(0x2001, 2, 0, x.into(), 0, 0, 0, 1),
            client_v6: Ipv6Addr::new(0x2001, 2, 0, x.into(), 0, 0, 0, 2),
            server_ns: spec.server_ns,
            client_ns: spec.client_ns,
            server_iface: spec.server_iface,
            client_iface: spec.client_iface,
            server_netns_inode: 0,
            children: Vec::new(),
            // Until it is complete, a failed lab must clean up after itself.
            keep: false,
        };
        ip(&["netns", "add", &lab.server_ns])?;
        lab.server_netns_inode = netns_inode(&lab.server_ns)?;
        // A dead namespace may have had the same inode and left pins behind.
        remove_pins(lab.server_netns_inode)?;
        ip(&["netns", "add", &lab.client_ns])?;
        for side in [Side::Server, Side::Client] {
            // Before the veth exists, so the new interfaces inherit the defaults:
            // no DAD (addresses usable at once) and no router solicitations or
            // RA handling, which would only add noise to captures.
            lab.run(
                side,
                [
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv6.conf.all.accept_dad=0",
                    "net.ipv6.conf.default.accept_dad=0",
                    "net.ipv6.conf.all.router_solicitations=0",
                    "net.ipv6.conf.default.router_solicitations=0",
                    "net.ipv6.conf.all.accept_ra=0",
                    "net.ipv6.conf.default.accept_ra=0",
                ],
            )?;
        }
        ip(&[
            "link",
            "add",
            &lab.server_iface,
            "address",
            &lab.server_mac,
            "netns",
            &lab.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &lab.client_iface,
            "address",
            &lab.client_mac,
            "netns",
            &lab.client_ns,
        ])?;
        for side in [Side::Server, Side::Client] {
            let (iface, v4, v6) = match side {
                Side::Server => (&lab.server_iface, lab.server_v4, lab.server_v6),
                Side::Client => (&lab.client_iface, lab.client_v4, lab.client_v6),
            };
            let batch = format!(
                "link set lo up\n\
                 link set {iface} up\n\
                 addr add {v4}/24 dev {iface}\n\
                 addr add {v6}/64 dev {iface} nodad\n"
            );
            ip_batch(lab.ns(side), &batch)?;
        }
        lab.wait_ready()?;
        lab.keep = keep;
        Ok(lab)
    }

    /// Bounded wait until both address families answer across the veth.
    fn wait_ready(&self) -> Result<()> {
        for target in [IpAddr::V4(self.server_v4), IpAddr::V6(self.server_v6)] {
            let target = target.to_string();
            let mut last = String::new();
            let ready = (0..20).any(|_| {
                match self
                    .client(["ping", "-n", "-q", "-c", "1", "-W", "1", &target])
                    .stdin(Stdio::null())
                    .output()
                {
                    Ok(out) if out.status.success() => true,
                    Ok(out) => {
                        last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
                        thread::sleep(Duration::from_millis(100));
                        false
                    }
                    Err(err) => {
                        last = format!("could not run ping ({err}); run `cargo xtask setup`");
                        false
                    }
                }
            });
            if !ready {
                bail!(
                    "lab {}: {target} does not answer ping from the client: {last}",
                    self.server_ns
                );
            }
        }
        Ok(())
    }

    pub fn server_ns(&self) -> &str {
        &self.server_ns
    }

    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }

    pub fn ns(&self, side: Side) -> &str {
        match side {
            Side::Server => &self.server_ns,
            Side::Client => &self.client_ns,
        }
    }

    pub fn server_iface(&self) -> &str {
        &self.server_iface
    }

    pub fn client_iface(&self) -> &str {
        &self.client_iface
    }

    pub fn iface(&self, side: Side) -> &str {
        match side {
            Side::Server => &self.server_iface,
            Side::Client => &self.client_iface,
        }
    }

    /// MAC address of the side's veth, fixed at creation ("02:70:66:XX:00:0N").
    pub fn mac(&self, side: Side) -> &str {
        match side {
            Side::Server => &self.server_mac,
            Side::Client => &self.client_mac,
        }
    }

    pub fn server_v4(&self) -> Ipv4Addr {
        self.server_v4
    }

    pub fn client_v4(&self) -> Ipv4Addr {
        self.client_v4
    }

    pub fn server_v6(&self) -> Ipv6Addr {
        self.server_v6
    }

    pub fn client_v6(&self) -> Ipv6Addr {
        self.client_v6
    }

    /// `/run/netns/NAME`, the handle to give `nsenter --net=`.
    pub fn netns_path(&self, side: Side) -> PathBuf {
        netns_path(self.ns(side))
    }

    /// Inode of the server namespace, which names portfw's pin directory.
    pub fn server_netns_inode(&self) -> u64 {
        self.server_netns_inode
    }

    /// `/sys/fs/bpf/portfw/<server netns inode>`.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(PIN_ROOT).join(self.server_netns_inode.to_string())
    }

    /// Tears the lab down now and reports what failed (drop only logs it).
    pub fn close(mut self) -> Result<()> {
        let errors = self.teardown();
        // Everything is gone already; drop must not try again.
        self.keep = true;
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("tearing down lab {}: {}", self.server_ns, errors.join("; "))
        }
    }

    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        for child in self.children.iter_mut().filter_map(Option::take) {
            let mut child = child;
            // Fails only if the child already exited; wait reaps it either way.
            let _ = child.kill();
            if let Err(err) = child.wait() {
                errors.push(format!("waiting for process {}: {err}", child.id()));
            }
        }
        if !self.keep {
            errors.extend(remove_namespaces(&[&self.server_ns, &self.client_ns]));
        }
        errors
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for err in self.teardown() {
            eprintln!("lab {}: teardown: {err}", self.server_ns);
        }
    }
}

/// Names and subnet of a lab about to be created.
struct Spec {
    server_ns: String,
    client_ns: String,
    server_iface: String,
    client_iface: String,
    subnet: u8,
}

fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn netns_inode(name: &str) -> Result<u64> {
    let path = netns_path(name);
    Ok(fs::metadata(&path)
        .with_context(|| format!("reading {}", path.display()))?
        .ino())
}

/// The pid in `…-<pid>-<n>-srv` / `…-<pid>-<n>-cli`.
fn creator_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_suffix("-srv")
        .or_else(|| name.strip_suffix("-cli"))?;
    let mut parts = rest.rsplitn(3, '-');
    let _n: u32 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}

fn remove_pins(inode: u64) -> Result<()> {
    let dir = Path::new(PIN_ROOT).join(inode.to_string());
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| format!("removing pins in {}", dir.display()));
        }
    }
    // Namespace inodes are reused: a stale record would describe the next namespace.
    for ext in ["json", "lock"] {
        let file = Path::new(STATE_ROOT).join(format!("{inode}.{ext}"));
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err).with_context(|| format!("removing {}", file.display())),
        }
    }
    Ok(())
}

/// Kills what still runs in each namespace, removes its portfw pins and deletes
/// it (which also deletes the veth). Never panics; returns what went wrong.
fn remove_namespaces(names: &[&str]) -> Vec<String> {
    let mut errors = Vec::new();
    for name in names {
        if !netns_path(name).exists() {
            continue;
        }
        // Processes not spawned through the lab would keep the namespace alive
        // after its name is gone.
        match output_checked(Command::new("ip").args(["netns", "pids", name])) {
            Ok(pids) => {
                let pids: Vec<&str> = pids.split_whitespace().collect();
                if !pids.is_empty()
                    && let Err(err) = output_checked(Command::new("kill").arg("-KILL").args(&pids))
                {
                    errors.push(format!("killing processes in {name}: {err:#}"));
                }
            }
            Err(err) => errors.push(format!("listing processes in {name}: {err:#}")),
        }
        match netns_inode(name) {
            Ok(inode) => {
                if let Err(err) = remove_pins(inode) {
                    errors.push(format!("{err:#}"));
                }
            }
            Err(err) => errors.push(format!("{err:#}")),
        }
        if let Err(err) = ip(&["netns", "delete", name]) {
            errors.push(format!("{err:#}"));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::creator_pid;

    #[test]
    fn creator_pid_parses_lab_names() {
        assert_eq!(creator_pid("pfw-demo-123-4-srv"), Some(123));
        assert_eq!(creator_pid("pfw-a-b-77-0-cli"), Some(77));
        assert_eq!(creator_pid("pfw-lab-srv"), None);
        assert_eq!(creator_pid("pfw-x-1-srv"), None);
    }
}
