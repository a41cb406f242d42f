//! Hardening, end to end, each case tried as an attacker or an unlucky operator would: links
//! planted by another user in the pin root and the state directory, a recycled namespace
//! inode, tun devices, and applies interrupted at every step. Needs root.
//!
//! Self-contained: its own namespace guards, built on `ip`, `nsenter`, `unshare` and
//! `setpriv`. Every test runs portfw in a [`Sandbox`], a private mount namespace with its own
//! bpffs (mode 1777, as on many hosts) and its own /run, so nothing here touches the host's
//! /sys/fs/bpf/portfw or /run/portfw, and all of it vanishes with the sandbox.
#![allow(dead_code)]

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
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

/// Tests share the machine's namespace inodes: the one that waits for an inode to come round
/// again runs alone (write), the others together (read).
static INODES: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    INODES.read().unwrap_or_else(|e| e.into_inner())
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

#[test]
fn links_planted_in_a_world_writable_pin_root_are_refused_not_followed() {
    let _shared = shared();
    let sandbox = Sandbox::new();
    let ns = lone_netns("plant");
    let ino = ns.inode().to_string();
    let policy = PolicyFile::new(ALLOW_ALL);
    let (first, second) = (Victim::new("ns"), Victim::new("tmp"));
    let pins = format!("/sys/fs/bpf/portfw/{ino}");
    let tmp = format!("/sys/fs/bpf/portfw/tmp-{ino}-99999");

    // The reproduction: nobody makes the pin root, and plants links named after the
    // namespace and after an abandoned apply of it.
    sandbox.nobody(&["mkdir", "/sys/fs/bpf/portfw"]);
    sandbox.nobody(&["ln", "-s", first.path(), &pins]);
    sandbox.nobody(&["ln", "-s", second.path(), &tmp]);
    for args in [
        vec!["detach"],
        vec!["apply", policy.path(), "--iface", "v0"],
        vec!["status"],
    ] {
        let out = sandbox.portfw(&ns, &args);
        assert_refused(
            &out,
            "/sys/fs/bpf/portfw",
            "is owned by uid 65534, not root",
        );
    }
    assert!(first.intact() && second.intact(), "a victim was emptied");

    // The pin root is root's but world-writable (an admin's chmod): still refused.
    sandbox.must(&["rm", "-r", "/sys/fs/bpf/portfw"]);
    sandbox.must(&["mkdir", "-m", "0777", "/sys/fs/bpf/portfw"]);
    sandbox.nobody(&["ln", "-s", first.path(), &pins]);
    sandbox.nobody(&["ln", "-s", second.path(), &tmp]);
    for args in [
        vec!["detach"],
        vec!["apply", policy.path(), "--iface", "v0"],
    ] {
        let out = sandbox.portfw(&ns, &args);
        assert_refused(
            &out,
            "/sys/fs/bpf/portfw",
            "is writable by every user (mode 0777)",
        );
    }
    assert!(first.intact() && second.intact(), "a victim was emptied");

    // Tightened afterwards, the links planted meanwhile are still there: each is refused
    // by name, and neither is followed.
    sandbox.must(&["chmod", "0700", "/sys/fs/bpf/portfw"]);
    let out = sandbox.portfw(&ns, &["detach"]);
    assert_refused(&out, &pins, "is a symbolic link");
    let out = sandbox.portfw(&ns, &["status"]);
    assert_refused(&out, &pins, "is a symbolic link");
    sandbox.must(&["rm", &pins]);
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert_refused(&out, &tmp, "is a symbolic link");
    assert!(first.intact() && second.intact(), "a victim was emptied");
    sandbox.must(&["rm", &tmp]);

    // A real directory of nobody's in the namespace's place is refused too, and so is a link
    // inside a pin directory that is root's.
    sandbox.must(&["chmod", "0777", "/sys/fs/bpf/portfw"]);
    sandbox.nobody(&["mkdir", &pins]);
    sandbox.must(&["chmod", "0700", "/sys/fs/bpf/portfw"]);
    let out = sandbox.portfw(&ns, &["detach"]);
    assert_refused(&out, &pins, "is owned by uid 65534, not root");
    sandbox.must(&["rm", "-r", &pins]);
    sandbox.must(&["mkdir", "-m", "0700", &pins]);
    sandbox.must(&[
        "ln",
        "-s",
        &format!("{}/precious", first.path()),
        &format!("{pins}/link-v0"),
    ]);
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert_refused(&out, &format!("{pins}/link-v0"), "is a symbolic link");
    assert!(first.intact() && second.intact(), "a victim was emptied");
    sandbox.must(&["rm", "-r", "/sys/fs/bpf/portfw"]);

    // Clean, portfw makes the pin root itself: root's, mode 0700.
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sandbox.stat("%U %a", "/sys/fs/bpf/portfw"), "root 700");
    assert_eq!(sandbox.stat("%U %a", &pins), "root 700");
    let out = sandbox.portfw(&ns, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!sandbox.exists(&pins));
}

#[test]
fn links_planted_in_the_state_directory_are_refused_not_followed() {
    let _shared = shared();
    // /run as writable by everyone, the way a careless host might have it.
    let sandbox = Sandbox::with_modes("0700", "/run", "1777");
    let ns = lone_netns("state");
    let ino = ns.inode().to_string();
    let policy = PolicyFile::new(ALLOW_ALL);
    let victim = Victim::new("state");
    let precious = format!("{}/precious", victim.path());
    let absent = format!("{}/created-by-root", victim.path());

    sandbox.nobody(&["mkdir", "/run/portfw"]);
    sandbox.nobody(&["ln", "-s", &precious, &format!("/run/portfw/{ino}.json")]);
    sandbox.nobody(&["ln", "-s", &absent, &format!("/run/portfw/{ino}.lock")]);
    for args in [
        vec!["apply", policy.path(), "--iface", "v0"],
        vec!["detach"],
        vec!["status"],
    ] {
        let out = sandbox.portfw(&ns, &args);
        assert_refused(&out, "/run/portfw", "is owned by uid 65534, not root");
    }
    assert!(victim.intact() && !Path::new(&absent).exists());

    // Root's but world-writable: refused.
    sandbox.must(&["chown", "root:root", "/run/portfw"]);
    sandbox.must(&["chmod", "0777", "/run/portfw"]);
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert_refused(&out, "/run/portfw", "is writable by every user (mode 0777)");

    // Tightened, the planted links are still there: the lock and the state file are each
    // refused by name, not followed.
    sandbox.must(&["chmod", "0700", "/run/portfw"]);
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert_refused(
        &out,
        &format!("/run/portfw/{ino}.lock"),
        "is a symbolic link",
    );
    sandbox.must(&["rm", &format!("/run/portfw/{ino}.lock")]);
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert_refused(
        &out,
        &format!("/run/portfw/{ino}.json"),
        "is a symbolic link",
    );
    let out = sandbox.portfw(&ns, &["detach"]);
    assert_refused(
        &out,
        &format!("/run/portfw/{ino}.json"),
        "is a symbolic link",
    );
    assert!(victim.intact() && !Path::new(&absent).exists());
    sandbox.must(&["rm", "-r", "/run/portfw"]);

    // Clean, portfw makes the state directory itself: root's, mode 0700, and its files are
    // root's alone.
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sandbox.stat("%U %a", "/run/portfw"), "root 700");
    assert_eq!(
        sandbox.stat("%U %a", &format!("/run/portfw/{ino}.json")),
        "root 600"
    );
    assert_eq!(
        sandbox.stat("%U %a", &format!("/run/portfw/{ino}.lock")),
        "root 600"
    );
    let out = sandbox.portfw(&ns, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
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

#[test]
fn a_namespace_that_reuses_a_dead_ones_inode_gets_a_real_filter() {
    let _alone = INODES.write().unwrap_or_else(|e| e.into_inner());
    let sandbox = Sandbox::new();
    let mut pair = Pair::new("recycle", 71);
    let policy = PolicyFile::new(ALLOW_ALL);
    let apply = ["apply", policy.path(), "--iface", "s0"];
    let out = sandbox.portfw(&pair.server, &apply);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !pair.udp_arrives(7777),
        "7777 is dropped while the filter runs"
    );
    assert!(pair.udp_arrives(7778), "7778 is allowed");

    // Deleted without `portfw detach`: its pins and state stay, named by its inode. Its inode
    // is free once the kernel has torn it down, which the veth's end in the client shows.
    let inode = pair.server.inode();
    pair.server.delete();
    let started = Instant::now();
    while pair.client.has_link("c0") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the namespace lingers"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let mut held = Vec::new();
    let mut tries = 0;
    let server = loop {
        tries += 1;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no new namespace got inode {inode} in {tries} tries"
        );
        let ns = Netns::new("recycle-s");
        match ns.inode() {
            i if i == inode => break ns,
            // Lower inodes are free first: hold them so the next namespace gets a higher one.
            i if i < inode => held.push(ns),
            _ => {
                drop(ns);
                thread::sleep(Duration::from_millis(20));
            }
        }
    };
    drop(held);
    pair.server = server;
    pair.join();
    println!("inode {inode} reused after {tries} namespaces");
    assert!(pair.udp_arrives(7777), "unfiltered, 7777 arrives");

    // Before any apply here, status does not pass the dead namespace's filter off as this one's.
    let out = sandbox.portfw(&pair.server, &["status"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("deleted namespace whose inode this one reuses"),
        "{}",
        text(&out)
    );

    let out = sandbox.portfw(&pair.server, &apply);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("loaded program"),
        "a fresh load, not an update of the dead namespace's filter: {}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("deleted network namespace"),
        "{}",
        text(&out)
    );
    assert!(
        !pair.udp_arrives(7777),
        "7777 must be dropped after the apply"
    );
    assert!(pair.udp_arrives(7778), "7778 is allowed");
    let status = status_json(&sandbox, &pair.server);
    assert_eq!(status["attachments"][0]["iface"], "s0", "{status}");
    assert_eq!(status["attachments"][0]["filtered"], true, "{status}");
    assert!(counter(&status, "drop_rule") > 0, "{status}");
    let out = sandbox.portfw(&pair.server, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_leftovers_of_dead_namespaces_are_reclaimed_and_live_ones_kept() {
    let _shared = shared();
    let sandbox = Sandbox::new();
    let policy = PolicyFile::new(ALLOW_ALL);
    let apply = ["apply", policy.path(), "--iface", "v0"];
    let next = lone_netns("next");
    let alive = lone_netns("alive");
    // The dead namespace's interface has its peer in `next`, which shows when the kernel
    // has torn the namespace down.
    let mut dead = Netns::new("dead");
    dead.ip(&[
        "link", "add", "v0", "type", "veth", "peer", "name", "dpeer", "netns", &next.name,
    ]);
    dead.ip(&["link", "set", "v0", "up"]);
    for ns in [&dead, &alive] {
        let out = sandbox.portfw(ns, &apply);
        assert!(out.status.success(), "{}", text(&out));
    }
    let dead_pins = format!("/sys/fs/bpf/portfw/{}", dead.inode());
    let dead_state = format!("/run/portfw/{}.json", dead.inode());
    let alive_pins = format!("/sys/fs/bpf/portfw/{}", alive.inode());
    // A namespace whose first apply was killed before it attached anything, then deleted.
    let mut killed = lone_netns("killed");
    let paused = Paused::start(&sandbox, &killed, &apply[1..], "fresh-pinned");
    let killed_tmp = format!("/sys/fs/bpf/portfw/tmp-{}-{}", killed.inode(), paused.pid());
    paused.finish(libc::SIGKILL);
    assert!(sandbox.exists(&killed_tmp));
    killed.delete();
    // A namespace that lives on without its interface: its links are attached to nothing,
    // but it is not dead, and its filter is its own business.
    alive.ip(&["link", "del", "v0"]);
    dead.delete();
    let started = Instant::now();
    while next.has_link("dpeer") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the namespace lingers"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(sandbox.exists(&dead_pins) && sandbox.exists(&dead_state));

    let out = sandbox.portfw(&next, &apply);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!("reclaimed {dead_pins}")),
        "{}",
        text(&out)
    );
    assert!(
        stderr(&out).contains(&format!("reclaimed {killed_tmp}")),
        "{}",
        text(&out)
    );
    assert!(!sandbox.exists(&killed_tmp), "{killed_tmp} left behind");
    assert!(!sandbox.exists(&dead_pins), "{dead_pins} left behind");
    assert!(!sandbox.exists(&dead_state), "{dead_state} left behind");
    assert!(
        sandbox.exists(&alive_pins),
        "a live namespace's pins were removed"
    );
    for ns in [&alive, &next] {
        let out = sandbox.portfw(ns, &["detach"]);
        assert!(out.status.success(), "{}", text(&out));
    }
}

/// A tun device (IFF_TUN|IFF_NO_PI: frames start at the IP header) in a namespace, and the
/// descriptor that injects datagrams into it as if they had come in on it.
struct Tun {
    fd: fs::File,
    name: String,
}

impl Tun {
    fn new(ns: &Netns, name: &str) -> Self {
        let owned = name.to_string();
        let fd = in_netns(&ns.path(), move || {
            let fd = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .expect("/dev/net/tun");
            // SAFETY: an all-zero ifreq is valid; the name is copied in with its NUL.
            let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
            for (dst, &src) in req.ifr_name.iter_mut().zip(owned.as_bytes()) {
                *dst = src as libc::c_char;
            }
            req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
            // SAFETY: TUNSETIFF on a tun fd with a valid ifreq; the device is created in this
            // thread's network namespace.
            let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) };
            assert_eq!(rc, 0, "TUNSETIFF: {}", std::io::Error::last_os_error());
            fd
        });
        Self {
            fd,
            name: name.to_string(),
        }
    }

    /// Sets the device's link type (its ARPHRD; the device must be down).
    fn set_link_type(&self, arphrd: libc::c_int) {
        // SAFETY: TUNSETLINK on our tun fd takes the type by value.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNSETLINK, arphrd) };
        assert_eq!(rc, 0, "TUNSETLINK: {}", std::io::Error::last_os_error());
    }

    /// Injects one UDP datagram from `src` to `dst`.
    fn inject(&self, src: IpAddr, dst: IpAddr, dport: u16) {
        use std::io::Write as _;
        let builder = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                etherparse::PacketBuilder::ipv4(s.octets(), d.octets(), 64).udp(40000, dport)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                etherparse::PacketBuilder::ipv6(s.octets(), d.octets(), 64).udp(40000, dport)
            }
            _ => panic!("mixed families"),
        };
        let payload = format!("to {dport} from {src}");
        let mut packet = Vec::with_capacity(builder.size(payload.len()));
        builder
            .write(&mut packet, payload.as_bytes())
            .expect("build datagram");
        (&self.fd).write_all(&packet).expect("inject");
    }
}

/// What arrived on a UDP socket (dual-stack, `[::]:port`) before it fell silent.
fn drain(socket: &UdpSocket) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while let Ok(n) = socket.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got.sort();
    got
}

fn sysctl(ns: &Netns, setting: &str) {
    let net = format!("--net={}", ns.path().display());
    sh(&["nsenter", &net, "sysctl", "-q", "-w", setting]);
}

#[test]
fn a_tun_device_is_judged_by_its_ip_header() {
    let _shared = shared();
    let sandbox = Sandbox::new();
    let policy = PolicyFile::new("default: drop\nrules:\n  - allow: 53/udp\n");
    let sources: [IpAddr; 4] = [
        // Bytes 12-13 of these headers, read as an EtherType, would say ARP (0x0806) and
        // IPv6 (0x86dd) to a program that took the frame for Ethernet.
        "8.6.0.9".parse().expect("v4"),
        "10.88.0.9".parse().expect("v4"),
        "2001:db8:806::9".parse().expect("v6"),
        "2001:db8:86dd::9".parse().expect("v6"),
    ];
    // A tun device has no native XDP for its IP frames (the kernel refuses the link), so auto
    // lands on generic.
    for mode in ["generic", "auto"] {
        let ns = Netns::new(&format!("tun-{mode}"));
        let tun = Tun::new(&ns, "tun0");
        ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "tun0"]);
        ns.ip(&["-6", "addr", "add", "fd00:77::1/64", "dev", "tun0", "nodad"]);
        ns.ip(&["link", "set", "tun0", "up"]);
        ns.ip(&["route", "add", "default", "dev", "tun0"]);
        ns.ip(&["-6", "route", "add", "default", "dev", "tun0"]);
        sysctl(&ns, "net.ipv4.conf.all.rp_filter=0");
        sysctl(&ns, "net.ipv4.conf.tun0.rp_filter=0");
        let [dns, mdns] = [53u16, 5353].map(|port| {
            in_netns(&ns.path(), move || {
                UdpSocket::bind(("::", port)).expect("bind in the tun namespace")
            })
        });
        let dst = |src: &IpAddr| -> IpAddr {
            if src.is_ipv4() {
                "10.77.0.1".parse().expect("v4")
            } else {
                "fd00:77::1".parse().expect("v6")
            }
        };
        // Unfiltered, both ports hear every source: a later silence is the filter's.
        for src in &sources {
            tun.inject(*src, dst(src), 5353);
        }
        assert_eq!(drain(&mdns).len(), 4, "{mode}: unfiltered, 5353 hears all");

        let out = sandbox.portfw(
            &ns,
            &["apply", policy.path(), "--iface", "tun0", "--mode", mode],
        );
        assert!(out.status.success(), "{mode}: {}", text(&out));
        for src in &sources {
            tun.inject(*src, dst(src), 53);
            tun.inject(*src, dst(src), 5353);
        }
        let mut expected: Vec<String> = sources.iter().map(|s| format!("to 53 from {s}")).collect();
        expected.sort();
        assert_eq!(drain(&dns), expected, "{mode}: 53 is allowed");
        assert_eq!(
            drain(&mdns),
            Vec::<String>::new(),
            "{mode}: 5353 is dropped"
        );
        let status = status_json(&sandbox, &ns);
        assert_eq!(status["attachments"][0]["link"], "ip", "{status}");
        assert_eq!(status["attachments"][0]["mode"], "generic", "{status}");
        assert_eq!(status["attachments"][0]["filtered"], true, "{status}");
        assert_eq!(counter(&status, "allow_rule"), 4, "{mode}: {status}");
        assert_eq!(counter(&status, "drop_default"), 4, "{mode}: {status}");
        for other in ["non_ip_allow", "non_ip_drop", "malformed", "other_ip_allow"] {
            assert_eq!(counter(&status, other), 0, "{mode} {other}: {status}");
        }
        let out = sandbox.portfw(&ns, &["detach"]);
        assert!(out.status.success(), "{}", text(&out));
        drop(tun);
    }
}

#[test]
fn a_link_type_portfw_cannot_parse_is_refused_by_name() {
    let _shared = shared();
    let sandbox = Sandbox::new();
    let ns = Netns::new("x25");
    let tun = Tun::new(&ns, "odd0");
    // ARPHRD_X25: neither Ethernet nor a bare IP header.
    tun.set_link_type(271);
    ns.ip(&["link", "set", "odd0", "up"]);
    let policy = PolicyFile::new(ALLOW_ALL);
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "odd0"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("interface `odd0` has link type 271"),
        "{}",
        text(&out)
    );
    assert!(!sandbox.exists(&format!("/sys/fs/bpf/portfw/{}", ns.inode())));
    drop(tun);
}

/// The environment variable of portfw's test hook: an apply pauses at the named point.
const PAUSE_AT: &str = "PORTFW_TEST_PAUSE_AT";

/// A `portfw apply` paused by the test hook, and what it writes to stderr.
struct Paused {
    child: Child,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Paused {
    /// Starts `portfw apply ARGS` in `ns`, paused by the test hook at `point`, and waits
    /// until it says it is there.
    fn start(sandbox: &Sandbox, ns: &Netns, args: &[&str], point: &str) -> Self {
        let mut full = vec![PORTFW, "apply"];
        full.extend_from_slice(args);
        let mut child = sandbox
            .command(Some(ns), None, &full)
            .env(PAUSE_AT, point)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("portfw apply");
        let pipe = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Each line as it comes; the pause line tells the test the apply is there.
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let wanted = format!("paused at {point}");
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.contains(&wanted) => break,
                Ok(line) => seen.push(line),
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("apply never paused at {point}: {seen:?}");
                }
            }
        }
        Self { child, stderr: rx }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal`, waits for the apply to end, and returns how, with the rest of its
    /// stderr.
    fn finish(mut self, signal: libc::c_int) -> (std::process::ExitStatus, String) {
        let pid = i32::try_from(self.child.id()).expect("pid");
        // SAFETY: a plain kill of our own child.
        unsafe { libc::kill(pid, signal) };
        let status = self.child.wait().expect("wait");
        let rest: Vec<String> = self.stderr.iter().collect();
        (status, rest.join("\n"))
    }
}

/// What the pin root holds for the namespace with inode `ino` (its pins, temporary or not).
fn pins_of(sandbox: &Sandbox, ino: u64) -> Vec<String> {
    let out = sandbox.run(None, None, &["ls", "/sys/fs/bpf/portfw"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|n| *n == ino.to_string() || n.starts_with(&format!("tmp-{ino}-")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_fresh_apply_killed_at_any_point_is_reported_and_detach_removes_it() {
    let _shared = shared();
    let sandbox = Sandbox::new();
    let pair = Pair::new("kill", 72);
    let ino = pair.server.inode();
    let policy = PolicyFile::new(ALLOW_ALL);
    let apply = ["apply", policy.path(), "--iface", "s0"];
    for point in [
        "fresh-loaded",
        "fresh-pinned",
        "fresh-attaching",
        "fresh-attached",
        "fresh-recorded",
    ] {
        let paused = Paused::start(&sandbox, &pair.server, &apply[1..], point);
        let tmp = format!("/sys/fs/bpf/portfw/tmp-{ino}-{}", paused.pid());
        let (ended, _) = paused.finish(libc::SIGKILL);
        assert!(!ended.success(), "{point}: {ended}");

        let out = sandbox.portfw(&pair.server, &["status"]);
        assert!(!out.status.success(), "{point}: {}", text(&out));
        assert!(
            stderr(&out).contains(&format!(
                "an interrupted apply left a half-built filter in {tmp}; run `portfw detach` or \
                 apply again"
            )),
            "{point}: {}",
            text(&out)
        );
        if point != "fresh-loaded" && point != "fresh-pinned" {
            // Half-built, but attached: this is why it must not go unmentioned.
            assert!(
                !pair.udp_arrives(7777),
                "{point}: the half-built filter judges"
            );
        }
        let out = sandbox.portfw(&pair.server, &["detach"]);
        assert!(out.status.success(), "{point}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&format!(
                "removed the half-built filter an interrupted apply left in {tmp}"
            )),
            "{point}: {}",
            text(&out)
        );
        assert_eq!(pins_of(&sandbox, ino), Vec::<String>::new(), "{point}");
        assert!(
            !sandbox.exists(&format!("/run/portfw/{ino}.json")),
            "{point}"
        );
        assert!(pair.udp_arrives(7777), "{point}: detached, 7777 arrives");
        let out = sandbox.portfw(&pair.server, &["status"]);
        assert!(
            stderr(&out).contains("no portfw filter is loaded"),
            "{point}: {}",
            text(&out)
        );
    }
    // Applying again instead of detaching cleans up as well.
    Paused::start(&sandbox, &pair.server, &apply[1..], "fresh-attached").finish(libc::SIGKILL);
    let out = sandbox.portfw(&pair.server, &apply);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("removed the half-built filter"),
        "{}",
        text(&out)
    );
    assert_eq!(pins_of(&sandbox, ino), vec![ino.to_string()]);
    assert!(!pair.udp_arrives(7777));
    let out = sandbox.portfw(&pair.server, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn sigterm_sigint_and_sighup_roll_an_apply_back() {
    let _shared = shared();
    let sandbox = Sandbox::new();
    let pair = Pair::new("signal", 73);
    pair.server
        .ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
    pair.server.ip(&["link", "set", "v0", "up"]);
    pair.server.ip(&["link", "set", "v1", "up"]);
    let ino = pair.server.inode();
    let a = PolicyFile::new(ALLOW_ALL);
    let b = PolicyFile::new("default: allow\nrules:\n  - drop: 7778/udp\n");

    // A fresh apply: rolled back, nothing left.
    for (signal, name, point) in [
        (libc::SIGTERM, "SIGTERM", "fresh-attached"),
        (libc::SIGINT, "SIGINT", "fresh-pinned"),
        (libc::SIGHUP, "SIGHUP", "fresh-loaded"),
    ] {
        let paused = Paused::start(&sandbox, &pair.server, &[a.path(), "--iface", "s0"], point);
        let (ended, err) = paused.finish(signal);
        assert_eq!(ended.code(), Some(1), "{name} at {point}: {ended}: {err}");
        assert!(
            err.contains(&format!(
                "interrupted by {name}; rolled back, nothing was changed"
            )),
            "{name} at {point}: {err}"
        );
        assert_eq!(
            pins_of(&sandbox, ino),
            Vec::<String>::new(),
            "{name} at {point}"
        );
        assert!(
            pair.udp_arrives(7777),
            "{name} at {point}: rolled back, 7777 arrives"
        );
        let out = sandbox.portfw(&pair.server, &["status"]);
        assert!(
            stderr(&out).contains("no portfw filter is loaded"),
            "{name} at {point}: {}",
            text(&out)
        );
    }

    // An update that adds an interface: rolled back to the policy and interfaces before.
    let out = sandbox.portfw(&pair.server, &["apply", a.path(), "--iface", "s0"]);
    assert!(out.status.success(), "{}", text(&out));
    for (signal, name, point) in [
        (libc::SIGTERM, "SIGTERM", "update-attached"),
        (libc::SIGINT, "SIGINT", "update-staged"),
    ] {
        let paused = Paused::start(
            &sandbox,
            &pair.server,
            &[b.path(), "--iface", "s0", "--iface", "v0"],
            point,
        );
        let (ended, err) = paused.finish(signal);
        assert_eq!(ended.code(), Some(1), "{name} at {point}: {ended}: {err}");
        assert!(
            err.contains(&format!(
                "interrupted by {name}; rolled back, nothing was changed"
            )),
            "{name} at {point}: {err}"
        );
        let status = status_json(&sandbox, &pair.server);
        assert_eq!(
            status["policy"]["file"],
            a.path(),
            "{name} at {point}: {status}"
        );
        let ifaces: Vec<&str> = status["attachments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["iface"].as_str())
            .collect();
        assert_eq!(ifaces, ["s0"], "{name} at {point}: {status}");
        assert_eq!(status["attachments"][0]["filtered"], true, "{status}");
        assert!(
            !sandbox.exists(&format!("/sys/fs/bpf/portfw/{ino}/link-v0")),
            "{name} at {point}: v0's link stayed"
        );
        assert!(
            !pair.udp_arrives(7777),
            "{name} at {point}: the old policy drops 7777"
        );
        assert!(
            pair.udp_arrives(7778),
            "{name} at {point}: the old policy allows 7778"
        );
    }
    let out = sandbox.portfw(&pair.server, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn an_update_whose_attach_fails_changes_nothing() {
    let _shared = shared();
    let sandbox = Sandbox::new();
    let pair = Pair::new("attachfail", 74);
    let ino = pair.server.inode();
    let tun = Tun::new(&pair.server, "tun0");
    pair.server.ip(&["link", "set", "tun0", "up"]);
    let a = PolicyFile::new(ALLOW_ALL);
    let b = PolicyFile::new("default: allow\nrules:\n  - drop: 7778/udp\n");
    let out = sandbox.portfw(&pair.server, &["apply", a.path(), "--iface", "s0"]);
    assert!(out.status.success(), "{}", text(&out));
    // A tun device has no native XDP: the new interface cannot be attached.
    let out = sandbox.portfw(
        &pair.server,
        &[
            "apply",
            b.path(),
            "--iface",
            "s0",
            "--iface",
            "tun0",
            "--mode",
            "native",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        stderr(&out).contains("cannot attach to `tun0` in native mode"),
        "{}",
        text(&out)
    );
    let status = status_json(&sandbox, &pair.server);
    assert_eq!(
        status["policy"]["file"],
        a.path(),
        "the new policy went live: {status}"
    );
    assert_eq!(
        status["attachments"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    assert_eq!(status["attachments"][0]["iface"], "s0", "{status}");
    assert_eq!(status["attachments"][0]["filtered"], true, "{status}");
    assert!(!sandbox.exists(&format!("/sys/fs/bpf/portfw/{ino}/link-tun0")));
    assert!(!pair.udp_arrives(7777), "the old policy still drops 7777");
    assert!(pair.udp_arrives(7778), "the old policy still allows 7778");
    let out = sandbox.portfw(&pair.server, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
    drop(tun);
}

#[test]
fn a_re_created_interface_is_reported_not_filtered_until_applied_again() {
    let _shared = shared();
    let sandbox = Sandbox::new();
    let pair = Pair::new("recreate", 75);
    let policy = PolicyFile::new(ALLOW_ALL);
    let apply = ["apply", policy.path(), "--iface", "s0"];
    let out = sandbox.portfw(&pair.server, &apply);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!pair.udp_arrives(7777));
    let check = sandbox.portfw(&pair.server, &["status", "--check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));

    // Deleted and re-created under the same name, with the same ifindex even.
    pair.server.ip(&["link", "del", "s0"]);
    pair.join();
    assert!(pair.udp_arrives(7777), "the new s0 is not filtered");
    let out = sandbox.portfw(&pair.server, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown.contains("NOT FILTERED: `s0` was re-created") && shown.contains("apply again"),
        "{}",
        text(&out)
    );
    let status = status_json(&sandbox, &pair.server);
    assert_eq!(status["attachments"][0]["filtered"], false, "{status}");
    let check = sandbox.portfw(&pair.server, &["status", "--check"]);
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));
    assert!(
        stderr(&check).contains("NOT FILTERED: s0"),
        "{}",
        text(&check)
    );

    // Applying again attaches to the new device (an update, not a reload).
    let out = sandbox.portfw(&pair.server, &apply);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("updated program"),
        "{}",
        text(&out)
    );
    assert!(!pair.udp_arrives(7777), "filtered again");
    let check = sandbox.portfw(&pair.server, &["status", "--check"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    let out = sandbox.portfw(&pair.server, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn portfw_mounts_bpffs_itself_once_with_mode_0700() {
    let _shared = shared();
    let sandbox = Sandbox::without_bpffs();
    assert_eq!(sandbox.bpffs_mounts(), 0);
    let policy = PolicyFile::new(ALLOW_ALL);
    let namespaces = [lone_netns("mount-a"), lone_netns("mount-b")];
    // Two first applies at once, in two namespaces: one mount between them.
    let children: Vec<Child> = namespaces
        .iter()
        .map(|ns| {
            sandbox
                .command(
                    Some(ns),
                    None,
                    &[PORTFW, "apply", policy.path(), "--iface", "v0"],
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("portfw apply")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().expect("apply");
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(sandbox.bpffs_mounts(), 1, "two applies stacked two mounts");
    // bpffs adds the sticky bit to whatever mode it is given.
    assert_eq!(sandbox.stat("%U %a", "/sys/fs/bpf"), "root 1700");
    for ns in &namespaces {
        let out = sandbox.portfw(ns, &["detach"]);
        assert!(out.status.success(), "{}", text(&out));
    }
}
