//! Devices without an Ethernet header: a tun device is judged by its IP header, and a link
//! type portfw cannot parse is refused by name.

use std::{
    fs,
    net::{IpAddr, UdpSocket},
    os::fd::AsRawFd as _,
    time::Duration,
};

use crate::{
    ALLOW_ALL, Netns, PolicyFile, Sandbox, counter, in_netns, sh, shared, status_json, stderr, text,
};

/// A tun device (IFF_TUN|IFF_NO_PI: frames start at the IP header) in a namespace, and the
/// descriptor that injects datagrams into it as if they had come in on it.
pub struct Tun {
    fd: fs::File,
    name: String,
}

impl Tun {
    pub fn new(ns: &Netns, name: &str) -> Self {
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
