//! Diagnostics about a policy file: `FILE:LINE:COL: message` plus a source snippet.

use std::fmt;

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
    pub message: String,
    /// The text of the offending line, shown under the message with a caret.
    pub source_line: Option<String>,
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
            source_line: line.map(|l| l.trim_end_matches('\r').to_owned()),
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Location { line, column } = self.location;
        write!(f, "{}:{line}:{column}: ", self.file)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&self.message)?;
        let Some(text) = &self.source_line else {
            return Ok(());
        };
        let number = line.to_string();
        let gutter = " ".repeat(number.len());
        write!(f, "\n  {number} | {text}")?;
        // Copy tabs from the source so the caret lands under the right character however
        // the terminal expands them.
        let lead: String = text
            .chars()
            .take(column.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "\n  {gutter} | {lead}^")
    }
}

/// Every problem found in one policy file, sorted by position.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn error_count(&self) -> usize {
        self.0.iter().filter(|d| d.is_error()).count()
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

/// Collects diagnostics for one file while the parser walks it, and for the set files it
/// names.
pub(crate) struct Reporter<'s> {
    /// Indexed by line number less one; split once because big policies can have
    /// thousands of findings.
    lines: Vec<&'s str>,
    file: &'s str,
    /// Each with the place in the policy file it sorts under (its own location, or for a
    /// finding inside a set file, the `file:` entry that named that file), then its rank
    /// among the findings placed there.
    diagnostics: Vec<(Location, Rank, Diagnostic)>,
}

impl<'s> Reporter<'s> {
    pub(crate) fn new(source: &'s str, file: &'s str) -> Self {
        Self {
            lines: source.lines().collect(),
            file,
            diagnostics: Vec::new(),
        }
    }

    pub(crate) fn error(&mut self, location: Location, message: impl Into<String>) {
        self.push(location, Severity::Error, message);
    }

    pub(crate) fn warning(&mut self, location: Location, message: impl Into<String>) {
        self.push(location, Severity::Warning, message);
    }

    fn push(&mut self, location: Location, severity: Severity, message: impl Into<String>) {
        self.push_ranked(location, Rank::Own, severity, message);
    }

    fn push_ranked(
        &mut self,
        location: Location,
        rank: Rank,
        severity: Severity,
        message: impl Into<String>,
    ) {
        let line = self.line(location.line);
        let diagnostic = Diagnostic::with_line(line, self.file, location, severity, message);
        self.diagnostics.push((location, rank, diagnostic));
    }

    /// Reports a finding in another file (a set file), listed with the findings at `anchor`
    /// in the policy file.
    pub(crate) fn push_elsewhere(&mut self, anchor: Location, diagnostic: Diagnostic) {
        self.diagnostics.push((anchor, Rank::Elsewhere, diagnostic));
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

    /// Line `number` (from 1) of the policy file.
    pub(crate) fn line(&self, number: usize) -> Option<&'s str> {
        number
            .checked_sub(1)
            .and_then(|index| self.lines.get(index).copied())
    }

    pub(crate) fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|(_, _, d)| d.is_error())
    }

    /// Splits into (errors, warnings), each in file order.
    pub(crate) fn finish(mut self) -> (Vec<Diagnostic>, Vec<Diagnostic>) {
        // Stable, so two findings at one spot keep the order they were found in; findings
        // inside one set file follow that file's order.
        self.diagnostics
            .sort_by_key(|(anchor, rank, d)| (*anchor, *rank, d.location));
        self.diagnostics
            .into_iter()
            .map(|(_, _, d)| d)
            .partition(Diagnostic::is_error)
    }
}

/// Where a finding goes among those sorted under one place in the policy file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    Own,
    Elsewhere,
    After,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_has_snippet_and_caret() {
        let source = "default: drop\nrules:\n  - allow: 70000\n";
        let d = Diagnostic::new(
            source,
            "policy.yaml",
            Location::new(3, 12),
            Severity::Error,
            "port 70000 is out of range 0-65535",
        );
        assert_eq!(
            d.to_string(),
            [
                "policy.yaml:3:12: port 70000 is out of range 0-65535",
                "  3 |   - allow: 70000",
                "    |            ^",
            ]
            .join("\n")
        );
    }

    #[test]
    fn warning_display_and_tabs_in_caret_line() {
        let d = Diagnostic::new(
            "\tx: 1",
            "p.yaml",
            Location::new(1, 2),
            Severity::Warning,
            "careful",
        );
        assert_eq!(
            d.to_string(),
            "p.yaml:1:2: warning: careful\n  1 | \tx: 1\n    | \t^"
        );
    }

    #[test]
    fn no_snippet_past_the_end() {
        let d = Diagnostic::new("a", "p", Location::new(9, 1), Severity::Error, "m");
        assert_eq!(d.to_string(), "p:9:1: m");
    }

    #[test]
    fn diagnostics_join_blocks_with_newlines() {
        let ds = Diagnostics(vec![
            Diagnostic::new("", "p", Location::new(1, 1), Severity::Error, "a"),
            Diagnostic::new("", "p", Location::new(2, 1), Severity::Warning, "b"),
        ]);
        assert_eq!(ds.to_string(), "p:1:1: a\np:2:1: warning: b");
        assert_eq!(ds.error_count(), 1);
    }
}
