//! A two-namespace network lab (server and client joined by a veth pair) for tests and the demo; std + anyhow only.

// Integration tests include it with `#[path = "../../xtask/src/lab.rs"] mod lab;`.
// Every command that runs inside a namespace goes through `nsenter --net=…`
// rather than `ip netns exec`, which remounts /sys and would hide the host's
// bpffs, where portfw pins its maps.

// Each includer uses a different part of the API.
#![allow(dead_code, reason = "shared by xtask and several test crates")]

use std::{
    ffi::OsStr,
    fs,
    io::{self, BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// Where `ip netns add` leaves the namespace handles.
pub const NETNS_DIR: &str = "/run/netns";
/// portfw pins one directory per network namespace here, named by the namespace inode.
pub const PIN_ROOT: &str = "/sys/fs/bpf/portfw";
/// Debian's python, which has scapy; a pyenv `python3` earlier in PATH may not.
pub const PYTHON: &str = "/usr/bin/python3";

/// Makes names and subnets unique among the labs of one process.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// One end of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// Transport protocol for [`Lab::probe`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// What a connection attempt saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Connected (TCP) or got a datagram back (UDP); holds what the peer sent.
    Open(String),
    /// A TCP reset or an ICMP port unreachable: a live host with nothing listening.
    Refused,
    /// No answer at all, which is what an XDP drop looks like.
    Timeout,
}

impl Probe {
    pub fn is_open(&self) -> bool {
        matches!(self, Probe::Open(_))
    }
}

/// A process started in the lab; the lab kills it on teardown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChildId(usize);

/// Path of a helper script in `xtask/lab/`, for xtask and for test crates
/// alike: the nearest ancestor of the including crate that has `xtask/lab`.
pub fn script(name: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .ancestors()
        .find(|dir| dir.join("xtask/lab").is_dir())
        .unwrap_or(manifest);
    root.join("xtask/lab").join(name)
}

/// The namespaces, veth pair and addresses of one lab, torn down on drop.
pub struct Lab {
    server_ns: String,
    client_ns: String,
    server_iface: String,
    client_iface: String,
    server_mac: String,
    client_mac: String,
    server_v4: Ipv4Addr,
    client_v4: Ipv4Addr,
    server_v6: Ipv6Addr,
    client_v6: Ipv6Addr,
    server_netns_inode: u64,
    children: Vec<Option<Child>>,
    /// Set for `cargo xtask lab up`: leave the namespaces behind on drop.
    keep: bool,
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

    /// A command that runs `args` inside the side's namespace.
    pub fn command<I, S>(&self, side: Side, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("nsenter");
        let mut net = std::ffi::OsString::from("--net=");
        net.push(self.netns_path(side));
        cmd.arg(net).arg("--").args(args);
        cmd
    }

    pub fn server<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(Side::Server, args)
    }

    pub fn client<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command(Side::Client, args)
    }

    /// Runs `args` in the side's namespace to completion and returns its stdout;
    /// fails with the command line and its stderr unless it exits 0.
    pub fn run<I, S>(&self, side: Side, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(side, args);
        output_checked(cmd.stdin(Stdio::null()))
    }

    /// Starts `cmd` (usually from [`Lab::command`]) and keeps it for teardown.
    pub fn spawn(&mut self, mut cmd: Command) -> Result<ChildId> {
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start `{}`", show(&cmd)))?;
        self.children.push(Some(child));
        Ok(ChildId(self.children.len() - 1))
    }

    /// Starts `args` in the server namespace with stdin closed and output inherited.
    pub fn spawn_server<I, S>(&mut self, args: I) -> Result<ChildId>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.server(args);
        cmd.stdin(Stdio::null());
        self.spawn(cmd)
    }

    /// Starts `args` in the client namespace with stdin closed and output inherited.
    pub fn spawn_client<I, S>(&mut self, args: I) -> Result<ChildId>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.client(args);
        cmd.stdin(Stdio::null());
        self.spawn(cmd)
    }

    /// Starts `cmd` and waits until it prints the line `marker` on stdout. The
    /// rest of its stdout is drained in the background and discarded.
    pub fn spawn_ready(
        &mut self,
        mut cmd: Command,
        marker: &str,
        timeout: Duration,
    ) -> Result<ChildId> {
        let shown = show(&cmd);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let id = self.spawn(cmd)?;
        let stdout = self
            .child_mut(id)
            .and_then(|child| child.stdout.take())
            .with_context(|| format!("no stdout pipe for `{shown}`"))?;
        let (tx, rx) = mpsc::channel();
        let marker_owned = marker.to_owned();
        thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.trim() == marker_owned
                    && let Some(tx) = tx.take()
                {
                    // The receiver may have given up already; nothing to do then.
                    let _ = tx.send(());
                }
            }
        });
        match rx.recv_timeout(timeout) {
            Ok(()) => Ok(id),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.kill(id);
                bail!("`{shown}` did not print `{marker}` within {timeout:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = self.kill(id);
                bail!("`{shown}` ended ({status}) before printing `{marker}`")
            }
        }
    }

    /// Starts `xtask/lab/responder.py` in the server namespace on these ports
    /// (IPv4 and IPv6) and returns once it listens on all of them.
    pub fn start_responder(&mut self, tcp: &[u16], udp: &[u16]) -> Result<ChildId> {
        let mut args = vec![
            PYTHON.to_owned(),
            script("responder.py").display().to_string(),
        ];
        if !tcp.is_empty() {
            args.push("--tcp".to_owned());
            args.push(join_ports(tcp));
        }
        if !udp.is_empty() {
            args.push("--udp".to_owned());
            args.push(join_ports(udp));
        }
        let cmd = self.server(&args);
        self.spawn_ready(cmd, "ready", Duration::from_secs(10))
            .context("starting the responder")
    }

    /// Starts `xtask/lab/vlan_probe.py sniff` on the server interface, writing what it
    /// captures to `out`; returns once it listens. It exits after `count` TCP/UDP frames or
    /// `timeout`.
    pub fn start_vlan_sniffer(
        &mut self,
        out: &Path,
        timeout: Duration,
        count: u32,
    ) -> Result<ChildId> {
        self.start_sniffer(
            "vlan_probe.py",
            out,
            &[
                "--timeout".to_owned(),
                timeout.as_secs().to_string(),
                "--count".to_owned(),
                count.to_string(),
            ],
        )
        .context("starting the VLAN sniffer")
    }

    /// Starts `xtask/lab/SCRIPT sniff --iface <server iface> --out OUT EXTRA...` in the server
    /// namespace and returns once it prints `ready`.
    fn start_sniffer(
        &mut self,
        script_name: &str,
        out: &Path,
        extra: &[String],
    ) -> Result<ChildId> {
        let mut args = vec![
            PYTHON.to_owned(),
            script(script_name).display().to_string(),
            "sniff".to_owned(),
            "--iface".to_owned(),
            self.server_iface.clone(),
            "--out".to_owned(),
            out.display().to_string(),
        ];
        args.extend_from_slice(extra);
        let cmd = self.server(args);
        self.spawn_ready(cmd, "ready", Duration::from_secs(20))
    }

    /// Sends one VLAN-tagged TCP SYN or UDP datagram from the client to the server with
    /// `xtask/lab/vlan_probe.py send` over a packet socket. `vlans` is `"10"` for one
    /// 802.1Q tag or `"100,200"` for an 802.1ad outer tag around an 802.1Q one.
    pub fn send_tagged(&self, vlans: &str, v6: bool, proto: Proto, port: u16) -> Result<()> {
        let (src, dst) = if v6 {
            (self.client_v6.to_string(), self.server_v6.to_string())
        } else {
            (self.client_v4.to_string(), self.server_v4.to_string())
        };
        let proto = match proto {
            Proto::Tcp => "--tcp",
            Proto::Udp => "--udp",
        };
        self.run(
            Side::Client,
            [
                PYTHON,
                &script("vlan_probe.py").display().to_string(),
                "send",
                "--iface",
                &self.client_iface,
                "--src-mac",
                &self.client_mac,
                "--dst-mac",
                &self.server_mac,
                "--src",
                &src,
                "--dst",
                &dst,
                "--vlans",
                vlans,
                proto,
                &port.to_string(),
            ],
        )
        .map(drop)
        .context("sending a tagged frame")
    }

    /// Starts `xtask/lab/craft.py sniff` on the server interface, recording every frame that
    /// arrives (in hex) to `out`; returns once it listens. It exits when the end marker of
    /// [`Lab::send_crafted`] arrives, or after `timeout`.
    pub fn start_craft_sniffer(&mut self, out: &Path, timeout: Duration) -> Result<ChildId> {
        self.start_sniffer(
            "craft.py",
            out,
            &[
                "--timeout".to_owned(),
                format!("{:.1}", timeout.as_secs_f64()),
            ],
        )
        .context("starting the craft sniffer")
    }

    /// Sends every case of `xtask/lab/craft.py` from the client to the server over a packet
    /// socket, then its end marker, and writes what was sent to `manifest` (JSON).
    pub fn send_crafted(&self, manifest: &Path) -> Result<String> {
        self.run(
            Side::Client,
            [
                PYTHON,
                &script("craft.py").display().to_string(),
                "send",
                "--iface",
                &self.client_iface,
                "--src-mac",
                &self.client_mac,
                "--dst-mac",
                &self.server_mac,
                "--src4",
                &self.client_v4.to_string(),
                "--dst4",
                &self.server_v4.to_string(),
                "--src6",
                &self.client_v6.to_string(),
                "--dst6",
                &self.server_v6.to_string(),
                "--manifest",
                &manifest.display().to_string(),
            ],
        )
        .context("sending crafted frames")
    }

    /// A started child, e.g. to take its stdout pipe; `None` once it was stopped.
    pub fn child_mut(&mut self, id: ChildId) -> Option<&mut Child> {
        self.children.get_mut(id.0).and_then(Option::as_mut)
    }

    /// Sends SIGINT (so the child can flush and clean up) and waits up to
    /// `timeout` for it to exit; kills it after that and fails.
    pub fn interrupt(&mut self, id: ChildId, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.children.get_mut(id.0).and_then(Option::take) else {
            bail!("lab child {id:?} was already stopped");
        };
        let result = interrupt_and_wait(&mut child, timeout);
        if result.is_err() {
            // The child is no longer in the registry, so nothing else would reap it.
            let _ = child.kill();
            let _ = child.wait();
        }
        result
    }

    /// Waits up to `timeout` for a child to exit by itself; kills it after that and fails.
    pub fn wait(&mut self, id: ChildId, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.children.get_mut(id.0).and_then(Option::take) else {
            bail!("lab child {id:?} was already stopped");
        };
        let pid = child.id();
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                outcome => {
                    // Not in the registry any more, so nothing else would reap it.
                    let _ = child.kill();
                    let _ = child.wait();
                    return match outcome {
                        Err(err) => Err(err).context(format!("waiting for process {pid}")),
                        _ => bail!("process {pid} did not exit within {timeout:?}; killed it"),
                    };
                }
            }
        }
    }

    /// Kills a child now and reaps it; returns how it ended, for messages.
    pub fn kill(&mut self, id: ChildId) -> String {
        match self.children.get_mut(id.0).and_then(Option::take) {
            Some(mut child) => {
                // kill fails only if it already exited, which wait then reports.
                let _ = child.kill();
                match child.wait() {
                    Ok(status) => status.to_string(),
                    Err(err) => format!("wait failed: {err}"),
                }
            }
            None => "already stopped".to_owned(),
        }
    }

    /// Tries one TCP connection or UDP exchange from `from` to `ip:port` with
    /// `xtask/lab/probe.py`, and says whether it was answered, refused or met silence.
    pub fn probe(
        &self,
        from: Side,
        proto: Proto,
        ip: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> Result<Probe> {
        let proto_arg = match proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        let out = self
            .command(
                from,
                [
                    PYTHON.to_owned(),
                    script("probe.py").display().to_string(),
                    proto_arg.to_owned(),
                    ip.to_string(),
                    port.to_string(),
                    "--timeout".to_owned(),
                    format!("{:.3}", timeout.as_secs_f64()),
                ],
            )
            .stdin(Stdio::null())
            .output()
            .context("running probe.py")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let (verdict, reply) = stdout.split_once('\n').unwrap_or((&stdout, ""));
        match (out.status.success(), verdict.trim()) {
            (true, "open") => Ok(Probe::Open(reply.to_owned())),
            (true, "refused") => Ok(Probe::Refused),
            (true, "timeout") => Ok(Probe::Timeout),
            _ => bail!(
                "probe {proto_arg} {ip} port {port} from {:?} failed ({}): {}{}",
                from,
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
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

fn interrupt_and_wait(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let pid = child.id();
    if child.try_wait().context("polling a lab child")?.is_none() {
        // std has no way to send SIGINT; kill(1) keeps this module free of libc.
        output_checked(Command::new("kill").args(["-INT", &pid.to_string()]))?;
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for a lab child")? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            bail!("process {pid} did not exit within {timeout:?} of SIGINT; killing it");
        }
        thread::sleep(Duration::from_millis(20));
    }
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
pub fn creator_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_suffix("-srv")
        .or_else(|| name.strip_suffix("-cli"))?;
    let mut parts = rest.rsplitn(3, '-');
    let _n: u32 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}

/// Where portfw records what it applied in a namespace, next to its pins.
pub const STATE_ROOT: &str = "/run/portfw";

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

fn ip(args: &[&str]) -> Result<()> {
    output_checked(Command::new("ip").args(args).stdin(Stdio::null())).map(drop)
}

/// Runs several `ip` commands in one process inside `ns`.
fn ip_batch(ns: &str, batch: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("could not start `ip -batch`")?;
    child
        .stdin
        .take()
        .context("no stdin pipe for `ip -batch`")?
        .write_all(batch.as_bytes())
        .context("writing to `ip -batch`")?;
    let out = child
        .wait_with_output()
        .context("waiting for `ip -batch`")?;
    if !out.status.success() {
        bail!(
            "`ip -n {ns} -batch -` failed ({}) on:\n{batch}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs `cmd`, returns stdout, and fails with the command line and stderr unless it exits 0.
fn output_checked(cmd: &mut Command) -> Result<String> {
    let shown = show(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
