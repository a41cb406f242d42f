//! Diagnostics about a policy file: `FILE:LINE:COL: message` plus a source snippet, and the
//! escaping that keeps a hostile file from writing control sequences to the terminal.

use std::{borrow::Cow, cmp::Reverse, collections::BinaryHeap, fmt, fmt::Write as _};

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

/// Whether `c` is shown escaped: every control character but tab (C0, DEL and C1, which
/// include ESC, BEL and CSI, so a policy or an interface name cannot move the cursor, retitle
/// the terminal or forge a line), and the invisible characters that reorder or break text
/// (the Unicode bidirectional controls and line and paragraph separators).
fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t')
        || matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` safe to print on a terminal: each character [`needs_escape`] says is written as
/// `\u{HEX}`, as Rust writes it (ESC is `\u{1b}`, BEL `\u{7}`, a newline `\u{a}`). Every
/// piece of text portfw prints that came from a file or from the kernel goes through here.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Quoted text (between backticks) longer than this is shortened in messages, so that a
/// megabyte-long value does not fill the terminal.
const QUOTE_SHOWN: usize = 200;
/// Of a shortened quote, the characters kept from its start and from its end.
const QUOTE_HEAD: usize = 120;
const QUOTE_TAIL: usize = 40;

/// `message` with each quoted span over [`QUOTE_SHOWN`] characters cut to its start and
/// end around "…".
fn shorten_quotes(message: &str) -> Cow<'_, str> {
    if message.len() <= QUOTE_SHOWN {
        return Cow::Borrowed(message);
    }
    let mut out = String::new();
    let mut long = false;
    for (i, part) in message.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        let chars = part.chars().count();
        if i % 2 == 1 && chars > QUOTE_SHOWN {
            long = true;
            out.extend(part.chars().take(QUOTE_HEAD));
            let _ = write!(out, "…({} characters)…", chars - QUOTE_HEAD - QUOTE_TAIL);
            out.extend(part.chars().skip(chars - QUOTE_TAIL));
        } else {
            out.push_str(part);
        }
    }
    if long {
        Cow::Owned(out)
    } else {
        Cow::Borrowed(message)
    }
}

/// A line longer than this many characters is shown as a window around the column.
const SNIPPET_WIDTH: usize = 100;
/// Of such a window, the characters shown before the column.
const SNIPPET_BEFORE: usize = 40;

/// The part of a source line shown under a diagnostic: the whole line when it is short,
/// otherwise a window around the column, so that a one-line file of megabytes costs no more
/// per diagnostic than a short line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snippet {
    /// The text shown, as in the file (escaped only when displayed).
    pub text: String,
    /// How many characters of `text` come before the caret.
    pub caret: usize,
    /// Whether the line goes on before `text`, and after it.
    pub cut_before: bool,
    pub cut_after: bool,
}

impl Snippet {
    /// The snippet of `line` for 1-based character `column`.
    pub fn new(line: &str, column: usize) -> Self {
        let line = line.trim_end_matches('\r');
        let offset = line
            .char_indices()
            .nth(column.saturating_sub(1))
            .map_or(line.len(), |(i, _)| i);
        Self::at(line, offset)
    }

    /// The snippet of `line` (without its line end) with the caret at byte `offset`, a
    /// character boundary. Costs O([`SNIPPET_WIDTH`]), whatever the length of the line.
    fn at(line: &str, offset: usize) -> Self {
        let before = &line[..offset];
        let start = before
            .char_indices()
            .rev()
            .nth(SNIPPET_BEFORE - 1)
            .map_or(0, |(i, _)| i);
        // Lines that fit are shown whole.
        let start = if line.len() <= SNIPPET_WIDTH {
            0
        } else {
            start
        };
        let rest = &line[start..];
        let end = rest
            .char_indices()
            .nth(SNIPPET_WIDTH)
            .map_or(line.len(), |(i, _)| start + i);
        Self {
            text: line[start..end].to_owned(),
            caret: line[start..offset].chars().count(),
            cut_before: start > 0,
            cut_after: end < line.len(),
        }
    }
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

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Location { line, column } = self.location;
        write!(f, "{}:{line}:{column}: ", escape(&self.file))?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        f.write_str(&escape(&shorten_quotes(&self.message)))?;
        let Some(snippet) = &self.snippet else {
            return Ok(());
        };
        let number = line.to_string();
        let gutter = " ".repeat(number.len());
        let cut = |yes: bool| if yes { "…" } else { "" };
        let before = cut(snippet.cut_before);
        write!(
            f,
            "\n  {number} | {before}{}{}",
            escape(&snippet.text),
            cut(snippet.cut_after)
        )?;
        // Copy tabs from the source so the caret lands under the right character however
        // the terminal expands them; an escaped character takes as many columns as its
        // escape.
        let head: String = snippet.text.chars().take(snippet.caret).collect();
        let lead: String = before
            .chars()
            .chain(escape(&head).chars())
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        write!(f, "\n  {gutter} | {lead}^")
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

/// The snippets at `wanted` (sorted by location), keyed by (severity, index), cut in one pass
/// over `source` and one pass over each line named, however many findings share a line.
fn cut_snippets(
    source: &str,
    wanted: &[(Location, Severity, usize)],
) -> std::collections::HashMap<(Severity, usize), Snippet> {
    let mut out = std::collections::HashMap::with_capacity(wanted.len());
    let mut wanted = wanted.iter().peekable();
    for (index, line) in source.lines().enumerate() {
        let number = index + 1;
        while wanted.next_if(|(at, ..)| at.line < number).is_some() {}
        if wanted.peek().is_none() {
            break;
        }
        let line = line.trim_end_matches('\r');
        // Columns ascend within a line, so one walk along it finds every offset.
        let mut chars = line.char_indices().map(|(byte, _)| byte).enumerate();
        let mut last: Option<(usize, usize)> = None;
        while let Some((at, severity, list_index)) = wanted.next_if(|(at, ..)| at.line == number) {
            let target = at.column.saturating_sub(1);
            let offset = loop {
                if let Some((n, byte)) = last
                    && n == target
                {
                    break byte;
                }
                match chars.next() {
                    Some(next) => last = Some(next),
                    None => break line.len(),
                }
            };
            out.insert((*severity, *list_index), Snippet::at(line, offset));
        }
    }
    out
}

/// Where a finding goes among those sorted under one place in the policy file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

    #[test]
    fn escape_writes_control_characters_as_unicode_escapes() {
        assert!(matches!(
            escape("plain: ok, tab\tkept, é"),
            Cow::Borrowed(_)
        ));
        assert_eq!(escape("\u{1b}]0;PWNED\u{7}"), "\\u{1b}]0;PWNED\\u{7}");
        assert_eq!(escape("a\nb\rc\0d\u{7f}"), "a\\u{a}b\\u{d}c\\u{0}d\\u{7f}");
        // C1 controls (CSI is U+009B) and the bidirectional overrides.
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("abc\u{202e}fed"), "abc\\u{202e}fed");
        assert_eq!(escape("\u{2066}x\u{2069}"), "\\u{2066}x\\u{2069}");
        assert_eq!(escape("\u{2028}"), "\\u{2028}");
    }

    #[test]
    fn control_characters_are_escaped_in_message_snippet_and_caret() {
        let source = "rules:\n  - name: \"\u{1b}]0;PWNED\u{7}\" # \u{1b}[2J\n";
        let d = Diagnostic::new(
            source,
            "p\u{1b}.yaml",
            Location::new(2, 27),
            Severity::Error,
            "invalid rule name `\u{1b}]0;PWNED\u{7}`",
        );
        let shown = d.to_string();
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "{shown:?}"
        );
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(
            lines[..2],
            [
                "p\\u{1b}.yaml:2:27: invalid rule name `\\u{1b}]0;PWNED\\u{7}`",
                "  2 |   - name: \"\\u{1b}]0;PWNED\\u{7}\" # \\u{1b}[2J",
            ]
        );
        // Column 27 is the `[` after the second ESC: the caret moves with the escapes.
        assert_eq!(lines[1].find('['), lines[2].find('^'));
    }

    #[test]
    fn long_lines_show_a_window_around_the_column() {
        let line = format!("allow: [{}80, x]", "1, ".repeat(100_000));
        let column = line.chars().count() - 1;
        let d = Diagnostic::new(&line, "p", Location::new(1, column), Severity::Error, "bad");
        let shown = d.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines[1], format!("  1 | …{}80, x]", "1, ".repeat(12)));
        let column_of = |line: &str, c: char| line.chars().position(|x| x == c);
        assert_eq!(column_of(lines[2], '^'), column_of(lines[1], 'x'));
        let start = Diagnostic::new(&line, "p", Location::new(1, 1), Severity::Error, "bad");
        let shown = start.to_string();
        assert!(
            shown.lines().nth(1).is_some_and(|l| l.ends_with('…')),
            "{shown}"
        );
        assert!(shown.len() < 300, "{shown}");
    }

    #[test]
    fn long_quotes_are_shortened() {
        let value = "v".repeat(10_000);
        let d = Diagnostic::with_line(
            None,
            "p",
            Location::new(1, 1),
            Severity::Error,
            format!("`default` must be `allow` or `drop`, found `{value}`"),
        );
        let shown = d.to_string();
        assert!(shown.len() < 300, "{shown}");
        assert!(shown.contains(&format!("`{}…(9840 characters)…", "v".repeat(120))));
        assert!(shown.starts_with("p:1:1: `default` must be `allow` or `drop`, found `v"));
    }

    #[test]
    fn the_reporter_keeps_the_first_findings_in_file_order() {
        let source = "x\n".repeat(300);
        let mut reporter = Reporter::new(&source, "p");
        // Found in reverse order; the first ERRORS_SHOWN in file order are kept.
        for line in (1..=300).rev() {
            reporter.error(Location::new(line, 1), format!("e{line}"));
        }
        reporter.warning(Location::new(7, 1), "w");
        assert!(reporter.has_errors());
        let (errors, warnings) = reporter.finish();
        assert_eq!(errors.len(), ERRORS_SHOWN + 1);
        assert_eq!(errors[0].message, "e1");
        assert_eq!(errors[ERRORS_SHOWN - 1].message, format!("e{ERRORS_SHOWN}"));
        let more = &errors[ERRORS_SHOWN];
        assert_eq!(more.location, Location::new(ERRORS_SHOWN + 1, 1));
        assert_eq!(
            more.message,
            "200 more errors not shown (at most 100 are reported)"
        );
        assert!(more.snippet.is_none());
        let all = Diagnostics(errors);
        assert_eq!(all.error_count(), 300);
        assert_eq!(warnings.len(), 1);
        assert_eq!(
            warnings[0].snippet.as_ref().map(|s| s.text.as_str()),
            Some("x")
        );
    }

    #[test]
    fn snippets_on_one_line_are_cut_in_one_walk() {
        let source = format!("a: [{}]\n", "é, ".repeat(50_000));
        let mut reporter = Reporter::new(&source, "p");
        for column in (5..150_000).step_by(3) {
            reporter.error(Location::new(1, column), "bad");
        }
        let (errors, _) = reporter.finish();
        assert_eq!(errors.len(), ERRORS_SHOWN + 1);
        for d in &errors[..ERRORS_SHOWN] {
            let snippet = d
                .snippet
                .as_ref()
                .map(|s| (s.text.chars().nth(s.caret), s.text.len()));
            assert_eq!(snippet.map(|(c, _)| c), Some(Some('é')), "{d}");
            assert!(snippet.is_some_and(|(_, len)| len <= 2 * SNIPPET_WIDTH));
        }
    }
}
