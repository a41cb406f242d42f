//! Replies to the host's own connections, end to end: under `default: drop` the filtered
//! namespace (the lab's server) opens connections to its peer (the client namespace) with
//! real clients (curl, python's probe, ping, sockets opened in the namespace) and gets their
//! replies, while everything else the peer sends stays out: unsolicited connections, spoofed
//! replies (from another address, from another port, a SYN-ACK nobody asked for, forged
//! with scapy), replies after their flow expired or was evicted. And a router that
//! masquerades a LAN out of its filtered interface passes the LAN's replies. Needs root.
//! The tests live in `tests/replies/`, one file per concern.
mod common;

/// The tests, one module per concern; the rig they share stays here.
mod replies {
    pub mod clsact;
    pub mod outbound;
    pub mod router;
    pub mod spoofed;
    pub mod table;
}

use std::{
    net::{IpAddr, SocketAddr},
    process::Stdio,
    time::Duration,
};

use common::e2e::{
    Job,
    lab::{Lab, Probe, Proto, Side},
    parallel, portfw, text,
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
pub const WAIT: Duration = Duration::from_millis(800);
/// How long a check that should succeed may take: it returns as soon as it does, so only a
/// failure waits this long.
pub const ANSWER: Duration = Duration::from_secs(4);
/// How long a check that should meet silence waits for it.
pub const SILENT: Duration = Duration::from_millis(1600);

/// [`HOST`] with `extra` top-level keys in front.
fn host_with(extra: &str) -> String {
    format!("{extra}{HOST}")
}

fn peer_ips(lab: &Lab) -> [IpAddr; 2] {
    [lab.client_v4().into(), lab.client_v6().into()]
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
