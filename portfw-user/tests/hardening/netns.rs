//! Namespaces that die: one whose inode is reused gets a real filter, and the leftovers of
//! dead ones are reclaimed while live ones are kept.

use std::{
    thread,
    time::{Duration, Instant},
};

use crate::{
    ALLOW_ALL, Netns, Pair, PolicyFile, Sandbox, alone, counter, hardening::interrupted::Paused,
    lone_netns, status_json, stderr, text,
};

#[test]
fn a_namespace_that_reuses_a_dead_ones_inode_gets_a_real_filter() {
    let _alone = alone();
    let sandbox = Sandbox::new();
    let mut pair = Pair::new("recycle", 71);
    let policy = PolicyFile::new(ALLOW_ALL);
    let apply = ["apply", policy.path(), "--iface", "s0"];
    let out = sandbox.portfw(&pair.server, &apply);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !pair.udp_arrives(7777),
        "7777 is dropped while the filter runs"
    );
    assert!(pair.udp_arrives(7778), "7778 is allowed");

    // Deleted without `portfw detach`: its pins and state stay, named by its inode. Its inode
    // is free once the kernel has torn it down, which the veth's end in the client shows.
    let inode = pair.server.inode();
    pair.server.delete();
    let started = Instant::now();
    while pair.client.has_link("c0") {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the namespace lingers"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let mut held = Vec::new();
    let mut tries = 0;
    let server = loop {
        tries += 1;
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no new namespace got inode {inode} in {tries} tries"
        );
        let ns = Netns::new("recycle-s");
        match ns.inode() {
            i if i == inode => break ns,
            // Lower inodes are free first: hold them so the next namespace gets a higher one.
            i if i < inode => held.push(ns),
            _ => {
                drop(ns);
                thread::sleep(Duration::from_millis(20));
            }
        }
    };
    drop(held);
    pair.server = server;
    pair.join();
    println!("inode {inode} reused after {tries} namespaces");
    assert!(pair.udp_arrives(7777), "unfiltered, 7777 arrives");

    // Before any apply here, status does not pass the dead namespace's filter off as this one's.
    let out = sandbox.portfw(&pair.server, &["status"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("deleted namespace whose inode this one reuses"),
        "{}",
        text(&out)
    );

    let out = sandbox.portfw(&pair.server, &apply);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("loaded program"),
        "a fresh load, not an update of the dead namespace's filter: {}",
        text(&out)
    );
    assert!(
        stderr(&out).contains("deleted network namespace"),
        "{}",
        text(&out)
    );
    assert!(
        !pair.udp_arrives(7777),
        "7777 must be dropped after the apply"
    );
    assert!(pair.udp_arrives(7778), "7778 is allowed");
    let status = status_json(&sandbox, &pair.server);
    assert_eq!(status["attachments"][0]["iface"], "s0", "{status}");
    assert_eq!(status["attachments"][0]["filtered"], true, "{status}");
    assert!(counter(&status, "drop_rule") > 0, "{status}");
    let out = sandbox.portfw(&pair.server, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn the_leftovers_of_dead_namespaces_are_reclaimed_and_live_ones_kept() {
    let _alone = alone();
    let sandbox = Sandbox::new();
    let policy = PolicyFile::new(ALLOW_ALL);
    let apply = ["apply", policy.path(), "--iface", "v0"];
    let next = lone_netns("next");
    let alive = lone_netns("alive");
    // The dead namespace's interface has its peer in `next`, which shows when the kernel
    // has torn the namespace down.
    let mut dead = Netns::new("dead");
    dead.ip(&[
        "link", "add", "v0", "type", "veth", "peer", "name", "dpeer", "netns", &next.name,
    ]);
    dead.ip(&["link", "set", "v0", "up"]);
    for ns in [&dead, &alive] {
        let out = sandbox.portfw(ns, &apply);
        assert!(out.status.success(), "{}", text(&out));
    }
    let dead_pins = format!("/sys/fs/bpf/portfw/{}", dead.inode());
    let dead_state = format!("/run/portfw/{}.json", dead.inode());
    let alive_pins = format!("/sys/fs/bpf/portfw/{}", alive.inode());
    // A namespace whose first apply was killed before it attached anything, then deleted.
    let mut killed = lone_netns("killed");
    let paused = Paused::start(&sandbox, &killed, &apply[1..], "fresh-pinned");
    let killed_tmp = format!("/sys/fs/bpf/portfw/tmp-{}-{}", killed.inode(), paused.pid());
    paused.finish(libc::SIGKILL);
    assert!(sandbox.exists(&killed_tmp));
    killed.delete();
    // A namespace that lives on without its interface: its links are attached to nothing,
    // but it is not dead, and its filter is its own business.
    alive.ip(&["link", "del", "v0"]);
    dead.delete();
    let started = Instant::now();
    while next.has_link("dpeer") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the namespace lingers"
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(sandbox.exists(&dead_pins) && sandbox.exists(&dead_state));

    let out = sandbox.portfw(&next, &apply);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains(&format!("reclaimed {dead_pins}")),
        "{}",
        text(&out)
    );
    assert!(
        stderr(&out).contains(&format!("reclaimed {killed_tmp}")),
        "{}",
        text(&out)
    );
    assert!(!sandbox.exists(&killed_tmp), "{killed_tmp} left behind");
    assert!(!sandbox.exists(&dead_pins), "{dead_pins} left behind");
    assert!(!sandbox.exists(&dead_state), "{dead_state} left behind");
    assert!(
        sandbox.exists(&alive_pins),
        "a live namespace's pins were removed"
    );
    for ns in [&alive, &next] {
        let out = sandbox.portfw(ns, &["detach"]);
        assert!(out.status.success(), "{}", text(&out));
    }
}
