//! The set-file format: one address or CIDR per line, `#` comments and blank lines ignored.
//!
//! Set files are often generated (block lists, cloud ranges) and can run to hundreds of
//! thousands of lines, so this reads them line by line without building a YAML tree.

use super::{
    MAX_CIDRS,
    cidr::Cidr,
    diag::{Location, Severity, Snippet},
    quickhash::QuickSet,
};

/// Problems kept per set file; a file that is not a set file at all would otherwise produce
/// one error per line.
pub(super) const PROBLEMS_SHOWN: usize = 20;

/// What a set file holds, and what is wrong with it.
#[derive(Debug, Default)]
pub(super) struct SetFile {
    /// In file order, each once. Reading stops past [`MAX_CIDRS`] of them, which no policy
    /// may hold, so memory stays bounded whatever the file's length.
    pub cidrs: Vec<Cidr>,
    /// The first [`PROBLEMS_SHOWN`] problems, in file order.
    pub problems: Vec<LineProblem>,
    /// Errors and warnings past the first [`PROBLEMS_SHOWN`] problems, counted but not kept.
    pub more_errors: usize,
    pub more_warnings: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) struct LineProblem {
    pub location: Location,
    pub severity: Severity,
    pub message: String,
    /// The line as written (or a window of it), for the snippet under the message.
    pub snippet: Snippet,
}

pub(super) fn read(text: &str) -> SetFile {
    read_at_most(text, MAX_CIDRS)
}

fn read_at_most(text: &str, most: usize) -> SetFile {
    let mut file = SetFile::default();
    let mut seen = QuickSet::default();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.lines().enumerate() {
        let content = raw.find('#').map_or(raw, |hash| &raw[..hash]);
        let mut words = content.split_whitespace();
        let Some(word) = words.next() else { continue };
        let column = |w: &str| column_of(raw, w);
        if word.starts_with('$') {
            let message = format!(
                "sets cannot nest: `{word}` is a set reference; list the addresses here instead"
            );
            file.problem(index, column(word), Severity::Error, message, raw);
        } else {
            match Cidr::parse_noting_host_bits(word) {
                Ok((cidr, host_bits)) => {
                    if host_bits {
                        let message = host_bits_message(word, &cidr);
                        file.problem(index, column(word), Severity::Warning, message, raw);
                    }
                    if seen.insert(cidr) {
                        file.cidrs.push(cidr);
                    }
                    if file.cidrs.len() > most {
                        let message = format!(
                            "the set file holds more than {most} different addresses and \
                             CIDRs, the most a policy may hold; reading stopped here"
                        );
                        file.problem(index, column(word), Severity::Error, message, raw);
                        break;
                    }
                }
                Err(error) => {
                    file.problem(index, column(word), Severity::Error, error.to_string(), raw);
                }
            }
        }
        if let Some(second) = words.next() {
            let message = format!("one address or CIDR per line; `{second}` is a second one");
            file.problem(index, column(second), Severity::Error, message, raw);
        }
    }
    file
}

/// "`10.0.0.1/8` has host bits set; it means 10.0.0.0/8", shared with the policy's own lists.
pub(super) fn host_bits_message(written: &str, cidr: &Cidr) -> String {
    format!("`{written}` has host bits set; it means {cidr}")
}

/// The 1-based character column where `word`, a slice of `line`, starts.
fn column_of(line: &str, word: &str) -> usize {
    let offset = (word.as_ptr() as usize).saturating_sub(line.as_ptr() as usize);
    line.get(..offset)
        .map_or(1, |before| before.chars().count() + 1)
}

impl SetFile {
    pub(super) fn has_errors(&self) -> bool {
        self.more_errors > 0 || self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    fn problem(
        &mut self,
        index: usize,
        column: usize,
        severity: Severity,
        message: String,
        line: &str,
    ) {
        if self.problems.len() >= PROBLEMS_SHOWN {
            match severity {
                Severity::Error => self.more_errors += 1,
                Severity::Warning => self.more_warnings += 1,
            }
            return;
        }
        self.problems.push(LineProblem {
            location: Location::new(index + 1, column),
            severity,
            message,
            snippet: Snippet::new(line, column),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn problems(text: &str) -> Vec<String> {
        problems_of(&read(text))
    }

    fn problems_of(file: &SetFile) -> Vec<String> {
        file.problems
            .iter()
            .map(|p| {
                let tag = if p.severity == Severity::Warning {
                    "warning: "
                } else {
                    ""
                };
                format!("{}: {tag}{}", p.location, p.message)
            })
            .collect()
    }

    #[test]
    fn comments_blank_lines_and_whitespace_are_skipped() {
        let text = "\u{feff}# block list\n\n10.0.0.0/8\n  192.0.2.7   # one host\r\n\t2001:db8::/32\n#\n   \n";
        let file = read(text);
        let shown: Vec<String> = file.cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"]);
        assert!(file.problems.is_empty() && !file.has_errors());
        assert!(read("").cidrs.is_empty());
        assert!(read("# nothing but comments\n").cidrs.is_empty());
    }

    #[test]
    fn problems_have_lines_and_columns() {
        let text = "10.0.0.0/8\n  300.1.1.1\n10.0.0.1/8\n\t$admins\n192.0.2.1 192.0.2.2\n\
                    2001:db8::/129 # wide\n";
        assert_eq!(
            problems(text),
            [
                "2:3: `300.1.1.1` is not an IP address or CIDR",
                "3:1: warning: `10.0.0.1/8` has host bits set; it means 10.0.0.0/8",
                "4:2: sets cannot nest: `$admins` is a set reference; list the addresses here \
                 instead",
                "5:11: one address or CIDR per line; `192.0.2.2` is a second one",
                "6:1: prefix length 129 is out of range 0-128 for IPv6",
            ]
        );
        let file = read(text);
        assert_eq!(file.problems[1].snippet.text, "10.0.0.1/8");
        assert!(file.has_errors());
        // The host-bit warning still adds the normalised prefix, once.
        assert!(
            file.cidrs
                .iter()
                .filter(|c| c.to_string() == "10.0.0.0/8")
                .count()
                == 1
        );
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(
            problems("é 1.2.3.4\n"),
            [
                "1:1: `é` is not an IP address or CIDR",
                "1:3: one address or CIDR per line; `1.2.3.4` is a second one",
            ]
        );
    }

    #[test]
    fn problems_past_the_first_few_are_counted() {
        let text = format!(
            "{}{}",
            "x\n".repeat(PROBLEMS_SHOWN + 5),
            "1.2.3.4/8\n".repeat(3)
        );
        let file = read(&text);
        assert_eq!(file.problems.len(), PROBLEMS_SHOWN);
        assert_eq!((file.more_errors, file.more_warnings), (5, 3));
        assert!(file.has_errors());
        let warnings_only = read(&"1.2.3.4/8\n".repeat(PROBLEMS_SHOWN + 1));
        assert_eq!(
            (warnings_only.more_errors, warnings_only.more_warnings),
            (0, 1)
        );
        assert!(!warnings_only.has_errors());
    }

    #[test]
    fn duplicates_count_once_and_reading_stops_past_the_limit() {
        let file = read_at_most("10.0.0.1\n10.0.0.1\n10.0.0.2\n10.0.0.1/32\n", 2);
        assert_eq!(file.cidrs.len(), 2);
        assert!(!file.has_errors());
        let text = "10.0.0.1\n10.0.0.2\n10.0.0.3\n10.0.0.4\nnot-an-address\n";
        let file = read_at_most(text, 2);
        assert_eq!(file.cidrs.len(), 3);
        assert_eq!(
            problems_of(&file),
            [
                "3:1: the set file holds more than 2 different addresses and CIDRs, the most a \
              policy may hold; reading stopped here"
            ]
        );
    }

    #[test]
    fn a_long_line_keeps_a_short_snippet() {
        let line = format!("{} 10.0.0.1", "x".repeat(1_000_000));
        let file = read(&line);
        assert_eq!(file.problems.len(), 2);
        assert!(file.problems.iter().all(|p| p.snippet.text.len() <= 100));
        assert_eq!(file.problems[1].location, Location::new(1, 1_000_002));
    }

    #[test]
    fn a_hundred_thousand_lines_read_quickly() {
        let mut text = String::from("# generated\n");
        for i in 0..100_000u32 {
            if i % 2 == 0 {
                let [_, b, c, d] = i.to_be_bytes();
                text.push_str(&format!("10.{b}.{c}.{d}\n"));
            } else {
                text.push_str(&format!("2001:db8:{:x}:{:x}::/64\n", i >> 16, i & 0xffff));
            }
        }
        let start = Instant::now();
        let file = read(&text);
        let took = start.elapsed();
        println!("set file: 100,000 lines read in {took:?}");
        assert_eq!(file.cidrs.len(), 100_000);
        assert!(file.problems.is_empty());
    }
}
