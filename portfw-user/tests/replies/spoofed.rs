//! Forged replies stay out: UDP from another address or port, TCP segments that fit no
//! flow, and a SYN-ACK without a SYN.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use crate::{
    HOST, WAIT,
    common::{
        e2e::{
            PolicyFile, apply,
            lab::{self, Lab, Side},
            root_lab,
        },
        sockets::{connect, drain, listen, recv, udp},
    },
    counter, host_addr_for, peer_ips, second_peer_address, status, unspecified,
};

/// The sockets of one family's spoofing check: the host's, the peer's, and the spoofers'.
struct UdpSpoof {
    peer_at: SocketAddr,
    host: UdpSocket,
    host_at: SocketAddr,
    /// A second socket of the host's, which never sent anything.
    idle: UdpSocket,
    idle_at: SocketAddr,
    peer: UdpSocket,
    /// The peer's port, from another address of the peer.
    from_stranger: UdpSocket,
    /// The peer's address, from another port.
    from_other_port: UdpSocket,
}

#[test]
fn spoofed_udp_replies_are_dropped() {
    let lab = root_lab("rp-spoofu");
    let strangers = second_peer_address(&lab);
    let (host_ns, peer_ns) = (lab.netns_path(Side::Server), lab.netns_path(Side::Client));
    let mut cases = Vec::new();
    for (peer_ip, stranger) in peer_ips(&lab).into_iter().zip(strangers) {
        let host_ip = host_addr_for(&lab, peer_ip);
        let any = SocketAddr::new(unspecified(peer_ip), 0);
        let (host, idle) = (udp(&host_ns, any, WAIT), udp(&host_ns, any, WAIT));
        let at = |s: &UdpSocket| SocketAddr::new(host_ip, s.local_addr().expect("addr").port());
        let case = UdpSpoof {
            peer_at: SocketAddr::new(peer_ip, 5300),
            host_at: at(&host),
            idle_at: at(&idle),
            host,
            idle,
            peer: udp(&peer_ns, SocketAddr::new(peer_ip, 5300), WAIT),
            from_stranger: udp(&peer_ns, SocketAddr::new(stranger, 5300), WAIT),
            from_other_port: udp(&peer_ns, SocketAddr::new(peer_ip, 5301), WAIT),
        };
        // Unfiltered, both arrive: a later silence is the filter's doing.
        for spoofer in [&case.from_stranger, &case.from_other_port] {
            spoofer.send_to(b"control", case.host_at).expect("send");
        }
        let got: Vec<SocketAddr> = drain(&case.host).into_iter().map(|(_, f)| f).collect();
        assert_eq!(
            got.len(),
            2,
            "{peer_ip}: both controls arrive unfiltered: {got:?}"
        );
        cases.push(case);
    }
    let policy = PolicyFile::new("host.yaml", HOST);
    apply(&lab, &policy, &[]);
    let before = counter(&status(&lab), "drop_default");
    for c in &cases {
        let family = c.peer_at.ip();
        c.host.send_to(b"query", c.peer_at).expect("query");
        let (query, seen_from) = recv(&c.peer).expect("the peer gets the query");
        assert_eq!((query.as_slice(), seen_from), (&b"query"[..], c.host_at));
        c.peer.send_to(b"reply-1", c.host_at).expect("reply");
        assert_eq!(
            recv(&c.host),
            Some((b"reply-1".to_vec(), c.peer_at)),
            "{family}: the reply arrives"
        );
        c.from_stranger
            .send_to(b"spoof: another address", c.host_at)
            .expect("spoof");
        c.from_other_port
            .send_to(b"spoof: another port", c.host_at)
            .expect("spoof");
        c.peer
            .send_to(b"spoof: another local port", c.idle_at)
            .expect("spoof");
        // The real peer again: the spoofs, sent first, would have arrived first.
        c.peer.send_to(b"reply-2", c.host_at).expect("reply");
        assert_eq!(
            drain(&c.host),
            vec![(b"reply-2".to_vec(), c.peer_at)],
            "{family}: only the peer's replies arrive"
        );
        assert_eq!(
            drain(&c.idle),
            vec![],
            "{family}: nothing for a port that sent nothing"
        );
    }
    let after = counter(&status(&lab), "drop_default");
    assert!(
        after >= before + 6,
        "three spoofs per family dropped by default: {before} -> {after}"
    );
}

/// Runs `xtask/lab/spoof.py` in the peer namespace; one verdict per case
/// (src, sport, dst, dport, scapy flags): `rst`, `silence` or `answer ...`.
fn spoof(lab: &Lab, cases: &[(IpAddr, u16, IpAddr, u16, &str)]) -> Vec<String> {
    let mut args = vec![
        lab::PYTHON.to_owned(),
        lab::script("spoof.py").display().to_string(),
    ];
    for (src, sport, dst, dport, flags) in cases {
        args.extend([
            "--case".to_owned(),
            src.to_string(),
            sport.to_string(),
            dst.to_string(),
            dport.to_string(),
            (*flags).to_owned(),
        ]);
    }
    let out = lab.run(Side::Client, &args).expect("spoof.py");
    let lines: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), cases.len(), "spoof.py: {out}");
    lines
}

#[test]
fn spoofed_tcp_segments_and_a_syn_ack_without_a_syn_are_dropped() {
    let lab = root_lab("rp-spooft");
    let strangers = second_peer_address(&lab);
    let (host_ns, peer_ns) = (lab.netns_path(Side::Server), lab.netns_path(Side::Client));
    let unused = 45678;
    // Unfiltered, a SYN-ACK nobody asked for reaches the host, which resets it.
    let control: Vec<_> = peer_ips(&lab)
        .into_iter()
        .map(|ip| (ip, 8080, host_addr_for(&lab, ip), unused, "SA"))
        .collect();
    assert_eq!(
        spoof(&lab, &control),
        ["rst", "rst"],
        "the host answers unfiltered"
    );

    let policy = PolicyFile::new("host.yaml", HOST);
    apply(&lab, &policy, &[]);
    let mut held = Vec::new();
    let mut cases = Vec::new();
    for (peer_ip, stranger) in peer_ips(&lab).into_iter().zip(strangers) {
        let listener = listen(&peer_ns, SocketAddr::new(peer_ip, 8080));
        let host = connect(
            &host_ns,
            SocketAddr::new(peer_ip, 8080),
            Duration::from_secs(3),
        );
        let (peer, _) = listener.accept().expect("accept");
        let local = host.local_addr().expect("addr");
        let host_ip = local.ip();
        cases.extend([
            // The connection's port, from another address of the peer.
            (stranger, 8080, host_ip, local.port(), "A"),
            // The connection's peer address, from other ports.
            (peer_ip, 8081, host_ip, local.port(), "A"),
            (peer_ip, 8082, host_ip, local.port(), "SA"),
            // A SYN-ACK to a port that sent no SYN.
            (peer_ip, 8080, host_ip, unused, "SA"),
        ]);
        held.push((host, peer));
    }
    let verdicts = spoof(&lab, &cases);
    for (case, verdict) in cases.iter().zip(&verdicts) {
        assert_eq!(
            verdict, "silence",
            "{case:?} must be dropped before the host sees it"
        );
    }
    // The real connections never noticed.
    for (mut host, mut peer) in held {
        peer.write_all(b"still here").expect("peer write");
        let mut buf = [0u8; 10];
        host.read_exact(&mut buf).expect("the host reads");
        assert_eq!(&buf, b"still here");
    }
}
