//! Hardening, end to end, each case tried as an attacker or an unlucky operator would: links
//! planted by another user in the pin root and the state directory, a recycled namespace
//! inode, tun devices, and applies interrupted at every step. Needs root.
//!
//! Self-contained: its own namespace guards, built on `ip`, `nsenter`, `unshare` and
//! `setpriv`. Every test runs portfw in a [`Sandbox`], a private mount namespace with its own
//! bpffs (mode 1777, as on many hosts) and its own /run, so nothing here touches the host's
//! /sys/fs/bpf/portfw or /run/portfw, and all of it vanishes with the sandbox.
//!
//! The tests live in `tests/hardening/`, one file per concern.
#![allow(dead_code)]

/// The tests, one module per concern; the namespace guards and the sandbox they share stay
/// here.
mod hardening {
    pub mod interrupted;
    pub mod links;
    pub mod netns;
    pub mod tun;
    pub mod updates;
}

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

const PORTFW: &str = env!("CARGO_BIN_EXE_portfw");
/// The user the attacks run as.
const NOBODY: u32 = 65534;

fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "pfwh-{}-{}-{tag}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Tests share the machine's namespace inodes, which the kernel hands out again as soon as a
/// namespace is gone. The tests that depend on what becomes of a dead namespace's inode run
/// alone (write): the one that waits for it to come round again, and the one that expects a
/// dead namespace's leftovers to be reclaimed (a namespace another test creates meanwhile may
/// take the inode, and its leftovers are then rightly kept). The others run together (read).
static INODES: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    INODES.read().unwrap_or_else(|e| e.into_inner())
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    INODES.write().unwrap_or_else(|e| e.into_inner())
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the hardening tests need root"
    );
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a host command and insists it works.
fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace, deleted (with what runs in it) on drop.
struct Netns {
    name: String,
    deleted: bool,
}

impl Netns {
    fn new(tag: &str) -> Self {
        require_root();
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = Self {
            name,
            deleted: false,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    fn inode(&self) -> u64 {
        fs::metadata(self.path()).map(|m| m.ino()).unwrap_or(0)
    }

    /// `ip -n NAME …`
    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    fn has_link(&self, name: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Deletes the namespace now, as an operator would without `portfw detach` first.
    fn delete(&mut self) {
        if self.deleted {
            return;
        }
        self.deleted = true;
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: plain kill of a process in our namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.delete();
    }
}

const S0_INDEX: &str = "5";

/// Two namespaces joined by a veth: `server` (filtered, `s0`, 10.N.0.1) and `client` (`c0`,
/// 10.N.0.2).
struct Pair {
    server: Netns,
    client: Netns,
    subnet: u8,
}

impl Pair {
    fn new(tag: &str, subnet: u8) -> Self {
        let server = Netns::new(&format!("{tag}-s"));
        let client = Netns::new(&format!("{tag}-c"));
        let pair = Self {
            server,
            client,
            subnet,
        };
        pair.join();
        pair
    }

    /// The veth between the two, addressed and up; `s0` has ifindex [`S0_INDEX`].
    fn join(&self) {
        self.server.ip(&[
            "link",
            "add",
            "s0",
            "index",
            S0_INDEX,
            "type",
            "veth",
            "peer",
            "name",
            "c0",
            "netns",
            &self.client.name,
        ]);
        let n = self.subnet;
        self.server
            .ip(&["addr", "add", &format!("10.{n}.0.1/24"), "dev", "s0"]);
        self.client
            .ip(&["addr", "add", &format!("10.{n}.0.2/24"), "dev", "c0"]);
        self.server.ip(&["link", "set", "s0", "up"]);
        self.client.ip(&["link", "set", "c0", "up"]);
    }

    fn server_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 1)
    }

    /// Whether a UDP datagram from the client reaches a socket on `port` in the server.
    fn udp_arrives(&self, port: u16) -> bool {
        let receiver = in_netns(&self.server.path(), move || {
            UdpSocket::bind(("0.0.0.0", port)).expect("bind in the server namespace")
        });
        receiver
            .set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        let sender = in_netns(&self.client.path(), || {
            UdpSocket::bind(("0.0.0.0", 0)).expect("bind in the client namespace")
        });
        let target = SocketAddr::new(self.server_ip().into(), port);
        let mut buf = [0u8; 64];
        // A few tries: the first datagram may wait for ARP.
        for _ in 0..5 {
            let _ = sender.send_to(b"portfw?", target);
            if let Ok((n, _)) = receiver.recv_from(&mut buf) {
                return &buf[..n] == b"portfw?";
            }
        }
        false
    }
}

/// Runs `f` on a thread that joined the network namespace at `ns`: sockets it opens belong to
/// that namespace, wherever they are used afterwards.
fn in_netns<T: Send>(ns: &Path, f: impl FnOnce() -> T + Send) -> T {
    let ns = ns.to_path_buf();
    thread::scope(|s| {
        s.spawn(move || {
            let file = fs::File::open(&ns).unwrap_or_else(|e| panic!("{}: {e}", ns.display()));
            // SAFETY: setns on a namespace fd; it changes only this thread's namespace.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

/// A private mount namespace held open by a sleeping process, with a fresh bpffs at
/// /sys/fs/bpf and a fresh tmpfs at /run/portfw (or, for the attacks on the state directory,
/// at all of /run, which hides /run/netns). Commands enter it (and a network namespace)
/// through `nsenter`. Dropping it kills the sleeper: the mount namespace, the bpffs and every
/// pin in it go away, which detaches whatever was attached.
struct Sandbox {
    sleeper: Child,
    /// Whether the sandbox has its own pid namespace too (with the sleeper's child as its
    /// init), in which portfw takes the sandbox for the host's mount namespace.
    pid_ns: bool,
}

impl Sandbox {
    /// bpffs mode 1777, as on many hosts; a private, empty /run/portfw.
    fn new() -> Self {
        fs::create_dir_all("/run/portfw").expect("/run/portfw as a mount point");
        Self::with_modes("1777", "/run/portfw", "0755")
    }

    fn with_modes(bpffs: &str, tmpfs_at: &str, tmpfs_mode: &str) -> Self {
        let sandbox = Self::start(false);
        let bpffs = format!("mode={bpffs}");
        sandbox.must(&["mount", "-t", "bpf", "-o", &bpffs, "bpf", "/sys/fs/bpf"]);
        let run = format!("mode={tmpfs_mode}");
        sandbox.must(&["mount", "-t", "tmpfs", "-o", &run, "tmpfs", tmpfs_at]);
        sandbox
    }

    /// A sandbox with its own pid namespace and no bpffs at all: portfw, seeing its "pid 1"
    /// in the same mount namespace, mounts one itself.
    fn without_bpffs() -> Self {
        fs::create_dir_all("/run/portfw").expect("/run/portfw as a mount point");
        let sandbox = Self::start(true);
        sandbox.must(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "mode=0755",
            "tmpfs",
            "/run/portfw",
        ]);
        while sandbox.bpffs_mounts() > 0 {
            sandbox.must(&["umount", "/sys/fs/bpf"]);
        }
        sandbox
    }

    fn start(pid_ns: bool) -> Self {
        require_root();
        let mut unshare = Command::new("unshare");
        unshare.args(["--mount", "--propagation", "slave"]);
        if pid_ns {
            unshare.args(["--pid", "--fork", "--mount-proc"]);
        }
        let sleeper = unshare
            .args(["sleep", "infinity"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare");
        let sandbox = Self { sleeper, pid_ns };
        let mine = fs::metadata("/proc/self/ns/mnt").map(|m| m.ino()).ok();
        let started = Instant::now();
        while fs::metadata(sandbox.mnt()).map(|m| m.ino()).ok() == mine {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "unshare did not start"
            );
            thread::sleep(Duration::from_millis(10));
        }
        if pid_ns {
            // Until its init has mounted the new /proc, /proc/self means nothing in there.
            while !sandbox
                .run(None, None, &["test", "-e", "/proc/self/ns/mnt"])
                .status
                .success()
            {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the sandbox's /proc never came"
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
        sandbox
    }

    /// How many bpf filesystems are mounted on /sys/fs/bpf in the sandbox.
    fn bpffs_mounts(&self) -> usize {
        self.must(&["cat", "/proc/self/mountinfo"])
            .lines()
            .filter(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let fstype = line
                    .split(" - ")
                    .nth(1)
                    .and_then(|t| t.split_whitespace().next());
                fields.get(4) == Some(&"/sys/fs/bpf") && fstype == Some("bpf")
            })
            .count()
    }

    fn mnt(&self) -> String {
        format!("/proc/{}/ns/mnt", self.sleeper.id())
    }

    /// `args` in the sandbox, in network namespace `net` when given, as `uid` when given.
    fn command(&self, net: Option<&Netns>, uid: Option<u32>, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount={}", self.mnt()));
        if self.pid_ns {
            cmd.arg(format!(
                "--pid=/proc/{}/ns/pid_for_children",
                self.sleeper.id()
            ));
        }
        if let Some(net) = net {
            cmd.arg(format!("--net={}", net.path().display()));
        }
        if let Some(uid) = uid {
            cmd.args([
                "setpriv".to_string(),
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".to_string(),
            ]);
        }
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    fn run(&self, net: Option<&Netns>, uid: Option<u32>, args: &[&str]) -> Output {
        self.command(net, uid, args)
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// A root command in the sandbox that must work.
    fn must(&self, args: &[&str]) -> String {
        let out = self.run(None, None, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command as `nobody` in the sandbox that must work.
    fn nobody(&self, args: &[&str]) {
        let out = self.run(None, Some(NOBODY), args);
        assert!(out.status.success(), "as nobody: {args:?}: {}", text(&out));
    }

    /// `portfw ARGS` as root in `net`.
    fn portfw(&self, net: &Netns, args: &[&str]) -> Output {
        let mut full = vec![PORTFW];
        full.extend_from_slice(args);
        self.run(Some(net), None, &full)
    }

    /// Whether `path` exists in the sandbox.
    fn exists(&self, path: &str) -> bool {
        self.run(None, None, &["test", "-e", path]).status.success()
    }

    /// `stat -c FORMAT path` in the sandbox.
    fn stat(&self, format: &str, path: &str) -> String {
        self.must(&["stat", "-c", format, path]).trim().to_string()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // In a pid namespace the sleep is unshare's child, the namespace's init: killing it
        // ends everything in there.
        let id = self.sleeper.id();
        if let Ok(children) = fs::read_to_string(format!("/proc/{id}/task/{id}/children")) {
            for child in children.split_whitespace() {
                if let Ok(pid) = child.parse::<i32>() {
                    // SAFETY: a plain kill of a process this sandbox started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = self.sleeper.kill();
        let _ = self.sleeper.wait();
    }
}

/// A directory of files an attacker wants root to delete, removed on drop.
struct Victim(PathBuf);

impl Victim {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(unique(&format!("victim-{tag}")));
        fs::create_dir_all(&path).expect("victim dir");
        for name in ["precious", "link-eth0", "prog"] {
            fs::write(path.join(name), "keep me").expect("victim file");
        }
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp dir")
    }

    fn intact(&self) -> bool {
        ["precious", "link-eth0", "prog"]
            .iter()
            .all(|name| fs::read_to_string(self.0.join(name)).ok().as_deref() == Some("keep me"))
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A policy file, removed on drop.
struct PolicyFile(PathBuf);

impl PolicyFile {
    fn new(yaml: &str) -> Self {
        let path = std::env::temp_dir().join(format!("{}.yaml", unique("policy")));
        fs::write(&path, yaml).expect("write policy");
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp dir")
    }
}

impl Drop for PolicyFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

const ALLOW_ALL: &str = "default: allow\nrules:\n  - drop: 7777/udp\n";

/// A namespace with a veth pair `v0`/`v1` in it, for tests that only need something to apply
/// to.
fn lone_netns(tag: &str) -> Netns {
    let ns = Netns::new(tag);
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    ns.ip(&["link", "set", "v0", "up"]);
    ns.ip(&["link", "set", "v1", "up"]);
    ns
}

fn assert_refused(out: &Output, path: &str, problem: &str) {
    let err = stderr(out);
    assert!(!out.status.success(), "must fail: {}", text(out));
    assert!(
        err.contains(&format!("refusing {path}: it {problem}")),
        "must name {path} and say it {problem}: {}",
        text(out)
    );
}

fn status_json(sandbox: &Sandbox, ns: &Netns) -> serde_json::Value {
    let out = sandbox.portfw(ns, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("status json")
}

fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"]
        .as_array()
        .and_then(|c| c.iter().find(|pair| pair[0] == name))
        .and_then(|pair| pair[1].as_u64())
        .unwrap_or(0)
}
