//! A router masquerading a LAN out of its filtered interface passes the LAN's replies and
//! nothing unsolicited.

use crate::{
    ANSWER, HOST, Job,
    common::e2e::{
        PolicyFile, apply,
        lab::{Probe, Proto, RouterLab, Side},
        probe,
    },
    counter, curl_with, flows, host_with, parallel, peer_ips, status, url,
};

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
