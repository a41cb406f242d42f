//! How a diagnostic is shown: the escaping that keeps a hostile file from writing control
//! sequences to the terminal, the shortening of long quotes, and the source snippet with its
//! caret.

use std::{borrow::Cow, fmt, fmt::Write as _};

use super::{Diagnostic, Location, Severity};

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
pub(super) const SNIPPET_WIDTH: usize = 100;
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

/// The snippets at `wanted` (sorted by location), keyed by (severity, index), cut in one pass
/// over `source` and one pass over each line named, however many findings share a line.
pub(super) fn cut_snippets(
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
