//! Knock sequences: knockd's `knock` client and python knock 7001/udp, 7002/tcp, 7003/udp;
//! in order they open the door for the knocking source alone (a bystander stays out), out
//! of order or slower than `within` they open nothing, a repeated knock is ignored and a
//! fresh first knock restarts the sequence; the door closes after `for`, but a connection
//! opened while it was open goes on working. Knock ports never count for the scan guard.

use std::{
    net::{IpAddr, Ipv4Addr},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use crate::{Collected, PYTHON, Rig, TOOLS, counter, door_of, list, parallel, seconds};

const OPENS: u16 = 2222;
const SEQUENCE: &str = "7001/udp,7002/tcp,7003/udp";

/// A door opening 2222/tcp for `open` seconds. The scan guard blocks at 4 distinct dropped
/// ports: were the three knocks counted, one more dropped port would block the knocker.
fn policy(open: &str) -> String {
    format!(
        "default: drop\n\
         log: drops\n\
         scan:\n  ports: 4\n  within: 10s\n  block: 1m\n\
         rules:\n  - allow: ssh\n\
         knock:\n  - name: door\n    sequence: [7001/udp, 7002/tcp, 7003/udp]\n    \
         within: 3s\n    opens: {OPENS}/tcp\n    for: {open}\n"
    )
}

fn rig(tag: &str, extra: u8, open: &str) -> Rig {
    let mut rig = Rig::new(tag, extra);
    rig.start_echo(OPENS);
    rig.apply("knock.yaml", &policy(open));
    rig
}

/// knockd's client, `knock -v [-d DELAY_MS] SERVER PORT[:udp]...`, from `src` (by route: it
/// cannot bind an address).
fn knockd_knock(rig: &Rig, src: Ipv4Addr, delay_ms: u32, ports: &[&str]) {
    rig.route_from(src);
    let delay = delay_ms.to_string();
    let server = rig.server.to_string();
    let mut args = vec!["timeout", "20", "knock", "-v", "-d", &delay, &server];
    args.extend_from_slice(ports);
    let out = rig
        .lab
        .client(&args)
        .stdin(Stdio::null())
        .output()
        .expect("run knock");
    assert!(
        out.status.success(),
        "knock {}: {}",
        ports.join(" "),
        crate::text(&out)
    );
}

/// The python knocker, `delay` seconds between knocks.
fn py_knock(rig: &Rig, src: impl Into<IpAddr>, sequence: &str, delay: f64) {
    rig.tool(
        "knock",
        src,
        &["--sequence", sequence, "--delay", &delay.to_string()],
    );
}

#[test]
fn knock_sequences_open_the_door_for_the_knocker_alone() {
    let rig = rig("df-knock", 7, "4s");
    let [knocker, bystander, wrong, slow, python, repeated, restarted] =
        [1, 2, 3, 4, 5, 6, 7].map(|i| rig.src(i));
    let before = rig.status();
    assert!(rig.silent(knocker, OPENS), "the door starts closed");

    knockd_knock(&rig, knocker, 0, &["7001:udp", "7002", "7003:udp"]);
    let opened = Instant::now();
    let [inside, outside] = parallel(vec![
        Box::new(|| rig.reaches(knocker, OPENS)),
        Box::new(|| rig.silent(bystander, OPENS)),
    ])[..] else {
        unreachable!()
    };
    assert!(inside, "knockd's knock in order did not open the door");
    assert!(outside, "the door opened for a bystander too");
    let status = rig.status();
    let door = door_of(&status, "door", &knocker.to_string())
        .unwrap_or_else(|| panic!("no open door for {knocker}: {:#}", status["doors"]));
    let left = seconds(&door["expires_in"]).expect("expires_in");
    assert!(left > 0.0 && left <= 4.5, "a 4 s door: {door}");
    let shown = rig.status_text();
    assert!(
        shown.contains("door") && shown.contains(&knocker.to_string()),
        "portfw status does not show the open door:\n{shown}"
    );
    assert!(
        door_of(&status, "door", &bystander.to_string()).is_none(),
        "a door for the bystander: {:#}",
        status["doors"]
    );
    assert!(
        list(&status, "blocks").is_empty(),
        "knocks counted for the scan guard: {:#}",
        status["blocks"]
    );
    assert_eq!(
        counter(&status, "doors_opened") - counter(&before, "doors_opened"),
        1
    );
    assert!(
        counter(&status, "drop_knock") - counter(&before, "drop_knock") >= 3,
        "the knocks count as drop_knock"
    );
    assert!(
        counter(&status, "allow_door") > counter(&before, "allow_door"),
        "the knocker's connection counts as allow_door"
    );

    // Out of order: 7001, 7003 (a wrong knock resets), 7002.
    knockd_knock(&rig, wrong, 0, &["7001:udp", "7003:udp", "7002"]);
    // Too slow: 2 s between knocks, 4 s for a sequence that must take 3 s at most.
    knockd_knock(&rig, slow, 2000, &["7001:udp", "7002", "7003:udp"]);
    // In order from python; with a repeated knock (a retransmission, ignored); with a fresh
    // first knock in the middle, which restarts the sequence.
    py_knock(&rig, python, SEQUENCE, 0.05);
    py_knock(
        &rig,
        repeated,
        "7001/udp,7001/udp,7002/tcp,7002/tcp,7003/udp",
        0.05,
    );
    py_knock(
        &rig,
        restarted,
        "7001/udp,7002/tcp,7001/udp,7002/tcp,7003/udp",
        0.05,
    );
    let results = parallel(vec![
        Box::new(|| rig.silent(wrong, OPENS)),
        Box::new(|| rig.silent(slow, OPENS)),
        Box::new(|| rig.reaches(python, OPENS)),
        Box::new(|| rig.reaches(repeated, OPENS)),
        Box::new(|| rig.reaches(restarted, OPENS)),
    ]);
    assert_eq!(
        results, [true; 5],
        "[out of order closed, too slow closed, python opened, repeated knock opened, \
         restarted sequence opened]"
    );

    // The knocker's door has closed by now (4 s).
    thread::sleep(
        Duration::from_secs(4).saturating_sub(opened.elapsed()) + Duration::from_millis(300),
    );
    assert!(
        rig.silent(knocker, OPENS),
        "the door is still open after its 4 s"
    );
    assert!(
        door_of(&rig.status(), "door", &knocker.to_string()).is_none(),
        "the closed door is still listed"
    );
}

#[test]
fn a_connection_opened_through_a_door_outlives_it() {
    let mut rig = rig("df-hold", 2, "3s");
    let (knocker, later) = (rig.src(1), rig.src(2));
    py_knock(&rig, knocker, SEQUENCE, 0.05);
    // Connect at once, exchange a line, hold the connection 5 s (past the door's 3 s), then
    // exchange another.
    let args = [
        PYTHON,
        TOOLS,
        "hold",
        "--src",
        &knocker.to_string(),
        "--dst",
        &rig.server.to_string(),
        "--port",
        &OPENS.to_string(),
        "--pause",
        "5",
    ]
    .map(str::to_owned);
    let mut cmd = rig.lab.client(&args);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let id = rig.lab.spawn(cmd).expect("hold");
    let out = Collected::take(&mut rig.lab, id);
    thread::sleep(Duration::from_millis(3800));
    // The door has closed: a new connection from the knocker is dropped.
    assert!(
        rig.silent(knocker, OPENS),
        "a new connection 3.8 s after a 3 s door opened"
    );
    let status = rig
        .lab
        .wait(id, Duration::from_secs(15))
        .expect("hold exits");
    assert!(status.success(), "hold: {status}");
    let text = out.text();
    let seen: serde_json::Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("hold printed no result: {text}"));
    assert_eq!(
        seen["connected"], true,
        "the connection through the door: {seen}"
    );
    assert_eq!(
        seen["first"], "echo before\n",
        "before the door closed: {seen}"
    );
    assert_eq!(
        seen["second"], "echo after\n",
        "the held connection died with its door: {seen}"
    );
    // Nobody else got in meanwhile.
    assert!(
        rig.silent(later, OPENS),
        "the door was never open for {later}"
    );
}

#[test]
fn an_ipv6_knock_opens_the_door_for_its_address_alone() {
    let rig = rig("df-knock-v6", 0, "4s");
    let [knocker, neighbour, knockd] = rig.v6_sources();
    py_knock(&rig, knocker, SEQUENCE, 0.05);
    let [inside, outside] = parallel(vec![
        Box::new(|| rig.reaches(knocker, OPENS)),
        Box::new(|| rig.silent(neighbour, OPENS)),
    ])[..] else {
        unreachable!()
    };
    assert!(inside, "an IPv6 knock in order did not open the door");
    assert!(
        outside,
        "the door opened for {neighbour} too: doors are per address, not per /64"
    );
    assert!(
        door_of(&rig.status(), "door", &knocker.to_string()).is_some(),
        "the IPv6 door is listed"
    );
    // knockd's client over IPv6.
    rig.route_from(knockd);
    let server = rig.lab.server_v6().to_string();
    let out = rig
        .lab
        .client([
            "timeout", "20", "knock", "-6", "-v", &server, "7001:udp", "7002", "7003:udp",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run knock -6");
    assert!(out.status.success(), "knock -6: {}", crate::text(&out));
    assert!(
        rig.reaches(knockd, OPENS),
        "knockd's knock -6 in order did not open the door"
    );
}
