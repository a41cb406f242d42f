//! `cargo xtask bench [--quick]`: builds the release binary and the benchmark binaries, runs
//! them (kernel cost, load, control plane and events), and turns their results into
//! BENCHMARKS.md and its plots; `--quick` is CI's smoke run and only checks that every figure
//! was produced.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};
use portfw_lab::{Lab, PYTHON};

use crate::{
    bench_report::{self, Results},
    setup,
    util::{self, run_checked, run_stages},
};

/// The benchmark binaries of portfw-user/benches, in the order they run.
pub const BENCHES: [&str; 5] = ["kernel", "load", "control", "flows", "defences"];

pub fn run(quick: bool) -> Result<()> {
    util::require_root("bench")?;
    let root = util::workspace_root();
    let out_dir = util::target_dir()
        .join("bench")
        .join(if quick { "quick" } else { "full" });
    let mut stages: Vec<(&str, util::StageFn<'_>)> = vec![
        ("setup", Box::new(|| setup::run(setup::Mode::Install))),
        (
            "build",
            Box::new(|| {
                run_checked(
                    Command::new(util::cargo())
                        .args(["build", "--release", "-p", "portfw-user", "--bin", "portfw"])
                        .current_dir(&root),
                )?;
                run_checked(
                    Command::new(util::cargo())
                        .args(["bench", "--no-run", "-p", "portfw-user"])
                        .current_dir(&root),
                )
            }),
        ),
    ];
    for bench in BENCHES {
        let out_dir = out_dir.clone();
        let root = root.clone();
        stages.push((
            bench,
            Box::new(move || {
                // Namespaces of crashed benchmark runs would pile up; live runs are spared.
                if let Ok(n @ 1..) = Lab::cleanup_stale("pfw-bench") {
                    println!("xtask bench: removed {n} namespaces left by dead runs");
                }
                let mut cmd = Command::new(util::cargo());
                cmd.args(["bench", "-p", "portfw-user", "--bench", bench, "--"])
                    .arg("--out")
                    .arg(out_dir.join(format!("{bench}.json")))
                    .arg("--portfw")
                    .arg(util::target_dir().join("release/portfw"))
                    .current_dir(&root);
                if quick {
                    cmd.arg("--quick");
                }
                run_checked(&mut cmd)
            }),
        ));
    }
    stages.push((
        "report",
        Box::new(|| {
            let results = Results::read(&out_dir, &BENCHES)?;
            bench_report::check_complete(&results)?;
            if quick {
                println!(
                    "xtask bench: --quick: every figure was produced ({} figures); results in {}",
                    results.figure_count(),
                    out_dir.display()
                );
                return Ok(());
            }
            write_full(&results, &out_dir)
        }),
    ));
    run_stages("bench", stages)
}

/// Writes the plots, the combined raw results and the results section of BENCHMARKS.md.
fn write_full(results: &Results, out_dir: &std::path::Path) -> Result<()> {
    let root = util::workspace_root();
    let docs: PathBuf = root.join(bench_report::DOCS_DIR);
    fs::create_dir_all(&docs).with_context(|| format!("creating {}", docs.display()))?;
    let combined = docs.join("results.json");
    results.write_combined(&combined)?;
    run_checked(
        Command::new(PYTHON)
            .arg(root.join("xtask/bench/plot.py"))
            .arg(&combined)
            .arg(&docs),
    )
    .context("drawing the plots (python3-matplotlib)")?;
    let markdown = bench_report::render(results)?;
    let path = root.join("BENCHMARKS.md");
    bench_report::write_results_section(&path, &markdown)?;
    println!(
        "xtask bench: wrote {} and {}/{{kernel-cost,throughput}}.png (raw results in {} and {})",
        path.display(),
        docs.display(),
        combined.display(),
        out_dir.display()
    );
    Ok(())
}
