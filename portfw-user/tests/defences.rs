//! The active defences end to end, with real clients in a lab namespace that plays several
//! hosts (extra addresses on its veth, each client bound to one): nmap and python scans get
//! their source blocked until the block expires while an excepted source never is, manual
//! blocks and unblocks, a burst of connections limited per source, knock sequences (knockd's
//! `knock` and python) in order, out of order, too slow and from a bystander, a held
//! connection that outlives its door, single-packet knocks through `portfw agent` with the
//! right key, a wrong key, a replayed capture and a stale timestamp, a flood of drops whose
//! events stay few while their counts add up to the kernel's counters, and blocks, doors and
//! limits carried over a re-apply; and the kernel paths themselves through
//! BPF_PROG_TEST_RUN on the pinned program, with state seeded into its pinned maps. Every
//! scan, burst and flood is bounded in packets and time, and targets only the lab's own
//! addresses. Needs root. The tests live in `tests/defences/`, one file per defence.
mod common;

/// The tests, one module per defence; the rig they share stays here.
mod defences {
    pub mod carry;
    pub mod fixtures;
    pub mod flood;
    pub mod knock;
    pub mod limit;
    pub mod scan;
    pub mod spa;
}

use std::{
    io::Read as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Output, Stdio},
    thread,
    time::Duration,
};

pub use common::e2e::{Job, Logged, parallel, wait_for};
use common::e2e::{
    PORTFW, PolicyFile,
    lab::{ChildId, Lab, PYTHON, Side},
    portfw, root_lab, text,
};
use serde_json::Value;

/// How long a connection attempt that should be dropped waits: short of the first SYN
/// retransmission (1 s), so that a state change during the wait cannot let a retry through.
pub const SILENT: Duration = Duration::from_millis(900);
/// How long a check that should succeed may take; it returns as soon as it does.
pub const ANSWER: Duration = Duration::from_secs(4);

/// The lab, its server address, and the client's source addresses (the first is the lab's
/// own client address, then the extra ones).
pub struct Rig {
    pub lab: Lab,
    pub server: Ipv4Addr,
    pub sources: Vec<Ipv4Addr>,
}

impl Rig {
    /// A lab whose client holds `extra` more IPv4 addresses (198.18.X.10 and up).
    pub fn new(tag: &str, extra: u8) -> Rig {
        let lab = root_lab(tag);
        let server = lab.server_v4();
        let mut sources = vec![lab.client_v4()];
        let net = lab.client_v4().octets();
        for i in 0..extra {
            let addr = Ipv4Addr::new(net[0], net[1], net[2], 10 + i);
            lab.run(
                Side::Client,
                [
                    "ip",
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    lab.client_iface(),
                ],
            )
            .expect("add a client address");
            sources.push(addr);
        }
        Rig {
            lab,
            server,
            sources,
        }
    }

    pub fn server_ip(&self) -> IpAddr {
        self.server.into()
    }

    /// The server's address of `src`'s family.
    pub fn server_for(&self, src: IpAddr) -> IpAddr {
        match src {
            IpAddr::V4(_) => self.server.into(),
            IpAddr::V6(_) => self.lab.server_v6().into(),
        }
    }

    /// Three IPv6 client addresses outside the server's /64: two in one /64 (2001:2:1:X::a
    /// and ::b) and one in another (2001:2:2:X::c), reached on-link by the server.
    pub fn v6_sources(&self) -> [Ipv6Addr; 3] {
        let x = self.lab.server_v6().segments()[3];
        let a = Ipv6Addr::new(0x2001, 2, 1, x, 0, 0, 0, 0xa);
        let b = Ipv6Addr::new(0x2001, 2, 1, x, 0, 0, 0, 0xb);
        let c = Ipv6Addr::new(0x2001, 2, 2, x, 0, 0, 0, 0xc);
        for addr in [a, b, c] {
            self.lab
                .run(
                    Side::Client,
                    [
                        "ip",
                        "addr",
                        "add",
                        &format!("{addr}/64"),
                        "dev",
                        self.lab.client_iface(),
                        "nodad",
                    ],
                )
                .expect("add a client address");
        }
        for net in [
            Ipv6Addr::new(0x2001, 2, 1, x, 0, 0, 0, 0),
            Ipv6Addr::new(0x2001, 2, 2, x, 0, 0, 0, 0),
        ] {
            self.lab
                .run(
                    Side::Server,
                    [
                        "ip",
                        "-6",
                        "route",
                        "add",
                        &format!("{net}/64"),
                        "dev",
                        self.lab.server_iface(),
                    ],
                )
                .expect("route a client /64");
        }
        [a, b, c]
    }

    /// Source `i` (0: the lab's client address).
    pub fn src(&self, i: usize) -> Ipv4Addr {
        self.sources[i]
    }

    /// Makes `src` the source of the client's unbound sockets towards the server (knockd's
    /// `knock`, `portfw knock` and nmap's connect scan cannot bind an address): a host route
    /// with a preferred source, in `src`'s family.
    pub fn route_from(&self, src: impl Into<IpAddr>) {
        let src: IpAddr = src.into();
        let (family, host) = match src {
            IpAddr::V4(_) => ("-4", format!("{}/32", self.server)),
            IpAddr::V6(_) => ("-6", format!("{}/128", self.lab.server_v6())),
        };
        self.lab
            .run(
                Side::Client,
                [
                    "ip",
                    family,
                    "route",
                    "replace",
                    &host,
                    "dev",
                    self.lab.client_iface(),
                    "src",
                    &src.to_string(),
                ],
            )
            .expect("route with a preferred source");
    }

    /// `portfw status`, as text.
    pub fn status_text(&self) -> String {
        String::from_utf8_lossy(&self.portfw_ok(&["status"]).stdout).into_owned()
    }

    /// Runs `tools.py COMMAND --src SRC --dst SERVER ARGS...` in the client namespace and
    /// returns the JSON line it prints.
    pub fn tool(&self, command: &str, src: impl Into<IpAddr>, args: &[&str]) -> Value {
        let src: IpAddr = src.into();
        let dst = self.server_for(src).to_string();
        let src = src.to_string();
        let mut full = vec![
            PYTHON,
            TOOLS,
            command,
            "--src",
            src.as_str(),
            "--dst",
            dst.as_str(),
        ];
        full.extend_from_slice(args);
        let out = self
            .lab
            .client(&full)
            .stdin(Stdio::null())
            .output()
            .expect("run tools.py");
        json_line(&out, &full.join(" "))
    }

    /// Whether a TCP connection from `src` to the server's `port` completes within `wait`.
    pub fn connects(&self, src: impl Into<IpAddr>, port: u16, wait: Duration) -> bool {
        let port = port.to_string();
        let timeout = format!("{:.2}", wait.as_secs_f64());
        let seen = self.tool("scan", src, &["--ports", &port, "--timeout", &timeout]);
        seen["open"].as_array().is_some_and(|open| !open.is_empty())
    }

    /// `port` is reachable from `src` (waits up to [`ANSWER`] for it).
    pub fn reaches(&self, src: impl Into<IpAddr>, port: u16) -> bool {
        self.connects(src, port, ANSWER)
    }

    /// `port` is silent from `src` for [`SILENT`]: what a drop looks like.
    pub fn silent(&self, src: impl Into<IpAddr>, port: u16) -> bool {
        let port_text = port.to_string();
        let timeout = format!("{:.2}", SILENT.as_secs_f64());
        let seen = self.tool("scan", src, &["--ports", &port_text, "--timeout", &timeout]);
        seen["silent"].as_array().is_some_and(|s| !s.is_empty())
    }

    /// `portfw ARGS` in the server namespace.
    pub fn portfw(&self, args: &[&str]) -> Output {
        portfw(&self.lab, args)
    }

    /// `portfw ARGS`, which must exit 0.
    pub fn portfw_ok(&self, args: &[&str]) -> Output {
        let out = self.portfw(args);
        assert!(
            out.status.success(),
            "portfw {}: {}",
            args.join(" "),
            text(&out)
        );
        out
    }

    /// Applies `yaml` to the server's veth.
    pub fn apply(&self, name: &str, yaml: &str) -> PolicyFile {
        let policy = PolicyFile::new(name, yaml);
        let path = policy.path();
        self.portfw_ok(&["apply", &path, "--iface", self.lab.server_iface()]);
        policy
    }

    /// `portfw status --json`.
    pub fn status(&self) -> Value {
        let out = self.portfw_ok(&["status", "--json"]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json: {e}: {}", text(&out)))
    }

    /// Starts `args` in the server namespace with its stdout collected; returns once it
    /// printed `ready`, when `ready` is set.
    pub fn spawn_server(&mut self, args: &[&str], ready: bool) -> ChildId {
        let cmd = self.lab.server(args);
        if ready {
            self.lab
                .spawn_ready(cmd, "ready", Duration::from_secs(10))
                .expect("start a server")
        } else {
            let mut cmd = cmd;
            cmd.stdin(Stdio::null());
            self.lab.spawn(cmd).expect("start a server")
        }
    }

    /// `tools.py echo` on `port` in the server namespace.
    pub fn start_echo(&mut self, port: u16) -> ChildId {
        let port = port.to_string();
        self.spawn_server(&[PYTHON, TOOLS, "echo", "--port", &port], true)
    }
}

/// The python clients of these tests.
pub const TOOLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/defences/tools.py");

/// The last line of a helper's stdout, as JSON; fails with everything it printed otherwise.
pub fn json_line(out: &Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    match (
        out.status.success(),
        last.map(serde_json::from_str::<Value>),
    ) {
        (true, Some(Ok(value))) => value,
        _ => panic!("`{what}` printed no JSON result: {}", text(out)),
    }
}

/// The counter `name` of a `status --json` (0 when absent).
pub fn counter(status: &Value, name: &str) -> u64 {
    status["counters"]
        .as_array()
        .and_then(|c| c.iter().find(|pair| pair[0] == name))
        .and_then(|pair| pair[1].as_u64())
        .or_else(|| status["counters"][name].as_u64())
        .unwrap_or(0)
}

/// The entries of a `status --json` array (`blocks`, `doors`); fails when it is missing.
pub fn list<'a>(status: &'a Value, key: &str) -> &'a [Value] {
    status[key]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("status --json has no `{key}` array: {status:#}"))
}

/// An address as `status --json` may write it, `/32` and `/128` dropped: single addresses
/// compare equal with or without their length.
pub fn host(address: &str) -> &str {
    address
        .strip_suffix("/32")
        .or_else(|| address.strip_suffix("/128"))
        .unwrap_or(address)
}

/// The block of `address` (an address or a prefix).
pub fn block_of<'a>(status: &'a Value, address: &str) -> Option<&'a Value> {
    list(status, "blocks")
        .iter()
        .find(|b| b["address"].as_str().map(host) == Some(host(address)))
}

/// The open door `door` for `source`.
pub fn door_of<'a>(status: &'a Value, door: &str, source: &str) -> Option<&'a Value> {
    list(status, "doors")
        .iter()
        .find(|d| d["door"] == door && d["source"].as_str().map(host) == Some(host(source)))
}

/// An `expires_in` in seconds: a number, or a duration text such as `4s`, `4.2s`, `900ms`.
pub fn seconds(value: &Value) -> Option<f64> {
    if let Some(n) = value.as_f64() {
        return Some(n);
    }
    let text = value.as_str()?.trim();
    if let Some(ms) = text.strip_suffix("ms") {
        return ms.trim().parse::<f64>().ok().map(|v| v / 1e3);
    }
    if let Some(m) = text.strip_suffix('m').filter(|t| !t.ends_with('m')) {
        return m.trim().parse::<f64>().ok().map(|v| v * 60.0);
    }
    text.trim_end_matches('s').trim().parse().ok()
}

/// A started child's whole stdout, read on a thread, once the child ended.
pub struct Collected(thread::JoinHandle<String>);

impl Collected {
    /// Takes the stdout pipe of `id` (started with `Stdio::piped()`).
    pub fn take(lab: &mut Lab, id: ChildId) -> Collected {
        let mut stdout = lab
            .child_mut(id)
            .and_then(|c| c.stdout.take())
            .expect("a piped stdout");
        Collected(thread::spawn(move || {
            let mut all = String::new();
            // A reader killed mid-line leaves a partial line, which the caller skips.
            let _ = stdout.read_to_string(&mut all);
            all
        }))
    }

    pub fn text(self) -> String {
        self.0.join().unwrap_or_default()
    }
}

/// A file in a private temporary directory, removed with it on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "portfw-defences-{tag}-{}-{:?}",
            std::process::id(),
            thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `portfw` as the test binary found it, for commands run by hand.
pub fn portfw_bin() -> &'static str {
    PORTFW
}

/// The rig itself, unfiltered: every source, IPv4 and IPv6, reaches the server, so that a
/// failure in the tests above is the filter's, not the lab's.
#[test]
fn every_source_of_the_rig_reaches_the_server_unfiltered() {
    let mut rig = Rig::new("df-rig", 3);
    rig.lab.start_responder(&[22], &[]).expect("responder");
    let v6 = rig.v6_sources();
    let mut sources: Vec<IpAddr> = rig.sources.iter().map(|&a| a.into()).collect();
    sources.extend(v6.map(IpAddr::from));
    for src in sources {
        assert!(rig.reaches(src, 22), "{src} cannot reach the server");
    }
    // Unbound clients take the route's source.
    let chosen = rig.src(2);
    rig.route_from(chosen);
    let out = rig
        .lab
        .client(["ip", "route", "get", &rig.server.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("ip route get");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("src {chosen}")),
        "{}",
        text(&out)
    );
}
