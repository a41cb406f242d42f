//! A small YAML tree that remembers where every node came from, built from yaml-rust2 events.
//!
//! serde-style loaders forget positions, and a policy error that cannot point at its line is
//! hard to fix. This tree keeps a [`Location`] on every node and key, rejects what a policy
//! never needs (aliases, tags, several documents, non-string keys) and reports duplicate keys,
//! which YAML loaders usually resolve silently by keeping the last one.

use std::collections::HashMap;

use yaml_rust2::{
    parser::{Event, Parser},
    scanner::{Marker, ScanError, TScalarStyle},
};

use super::diag::{Location, Reporter};

/// Nesting deeper than this is refused, so hostile input cannot exhaust the stack.
const MAX_DEPTH: usize = 64;

/// The most values (scalars, lists, mappings, keys included) a policy file may hold. Each
/// takes about a hundred bytes in the tree, so this bounds the parser's memory (about
/// 100 MiB) and time whatever the file holds, e.g. a flow list of millions of ports. It is
/// far above what the other limits let a policy use: 16,384 rules take a few values each,
/// and long address lists belong in set files, which are not YAML.
pub(crate) const MAX_NODES: usize = 1 << 20;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Node {
    pub location: Location,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Scalar(Scalar),
    Sequence(Vec<Node>),
    Mapping(Vec<Entry>),
    /// Something already reported as an error (an alias); checks skip it silently.
    Invalid,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Scalar {
    pub text: String,
    /// Quoted and block scalars are always strings; plain ones may be null, bool or numbers.
    pub plain: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub key: String,
    pub key_location: Location,
    pub value: Node,
}

/// What a scalar means under the YAML 1.2 core schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScalarKind {
    Null,
    Bool(bool),
    Int,
    Float,
    String,
}

impl Scalar {
    pub(crate) fn kind(&self) -> ScalarKind {
        if !self.plain {
            return ScalarKind::String;
        }
        let text = self.text.as_str();
        match text {
            "" | "~" | "null" | "Null" | "NULL" => ScalarKind::Null,
            "true" | "True" | "TRUE" => ScalarKind::Bool(true),
            "false" | "False" | "FALSE" => ScalarKind::Bool(false),
            ".inf" | ".Inf" | ".INF" | "-.inf" | "-.Inf" | "-.INF" | "+.inf" | "+.Inf"
            | "+.INF" | ".nan" | ".NaN" | ".NAN" => ScalarKind::Float,
            _ if is_int(text) => ScalarKind::Int,
            _ if is_float(text) => ScalarKind::Float,
            _ => ScalarKind::String,
        }
    }
}

fn is_int(text: &str) -> bool {
    let digits = |s: &str, radix: u32| !s.is_empty() && s.chars().all(|c| c.is_digit(radix));
    if let Some(hex) = text.strip_prefix("0x") {
        return digits(hex, 16);
    }
    if let Some(octal) = text.strip_prefix("0o") {
        return digits(octal, 8);
    }
    digits(text.strip_prefix(['-', '+']).unwrap_or(text), 10)
}

fn is_float(text: &str) -> bool {
    let body = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (body, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let mantissa_ok = all_digits(whole)
        && all_digits(fraction)
        && !(whole.is_empty() && fraction.is_empty())
        && (mantissa.contains('.') || exponent.is_some());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['-', '+']).unwrap_or(e);
        !e.is_empty() && all_digits(e)
    });
    mantissa_ok && exponent_ok
}

impl Node {
    /// How the node reads in a message: "`text`", "a list", "a mapping" or "nothing".
    pub(crate) fn describe(&self) -> String {
        match &self.value {
            Value::Scalar(s) if s.kind() == ScalarKind::Null => "nothing".to_owned(),
            Value::Scalar(s) => format!("`{}`", s.text),
            Value::Sequence(_) => "a list".to_owned(),
            Value::Mapping(_) => "a mapping".to_owned(),
            Value::Invalid => "an invalid value".to_owned(),
        }
    }
}

/// Outcome of reading a file's YAML.
#[derive(Debug)]
pub(crate) enum Tree {
    /// No document, or a document holding only comments.
    Empty,
    Root(Node),
    /// A syntax error, already reported.
    Broken,
}

fn location(mark: &Marker) -> Location {
    // yaml-rust2 counts lines from 1 but columns from 0.
    Location::new(mark.line(), mark.col() + 1)
}

/// A mark together with its character index, which orders marks within the file.
#[derive(Clone, Copy)]
struct Mark {
    index: usize,
    location: Location,
}

impl From<Marker> for Mark {
    fn from(mark: Marker) -> Self {
        Self {
            index: mark.index(),
            location: location(&mark),
        }
    }
}

/// Reads `source` into a tree, reporting syntax errors and the constructs a policy refuses.
pub(crate) fn parse(source: &str, reporter: &mut Reporter<'_>) -> Tree {
    let mut builder = Builder {
        parser: Parser::new_from_str(source),
        reporter,
        nodes: 0,
    };
    match builder.document() {
        Ok(tree) => tree,
        Err(Stop::Syntax(error)) => {
            builder.syntax_error(&error);
            Tree::Broken
        }
        Err(Stop::TooMany(at)) => {
            builder.reporter.error(
                at,
                format!(
                    "the policy holds more than {MAX_NODES} YAML values; reading stopped here. \
                     Put long address lists in set files (`{{file: PATH}}`)"
                ),
            );
            Tree::Broken
        }
    }
}

/// Why reading stopped before the end of the document.
enum Stop {
    Syntax(ScanError),
    /// Past [`MAX_NODES`], at this value.
    TooMany(Location),
}

impl From<ScanError> for Stop {
    fn from(error: ScanError) -> Self {
        Stop::Syntax(error)
    }
}

struct Builder<'r, 's, T> {
    parser: Parser<T>,
    reporter: &'r mut Reporter<'s>,
    /// Values read so far, against [`MAX_NODES`].
    nodes: usize,
}

impl<T: Iterator<Item = char>> Builder<'_, '_, T> {
    fn syntax_error(&mut self, error: &ScanError) {
        let at = location(error.marker());
        let mut message = format!("YAML syntax error: {}", error.info());
        // `from: fe80::` reads as a key `from: fe80:` with a stray `:`; say why.
        let chars = |line: &str| -> String {
            line.chars()
                .skip(at.column.saturating_sub(2))
                .take(2)
                .collect()
        };
        if self.reporter.line(at.line).map(chars).as_deref() == Some("::") {
            message.push_str("; an IPv6 address ending in `::` must be quoted, as in '2001:db8::'");
        }
        self.reporter.error(at, message);
    }

    fn next(&mut self) -> Result<(Event, Mark), Stop> {
        let (event, marker) = self.parser.next_token()?;
        let mark = Mark::from(marker);
        if matches!(
            event,
            Event::Scalar(..)
                | Event::SequenceStart(..)
                | Event::MappingStart(..)
                | Event::Alias(_)
        ) {
            self.nodes += 1;
            if self.nodes > MAX_NODES {
                return Err(Stop::TooMany(mark.location));
            }
        }
        Ok((event, mark))
    }

    fn document(&mut self) -> Result<Tree, Stop> {
        loop {
            let (event, mark) = self.next()?;
            match event {
                Event::StreamStart | Event::Nothing => continue,
                Event::StreamEnd => return Ok(Tree::Empty),
                Event::DocumentStart => break,
                other => {
                    self.unexpected(&other, mark.location);
                    return Ok(Tree::Broken);
                }
            }
        }
        let (event, mark) = self.next()?;
        let root = self.node(event, mark, 0)?;
        // Whatever follows the first document is either the end or a second document.
        loop {
            match self.next()? {
                (Event::DocumentEnd | Event::Nothing, _) => continue,
                (Event::DocumentStart, mark) => {
                    self.reporter.error(
                        mark.location,
                        "a policy file holds one YAML document, but a second one starts here",
                    );
                    break;
                }
                _ => break,
            }
        }
        Ok(match root {
            Some(node) => Tree::Root(node),
            None => Tree::Empty,
        })
    }

    /// Builds the node that `event` starts. `None` only for the null root document.
    fn node(&mut self, event: Event, mark: Mark, depth: usize) -> Result<Option<Node>, Stop> {
        if depth > MAX_DEPTH {
            self.reporter.error(
                mark.location,
                format!("nesting deeper than {MAX_DEPTH} levels is not supported"),
            );
            self.skip(event)?;
            return Ok(Some(invalid(mark)));
        }
        let node = match event {
            Event::Scalar(text, style, _anchor, tag) => {
                if tag.is_some() {
                    self.reject_tag(mark);
                }
                let scalar = Scalar {
                    text,
                    plain: style == TScalarStyle::Plain,
                };
                if depth == 0 && scalar.kind() == ScalarKind::Null {
                    return Ok(None);
                }
                Node {
                    location: mark.location,
                    value: Value::Scalar(scalar),
                }
            }
            Event::Alias(_) => {
                self.reporter.error(
                    mark.location,
                    "aliases (`*name`) are not supported in policies; write the value out",
                );
                invalid(mark)
            }
            Event::SequenceStart(_anchor, tag) => {
                if tag.is_some() {
                    self.reject_tag(mark);
                }
                let mut items = Vec::new();
                loop {
                    let (event, item_mark) = self.next()?;
                    if event == Event::SequenceEnd {
                        break;
                    }
                    if let Some(item) = self.node(event, item_mark, depth + 1)? {
                        items.push(item);
                    }
                }
                // A long list's spare capacity would otherwise stay until the tree goes.
                items.shrink_to_fit();
                Node {
                    location: mark.location,
                    value: Value::Sequence(items),
                }
            }
            Event::MappingStart(_anchor, tag) => {
                if tag.is_some() {
                    self.reject_tag(mark);
                }
                self.mapping(mark, depth)?
            }
            other => {
                self.unexpected(&other, mark.location);
                invalid(mark)
            }
        };
        Ok(Some(node))
    }

    fn mapping(&mut self, start: Mark, depth: usize) -> Result<Node, Stop> {
        let mut entries: Vec<Entry> = Vec::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        // A block mapping's start event is marked after its first key; the key is where a
        // reader would look, so the mapping takes whichever comes first.
        let mut node_location = start.location;
        let mut first_key = true;
        loop {
            let (event, key_mark) = self.next()?;
            if event == Event::MappingEnd {
                break;
            }
            if first_key && key_mark.index < start.index {
                node_location = key_mark.location;
            }
            first_key = false;
            let key = self.key(event, key_mark, depth)?;
            let (event, value_mark) = self.next()?;
            let value = self.node(event, value_mark, depth + 1)?;
            let Some(key) = key else { continue };
            let Some(mut value) = value else { continue };
            // A missing value is marked wherever the next token is, often the next line;
            // the key is the useful place to point at.
            if matches!(&value.value, Value::Scalar(s) if s.plain && s.text.is_empty()) {
                value.location = key_mark.location;
            }
            if let Some(line) = first_line.get(&key) {
                self.reporter.error(
                    key_mark.location,
                    format!("duplicate key `{key}` (first given at line {line})"),
                );
                continue;
            }
            first_line.insert(key.clone(), key_mark.location.line);
            entries.push(Entry {
                key,
                key_location: key_mark.location,
                value,
            });
        }
        Ok(Node {
            location: node_location,
            value: Value::Mapping(entries),
        })
    }

    /// Reads a mapping key, which must be a string.
    fn key(&mut self, event: Event, mark: Mark, depth: usize) -> Result<Option<String>, Stop> {
        let Some(node) = self.node(event, mark, depth + 1)? else {
            return Ok(None);
        };
        let kind = match &node.value {
            Value::Scalar(scalar) => match scalar.kind() {
                ScalarKind::String => return Ok(Some(scalar.text.clone())),
                ScalarKind::Null => "empty",
                ScalarKind::Bool(_) => "a boolean",
                ScalarKind::Int => "an integer",
                ScalarKind::Float => "a number",
            },
            Value::Sequence(_) => "a list",
            Value::Mapping(_) => "a mapping",
            Value::Invalid => return Ok(None),
        };
        let shown = match &node.value {
            Value::Scalar(s) if !s.text.is_empty() => format!(" `{}`", s.text),
            _ => String::new(),
        };
        self.reporter.error(
            mark.location,
            format!("mapping key{shown} is {kind}; keys must be strings"),
        );
        Ok(None)
    }

    /// yaml-rust2 guarantees the event grammar, so this only fires on a bug there; it is
    /// reported rather than panicking so a policy check never aborts.
    fn unexpected(&mut self, event: &Event, location: Location) {
        self.reporter.error(
            location,
            format!("internal error: the YAML parser produced {event:?} where a node was expected"),
        );
    }

    fn reject_tag(&mut self, mark: Mark) {
        self.reporter.error(
            mark.location,
            "YAML tags (`!tag`) are not supported in policies; quote the value instead",
        );
    }

    /// Consumes the rest of the node `event` starts, without building it.
    fn skip(&mut self, event: Event) -> Result<(), Stop> {
        let mut open = match event {
            Event::SequenceStart(..) | Event::MappingStart(..) => 1usize,
            _ => 0,
        };
        while open > 0 {
            match self.next()?.0 {
                Event::SequenceStart(..) | Event::MappingStart(..) => open += 1,
                Event::SequenceEnd | Event::MappingEnd => open -= 1,
                _ => {}
            }
        }
        Ok(())
    }
}

fn invalid(mark: Mark) -> Node {
    Node {
        location: mark.location,
        value: Value::Invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(source: &str) -> (Tree, Vec<String>) {
        let mut reporter = Reporter::new(source, "t.yaml");
        let tree = parse(source, &mut reporter);
        let (errors, _) = reporter.finish();
        let messages = errors
            .iter()
            .map(|d| format!("{}: {}", d.location, d.message))
            .collect();
        (tree, messages)
    }

    fn root(source: &str) -> Node {
        match tree(source) {
            (Tree::Root(node), errors) if errors.is_empty() => node,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn nodes_carry_one_based_positions() {
        let node = root("a: 1\nb:\n  - x\n  - \"y\"\n");
        let Value::Mapping(entries) = node.value else {
            panic!("not a mapping")
        };
        assert_eq!(node.location, Location::new(1, 1));
        assert_eq!(entries[0].key, "a");
        assert_eq!(entries[0].value.location, Location::new(1, 4));
        assert_eq!(entries[1].key_location, Location::new(2, 1));
        let Value::Sequence(items) = &entries[1].value.value else {
            panic!("not a sequence")
        };
        assert_eq!(entries[1].value.location, Location::new(3, 3));
        assert_eq!(items[1].location, Location::new(4, 5));
        assert_eq!(
            items[1].value,
            Value::Scalar(Scalar {
                text: "y".into(),
                plain: false
            })
        );
    }

    #[test]
    fn block_mapping_in_a_list_starts_at_its_first_key() {
        let node = root("- x: 1\n  y: 2\n- {z: 3}\n");
        let Value::Sequence(items) = node.value else {
            panic!("not a sequence")
        };
        assert_eq!(items[0].location, Location::new(1, 3));
        assert_eq!(items[1].location, Location::new(3, 3));
    }

    #[test]
    fn missing_value_points_at_its_key() {
        let node = root("a:\nb: 1\n");
        let Value::Mapping(entries) = node.value else {
            panic!("not a mapping")
        };
        assert_eq!(entries[0].value.location, Location::new(1, 1));
    }

    #[test]
    fn duplicate_keys_are_reported_at_the_second() {
        let (_, errors) = tree("a: 1\nb: 2\na: 3\n");
        assert_eq!(errors, ["3:1: duplicate key `a` (first given at line 1)"]);
    }

    #[test]
    fn non_string_keys_are_rejected() {
        let (_, errors) = tree("80: x\ntrue: y\n? [a]\n: z\n\"90\": ok\n");
        assert_eq!(
            errors,
            [
                "1:1: mapping key `80` is an integer; keys must be strings",
                "2:1: mapping key `true` is a boolean; keys must be strings",
                "3:3: mapping key is a list; keys must be strings",
            ]
        );
    }

    #[test]
    fn aliases_tags_and_second_documents_are_rejected() {
        let (_, errors) = tree("a: &x 1\nb: *x\nc: !!str 5\n---\nd: 1\n");
        assert_eq!(
            errors,
            [
                "2:4: aliases (`*name`) are not supported in policies; write the value out",
                "3:10: YAML tags (`!tag`) are not supported in policies; quote the value instead",
                "4:1: a policy file holds one YAML document, but a second one starts here",
            ]
        );
    }

    #[test]
    fn syntax_errors_have_positions() {
        let (result, errors) = tree("a: 1\n  b: 2\n");
        assert!(matches!(result, Tree::Broken));
        assert_eq!(
            errors,
            ["2:4: YAML syntax error: mapping values are not allowed in this context"]
        );
    }

    #[test]
    fn empty_inputs() {
        for source in ["", "# only a comment\n", "---\n", "~\n"] {
            let (result, errors) = tree(source);
            assert!(matches!(result, Tree::Empty), "{source:?}");
            assert!(errors.is_empty());
        }
    }

    #[test]
    fn deep_nesting_is_refused() {
        let source = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let (_, errors) = tree(&source);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("nesting deeper than 64"), "{errors:?}");
    }

    #[test]
    fn scalar_kinds_follow_the_core_schema() {
        let kind = |text: &str, plain| {
            Scalar {
                text: text.into(),
                plain,
            }
            .kind()
        };
        assert_eq!(kind("", true), ScalarKind::Null);
        assert_eq!(kind("~", true), ScalarKind::Null);
        assert_eq!(kind("True", true), ScalarKind::Bool(true));
        assert_eq!(kind("false", true), ScalarKind::Bool(false));
        for int in ["0", "80", "-1", "+5", "0x1F", "0o17"] {
            assert_eq!(kind(int, true), ScalarKind::Int, "{int}");
        }
        for float in ["1.5", "1.", ".5", "1e3", "-2.5E-3", ".inf", ".NaN"] {
            assert_eq!(kind(float, true), ScalarKind::Float, "{float}");
        }
        for string in ["ssh", "80/tcp", "8000-8999", "1.2.3", "e5", "0x", "yes"] {
            assert_eq!(kind(string, true), ScalarKind::String, "{string}");
        }
        assert_eq!(kind("80", false), ScalarKind::String);
        assert_eq!(kind("", false), ScalarKind::String);
    }
}
