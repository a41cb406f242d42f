//! The raw results of one benchmark binary: every sample of every figure, as JSON for
//! `cargo xtask bench`, which turns them into BENCHMARKS.md, plots and the `--quick` check.

use std::{fs, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

/// A table of figures: rows by columns, each cell a list of samples.
#[derive(Serialize)]
pub struct Table {
    pub id: String,
    pub title: String,
    /// Unit of every cell, e.g. "ns/packet", "×", "Mpps".
    pub unit: String,
    /// How the figures were taken, shown under the table.
    pub note: String,
    /// Row and column labels in display order.
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub cells: Vec<Cell>,
}

#[derive(Serialize)]
pub struct Cell {
    pub row: String,
    pub col: String,
    /// One value per repetition, in the order taken.
    pub samples: Vec<f64>,
    /// Set when the cell cannot exist by design (a peer that has no such feature); the
    /// `--quick` check accepts an empty cell only with a reason.
    pub na: Option<String>,
}

#[derive(Serialize)]
pub struct Report {
    pub bench: String,
    pub quick: bool,
    /// Parameters of the run (repeat counts, durations), for the reader.
    pub params: serde_json::Value,
    /// Facts found on the way (versions, settings), for BENCHMARKS.md.
    pub facts: Vec<(String, String)>,
    pub tables: Vec<Table>,
}

impl Report {
    pub fn new(bench: &str, quick: bool, params: serde_json::Value) -> Self {
        Self {
            bench: bench.to_owned(),
            quick,
            params,
            facts: Vec::new(),
            tables: Vec::new(),
        }
    }

    /// Declares a table and all its cells, empty, so that a figure that was never taken
    /// shows up as missing instead of silently absent.
    pub fn table(
        &mut self,
        id: &str,
        title: &str,
        unit: &str,
        note: &str,
        rows: &[String],
        cols: &[String],
    ) {
        let cells = rows
            .iter()
            .flat_map(|row| {
                cols.iter().map(move |col| Cell {
                    row: row.clone(),
                    col: col.clone(),
                    samples: Vec::new(),
                    na: None,
                })
            })
            .collect();
        self.tables.push(Table {
            id: id.to_owned(),
            title: title.to_owned(),
            unit: unit.to_owned(),
            note: note.to_owned(),
            rows: rows.to_vec(),
            cols: cols.to_vec(),
            cells,
        });
    }

    fn cell(&mut self, table: &str, row: &str, col: &str) -> Result<&mut Cell> {
        self.tables
            .iter_mut()
            .find(|t| t.id == table)
            .with_context(|| format!("no table {table}"))?
            .cells
            .iter_mut()
            .find(|c| c.row == row && c.col == col)
            .with_context(|| format!("no cell ({row}, {col}) in table {table}"))
    }

    pub fn push(&mut self, table: &str, row: &str, col: &str, value: f64) -> Result<()> {
        self.cell(table, row, col)?.samples.push(value);
        Ok(())
    }

    /// The latest sample of a cell.
    pub fn last(&self, table: &str, row: &str, col: &str) -> Option<f64> {
        self.tables
            .iter()
            .find(|t| t.id == table)?
            .cells
            .iter()
            .find(|c| c.row == row && c.col == col)?
            .samples
            .last()
            .copied()
    }

    pub fn not_applicable(&mut self, table: &str, row: &str, col: &str, why: &str) -> Result<()> {
        self.cell(table, row, col)?.na = Some(why.to_owned());
        Ok(())
    }

    pub fn fact(&mut self, name: &str, value: impl Into<String>) {
        self.facts.push((name.to_owned(), value.into()));
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self).context("serialising the report")?;
        fs::write(path, json).with_context(|| format!("writing {}", path.display()))
    }
}

/// The median of `values` (the mean of the middle two for an even count); NaN when empty.
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// `n` with thousands separators, for labels.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Command-line options every benchmark binary takes. `cargo bench` adds `--bench`, which is
/// ignored.
pub struct Args {
    pub quick: bool,
    pub out: std::path::PathBuf,
    /// The release `portfw` binary, for benchmarks that run the CLI.
    pub portfw: Option<std::path::PathBuf>,
    /// Only the configurations whose label contains this (load benchmark; for profiling).
    pub only: Option<String>,
    /// Record `perf` on the receiving CPU during every window into this directory (load).
    pub perf: Option<std::path::PathBuf>,
}

impl Args {
    pub fn parse(bench: &str) -> Result<Self> {
        let mut quick = false;
        let mut out = None;
        let mut portfw = None;
        let mut only = None;
        let mut perf = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--bench" => {}
                "--out" => out = Some(args.next().context("--out needs a path")?.into()),
                "--portfw" => portfw = Some(args.next().context("--portfw needs a path")?.into()),
                "--only" => only = Some(args.next().context("--only needs a label")?),
                "--perf" => perf = Some(args.next().context("--perf needs a directory")?.into()),
                other => anyhow::bail!(
                    "unknown argument `{other}`; usage: cargo bench -p portfw-user --bench {bench} -- [--quick] [--out FILE.json] [--portfw PATH] [--only LABEL] [--perf DIR]"
                ),
            }
        }
        let out = out.unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/bench")
                .join(format!("{bench}.json"))
        });
        Ok(Self {
            quick,
            out,
            portfw,
            only,
            perf,
        })
    }

    /// `--portfw`, or the release binary next to this workspace's target directory.
    pub fn portfw(&self) -> Result<std::path::PathBuf> {
        let path = self.portfw.clone().unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/portfw")
        });
        anyhow::ensure!(
            path.is_file(),
            "{} does not exist; build it with `cargo build --release --bin portfw` (cargo xtask bench does)",
            path.display()
        );
        Ok(path)
    }
}

/// Fails early unless running as root: loading programs and making namespaces need it.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "benchmarks load BPF programs and create network namespaces: run them as root (cargo xtask bench)"
    );
    Ok(())
}

/// Reads a one-line sysctl-style file, trimmed, or a note saying why not.
pub fn read_setting(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}
