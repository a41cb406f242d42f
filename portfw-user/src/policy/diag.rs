//! Diagnostics about a policy file: `FILE:LINE:COL: message` plus a source snippet, and the
//! escaping that keeps a hostile file from writing control sequences to the terminal.

use std::{cmp::Reverse, collections::BinaryHeap, fmt};

mod render;
#[cfg(test)]
mod tests;

use render::cut_snippets;
pub use render::{Snippet, escape};

/// A position in a policy file. Both numbers start at 1; the column counts characters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

impl Location {
    pub const fn new(line: usize, column: usize) -> Self {
        Self { line, column }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

/// One error or warning, tied to a place in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as the user gave it.
    pub file: String,
    pub location: Location,
    pub severity: Severity,
    /// As found; control characters in it are escaped only when it is displayed.
    pub message: String,
    /// The offending line (or a window of it), shown under the message with a caret.
    pub snippet: Option<Snippet>,
    /// How many findings this stands for: 1, or for a line saying that N more were found
    /// but not shown, N.
    pub count: usize,
}

impl Diagnostic {
    /// A diagnostic whose snippet is cut from `source`.
    pub fn new(
        source: &str,
        file: &str,
        location: Location,
        severity: Severity,
        message: impl Into<String>,
    ) -> Self {
        let line = location
            .line
            .checked_sub(1)
            .and_then(|index| source.lines().nth(index));
        Self::with_line(line, file, location, severity, message)
    }

    /// A diagnostic that shows `line` as its snippet.
    pub fn with_line(
        line: Option<&str>,
        file: &str,
        location: Location,
        severity: Severity,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_owned(),
            location,
            severity,
            message: message.into(),
            snippet: line.map(|l| Snippet::new(l, location.column)),
            count: 1,
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// Every problem found in one policy file, sorted by position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Every error found, those not shown included.
    pub fn error_count(&self) -> usize {
        self.0
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.count)
            .sum()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The most errors one check reports; the rest are counted in one line. A file that is not a
/// policy at all would otherwise produce one error per value.
pub const ERRORS_SHOWN: usize = 100;
/// The most warnings one check reports; the rest are counted in one line.
pub const WARNINGS_SHOWN: usize = 10_000;

/// Where a finding sorts: the place in the policy file it is listed under, its rank among
/// the findings listed there, its own place, and the order it was found in.
type Key = (Location, Rank, Location, u64);

/// A finding kept for the report.
struct Kept {
    key: Key,
    finding: Finding,
}

enum Finding {
    /// In the policy file: its snippet is cut when the report is finished.
    Own(String),
    /// In another file (a set file), complete.
    Elsewhere(Diagnostic),
}

impl PartialEq for Kept {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for Kept {}

impl PartialOrd for Kept {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Kept {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

/// The findings of one severity: the first `limit` in file order, and a count of the rest.
struct Findings {
    limit: usize,
    /// A max-heap, so the finding that sorts last is the one to drop.
    kept: BinaryHeap<Kept>,
    hidden: usize,
    /// The place of the first finding not kept, where the "N more" line goes.
    first_hidden: Option<Reverse<Key>>,
}

impl Findings {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            kept: BinaryHeap::new(),
            hidden: 0,
            first_hidden: None,
        }
    }

    /// Whether a finding at `key` would not be kept.
    fn would_drop(&self, key: &Key) -> bool {
        self.kept.len() >= self.limit && self.kept.peek().is_none_or(|last| *key > last.key)
    }

    fn push(&mut self, kept: Kept) {
        if self.would_drop(&kept.key) {
            self.hide(kept.key);
            return;
        }
        self.kept.push(kept);
        if self.kept.len() > self.limit
            && let Some(last) = self.kept.pop()
        {
            self.hide(last.key);
        }
    }

    fn hide(&mut self, key: Key) {
        self.hidden += 1;
        self.first_hidden = self.first_hidden.max(Some(Reverse(key)));
    }

    fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.hidden == 0
    }
}

/// Collects diagnostics for one file while the parser walks it, and for the set files it
/// names. Memory stays bounded whatever the file holds: at most [`ERRORS_SHOWN`] errors and
/// [`WARNINGS_SHOWN`] warnings are kept, and snippets are cut only for those, in one pass
/// over the source at the end.
pub(crate) struct Reporter<'s> {
    source: &'s str,
    file: &'s str,
    errors: Findings,
    warnings: Findings,
    found: u64,
}

impl<'s> Reporter<'s> {
    pub(crate) fn new(source: &'s str, file: &'s str) -> Self {
        Self {
            source,
            file,
            errors: Findings::new(ERRORS_SHOWN),
            warnings: Findings::new(WARNINGS_SHOWN),
            found: 0,
        }
    }

    pub(crate) fn error(&mut self, location: Location, message: impl Into<String>) {
        self.push(location, Severity::Error, message);
    }

    pub(crate) fn warning(&mut self, location: Location, message: impl Into<String>) {
        self.push(location, Severity::Warning, message);
    }

    /// [`Reporter::error`] for findings that may come by the million (one per item of a
    /// list): the message is only built if the error is among those kept.
    pub(crate) fn error_with(&mut self, location: Location, message: impl FnOnce() -> String) {
        self.push_with(location, Severity::Error, message);
    }

    /// [`Reporter::warning`], building the message only if the warning is kept.
    pub(crate) fn warning_with(&mut self, location: Location, message: impl FnOnce() -> String) {
        self.push_with(location, Severity::Warning, message);
    }

    fn push(&mut self, location: Location, severity: Severity, message: impl Into<String>) {
        self.push_ranked(location, Rank::Own, severity, message);
    }

    fn push_with(
        &mut self,
        location: Location,
        severity: Severity,
        message: impl FnOnce() -> String,
    ) {
        let key = self.key(location, Rank::Own, location);
        let findings = match severity {
            Severity::Error => &mut self.errors,
            Severity::Warning => &mut self.warnings,
        };
        if findings.would_drop(&key) {
            findings.hide(key);
        } else {
            findings.push(Kept {
                key,
                finding: Finding::Own(message()),
            });
        }
    }

    fn push_ranked(
        &mut self,
        location: Location,
        rank: Rank,
        severity: Severity,
        message: impl Into<String>,
    ) {
        let key = self.key(location, rank, location);
        self.keep(
            severity,
            Kept {
                key,
                finding: Finding::Own(message.into()),
            },
        );
    }

    fn key(&mut self, anchor: Location, rank: Rank, own: Location) -> Key {
        self.found += 1;
        (anchor, rank, own, self.found)
    }

    fn keep(&mut self, severity: Severity, kept: Kept) {
        match severity {
            Severity::Error => self.errors.push(kept),
            Severity::Warning => self.warnings.push(kept),
        }
    }

    /// Reports a finding in another file (a set file), listed with the findings at `anchor`
    /// in the policy file.
    pub(crate) fn push_elsewhere(&mut self, anchor: Location, diagnostic: Diagnostic) {
        let key = self.key(anchor, Rank::Elsewhere, diagnostic.location);
        self.keep(
            diagnostic.severity,
            Kept {
                key,
                finding: Finding::Elsewhere(diagnostic),
            },
        );
    }

    /// Reports at `location` after whatever [`Reporter::push_elsewhere`] put there, such as
    /// a count of the findings in a set file not shown.
    pub(crate) fn push_after(
        &mut self,
        location: Location,
        severity: Severity,
        message: impl Into<String>,
    ) {
        self.push_ranked(location, Rank::After, severity, message);
    }

    /// Line `number` (from 1) of the policy file. Walks the file: for the odd message only.
    pub(crate) fn line(&self, number: usize) -> Option<&'s str> {
        number
            .checked_sub(1)
            .and_then(|index| self.source.lines().nth(index))
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.errors.is_empty()
    }

    /// Splits into (errors, warnings), each in file order, each ending with a line that
    /// counts the findings not shown, if there were any.
    pub(crate) fn finish(self) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        let errors = self.errors.kept.into_sorted_vec();
        let warnings = self.warnings.kept.into_sorted_vec();
        // Findings sort by the place they are listed under, which for the policy file's own
        // is their own place, so the lines to cut snippets from come in file order.
        let mut wanted: Vec<(Location, Severity, usize)> = Vec::new();
        for (severity, list) in [(Severity::Error, &errors), (Severity::Warning, &warnings)] {
            for (index, kept) in list.iter().enumerate() {
                if matches!(kept.finding, Finding::Own(_)) {
                    wanted.push((kept.key.2, severity, index));
                }
            }
        }
        wanted.sort_unstable();
        let mut snippets = cut_snippets(self.source, &wanted);
        let mut build =
            |severity: Severity, list: Vec<Kept>, hidden: usize, first: Option<Reverse<Key>>| {
                let mut out: Vec<Diagnostic> = list
                    .into_iter()
                    .enumerate()
                    .map(|(index, kept)| match kept.finding {
                        Finding::Elsewhere(diagnostic) => diagnostic,
                        Finding::Own(message) => Diagnostic {
                            file: self.file.to_owned(),
                            location: kept.key.2,
                            severity,
                            message,
                            snippet: snippets.remove(&(severity, index)),
                            count: 1,
                        },
                    })
                    .collect();
                if let Some(Reverse((anchor, ..))) = first {
                    let (what, shown) = match severity {
                        Severity::Error => ("error", ERRORS_SHOWN),
                        Severity::Warning => ("warning", WARNINGS_SHOWN),
                    };
                    out.push(Diagnostic {
                        file: self.file.to_owned(),
                        location: anchor,
                        severity,
                        message: format!(
                            "{hidden} more {what}{} not shown (at most {shown} are reported)",
                            if hidden == 1 { "" } else { "s" }
                        ),
                        snippet: None,
                        count: hidden,
                    });
                }
                out
            };
        let errors = build(
            Severity::Error,
            errors,
            self.errors.hidden,
            self.errors.first_hidden,
        );
        let warnings = build(
            Severity::Warning,
            warnings,
            self.warnings.hidden,
            self.warnings.first_hidden,
        );
        (errors, warnings)
    }
}

/// Where a finding goes among those sorted under one place in the policy file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Rank {
    Own,
    Elsewhere,
    After,
}
