//! Attempt logging under a flood: 20,000 drops from one source, to 20,000 ports (the
//! `log-limit` path), to one port (the aggregation path) and to 4,000 ports five times (the
//! reader's flush of quiet keys), give a bounded number of events whose `count`s plus
//! `suppressed` totals equal the packets the kernel counted, and a lone drop from a second
//! source, sent mid-flood, still shows; so do more aggregating keys than the table holds.
//! Text output marks an aggregated event with `×N`. And the defences' drops are logged with
//! their reason.

use std::{collections::BTreeMap, net::Ipv4Addr, process::Stdio, thread, time::Duration};

use serde_json::Value;

use crate::{ChildId, Collected, PORTFW, Rig, counter, parallel};

const POLICY: &str = "\
default: drop
log: drops
log-limit: 100/s
rules:
  - allow: ssh
";

const FLOOD: u64 = 20_000;
/// The most events a flood of [`FLOOD`] drops may produce.
const MOST_EVENTS: usize = 2_000;

/// A running `portfw events` and its stdout.
struct Reader {
    id: ChildId,
    out: Collected,
}

impl Reader {
    fn start(rig: &mut Rig, json: bool) -> Reader {
        let mut args = vec![PORTFW, "events", "--timeout", "120"];
        if json {
            args.push("--json");
        }
        let mut cmd = rig.lab.server(&args);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        let id = rig.lab.spawn(cmd).expect("portfw events");
        let out = Collected::take(&mut rig.lab, id);
        // The reader has opened the ring when it has had a moment; nothing is sent before.
        thread::sleep(Duration::from_millis(1500));
        Reader { id, out }
    }

    /// Waits for quiet keys to be flushed (2 windows and the reader's second), stops the
    /// reader and returns its lines.
    fn stop(self, rig: &mut Rig) -> Vec<String> {
        thread::sleep(Duration::from_secs(4));
        let status = rig
            .lab
            .interrupt(self.id, Duration::from_secs(10))
            .expect("stop portfw events");
        let text = self.out.text();
        assert!(status.success(), "portfw events: {status}\n{text}");
        text.lines().map(str::to_owned).collect()
    }
}

/// What a stream of JSON events adds up to.
#[derive(Debug, Default)]
struct Tally {
    events: usize,
    summaries: usize,
    /// Sum of `count` over events.
    counted: u64,
    /// Sum of `suppressed` over events and summary records.
    suppressed: u64,
    /// Events without a `count`.
    uncounted: usize,
    /// Packets (`count`) by source.
    by_source: BTreeMap<String, u64>,
    /// The most events (and summaries) printed within one second of wall time.
    busiest_second: usize,
    /// Events with `"flushed": true`.
    flushed: usize,
}

fn tally(lines: &[String]) -> Tally {
    let mut t = Tally::default();
    let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        let e: Value = serde_json::from_str(line)
            .unwrap_or_else(|err| panic!("portfw events --json printed {line:?}: {err}"));
        t.suppressed += e["suppressed"].as_u64().unwrap_or(0);
        if let Some(ns) = e["time_ns"].as_u64() {
            *per_second.entry(ns / 1_000_000_000).or_default() += 1;
        }
        if e["summary"] == true {
            t.summaries += 1;
            continue;
        }
        t.events += 1;
        t.flushed += usize::from(e["flushed"] == true);
        let count = e["count"].as_u64().unwrap_or_else(|| {
            t.uncounted += 1;
            1
        });
        t.counted += count;
        if let Some(src) = e["src"].as_str() {
            *t.by_source.entry(src.to_owned()).or_default() += count;
        }
    }
    t.busiest_second = per_second.values().copied().max().unwrap_or(0);
    t
}

/// Drops the kernel counted (by a rule or the default).
fn drops(rig: &Rig) -> u64 {
    let status = rig.status();
    counter(&status, "drop_default") + counter(&status, "drop_rule")
}

/// Floods with `flood` while `second` sends one datagram to `lone_port` mid-flood, and
/// checks what the events say against the counters.
fn flood_and_count(
    rig: &mut Rig,
    what: &str,
    second: Ipv4Addr,
    lone_port: u16,
    flood: impl FnOnce(&Rig) + Send,
) {
    flood_and_count_n(rig, what, second, lone_port, FLOOD, flood);
}

/// [`flood_and_count`] for a flood of `packets`.
fn flood_and_count_n(
    rig: &mut Rig,
    what: &str,
    second: Ipv4Addr,
    lone_port: u16,
    packets: u64,
    flood: impl FnOnce(&Rig) + Send,
) {
    let before = drops(rig);
    let reader = Reader::start(rig, true);
    let lone = lone_port.to_string();
    {
        let rig = &*rig;
        parallel(vec![
            Box::new(move || flood(rig)),
            Box::new(move || {
                thread::sleep(Duration::from_millis(300));
                rig.tool("scan", second, &["--ports", &lone, "--udp"]);
            }),
        ]);
    }
    let lines = reader.stop(rig);
    let counted = drops(rig) - before;
    let t = tally(&lines);
    eprintln!("{what}: kernel drops {counted}, events {t:?}");
    assert!(
        counted > packets,
        "{what}: the kernel counted {counted} drops of a flood of {packets} and one more; the \
         lab lost packets before the filter"
    );
    assert_eq!(t.uncounted, 0, "{what}: events without `count`");
    assert!(
        t.events + t.summaries < MOST_EVENTS,
        "{what}: {} events ({} of them flushed) and {} summaries for a flood of {packets} \
         drops under `log-limit: 100/s`, {} in the busiest second",
        t.events,
        t.flushed,
        t.summaries,
        t.busiest_second
    );
    assert_eq!(
        t.counted + t.suppressed,
        counted,
        "{what}: counts ({}) plus suppressed ({}) against the kernel's drops ({counted})",
        t.counted,
        t.suppressed
    );
    let second = second.to_string();
    assert_eq!(
        t.by_source.get(&second).copied(),
        Some(1),
        "{what}: the second source's lone drop is not among the events: {:?}",
        t.by_source
    );
}

#[test]
fn a_flood_of_drops_gives_few_events_that_add_up() {
    let mut rig = Rig::new("df-flood", 2);
    let (flooder, second) = (rig.src(1), rig.src(2));
    let _policy = rig.apply("flood.yaml", POLICY);

    // 20,000 ports, one datagram each: every packet is a first event, so log-limit decides.
    flood_and_count(&mut rig, "20,000 ports", second, 9998, |rig| {
        let seen = rig.tool(
            "flood",
            flooder,
            &["--ports", "10000-29999", "--count", &FLOOD.to_string()],
        );
        assert_eq!(seen["sent"], FLOOD, "python flood: {seen}");
    });

    // One port: the events aggregate, hping3 as fast as it goes (bounded by its count).
    flood_and_count(&mut rig, "one port", second, 9997, |rig| {
        let server = rig.server.to_string();
        let src = flooder.to_string();
        let count = FLOOD.to_string();
        let out = rig
            .lab
            .client([
                "timeout", "60", "hping3", "--udp", "-p", "9999", "-a", &src, "-c", &count, "-i",
                "u40", "-q", &server,
            ])
            .stdin(Stdio::null())
            .output()
            .expect("hping3");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("packets transmitted")
                || String::from_utf8_lossy(&out.stdout).contains("packets transmitted"),
            "hping3 ran: {}",
            crate::text(&out)
        );
    });

    // Text output: an aggregated event says ×N.
    let reader = Reader::start(&mut rig, false);
    rig.tool(
        "flood",
        flooder,
        &["--ports", "9996", "--count", "30", "--batch", "30"],
    );
    let lines = reader.stop(&mut rig);
    assert!(
        lines.iter().any(|l| l.contains('×')),
        "no ×N in the text events of 30 drops to one port:\n{}",
        lines.join("\n")
    );
}

#[test]
fn flushed_events_count_against_the_log_limit() {
    let mut rig = Rig::new("df-flush", 2);
    let (flooder, second) = (rig.src(1), rig.src(2));
    let _policy = rig.apply("flood.yaml", POLICY);
    // 4,000 ports, five datagrams each: every key aggregates and then goes quiet, so the
    // reader flushes it; a flushed event is an event like any other, under the same cap.
    flood_and_count(&mut rig, "4,000 ports five times", second, 9995, |rig| {
        let seen = rig.tool(
            "flood",
            flooder,
            &["--ports", "30000-33999", "--count", &FLOOD.to_string()],
        );
        assert_eq!(seen["sent"], FLOOD, "python flood: {seen}");
    });
}

#[test]
fn more_aggregating_keys_than_the_table_holds_still_add_up() {
    let mut rig = Rig::new("df-evict", 2);
    let (flooder, second) = (rig.src(1), rig.src(2));
    let _policy = rig.apply("flood.yaml", POLICY);
    // Two datagrams to each of 20,000 ports (40,000 in all): more keys with a pending count
    // than the aggregation table's LOG_AGG_MAX. What the table evicts must still be counted.
    let keys = 20_000u64;
    assert!(keys > u64::from(portfw_common::LOG_AGG_MAX));
    flood_and_count_n(
        &mut rig,
        "20,000 ports twice",
        second,
        9994,
        2 * keys,
        |rig| {
            let seen = rig.tool(
                "flood",
                flooder,
                &["--ports", "10000-29999", "--count", &(2 * keys).to_string()],
            );
            assert_eq!(seen["sent"], 2 * keys, "python flood: {seen}");
        },
    );
}

#[test]
fn defence_drops_are_logged_with_their_reason() {
    let mut rig = Rig::new("df-reasons", 3);
    rig.lab
        .start_responder(&[22, 8022], &[])
        .expect("responder");
    let (blocked, limited, knocker) = (rig.src(1), rig.src(2), rig.src(3));
    let _policy = rig.apply(
        "reasons.yaml",
        "default: drop\nlog: drops\nrules:\n  - allow: ssh\n  - allow: 8022/tcp\n    \
         limit: 2/1m\nknock:\n  - name: door\n    sequence: [7001/udp, 7002/udp]\n    \
         within: 5s\n    opens: 2222/tcp\n    for: 30s\n",
    );
    rig.portfw_ok(&["block", &blocked.to_string(), "--for", "1m"]);
    let reader = Reader::start(&mut rig, true);
    rig.tool("scan", blocked, &["--ports", "22", "--timeout", "0.5"]);
    rig.tool(
        "burst",
        limited,
        &["--port", "8022", "--count", "4", "--timeout", "0.5"],
    );
    rig.tool("knock", knocker, &["--sequence", "7001/udp"]);
    let lines = reader.stop(&mut rig);
    let events: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for (src, reason) in [(blocked, "blocked"), (limited, "limit"), (knocker, "knock")] {
        let src = src.to_string();
        assert!(
            events.iter().any(|e| e["src"] == src.as_str()
                && e["verdict"] == "drop"
                && e["reason"] == reason),
            "no drop event with reason {reason} from {src}:\n{}",
            lines.join("\n")
        );
    }
}
