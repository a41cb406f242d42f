//! The flow table's lifetime: a reply after its UDP flow timed out, a tiny table that evicts
//! and fails closed, connections opened before apply (held across it, and tracked from the
//! start from the kernel's socket table), and `replies: drop`.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use crate::{
    ANSWER, HOST, SILENT, WAIT,
    common::{
        e2e::{
            PolicyFile, apply,
            lab::{Probe, Proto, Side},
            root_lab,
        },
        sockets::{connect, drain, listen, recv, udp},
    },
    counter, curl_out, find_flow, flows, host_with, peer_ips, ping_out, probe_out, status,
    unspecified,
};

#[test]
fn a_udp_reply_after_a_short_udp_timeout_is_dropped() {
    let lab = root_lab("rp-expire");
    let (host_ns, peer_ns) = (lab.netns_path(Side::Server), lab.netns_path(Side::Client));
    let policy = PolicyFile::new("short.yaml", &host_with("flows:\n  udp-timeout: 2s\n"));
    apply(&lab, &policy, &[]);
    let mut pairs = Vec::new();
    for peer_ip in peer_ips(&lab) {
        let host = udp(&host_ns, SocketAddr::new(unspecified(peer_ip), 0), WAIT);
        let peer = udp(&peer_ns, SocketAddr::new(peer_ip, 5300), WAIT);
        let peer_at = SocketAddr::new(peer_ip, 5300);
        host.send_to(b"query", peer_at).expect("query");
        let (_, host_at) = recv(&peer).expect("the peer gets the query");
        peer.send_to(b"fresh", host_at).expect("reply");
        assert_eq!(
            recv(&host).map(|(d, _)| d),
            Some(b"fresh".to_vec()),
            "{peer_ip}"
        );
        pairs.push((host, peer, host_at, peer_at));
    }
    let listed = flows(&lab);
    for (_, _, host_at, peer_at) in &pairs {
        let flow = find_flow(&listed, "udp", *host_at, *peer_at)
            .unwrap_or_else(|| panic!("{host_at} -> {peer_at} listed: {listed:?}"));
        assert_eq!(flow["state"], "open", "{flow}");
        assert!(
            flow["expires_in_s"].as_f64().is_some_and(|s| s <= 2.0),
            "{flow}"
        );
    }
    // Timestamps are refreshed at most once a second: 4.5 s is past 2 s whatever the phase.
    thread::sleep(Duration::from_millis(4500));
    let listed = flows(&lab);
    for (host, peer, host_at, peer_at) in &pairs {
        assert!(
            find_flow(&listed, "udp", *host_at, *peer_at).is_none(),
            "{host_at} -> {peer_at} expired: {listed:?}"
        );
        peer.send_to(b"late", *host_at).expect("late reply");
        assert_eq!(
            recv(host),
            None,
            "{host_at}: a reply after the timeout is dropped"
        );
        // The host's next datagram opens the flow again.
        host.send_to(b"again", *peer_at).expect("query");
        assert!(recv(peer).is_some());
        peer.send_to(b"fresh again", *host_at).expect("reply");
        assert_eq!(recv(host).map(|(d, _)| d), Some(b"fresh again".to_vec()));
    }
}

#[test]
fn a_tiny_flow_table_evicts_counts_and_fails_closed() {
    const FLOWS: u16 = 1500;
    let lab = root_lab("rp-evict");
    let (host_ns, peer_ns) = (lab.netns_path(Side::Server), lab.netns_path(Side::Client));
    let policy = PolicyFile::new("tiny.yaml", &host_with("flows:\n  max: 16\n"));
    apply(&lab, &policy, &[]);
    let peer_ip: IpAddr = lab.client_v4().into();
    let peer_at = SocketAddr::new(peer_ip, 5300);
    let sink = udp(&peer_ns, peer_at, WAIT);
    let any = unspecified(peer_ip);
    // Hundreds of flows from distinct ports (outside the ephemeral range), all held open so
    // that a reply to any of them would be read. The first exchange also resolves the peer's
    // address, so that no datagram waits for ARP.
    let hosts: Vec<UdpSocket> = (0..FLOWS)
        .map(|i| udp(&host_ns, SocketAddr::new(any, 20000 + i), WAIT))
        .collect();
    hosts[0].send_to(b"first", peer_at).expect("send");
    let (_, first_at) = recv(&sink).expect("the sink gets the first datagram");
    let host_ip = first_at.ip();
    for socket in &hosts[1..] {
        socket.send_to(b"x", peer_at).expect("send");
    }
    let json = status(&lab);
    let table = &json["flows"];
    assert_eq!(table["max"], 16, "{json}");
    assert!(
        table["created"].as_u64().unwrap_or(0) >= u64::from(FLOWS),
        "every flow is counted: {json}"
    );
    assert!(
        table["evicted"].as_u64().unwrap_or(0) > 0,
        "evictions counted: {json}"
    );
    assert!(
        table["entries"].as_u64().unwrap_or(0) < u64::from(FLOWS),
        "the table holds fewer than were opened: {json}"
    );
    // Which flows went is the kernel LRU's business (per-CPU lists): take one that did, and
    // the newest one still held.
    let listed = flows(&lab);
    let held =
        |i: u16| find_flow(&listed, "udp", SocketAddr::new(host_ip, 20000 + i), peer_at).is_some();
    let evicted = (0..FLOWS)
        .find(|&i| !held(i))
        .expect("some flow was evicted");
    let kept = (0..FLOWS)
        .rev()
        .find(|&i| held(i))
        .expect("some flow is held");
    let _ = drain(&sink);
    // Fails closed: the evicted flow's reply is judged by the rules, which drop it.
    let before = counter(&status(&lab), "drop_default");
    sink.send_to(
        b"to an evicted flow",
        SocketAddr::new(host_ip, 20000 + evicted),
    )
    .expect("reply");
    assert_eq!(
        recv(&hosts[usize::from(evicted)]),
        None,
        "a reply to an evicted flow (port {}) is dropped",
        20000 + evicted
    );
    assert_eq!(counter(&status(&lab), "drop_default"), before + 1);
    sink.send_to(b"to a held flow", SocketAddr::new(host_ip, 20000 + kept))
        .expect("reply");
    assert_eq!(
        recv(&hosts[usize::from(kept)]).map(|(d, _)| d),
        Some(b"to a held flow".to_vec()),
        "a held flow's reply passes"
    );
}

/// The peer writes, the host reads; the host writes, the peer reads.
fn exchange(what: &str, host: &mut TcpStream, peer: &mut TcpStream, message: &[u8]) {
    let mut buf = vec![0u8; message.len()];
    peer.write_all(message).expect("peer write");
    host.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: the host reads {message:?}: {e}"));
    assert_eq!(buf, message, "{what}");
    host.write_all(message).expect("host write");
    peer.read_exact(&mut buf)
        .unwrap_or_else(|e| panic!("{what}: the peer reads {message:?}: {e}"));
    assert_eq!(buf, message, "{what}");
}

#[test]
fn a_connection_opened_before_apply_survives_it_and_shows_in_flows() {
    let lab = root_lab("rp-held");
    let (host_ns, peer_ns) = (lab.netns_path(Side::Server), lab.netns_path(Side::Client));
    let wait = Duration::from_secs(3);
    let mut held = Vec::new();
    for peer_ip in peer_ips(&lab) {
        let listener = listen(&peer_ns, SocketAddr::new(peer_ip, 9000));
        let mut host = connect(&host_ns, SocketAddr::new(peer_ip, 9000), wait);
        let (mut peer, _) = listener.accept().expect("accept");
        peer.set_read_timeout(Some(wait)).expect("timeout");
        exchange(
            &format!("{peer_ip} before apply"),
            &mut host,
            &mut peer,
            b"hello",
        );
        held.push((peer_ip, host, peer, listener));
    }
    let policy = PolicyFile::new("host.yaml", HOST);
    apply(&lab, &policy, &[]);
    for (peer_ip, host, peer, _) in &mut held {
        exchange(
            &format!("{peer_ip} after apply"),
            host,
            peer,
            b"after apply",
        );
    }
    // A connection opened after apply, held as well.
    let mut fresh = Vec::new();
    for peer_ip in peer_ips(&lab) {
        let listener = listen(&peer_ns, SocketAddr::new(peer_ip, 9001));
        let mut host = connect(&host_ns, SocketAddr::new(peer_ip, 9001), wait);
        let (mut peer, _) = listener.accept().expect("accept");
        peer.set_read_timeout(Some(wait)).expect("timeout");
        exchange(
            &format!("{peer_ip} opened after apply"),
            &mut host,
            &mut peer,
            b"fresh",
        );
        fresh.push((host, peer));
    }
    let listed = flows(&lab);
    for (host, peer) in held
        .iter()
        .map(|(_, h, p, _)| (h, p))
        .chain(fresh.iter().map(|(h, p)| (h, p)))
    {
        let (local, remote) = (
            host.local_addr().expect("addr"),
            peer.local_addr().expect("addr"),
        );
        let flow = find_flow(&listed, "tcp", local, remote)
            .unwrap_or_else(|| panic!("{local} -> {remote} not listed: {listed:?}"));
        assert_eq!(flow["state"], "established", "{flow}");
        assert_eq!(flow["local_addr"], local.ip().to_string(), "{flow}");
    }
    let json = status(&lab);
    assert!(counter(&json, "allow_reply") > 0, "{json}");
    // A re-apply keeps the table and the connections.
    let changed = PolicyFile::new("changed.yaml", &format!("{HOST}  - allow: 80/tcp\n"));
    apply(&lab, &changed, &[]);
    for (peer_ip, host, peer, _) in &mut held {
        exchange(&format!("{peer_ip} after re-apply"), host, peer, b"again");
    }
    let relisted = flows(&lab);
    for (_, host, peer, _) in &held {
        let (local, remote) = (
            host.local_addr().expect("addr"),
            peer.local_addr().expect("addr"),
        );
        assert!(
            find_flow(&relisted, "tcp", local, remote).is_some(),
            "{local} -> {remote} kept across the re-apply: {relisted:?}"
        );
    }
}

#[test]
fn connections_open_before_apply_are_tracked_from_the_start() {
    let lab = root_lab("rp-seed");
    let (host_ns, peer_ns) = (lab.netns_path(Side::Server), lab.netns_path(Side::Client));
    let wait = Duration::from_secs(3);
    let (mut tcp, mut connected) = (Vec::new(), Vec::new());
    for peer_ip in peer_ips(&lab) {
        let listener = listen(&peer_ns, SocketAddr::new(peer_ip, 9002));
        let host = connect(&host_ns, SocketAddr::new(peer_ip, 9002), wait);
        let (peer, _) = listener.accept().expect("accept");
        tcp.push((host, peer));
        // A connected UDP socket, as a resolver, a QUIC or a VPN client holds one.
        let peer_udp = udp(&peer_ns, SocketAddr::new(peer_ip, 5302), WAIT);
        let host_udp = udp(&host_ns, SocketAddr::new(unspecified(peer_ip), 0), WAIT);
        host_udp
            .connect(SocketAddr::new(peer_ip, 5302))
            .expect("connect udp");
        host_udp.send(b"before apply").expect("send");
        let (_, from) = recv(&peer_udp).expect("the peer hears the host before apply");
        connected.push((host_udp, peer_udp, from));
    }
    let policy = PolicyFile::new("host.yaml", HOST);
    let out = apply(&lab, &policy, &[]);
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(
        notes.contains("tracking 4 connections the host already had open"),
        "{notes}"
    );
    // Listed at once, before any of them sends again.
    let listed = flows(&lab);
    let pairs = tcp
        .iter()
        .map(|(h, p)| ("tcp", "established", h.local_addr(), p.local_addr()))
        .chain(
            connected
                .iter()
                .map(|(h, p, _)| ("udp", "open", h.local_addr(), p.local_addr())),
        );
    for (proto, state, local, remote) in pairs {
        let (local, remote) = (local.expect("addr"), remote.expect("addr"));
        let flow = find_flow(&listed, proto, local, remote)
            .unwrap_or_else(|| panic!("{proto} {local} -> {remote} not listed: {listed:?}"));
        assert_eq!(flow["state"], state, "{flow}");
    }
    // The peer speaks first: its datagram answers a flow the host opened before the filter,
    // to a port the rules drop. The socket lookup on a miss could not have vouched for it.
    for (host_udp, peer_udp, from) in &connected {
        peer_udp.send_to(b"pushed", *from).expect("peer send");
        let got = recv(host_udp).map(|(data, _)| data);
        assert_eq!(
            got.as_deref(),
            Some(&b"pushed"[..]),
            "{from}: the peer's datagram reaches the connected socket"
        );
    }
    let json = status(&lab);
    assert!(counter(&json, "allow_reply") >= 2, "{json}");
    // A stranger's datagram to the same port is still the rules' to judge: dropped.
    let before = counter(&json, "drop_default");
    let stranger = udp(&peer_ns, SocketAddr::new(peer_ips(&lab)[0], 5303), WAIT);
    stranger
        .send_to(b"stranger", connected[0].2)
        .expect("stranger send");
    thread::sleep(Duration::from_millis(200));
    let json = status(&lab);
    assert!(counter(&json, "drop_default") > before, "{json}");
    // A re-apply finds them recorded already.
    let out = apply(&lab, &policy, &[]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("tracking"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn replies_drop_restores_the_stateless_behaviour() {
    let mut lab = root_lab("rp-stateless");
    lab.start_responder_on(Side::Client, &[8080], &[5300])
        .expect("peer responder");
    let stateful = PolicyFile::new("stateful.yaml", HOST);
    let stateless = PolicyFile::new("stateless.yaml", &host_with("replies: drop\n"));
    let peer4: IpAddr = lab.client_v4().into();
    apply(&lab, &stateful, &[]);
    assert!(
        curl_out(&lab, peer4, 8080, ANSWER).is_some(),
        "curl with replies: allow"
    );
    apply(&lab, &stateless, &[]);
    let lab_ref = &lab;
    for ip in peer_ips(lab_ref) {
        let (web, dns, ping) = thread::scope(|s| {
            let web = s.spawn(|| curl_out(lab_ref, ip, 8080, SILENT));
            let dns = s.spawn(|| probe_out(lab_ref, Proto::Udp, ip, 5300, SILENT));
            let ping = s.spawn(|| ping_out(lab_ref, ip));
            (web.join(), dns.join(), ping.join())
        });
        assert_eq!(
            web.expect("curl"),
            None,
            "stateless: curl {ip} gets no reply"
        );
        assert_eq!(dns.expect("probe"), Probe::Timeout, "stateless: udp {ip}");
        assert!(!ping.expect("ping"), "stateless, icmp: drop: ping {ip}");
    }
    let json = status(&lab);
    assert_eq!(json["flows"]["tracking"], false, "{json}");
    apply(&lab, &stateful, &[]);
    assert!(
        curl_out(&lab, peer4, 8080, ANSWER).is_some(),
        "curl with replies: allow again"
    );
}
