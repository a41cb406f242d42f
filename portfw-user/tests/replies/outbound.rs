//! Replies to the host's own TCP, UDP and ping get in under `default: drop`, unsolicited
//! traffic to its high ports does not, and ICMP errors and resets answering it arrive under
//! `icmp: drop`.

use std::{
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use crate::{
    ANSWER, HOST, Job, SILENT,
    common::e2e::{
        PolicyFile, apply,
        lab::{Probe, Proto, Side},
        probe, root_lab,
    },
    counter, curl_out, host_with, parallel, peer_ips, ping_out, probe_out, status,
};

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
