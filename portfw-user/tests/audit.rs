//! Audit mode (`enforce: false`) through BPF_PROG_TEST_RUN: what the policy drops passes, is
//! counted under its would-drop counter and logged with verdict would-drop; with `enforce:
//! true` (the default) the same packets are dropped as before. Needs root to load the program.
mod common;

use common::{
    builder::{icmp, raw, tcp, v4, v6},
    reference::{XDP_DROP, XDP_PASS},
};
use portfw::{compile, loader::Loaded, policy};
use portfw_common::{Event, RULE_DEFAULT, RULE_MALFORMED, action, counter};

const RULES: &str = "\
log: drops
icmp: drop
other-ip: drop
rules:
  - drop: 22/tcp
    from: 198.18.0.0/16
  - allow: 22/tcp
  - allow: 80/tcp
  - drop: 8080/tcp
";

fn load(enforce: bool) -> Loaded {
    let source = format!("default: drop\nenforce: {enforce}\n{RULES}");
    let parsed = policy::parse(&source, "audit.yaml").unwrap_or_else(|d| panic!("{d}"));
    let compiled = compile::compile(&parsed.policy).expect("compile");
    let mut loaded = Loaded::load().unwrap_or_else(|e| panic!("loading needs root: {e:#?}"));
    loaded.tables.install(&compiled).expect("install");
    loaded
}

fn drain(loaded: &mut Loaded) -> Vec<Event> {
    let mut ring = loaded.events().expect("event ring");
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        // SAFETY: the record is an Event written by the kernel program.
        events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) });
    }
    events
}

/// (frame, what decided, the counter an enforced drop bumps)
fn dropped_frames() -> Vec<(&'static str, Vec<u8>, u32, u32)> {
    vec![
        (
            "a rule's drop",
            v4(tcp(8080)).build(),
            3,
            counter::DROP_RULE,
        ),
        (
            "a source rule's drop (the source trie)",
            v4(tcp(22)).build(),
            0,
            counter::DROP_RULE,
        ),
        (
            "the default",
            v6(tcp(9999)).build(),
            RULE_DEFAULT,
            counter::DROP_DEFAULT,
        ),
        (
            "a malformed packet",
            v4(tcp(0)).build(),
            RULE_MALFORMED,
            counter::MALFORMED,
        ),
        (
            "icmp: drop",
            v4(icmp(8, 0)).build(),
            portfw_common::RULE_SETTING,
            counter::ICMP_DROP,
        ),
        (
            "other-ip: drop",
            v4(raw(47, &[0; 8])).build(),
            portfw_common::RULE_SETTING,
            counter::OTHER_IP_DROP,
        ),
    ]
}

#[test]
fn audit_mode_passes_counts_and_logs_what_it_would_drop() {
    let mut loaded = load(false);
    drain(&mut loaded);
    let before = loaded.counters().expect("counters");
    for (what, frame, _, _) in dropped_frames() {
        assert_eq!(loaded.test_run(&frame).expect("run"), XDP_PASS, "{what}");
    }
    assert_eq!(
        loaded.test_run(&v4(tcp(80)).build()).expect("run"),
        XDP_PASS,
        "an allowed port"
    );
    let after = loaded.counters().expect("counters");
    let moved = |c: u32| after[c as usize] - before[c as usize];
    let frames = dropped_frames();
    for (what, _, _, drop_counter) in &frames {
        assert_eq!(moved(*drop_counter), 0, "{what}: no drop is counted");
        assert!(
            moved(counter::would_drop(*drop_counter)) > 0,
            "{what}: {} moves",
            counter::NAMES[counter::would_drop(*drop_counter) as usize]
        );
    }
    assert_eq!(moved(counter::would_drop(counter::DROP_RULE)), 2);
    assert_eq!(
        moved(counter::ALLOW_RULE),
        1,
        "the allowed port is counted as before"
    );

    let events = drain(&mut loaded);
    assert_eq!(
        events.len(),
        frames.len(),
        "one event per would-drop: {events:#?}"
    );
    for (event, (what, _, rule, _)) in events.iter().zip(&frames) {
        assert_eq!(event.verdict, action::WOULD_DROP, "{what}: {event:?}");
        assert_eq!(event.rule, *rule, "{what}: {event:?}");
    }
}

#[test]
fn enforced_policies_drop_as_before() {
    let mut loaded = load(true);
    drain(&mut loaded);
    let before = loaded.counters().expect("counters");
    for (what, frame, _, _) in dropped_frames() {
        assert_eq!(loaded.test_run(&frame).expect("run"), XDP_DROP, "{what}");
    }
    let after = loaded.counters().expect("counters");
    let frames = dropped_frames();
    for (what, _, _, drop_counter) in &frames {
        assert!(
            after[*drop_counter as usize] > before[*drop_counter as usize],
            "{what}: the drop is counted"
        );
    }
    for c in counter::WOULD_DROP_OFFSET..counter::COUNT {
        assert_eq!(
            after[c as usize],
            before[c as usize],
            "{}",
            counter::NAMES[c as usize]
        );
    }
    let events = drain(&mut loaded);
    assert_eq!(events.len(), frames.len(), "{events:#?}");
    assert!(
        events.iter().all(|e| e.verdict == action::DROP),
        "{events:#?}"
    );
}
