//! Replies to the host's own connections, end to end: under `default: drop` the filtered
//! namespace (the lab's server) opens connections to its peer (the client namespace) with
//! real clients (curl, python's probe, ping, sockets opened in the namespace) and gets their
//! replies, while everything else the peer sends stays out: unsolicited connections, spoofed
//! replies (from another address, from another port, a SYN-ACK nobody asked for, forged
//! with scapy), replies after their flow expired or was evicted. And a router that
//! masquerades a LAN out of its filtered interface passes the LAN's replies. Needs root.
mod common;

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use common::{
    e2e::{
        PolicyFile, apply,
        lab::{self, Lab, Probe, Proto, RouterLab, Side},
        portfw, probe, root_lab, text,
    },
    sockets::{connect, drain, listen, recv, udp},
};
use serde_json::Value;

/// A host that offers only ssh and drops every ICMP message it is not told about.
const HOST: &str = "\
default: drop
icmp: drop
rules:
  - allow: ssh
";

/// How long a socket waits for a datagram before calling it dropped.
const WAIT: Duration = Duration::from_millis(800);
/// How long a check that should succeed may take: it returns as soon as it does, so only a
/// failure waits this long.
const ANSWER: Duration = Duration::from_secs(4);
/// How long a check that should meet silence waits for it.
const SILENT: Duration = Duration::from_millis(1600);

/// [`HOST`] with `extra` top-level keys in front.
fn host_with(extra: &str) -> String {
    format!("{extra}{HOST}")
}

fn peer_ips(lab: &Lab) -> [IpAddr; 2] {
    [lab.client_v4().into(), lab.client_v6().into()]
}

/// One of the checks [`parallel`] runs.
type Job<'a, T> = Box<dyn FnOnce() -> T + Send + 'a>;

/// Runs `jobs` at once and returns their results in order: probes that wait for silence
/// take their timeout only once.
fn parallel<'a, T: Send + 'a>(jobs: Vec<Job<'a, T>>) -> Vec<T> {
    thread::scope(|s| {
        let handles: Vec<_> = jobs.into_iter().map(|job| s.spawn(job)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("parallel job"))
            .collect()
    })
}

fn url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("http://{a}:{port}/"),
        IpAddr::V6(a) => format!("http://[{a}]:{port}/"),
    }
}

/// `curl` run by `cmd`'s namespace (built by the caller): the body when the request succeeds.
fn curl_with(mut cmd: std::process::Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).output().expect("curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `curl` from the filtered namespace to its peer, giving up after `wait`.
fn curl_out(lab: &Lab, ip: IpAddr, port: u16, wait: Duration) -> Option<String> {
    let max_time = format!("{:.1}", wait.as_secs_f64());
    curl_with(lab.server(["curl", "-sS", "-g", "--max-time", &max_time, &url(ip, port)]))
}

/// One echo request from the filtered namespace: true when the reply arrived.
fn ping_out(lab: &Lab, ip: IpAddr) -> bool {
    lab.server(["ping", "-n", "-q", "-c", "1", "-W", "2", &ip.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("ping")
        .status
        .success()
}

/// A probe from the filtered namespace outward.
fn probe_out(lab: &Lab, proto: Proto, ip: IpAddr, port: u16, timeout: Duration) -> Probe {
    lab.probe(Side::Server, proto, ip, port, timeout)
        .expect("probe")
}

fn status(lab: &Lab) -> Value {
    let out = portfw(lab, &["status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("status json")
}

fn counter(status: &Value, name: &str) -> u64 {
    status["counters"]
        .as_array()
        .and_then(|c| c.iter().find(|pair| pair[0] == name))
        .and_then(|pair| pair[1].as_u64())
        .unwrap_or(0)
}

/// `portfw flows --json`: one object per live flow.
fn flows(lab: &Lab) -> Vec<Value> {
    let out = portfw(lab, &["flows", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("flows json")
        .as_array()
        .cloned()
        .expect("a JSON array")
}

/// The listed flow of `protocol` from the host's `local` to `remote`, if any.
fn find_flow<'a>(
    flows: &'a [Value],
    protocol: &str,
    local: SocketAddr,
    remote: SocketAddr,
) -> Option<&'a Value> {
    flows.iter().find(|f| {
        f["protocol"] == protocol
            && f["local_port"] == local.port()
            && f["remote_port"] == remote.port()
            && f["remote_addr"] == remote.ip().to_string()
    })
}

/// Adds a second address to the peer's interface, in each family; returns them.
fn second_peer_address(lab: &Lab) -> [IpAddr; 2] {
    let mut v4 = lab.client_v4().octets();
    v4[3] = 3;
    let mut v6 = lab.client_v6().segments();
    v6[7] = 3;
    let (v4, v6): (IpAddr, IpAddr) = (v4.into(), v6.into());
    for (addr, len) in [(v4, 24), (v6, 64)] {
        lab.run(
            Side::Client,
            [
                "ip",
                "addr",
                "add",
                &format!("{addr}/{len}"),
                "dev",
                lab.client_iface(),
                "nodad",
            ],
        )
        .expect("add a peer address");
    }
    [v4, v6]
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::from([0u8; 4]),
        IpAddr::V6(_) => IpAddr::from([0u16; 8]),
    }
}

fn host_addr_for(lab: &Lab, peer: IpAddr) -> IpAddr {
    if peer.is_ipv6() {
        lab.server_v6().into()
    } else {
        lab.server_v4().into()
    }
}

#[test]
fn outbound_tcp_udp_and_ping_get_their_replies_under_default_drop() {
    let mut lab = root_lab("rp-out");
    lab.start_responder_on(Side::Client, &[8080], &[5300])
        .expect("peer responder");
    let policy = PolicyFile::new("host.yaml", HOST);
    apply(&lab, &policy, &[]);
    let lab = &lab;
    for ip in peer_ips(lab) {
        let (web, dns, ping) = thread::scope(|s| {
            let web = s.spawn(|| curl_out(lab, ip, 8080, ANSWER));
            let dns = s.spawn(|| probe_out(lab, Proto::Udp, ip, 5300, ANSWER));
            let ping = s.spawn(|| ping_out(lab, ip));
            (web.join(), dns.join(), ping.join())
        });
        assert_eq!(
            web.expect("curl").as_deref(),
            Some("portfw-ok\n"),
            "curl {ip}:8080"
        );
        assert_eq!(
            dns.expect("probe"),
            Probe::Open("portfw-ok 5300\n".into()),
            "udp {ip}:5300"
        );
        assert!(ping.expect("ping"), "ping {ip} under icmp: drop");
    }
    let json = status(lab);
    assert!(
        counter(&json, "allow_reply") >= 6,
        "replies passed by the flow table are counted: {json}"
    );
    assert_eq!(json["flows"]["tracking"], true, "{json}");
    assert!(
        json["flows"]["created"].as_u64().unwrap_or(0) >= 6,
        "a TCP, a UDP and an echo flow per family: {json}"
    );
}

#[test]
fn unsolicited_tcp_and_udp_to_the_hosts_high_ports_are_dropped() {
    let mut lab = root_lab("rp-unsol");
    lab.start_responder(&[22, 40000, 50000], &[40000, 50000])
        .expect("host responder");
    lab.start_responder_on(Side::Client, &[8080], &[5300])
        .expect("peer responder");
    let server4: IpAddr = lab.server_v4().into();
    assert!(
        probe(&lab, Proto::Tcp, server4, 40000).is_open(),
        "40000 answers before apply"
    );
    let policy = PolicyFile::new("host.yaml", HOST);
    apply(&lab, &policy, &[]);
    let lab = &lab;
    // The host's own connections work, and open nothing for anyone else.
    for ip in peer_ips(lab) {
        assert!(curl_out(lab, ip, 8080, ANSWER).is_some(), "curl {ip}:8080");
        assert!(
            probe_out(lab, Proto::Udp, ip, 5300, ANSWER).is_open(),
            "udp {ip}:5300"
        );
    }
    let mut jobs: Vec<Job<'_, (String, Probe)>> = Vec::new();
    for ip in [lab.server_v4().into(), lab.server_v6().into()] {
        for port in [40000, 50000] {
            for proto in [Proto::Tcp, Proto::Udp] {
                jobs.push(Box::new(move || {
                    (
                        format!("{proto:?} {ip}:{port}"),
                        probe(lab, proto, ip, port),
                    )
                }));
            }
        }
        jobs.push(Box::new(move || {
            (format!("ssh {ip}"), probe(lab, Proto::Tcp, ip, 22))
        }));
    }
    for (what, seen) in parallel(jobs) {
        if what.starts_with("ssh") {
            assert!(seen.is_open(), "{what} is allowed: {seen:?}");
        } else {
            assert_eq!(seen, Probe::Timeout, "{what} from the peer must be dropped");
        }
    }
}

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

#[test]
fn port_unreachable_and_resets_answering_the_host_arrive_under_icmp_drop() {
    let lab = root_lab("rp-refuse");
    let policy = PolicyFile::new("host.yaml", HOST);
    apply(&lab, &policy, &[]);
    let lab = &lab;
    let mut jobs: Vec<Job<'_, (String, Probe, Duration)>> = Vec::new();
    for ip in peer_ips(lab) {
        for (proto, port) in [(Proto::Udp, 5399), (Proto::Tcp, 8099)] {
            jobs.push(Box::new(move || {
                let t = Instant::now();
                let seen = probe_out(lab, proto, ip, port, Duration::from_secs(3));
                (format!("{proto:?} {ip}:{port}"), seen, t.elapsed())
            }));
        }
    }
    for (what, seen, took) in parallel(jobs) {
        assert_eq!(
            seen,
            Probe::Refused,
            "{what}: refused by the peer, not silence"
        );
        assert!(
            took < Duration::from_millis(1500),
            "{what}: refused at once, not after a timeout ({took:?})"
        );
    }
    let json = status(lab);
    assert!(
        counter(&json, "allow_related") >= 2,
        "port unreachable (v4, v6) passed as related: {json}"
    );
    assert!(
        counter(&json, "allow_reply") >= 2,
        "the resets passed as replies: {json}"
    );
    // Stateless, the same port unreachable is an ICMP message `icmp: drop` drops.
    let stateless = PolicyFile::new("stateless.yaml", &host_with("replies: drop\n"));
    apply(lab, &stateless, &[]);
    let seen = parallel::<Probe>(
        peer_ips(lab)
            .into_iter()
            .map(|ip| {
                Box::new(move || probe_out(lab, Proto::Udp, ip, 5399, SILENT)) as Job<'_, Probe>
            })
            .collect(),
    );
    assert_eq!(seen, [Probe::Timeout, Probe::Timeout], "replies: drop");
}

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

#[test]
fn a_masquerading_router_passes_its_lans_replies_and_nothing_unsolicited() {
    // SAFETY: geteuid has no preconditions.
    assert!(unsafe { libc::geteuid() } == 0, "router tests need root");
    let mut router = RouterLab::new("rp-router").expect("router lab");
    router
        .start_responder_on(Side::Client, &[8080], &[5300])
        .expect("remote responder");
    router
        .start_responder(&[22, 8088], &[5353])
        .expect("router responder");
    let policy = PolicyFile::new("router.yaml", HOST);
    apply(&router, &policy, &[]);
    let remotes = peer_ips(&router);
    let router_ref = &router;
    let mut jobs: Vec<Job<'_, (String, String)>> = Vec::new();
    for ip in remotes {
        jobs.push(Box::new(move || {
            let got =
                curl_with(router_ref.lan(["curl", "-sS", "-g", "--max-time", "4", &url(ip, 8080)]));
            (format!("LAN curl {ip}"), format!("{got:?}"))
        }));
        jobs.push(Box::new(move || {
            let got = router_ref
                .lan_probe(Proto::Udp, ip, 5300, ANSWER)
                .expect("probe");
            (format!("LAN udp {ip}"), format!("{got:?}"))
        }));
        // Closed ports on the remote: the port unreachable (related, under icmp: drop) and
        // the reset come back through the filter and conntrack to the LAN.
        for (proto, port) in [(Proto::Udp, 5399), (Proto::Tcp, 8099)] {
            jobs.push(Box::new(move || {
                let got = router_ref
                    .lan_probe(proto, ip, port, ANSWER)
                    .expect("probe");
                (
                    format!("LAN refused {proto:?} {ip}:{port}"),
                    format!("{got:?}"),
                )
            }));
        }
    }
    // The remote reaches none of the router's own listeners but ssh.
    for ip in [router.server_v4().into(), router.server_v6().into()] {
        for (proto, port) in [(Proto::Tcp, 8088), (Proto::Udp, 5353), (Proto::Tcp, 22)] {
            jobs.push(Box::new(move || {
                let got = probe(router_ref, proto, ip, port);
                (format!("remote {proto:?} {ip}:{port}"), format!("{got:?}"))
            }));
        }
    }
    for (what, got) in parallel(jobs) {
        if what.starts_with("LAN curl") {
            assert_eq!(got, format!("{:?}", Some("portfw-ok\n")), "{what}");
        } else if what.starts_with("LAN udp") {
            let want = Probe::Open("portfw-ok 5300\n".into());
            assert_eq!(got, format!("{want:?}"), "{what}");
        } else if what.starts_with("LAN refused") {
            assert_eq!(got, format!("{:?}", Probe::Refused), "{what}");
        } else if what.ends_with(":22") {
            assert!(got.starts_with("Open("), "{what} is allowed: {got}");
        } else {
            assert_eq!(
                got,
                format!("{:?}", Probe::Timeout),
                "{what} must be dropped"
            );
        }
    }
    // The LAN's flows were recorded where they left: with the router's address.
    let listed = flows(&router);
    let wan4 = router.server_v4().to_string();
    assert!(
        listed.iter().any(|f| f["protocol"] == "tcp"
            && f["local_addr"] == wan4
            && f["remote_port"] == 8080
            && f["iface"] == router.server_iface()),
        "the LAN's connection, masqueraded, is a flow of the WAN interface: {listed:?}"
    );
    let json = status(&router);
    assert!(counter(&json, "allow_reply") > 0, "{json}");
    assert!(counter(&json, "allow_related") >= 2, "{json}");
    // Stateless, the LAN's replies are dropped at the router.
    let stateless = PolicyFile::new("stateless.yaml", &host_with("replies: drop\n"));
    apply(&router, &stateless, &[]);
    let got = curl_with(router.lan([
        "curl",
        "-sS",
        "-g",
        "--max-time",
        "2",
        &url(remotes[0], 8080),
    ]));
    assert_eq!(
        got, None,
        "replies: drop stops the LAN's replies at the router"
    );
}
