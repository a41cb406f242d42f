//! `cargo xtask package [--check]`: the Debian package, and the checks CI runs on it and on
//! deploy/ (inspect, install and remove, `systemd-analyze verify`, the Kubernetes manifests).

use std::{
    cell::RefCell,
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail, ensure};
use portfw_lab::Lab;

use crate::{
    setup,
    util::{self, StageFn, output_checked, run_checked, run_stages},
};

/// The Debian package's name (`[package.metadata.deb] name` in portfw-user/Cargo.toml).
const PACKAGE: &str = "portfw";
/// The packaged policy, a conffile.
const POLICY: &str = "/etc/portfw/policy.yaml";
const UNIT: &str = "/usr/lib/systemd/system/portfw.service";
/// Where portfw pins the filter of each network namespace (portfw_common::PIN_ROOT).
const PIN_ROOT: &str = "/sys/fs/bpf/portfw";
/// The Kubernetes releases the manifests are validated against: the oldest with the
/// `appArmorProfile` field they use, and kubernetes-validate's newest.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];
/// An exposure above this fails the check, so the sandboxing of portfw.service cannot
/// quietly erode. `systemd-analyze security --threshold` counts in tenths of its 0 (safest)
/// to 10 scale: 40 is 4.0, and the unit scores 3.1.
const EXPOSURE_THRESHOLD: &str = "40";

/// What the package must hold: (path, mode) with mode checked when given.
const EXPECTED: &[(&str, Option<&str>)] = &[
    ("usr/sbin/portfw", Some("-rwxr-xr-x")),
    ("usr/share/man/man8/portfw.8.gz", Some("-rw-r--r--")),
    ("usr/share/man/man8/portfw-apply.8.gz", None),
    (
        "usr/share/bash-completion/completions/portfw",
        Some("-rw-r--r--"),
    ),
    (
        "usr/share/zsh/vendor-completions/_portfw",
        Some("-rw-r--r--"),
    ),
    (
        "usr/share/fish/vendor_completions.d/portfw.fish",
        Some("-rw-r--r--"),
    ),
    ("etc/portfw/policy.yaml", Some("-rw-r--r--")),
    ("usr/lib/systemd/system/portfw.service", Some("-rw-r--r--")),
    ("usr/share/doc/portfw/copyright", None),
    ("usr/share/doc/portfw/operations.md", None),
    ("usr/share/doc/portfw/policy.md", None),
];

/// Builds target/debian/portfw_<version>_<arch>.deb; with `check`, also inspects it,
/// installs and removes it, verifies its unit and validates deploy/kubernetes/.
pub fn run(check: bool) -> Result<()> {
    if check {
        util::require_root("package --check")?;
    }
    let deb = deb_path()?;
    let installed = RefCell::new(None::<Installed>);
    let mut stages: Vec<(&str, StageFn<'_>)> = vec![
        (
            "tools",
            Box::new(|| setup::packaging_tools(setup::Mode::Install, check)),
        ),
        ("cargo build", Box::new(build)),
        ("assets", Box::new(assets)),
        ("cargo deb", Box::new(|| cargo_deb(&deb))),
    ];
    if check {
        stages.extend([
            ("inspect", Box::new(|| inspect(&deb)) as StageFn<'_>),
            (
                "install",
                Box::new(|| {
                    let package = Installed::install(&deb)?;
                    *installed.borrow_mut() = Some(package);
                    check_installed(&deb)
                }),
            ),
            ("systemd-analyze", Box::new(verify_unit)),
            (
                "remove",
                Box::new(|| match installed.borrow_mut().take() {
                    Some(package) => package.remove_and_purge(),
                    None => bail!("the package is not installed"),
                }),
            ),
            ("manifests", Box::new(validate_manifests)),
        ]);
    }
    let result = run_stages("package", stages);
    // A failed stage leaves the package installed: purge it, so the machine is as it was.
    drop(installed.into_inner());
    result?;
    println!("package: {}", deb.display());
    Ok(())
}

/// target/debian/portfw_<version>_<arch>.deb: the workspace version (xtask shares it) and
/// dpkg's architecture; the package has no Debian revision.
fn deb_path() -> Result<PathBuf> {
    let arch = output_checked(Command::new("dpkg").arg("--print-architecture"))?;
    Ok(util::target_dir().join(format!(
        "debian/{PACKAGE}_{}_{}.deb",
        env!("CARGO_PKG_VERSION"),
        arch.trim()
    )))
}

fn release_binary() -> PathBuf {
    util::target_dir().join("release/portfw")
}

/// Generated assets: `target/release/` is where cargo-deb looks for built files.
fn assets_dir() -> PathBuf {
    util::target_dir().join("release/package-assets")
}

/// The release binary, which embeds the eBPF object its build script compiles.
fn build() -> Result<()> {
    run_checked(
        Command::new(util::cargo())
            .args([
                "build",
                "--release",
                "--package",
                "portfw-user",
                "--bin",
                "portfw",
            ])
            .current_dir(util::workspace_root()),
    )
}

/// The man pages (gzipped, as Debian policy wants) and the completion scripts, written by
/// the binary just built, so they describe exactly its command line.
fn assets() -> Result<()> {
    let dir = assets_dir();
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let (man, completions) = (dir.join("man"), dir.join("completions"));
    for sub in [&man, &completions] {
        fs::create_dir_all(sub).with_context(|| format!("creating {}", sub.display()))?;
    }
    let binary = release_binary();
    output_checked(Command::new(&binary).args(["manpage", "--dir"]).arg(&man))?;
    let mut pages = Vec::new();
    for entry in fs::read_dir(&man).with_context(|| format!("reading {}", man.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "8") {
            pages.push(path);
        }
    }
    ensure!(
        !pages.is_empty(),
        "`portfw manpage` wrote no page into {}",
        man.display()
    );
    pages.sort();
    // -n: no name or time stamp in the header, so the same page gives the same bytes.
    run_checked(Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages))?;
    for (shell, file) in [
        ("bash", "portfw.bash"),
        ("zsh", "_portfw"),
        ("fish", "portfw.fish"),
    ] {
        let script = output_checked(Command::new(&binary).args(["completions", shell]))?;
        ensure!(
            !script.is_empty(),
            "`portfw completions {shell}` printed nothing"
        );
        let path = completions.join(file);
        fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "package: {} man pages and 3 completion scripts in {}",
        pages.len(),
        dir.display()
    );
    Ok(())
}

fn cargo_deb(deb: &Path) -> Result<()> {
    if deb.exists() {
        fs::remove_file(deb).with_context(|| format!("removing {}", deb.display()))?;
    }
    run_checked(
        Command::new(util::cargo())
            .args(["deb", "--package", "portfw-user", "--no-build"])
            .current_dir(util::workspace_root()),
    )?;
    ensure!(
        deb.is_file(),
        "cargo deb succeeded but {} is not there (did the version or the name change?)",
        deb.display()
    );
    Ok(())
}

/// `dpkg-deb -I` and `-c`, then the paths, modes, conffile and maintainer scripts checked
/// against what the package promises; the man page and the bash completion are tried out
/// from an extracted copy.
fn inspect(deb: &Path) -> Result<()> {
    let info = output_checked(Command::new("dpkg-deb").arg("--info").arg(deb))?;
    print!("{info}");
    let contents = output_checked(Command::new("dpkg-deb").arg("--contents").arg(deb))?;
    print!("{contents}");

    // One line per entry: mode, owner, size, date, time, path (then `-> target` for a link).
    let entries: Vec<(&str, &str)> = contents
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            Some((*fields.first()?, fields.get(5)?.trim_start_matches("./")))
        })
        .collect();
    let mut problems = Vec::new();
    for &(path, mode) in EXPECTED {
        match entries.iter().find(|(_, p)| *p == path) {
            None => problems.push(format!("{path} is missing")),
            Some((found, _)) => {
                if let Some(mode) = mode
                    && found != &mode
                {
                    problems.push(format!("{path} has mode {found}, want {mode}"));
                }
            }
        }
    }
    // Enablement symlinks in the package would start the filter at the next boot.
    for (_, path) in &entries {
        if path.starts_with("etc/systemd/") || path.contains(".wants/") {
            problems.push(format!("{path}: the package must not enable its unit"));
        }
    }
    let field = |name: &str| -> Result<String> {
        Ok(
            output_checked(Command::new("dpkg-deb").arg("--field").arg(deb).arg(name))?
                .trim()
                .to_owned(),
        )
    };
    if field("Package")? != PACKAGE {
        problems.push(format!("Package is not {PACKAGE}"));
    }
    if field("Version")? != env!("CARGO_PKG_VERSION") {
        problems.push(format!("Version is not {}", env!("CARGO_PKG_VERSION")));
    }
    let control = |file: &str| -> Result<String> {
        output_checked(Command::new("dpkg-deb").arg("--info").arg(deb).arg(file))
    };
    let conffiles = control("conffiles")?;
    if conffiles.lines().map(str::trim).collect::<Vec<_>>() != [POLICY] {
        problems.push(format!("conffiles is {conffiles:?}, want only {POLICY}"));
    }
    let postinst = control("postinst")?;
    for forbidden in [
        "deb-systemd-invoke start",
        "deb-systemd-invoke restart",
        "systemctl start",
    ] {
        if postinst.contains(forbidden) {
            problems.push(format!(
                "postinst runs `{forbidden}`: installing must not start a filter"
            ));
        }
    }
    if !control("prerm")?.contains("/usr/sbin/portfw detach") {
        problems.push("prerm does not detach the filter on removal".to_owned());
    }
    if !problems.is_empty() {
        bail!("{}: {}", deb.display(), problems.join("; "));
    }

    let root = util::target_dir().join("debian/extracted");
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    run_checked(
        Command::new("dpkg-deb")
            .arg("--extract")
            .arg(deb)
            .arg(&root),
    )?;
    check_man_page(&root.join("usr/share/man/man8/portfw.8.gz"))?;
    check_bash_completion(&root.join("usr/share/bash-completion/completions/portfw"))?;
    println!(
        "package: {} entries, conffile {POLICY}, unit not enabled, man page and completion work",
        entries.len()
    );
    Ok(())
}

/// The page renders with groff's warnings on and without any, under the title it claims.
fn check_man_page(page: &Path) -> Result<()> {
    let shown = page.display();
    let roff = output_checked(Command::new("zcat").arg(page))?;
    ensure!(
        roff.contains(".TH PORTFW 8"),
        "{shown} has no `.TH PORTFW 8`"
    );
    let (ok, warnings) = util::output_with_input(
        Command::new("groff").args(["-man", "-Tutf8", "-ww", "-z"]),
        roff.as_bytes(),
    )
    .context("running groff (Debian's groff-base)")?;
    ensure!(
        ok && warnings.trim().is_empty(),
        "groff on {shown}: {}",
        warnings.trim()
    );
    let rendered = output_checked(
        Command::new("man")
            .arg("-l")
            .arg(page)
            .env("MANPAGER", "cat"),
    )?;
    ensure!(
        rendered.contains("PORTFW(8)"),
        "`man -l {shown}` does not show PORTFW(8)"
    );
    Ok(())
}

fn check_bash_completion(script: &Path) -> Result<()> {
    let registered = output_checked(Command::new("bash").arg("-c").arg(format!(
        "set -e; source '{}'; complete -p portfw",
        script.display()
    )))?;
    ensure!(
        registered.contains("portfw"),
        "sourcing {} registered no completion for portfw",
        script.display()
    );
    Ok(())
}

/// The package while it is installed by the check; dropping it purges it.
struct Installed {
    armed: bool,
}

impl Installed {
    /// `dpkg -i`, refusing to touch a portfw the machine already has.
    fn install(deb: &Path) -> Result<Self> {
        let status = dpkg_status()?;
        if !status.is_empty() {
            bail!(
                "{PACKAGE} is already on this machine ({status}); `package --check` installs and \
                 purges it, so remove it first (`dpkg -P {PACKAGE}`)"
            );
        }
        let before = pinned_here();
        run_checked(dpkg().arg("--install").arg(deb))?;
        let installed = Self { armed: true };
        ensure!(
            pinned_here() == before,
            "installing the package changed the filter of this network namespace"
        );
        Ok(installed)
    }

    /// Applies the packaged policy in a namespace of its own, then removes the package
    /// from inside that namespace: prerm must detach the filter there. Then purges.
    fn remove_and_purge(mut self) -> Result<()> {
        let lab = Lab::new("pkg")?;
        lab.run(
            portfw_lab::Side::Server,
            [
                "/usr/sbin/portfw",
                "apply",
                POLICY,
                "--iface",
                lab.server_iface(),
            ],
        )?;
        ensure!(
            lab.pin_dir().is_dir(),
            "no pins at {} after apply",
            lab.pin_dir().display()
        );
        let mut remove = lab.server(["dpkg", "--remove", PACKAGE]);
        run_checked(
            remove
                .stdin(Stdio::null())
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        ensure!(
            !lab.pin_dir().exists(),
            "removing the package left the filter at {}",
            lab.pin_dir().display()
        );
        lab.close()?;
        ensure!(
            !Path::new("/usr/sbin/portfw").exists(),
            "dpkg -r left /usr/sbin/portfw"
        );
        ensure!(
            Path::new(POLICY).is_file(),
            "dpkg -r removed the conffile {POLICY}"
        );
        let status = dpkg_status()?;
        ensure!(
            status == "deinstall ok config-files",
            "after dpkg -r the package is `{status}`, want `deinstall ok config-files`"
        );
        run_checked(dpkg().args(["--purge", PACKAGE]))?;
        self.armed = false;
        ensure!(!Path::new(POLICY).exists(), "dpkg -P left {POLICY}");
        ensure!(
            dpkg_status()?.is_empty(),
            "dpkg -P left the package known to dpkg"
        );
        println!("package: removed (prerm detached the filter), then purged (conffile gone)");
        Ok(())
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if self.armed {
            eprintln!("package: purging {PACKAGE} after a failed check");
            if let Err(err) = run_checked(dpkg().args(["--purge", PACKAGE])) {
                eprintln!("package: warning: {err:#}; run `dpkg -P {PACKAGE}`");
            }
        }
    }
}

fn dpkg() -> Command {
    let mut cmd = Command::new("dpkg");
    cmd.stdin(Stdio::null())
        .env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// dpkg's status of the package (`install ok installed`, …), empty when dpkg has no record.
fn dpkg_status() -> Result<String> {
    let out = Command::new("dpkg-query")
        .args(["--show", "--showformat=${Status}", PACKAGE])
        .stderr(Stdio::null())
        .output()
        .context("running dpkg-query")?;
    let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(if status == "unknown ok not-installed" {
        String::new()
    } else {
        status
    })
}

/// Whether this network namespace has a portfw filter (its pin directory exists).
fn pinned_here() -> bool {
    fs::metadata("/proc/self/ns/net")
        .map(|m| Path::new(PIN_ROOT).join(m.ino().to_string()).exists())
        .unwrap_or(false)
}

/// What an operator relies on once the package is in: the binary, the conffile, the
/// unit installed but not enabled, the man pages and completions where the tools look.
fn check_installed(deb: &Path) -> Result<()> {
    let version = output_checked(Command::new("/usr/sbin/portfw").arg("--version"))?;
    ensure!(
        version.trim() == concat!("portfw ", env!("CARGO_PKG_VERSION")),
        "/usr/sbin/portfw --version says {:?}",
        version.trim()
    );
    let conffiles = output_checked(Command::new("dpkg-query").args([
        "--show",
        "--showformat=${Conffiles}",
        PACKAGE,
    ]))?;
    ensure!(
        conffiles.contains(POLICY),
        "dpkg does not list {POLICY} as a conffile"
    );
    output_checked(Command::new("/usr/sbin/portfw").args(["check", "--strict", POLICY]))?;

    // Not enabled: no symlink in any .wants directory, and systemctl (which reads the unit
    // files without a running systemd) agrees.
    ensure!(Path::new(UNIT).is_file(), "{UNIT} is not installed");
    for dir in ["/etc/systemd/system", "/usr/lib/systemd/system"] {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let wants = entry.path();
            if wants.extension().is_some_and(|e| e == "wants")
                && wants.join("portfw.service").exists()
            {
                bail!(
                    "portfw.service is enabled: {}",
                    wants.join("portfw.service").display()
                );
            }
        }
    }
    let enabled = Command::new("systemctl")
        .args(["is-enabled", "portfw.service"])
        .output()
        .context("running systemctl is-enabled")?;
    let enabled = String::from_utf8_lossy(&enabled.stdout).trim().to_owned();
    ensure!(
        enabled == "disabled",
        "systemctl is-enabled portfw.service says {enabled:?}"
    );
    ensure!(
        !pinned_here(),
        "a filter is in force in this namespace after installing"
    );

    let page = output_checked(Command::new("man").args(["-w", "portfw"]))?;
    ensure!(
        page.trim() == "/usr/share/man/man8/portfw.8.gz",
        "man -w portfw finds {:?}",
        page.trim()
    );
    output_checked(Command::new("man").args(["-w", "8", "portfw-apply"]))?;
    check_bash_completion(Path::new("/usr/share/bash-completion/completions/portfw"))?;

    // The conffile keeps a local edit when the package is installed again, without a prompt
    // (stdin is closed, so a prompt would fail the install).
    let edit = "\n# edited by cargo xtask package --check\n";
    let mut text = fs::read_to_string(POLICY).with_context(|| format!("reading {POLICY}"))?;
    text.push_str(edit);
    fs::write(POLICY, &text).with_context(|| format!("writing {POLICY}"))?;
    run_checked(dpkg().arg("--install").arg(deb))?;
    let after = fs::read_to_string(POLICY).with_context(|| format!("reading {POLICY}"))?;
    ensure!(
        after.ends_with(edit),
        "reinstalling replaced the edited {POLICY}"
    );
    println!(
        "package: installed {}, unit disabled, no filter started, conffile kept across a reinstall",
        version.trim()
    );
    Ok(())
}

/// The installed unit, with its binary and man page in place: `systemd-analyze verify`
/// prints nothing for a clean unit (unknown keys are only warnings, so output fails too),
/// and its sandboxing scores below the threshold.
fn verify_unit() -> Result<()> {
    let out = Command::new("systemd-analyze")
        .args(["verify", UNIT])
        .output()
        .context("running systemd-analyze verify")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {UNIT} ({}): {}",
        out.status,
        said.trim()
    );
    let security = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(format!("--threshold={EXPOSURE_THRESHOLD}"))
        .arg(UNIT)
        .output()
        .context("running systemd-analyze security")?;
    let report = String::from_utf8_lossy(&security.stdout);
    let overall = report
        .lines()
        .find(|line| line.contains("Overall exposure level"))
        .unwrap_or("no overall exposure level")
        .trim()
        .to_owned();
    ensure!(
        security.status.success(),
        "systemd-analyze security: {overall}, above the threshold of {EXPOSURE_THRESHOLD} \
         tenths:\n{report}"
    );
    println!("package: systemd-analyze verify {UNIT}: clean; {overall}");
    Ok(())
}

/// deploy/kubernetes/ against the schemas of each release in KUBERNETES_VERSIONS, strictly
/// (unknown fields fail). A warning means a document went unchecked, so it fails too.
fn validate_manifests() -> Result<()> {
    let dir = util::workspace_root().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "no manifests in {}", dir.display());
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(setup::kubernetes_validate())
            .args(["--strict", "--kubernetes-version", version])
            .args(&files)
            .output()
            .context("running kubernetes-validate (`cargo xtask setup` installs it)")?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{said}");
        ensure!(
            out.status.success() && !said.contains("WARN") && !said.contains("ERROR"),
            "kubernetes-validate {version} rejected deploy/kubernetes/ ({})",
            out.status
        );
    }
    println!(
        "package: {} manifests valid for Kubernetes {}",
        files.len(),
        KUBERNETES_VERSIONS.join(" and ")
    );
    Ok(())
}
