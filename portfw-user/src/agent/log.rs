//! The agent's log: one line per event on stderr, `portfw-agent: level=info msg="…" key=value`,
//! in the logfmt style that journald, `kubectl logs` and log shippers read as it is. No
//! colours and no timestamps: journald and the container runtime stamp every line.
use std::io::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// A value as logfmt writes it: bare when it is one plain word, quoted otherwise.
fn value(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@+,[]#*%".contains(c));
    if plain {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The line for one event.
pub fn line(level: Level, msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) -> String {
    let mut out = format!("portfw-agent: level={} msg={}", level.name(), value(msg));
    for (key, v) in fields {
        out.push(' ');
        out.push_str(key);
        out.push('=');
        out.push_str(&value(&v.to_string()));
    }
    out
}

/// Writes one event to stderr in one write, so that lines from two threads never mix.
pub fn log(level: Level, msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    let mut text = line(level, msg, fields);
    text.push('\n');
    // Nothing sensible is left to do when stderr is gone.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

pub fn info(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    log(Level::Info, msg, fields);
}

pub fn warn(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    log(Level::Warn, msg, fields);
}

pub fn error(msg: &str, fields: &[(&str, &dyn std::fmt::Display)]) {
    log(Level::Error, msg, fields);
}

#[cfg(test)]
mod tests {
    use super::{Level, line};

    #[test]
    fn lines_are_logfmt() {
        assert_eq!(
            line(
                Level::Info,
                "applied /etc/portfw/policy.yaml",
                &[("generation", &2), ("sha256", &"ab12")]
            ),
            "portfw-agent: level=info msg=\"applied /etc/portfw/policy.yaml\" generation=2 sha256=ab12"
        );
        assert_eq!(
            line(Level::Error, "bad", &[("why", &"a \"quoted\"\nline")]),
            "portfw-agent: level=error msg=bad why=\"a \\\"quoted\\\"\\nline\""
        );
        assert_eq!(
            line(Level::Warn, "", &[("empty", &"")]),
            "portfw-agent: level=warn msg=\"\" empty=\"\""
        );
    }
}
