//! Unit tests of the diagnostics: their display, escaping, snippets and the Reporter's
//! bounds.

use std::borrow::Cow;

use super::{render::SNIPPET_WIDTH, *};

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
