//! A router lab: the two-namespace lab with a third namespace, a LAN, behind its server. The
//! server forwards between the LAN and its own interface to the client and masquerades the
//! LAN out of that interface with nftables, as a home or edge router does: the server is the
//! router, its lab interface the WAN side, and the client the remote host, which has no route
//! to the LAN. Torn down on drop, the LAN with the rest.

use std::{
    ffi::{OsStr, OsString},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    ops::{Deref, DerefMut},
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    Lab, Probe, Proto, Side,
    lab::{QUIET_IPV6, netns_path, remove_namespaces},
    process::{ip, ip_batch},
    scripts::{probe_args, run_probe},
};

/// nftables table the router masquerades with.
const NAT_TABLE: &str = "portfw_lab_nat";

/// A [`Lab`] whose server routes and masquerades a LAN namespace out of its interface.
pub struct RouterLab {
    lab: Lab,
    lan_ns: String,
    /// In the LAN namespace.
    lan_iface: String,
    /// The router's side of the LAN link, in the server namespace.
    router_lan_iface: String,
    lan_v4: Ipv4Addr,
    router_lan_v4: Ipv4Addr,
    lan_v6: Ipv6Addr,
    router_lan_v6: Ipv6Addr,
}

impl RouterLab {
    /// A fresh router lab. The LAN is 198.19.X.0/24 and 2001:2:0:1XX::/64 (X the lab's
    /// subnet), the router .1 and ::1 on it, the LAN host .2 and ::2 with its default routes
    /// through the router.
    pub fn new(tag: &str) -> Result<RouterLab> {
        let lab = Lab::new(tag)?;
        let x = lab.server_v4().octets()[2];
        let base = lab
            .server_ns()
            .strip_suffix("-srv")
            .context("lab namespace names end in -srv")?
            .to_owned();
        let lan = RouterLab {
            lan_ns: format!("{base}-lan"),
            lan_iface: format!("{}l", lab.server_iface()),
            router_lan_iface: format!("{}r", lab.server_iface()),
            lan_v4: Ipv4Addr::new(198, 19, x, 2),
            router_lan_v4: Ipv4Addr::new(198, 19, x, 1),
            lan_v6: Ipv6Addr::new(0x2001, 2, 0, 0x100 | u16::from(x), 0, 0, 0, 2),
            router_lan_v6: Ipv6Addr::new(0x2001, 2, 0, 0x100 | u16::from(x), 0, 0, 0, 1),
            lab,
        };
        // From here on, a failure drops `lan`, which removes whatever was made.
        if netns_path(&lan.lan_ns).exists() {
            remove_namespaces(&[&lan.lan_ns]);
        }
        ip(&["netns", "add", &lan.lan_ns])?;
        let mut sysctl = vec!["sysctl", "-q", "-w"];
        sysctl.extend_from_slice(&QUIET_IPV6);
        lan.run_lan(&sysctl)?;
        ip(&[
            "link",
            "add",
            &lan.router_lan_iface,
            "netns",
            lan.lab.server_ns(),
            "type",
            "veth",
            "peer",
            "name",
            &lan.lan_iface,
            "netns",
            &lan.lan_ns,
        ])?;
        ip_batch(
            &lan.lan_ns,
            &format!(
                "link set lo up\n\
                 link set {iface} up\n\
                 addr add {v4}/24 dev {iface}\n\
                 addr add {v6}/64 dev {iface} nodad\n\
                 route add default via {gw4}\n\
                 route add ::/0 via {gw6}\n",
                iface = lan.lan_iface,
                v4 = lan.lan_v4,
                v6 = lan.lan_v6,
                gw4 = lan.router_lan_v4,
                gw6 = lan.router_lan_v6,
            ),
        )?;
        ip_batch(
            lan.lab.server_ns(),
            &format!(
                "link set {iface} up\n\
                 addr add {v4}/24 dev {iface}\n\
                 addr add {v6}/64 dev {iface} nodad\n",
                iface = lan.router_lan_iface,
                v4 = lan.router_lan_v4,
                v6 = lan.router_lan_v6,
            ),
        )?;
        lan.lab.run(
            Side::Server,
            [
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
            ],
        )?;
        let wan = lan.lab.server_iface().to_owned();
        for rule in [
            vec!["add", "table", "inet", NAT_TABLE],
            vec![
                "add",
                "chain",
                "inet",
                NAT_TABLE,
                "postrouting",
                "{ type nat hook postrouting priority srcnat ; policy accept ; }",
            ],
            vec![
                "add",
                "rule",
                "inet",
                NAT_TABLE,
                "postrouting",
                "oifname",
                &wan,
                "masquerade",
            ],
        ] {
            let mut args = vec!["nft"];
            args.extend(rule);
            lan.lab
                .run(Side::Server, args)
                .context("masquerading the LAN (nftables)")?;
        }
        lan.wait_ready()?;
        Ok(lan)
    }

    /// Bounded wait until the LAN reaches the remote in both families, through the router.
    fn wait_ready(&self) -> Result<()> {
        for target in [
            IpAddr::V4(self.lab.client_v4()),
            IpAddr::V6(self.lab.client_v6()),
        ] {
            let target = target.to_string();
            let mut last = String::new();
            let ready = (0..20).any(|_| {
                match self
                    .lan(["ping", "-n", "-q", "-c", "1", "-W", "1", &target])
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
                        last = format!("could not run ping ({err})");
                        false
                    }
                }
            });
            if !ready {
                bail!(
                    "router lab {}: {target} does not answer ping from the LAN: {last}",
                    self.lan_ns
                );
            }
        }
        Ok(())
    }

    /// A command that runs `args` inside the LAN namespace.
    pub fn lan<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("nsenter");
        let mut net = OsString::from("--net=");
        net.push(netns_path(&self.lan_ns));
        cmd.arg(net).arg("--").args(args);
        cmd
    }

    fn run_lan(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.lan(args);
        crate::process::output_checked(cmd.stdin(Stdio::null()))
    }

    /// [`Lab::probe`] from the LAN host.
    pub fn lan_probe(
        &self,
        proto: Proto,
        ip: IpAddr,
        port: u16,
        timeout: Duration,
    ) -> Result<Probe> {
        run_probe(
            self.lan(probe_args(proto, ip, port, timeout)),
            "the LAN",
            proto,
            ip,
            port,
        )
    }

    pub fn lan_ns(&self) -> &str {
        &self.lan_ns
    }

    /// `/run/netns/NAME` of the LAN namespace.
    pub fn lan_netns_path(&self) -> std::path::PathBuf {
        netns_path(&self.lan_ns)
    }

    pub fn lan_iface(&self) -> &str {
        &self.lan_iface
    }

    pub fn router_lan_iface(&self) -> &str {
        &self.router_lan_iface
    }

    pub fn lan_v4(&self) -> Ipv4Addr {
        self.lan_v4
    }

    pub fn lan_v6(&self) -> Ipv6Addr {
        self.lan_v6
    }

    pub fn router_lan_v4(&self) -> Ipv4Addr {
        self.router_lan_v4
    }

    pub fn router_lan_v6(&self) -> Ipv6Addr {
        self.router_lan_v6
    }
}

/// The router lab is a lab: its server is the router, its client the remote.
impl Deref for RouterLab {
    type Target = Lab;

    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl DerefMut for RouterLab {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

impl Drop for RouterLab {
    fn drop(&mut self) {
        // The LAN first (its processes, then the namespace, which takes the veth with it);
        // the lab's own teardown follows when `lab` drops.
        for err in remove_namespaces(&[&self.lan_ns]) {
            eprintln!("router lab {}: teardown: {err}", self.lan_ns);
        }
    }
}
