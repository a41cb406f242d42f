//! Hostile and unlucky inputs to `portfw check`, run through the binary: files that are not
//! files, files over their limits, a flow list of millions of ports, control characters, and
//! how warnings are reported. None of this needs root.

use std::{
    ffi::CString,
    fs::File,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("portfw-inputs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let path = self.0.join(name);
        let c = CString::new(path.as_os_str().as_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
        path
    }

    /// A sparse file of `len` bytes: big by its size, nothing on disk.
    fn sparse(&self, name: &str, len: u64) -> PathBuf {
        let path = self.0.join(name);
        File::create(&path)
            .and_then(|f| f.set_len(len))
            .expect("sparse file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `portfw ARGS` with a deadline, so a hang fails the test instead of stalling it.
fn portfw(args: &[&str], deadline: Duration) -> Run {
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_portfw"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn portfw");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<Output>();
    std::thread::spawn(move || {
        if let Ok(out) = child.wait_with_output() {
            let _ = tx.send(out);
        }
    });
    let out = match rx.recv_timeout(deadline) {
        Ok(out) => out,
        Err(_) => {
            // SAFETY: signalling the child we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("portfw {args:?} did not finish within {deadline:?}");
        }
    };
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: start.elapsed(),
    }
}

fn check(path: &Path) -> Run {
    portfw(
        &["check", &path.display().to_string()],
        Duration::from_secs(30),
    )
}

/// The peak RSS of the largest child waited for so far, in KiB.
fn children_max_rss_kib() -> i64 {
    // SAFETY: an all-zero rusage is valid; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    usage.ru_maxrss
}

#[test]
fn files_that_are_not_regular_are_refused_at_once() {
    let dir = Scratch::new("special");
    let fifo = dir.fifo("policy.fifo");
    for (path, what) in [
        (Path::new("/dev/zero"), "a character device"),
        (fifo.as_path(), "a FIFO (named pipe)"),
        (dir.0.as_path(), "a directory"),
    ] {
        let run = check(path);
        assert_eq!(run.code, Some(1), "{}: {}", path.display(), run.all());
        assert!(
            run.stderr.contains(&format!(
                "cannot read policy {}: it is {what}; a policy must be a regular file",
                path.display()
            )),
            "{}",
            run.stderr
        );
        assert!(run.took < Duration::from_secs(5), "{:?}", run.took);
    }
}

#[test]
fn set_files_that_are_not_regular_are_refused_at_once() {
    let dir = Scratch::new("setfiles");
    dir.fifo("block.fifo");
    let policy = dir.file(
        "p.yaml",
        "default: drop\nsets:\n  a: {file: block.fifo}\n  b: {file: /dev/zero}\n  c: {file: \
         big.txt}\nrules:\n  - drop: any\n    from: [$a, $b, $c]\n",
    );
    dir.sparse("big.txt", 100 << 20);
    let run = check(&policy);
    assert_eq!(run.code, Some(2), "{}", run.all());
    for expected in [
        "cannot read set file `block.fifo`",
        "it is a FIFO (named pipe); a set file must be a regular file",
        "cannot read set file `/dev/zero`: it is a character device",
        "cannot read set file `big.txt`",
        "it is 100 MiB (104857600 bytes), more than the 64 MiB (67108864 bytes) a set file may be",
    ] {
        assert!(run.stderr.contains(expected), "{expected}\n{}", run.stderr);
    }
    assert!(run.took < Duration::from_secs(5), "{:?}", run.took);
}

#[test]
fn a_policy_over_the_limit_is_refused_before_it_is_read() {
    let dir = Scratch::new("big");
    // 160 MiB, sparse: were it read, it would take the time and memory of 160 MiB.
    let big = dir.sparse("big.yaml", 160 << 20);
    let run = check(&big);
    assert_eq!(run.code, Some(1), "{}", run.all());
    assert!(
        run.stderr.contains(&format!(
            "cannot read policy {}: it is 160 MiB (167772160 bytes), more than the 16 MiB \
             (16777216 bytes) a policy may be",
            big.display()
        )),
        "{}",
        run.stderr
    );
    assert!(run.took < Duration::from_secs(2), "{:?}", run.took);
}

#[test]
fn a_huge_flow_list_just_under_the_limit_stops_in_bounded_memory() {
    let dir = Scratch::new("flow");
    let mut text = String::from("default: drop\nrules:\n  - allow: [");
    let limit = portfw::policy::POLICY_MAX_BYTES as usize;
    while text.len() < limit - 100 {
        text.push_str("8, ");
    }
    text.push_str("80]\n");
    let path = dir.file("flow.yaml", &text);
    drop(text);
    let run = portfw(
        &["check", &path.display().to_string()],
        Duration::from_secs(120),
    );
    let rss_mib = children_max_rss_kib() / 1024;
    println!(
        "check of a {} MiB flow list: {:?}, peak RSS of the largest child {rss_mib} MiB",
        limit >> 20,
        run.took
    );
    assert_eq!(run.code, Some(2), "{}", run.all());
    assert!(
        run.stderr
            .contains("the policy holds more than 1048576 YAML values"),
        "{}",
        run.stderr
    );
    // About 120 MiB measured (release or debug); the tree alone of the whole list would
    // be over 500.
    assert!(rss_mib < 400, "peak RSS {rss_mib} MiB");
}

#[test]
fn control_characters_are_escaped_in_diagnostics_and_check_output() {
    let dir = Scratch::new("control");
    // A name with a terminal title sequence; the set name and a comment hold raw ESC.
    let bad = dir.file(
        "bad.yaml",
        "default: drop\n# \u{1b}[2J cleared\nsets:\n  \"s\u{1b}[31m\": [192.0.2.1]\nrules:\n  \
         - name: \"\\e]0;PWNED\\a\"\n    allow: 22\n",
    );
    let run = check(&bad);
    assert_eq!(run.code, Some(2), "{}", run.all());
    let all = run.all();
    assert!(
        !all.contains('\u{1b}') && !all.contains('\u{7}'),
        "raw control characters: {all:?}"
    );
    assert!(
        all.contains("invalid rule name `\\u{1b}]0;PWNED\\u{7}`"),
        "{all}"
    );
    assert!(all.contains("invalid set name `s\\u{1b}[31m`"), "{all}");
    assert!(
        all.contains("  4 |   \"s\\u{1b}[31m\": [192.0.2.1]"),
        "{all}"
    );

    // A valid policy: its interface names reach the summary.
    let good = dir.file(
        "good.yaml",
        "default: drop\ninterfaces: [\"ev\\e]0;PWNED\\a\"]\nrules:\n  - allow: 22\n",
    );
    let run = check(&good);
    assert_eq!(run.code, Some(0), "{}", run.all());
    assert!(
        run.stdout.contains("interfaces: ev\\u{1b}]0;PWNED\\u{7}\n"),
        "{}",
        run.stdout
    );
    assert!(!run.all().contains('\u{1b}'), "{:?}", run.all());
}

#[test]
fn check_prints_a_warning_once_and_strict_makes_it_an_error() {
    let dir = Scratch::new("warnings");
    let policy = dir.file(
        "shadow.yaml",
        "default: drop\nrules:\n  - allow: 1000-2000/tcp\n  - drop: 1500/tcp\n    from: \
         [10.0.0.0/8]\n",
    );
    let warning = "shadow.yaml:4:5: warning: rule 2 (`drop: 1500/tcp`, `from: [10.0.0.0/8]`) \
                   never matches";

    let plain = check(&policy);
    assert_eq!(plain.code, Some(0), "{}", plain.all());
    assert_eq!(
        plain.all().matches("never matches").count(),
        1,
        "{}",
        plain.all()
    );
    // In the report, before the summary.
    assert!(plain.stdout.contains(warning), "{}", plain.stdout);
    let summary = plain.stdout.find("shadow.yaml: 2 rules");
    assert!(
        summary.is_some_and(|at| plain.stdout.find(warning).is_some_and(|w| w < at)),
        "{}",
        plain.stdout
    );

    let strict = portfw(
        &["check", "--strict", &policy.display().to_string()],
        Duration::from_secs(30),
    );
    assert_eq!(strict.code, Some(2), "{}", strict.all());
    assert_eq!(
        strict.all().matches("never matches").count(),
        1,
        "{}",
        strict.all()
    );
    assert!(strict.stderr.contains(warning), "{}", strict.stderr);
    assert!(
        strict
            .stderr
            .contains("1 warning found; --strict makes them errors, so the policy is rejected"),
        "{}",
        strict.stderr
    );
    assert!(strict.stdout.is_empty(), "{}", strict.stdout);
}
