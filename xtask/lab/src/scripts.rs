//! The python helpers of `xtask/lab/` as lab methods: the responder, the probe, and the
//! senders and sniffers of tagged and crafted frames.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{ChildId, Lab, PYTHON, Side};

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

/// Path of a helper script of the lab (`xtask/lab/NAME`), which sits next to this crate's
/// manifest.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

impl Lab {
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
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
