//! Links planted by another user in the pin root and in the state directory are refused, not
//! followed.

use std::path::Path;

use crate::{ALLOW_ALL, PolicyFile, Sandbox, Victim, assert_refused, lone_netns, shared, text};

#[test]
fn links_planted_in_a_world_writable_pin_root_are_refused_not_followed() {
    let _shared = shared();
    let sandbox = Sandbox::new();
    let ns = lone_netns("plant");
    let ino = ns.inode().to_string();
    let policy = PolicyFile::new(ALLOW_ALL);
    let (first, second) = (Victim::new("ns"), Victim::new("tmp"));
    let pins = format!("/sys/fs/bpf/portfw/{ino}");
    let tmp = format!("/sys/fs/bpf/portfw/tmp-{ino}-99999");

    // The reproduction: nobody makes the pin root, and plants links named after the
    // namespace and after an abandoned apply of it.
    sandbox.nobody(&["mkdir", "/sys/fs/bpf/portfw"]);
    sandbox.nobody(&["ln", "-s", first.path(), &pins]);
    sandbox.nobody(&["ln", "-s", second.path(), &tmp]);
    for args in [
        vec!["detach"],
        vec!["apply", policy.path(), "--iface", "v0"],
        vec!["status"],
    ] {
        let out = sandbox.portfw(&ns, &args);
        assert_refused(
            &out,
            "/sys/fs/bpf/portfw",
            "is owned by uid 65534, not root",
        );
    }
    assert!(first.intact() && second.intact(), "a victim was emptied");

    // The pin root is root's but world-writable (an admin's chmod): still refused.
    sandbox.must(&["rm", "-r", "/sys/fs/bpf/portfw"]);
    sandbox.must(&["mkdir", "-m", "0777", "/sys/fs/bpf/portfw"]);
    sandbox.nobody(&["ln", "-s", first.path(), &pins]);
    sandbox.nobody(&["ln", "-s", second.path(), &tmp]);
    for args in [
        vec!["detach"],
        vec!["apply", policy.path(), "--iface", "v0"],
    ] {
        let out = sandbox.portfw(&ns, &args);
        assert_refused(
            &out,
            "/sys/fs/bpf/portfw",
            "is writable by every user (mode 0777)",
        );
    }
    assert!(first.intact() && second.intact(), "a victim was emptied");

    // Tightened afterwards, the links planted meanwhile are still there: each is refused
    // by name, and neither is followed.
    sandbox.must(&["chmod", "0700", "/sys/fs/bpf/portfw"]);
    let out = sandbox.portfw(&ns, &["detach"]);
    assert_refused(&out, &pins, "is a symbolic link");
    let out = sandbox.portfw(&ns, &["status"]);
    assert_refused(&out, &pins, "is a symbolic link");
    sandbox.must(&["rm", &pins]);
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert_refused(&out, &tmp, "is a symbolic link");
    assert!(first.intact() && second.intact(), "a victim was emptied");
    sandbox.must(&["rm", &tmp]);

    // A real directory of nobody's in the namespace's place is refused too, and so is a link
    // inside a pin directory that is root's.
    sandbox.must(&["chmod", "0777", "/sys/fs/bpf/portfw"]);
    sandbox.nobody(&["mkdir", &pins]);
    sandbox.must(&["chmod", "0700", "/sys/fs/bpf/portfw"]);
    let out = sandbox.portfw(&ns, &["detach"]);
    assert_refused(&out, &pins, "is owned by uid 65534, not root");
    sandbox.must(&["rm", "-r", &pins]);
    sandbox.must(&["mkdir", "-m", "0700", &pins]);
    sandbox.must(&[
        "ln",
        "-s",
        &format!("{}/precious", first.path()),
        &format!("{pins}/link-v0"),
    ]);
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert_refused(&out, &format!("{pins}/link-v0"), "is a symbolic link");
    assert!(first.intact() && second.intact(), "a victim was emptied");
    sandbox.must(&["rm", "-r", "/sys/fs/bpf/portfw"]);

    // Clean, portfw makes the pin root itself: root's, mode 0700.
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sandbox.stat("%U %a", "/sys/fs/bpf/portfw"), "root 700");
    assert_eq!(sandbox.stat("%U %a", &pins), "root 700");
    let out = sandbox.portfw(&ns, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!sandbox.exists(&pins));
}

#[test]
fn links_planted_in_the_state_directory_are_refused_not_followed() {
    let _shared = shared();
    // /run as writable by everyone, the way a careless host might have it.
    let sandbox = Sandbox::with_modes("0700", "/run", "1777");
    let ns = lone_netns("state");
    let ino = ns.inode().to_string();
    let policy = PolicyFile::new(ALLOW_ALL);
    let victim = Victim::new("state");
    let precious = format!("{}/precious", victim.path());
    let absent = format!("{}/created-by-root", victim.path());

    sandbox.nobody(&["mkdir", "/run/portfw"]);
    sandbox.nobody(&["ln", "-s", &precious, &format!("/run/portfw/{ino}.json")]);
    sandbox.nobody(&["ln", "-s", &absent, &format!("/run/portfw/{ino}.lock")]);
    for args in [
        vec!["apply", policy.path(), "--iface", "v0"],
        vec!["detach"],
        vec!["status"],
    ] {
        let out = sandbox.portfw(&ns, &args);
        assert_refused(&out, "/run/portfw", "is owned by uid 65534, not root");
    }
    assert!(victim.intact() && !Path::new(&absent).exists());

    // Root's but world-writable: refused.
    sandbox.must(&["chown", "root:root", "/run/portfw"]);
    sandbox.must(&["chmod", "0777", "/run/portfw"]);
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert_refused(&out, "/run/portfw", "is writable by every user (mode 0777)");

    // Tightened, the planted links are still there: the lock and the state file are each
    // refused by name, not followed.
    sandbox.must(&["chmod", "0700", "/run/portfw"]);
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert_refused(
        &out,
        &format!("/run/portfw/{ino}.lock"),
        "is a symbolic link",
    );
    sandbox.must(&["rm", &format!("/run/portfw/{ino}.lock")]);
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert_refused(
        &out,
        &format!("/run/portfw/{ino}.json"),
        "is a symbolic link",
    );
    let out = sandbox.portfw(&ns, &["detach"]);
    assert_refused(
        &out,
        &format!("/run/portfw/{ino}.json"),
        "is a symbolic link",
    );
    assert!(victim.intact() && !Path::new(&absent).exists());
    sandbox.must(&["rm", "-r", "/run/portfw"]);

    // Clean, portfw makes the state directory itself: root's, mode 0700, and its files are
    // root's alone.
    let out = sandbox.portfw(&ns, &["apply", policy.path(), "--iface", "v0"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sandbox.stat("%U %a", "/run/portfw"), "root 700");
    assert_eq!(
        sandbox.stat("%U %a", &format!("/run/portfw/{ino}.json")),
        "root 600"
    );
    assert_eq!(
        sandbox.stat("%U %a", &format!("/run/portfw/{ino}.lock")),
        "root 600"
    );
    let out = sandbox.portfw(&ns, &["detach"]);
    assert!(out.status.success(), "{}", text(&out));
}
