//! `sets:` and the `from:` of rules: named address sets, set files and source prefixes.

use std::{collections::HashMap, net::Ipv6Addr};

use sha2::{Digest as _, Sha256};

use super::{Validator, Written, quote_items};
use crate::policy::{
    AddressSet, Cidr, MAX_CIDRS, SetFileRead,
    diag::{Diagnostic, Location, Severity},
    ports::edit_distance,
    quickhash::QuickSet,
    setfile,
    yaml::{Entry, Node, ScalarKind, Value},
};

const MAX_SET_NAME: usize = 64;
/// How many set names an "unknown set" error lists when none is close.
const SET_NAMES_LISTED: usize = 8;

/// The sets defined so far, and the running count of prefixes against [`MAX_CIDRS`].
#[derive(Default)]
pub(super) struct Sets {
    defined: Vec<Defined>,
    by_name: HashMap<String, usize>,
    /// Each set's prefixes once, plus every rule's `from` with sets expanded.
    count: usize,
    /// Where the count first went past [`MAX_CIDRS`].
    over_at: Option<Location>,
}

struct Defined {
    set: AddressSet,
    used: bool,
    /// Some of its entries were errors, so its being empty proves nothing.
    broken: bool,
}

impl Sets {
    fn add(&mut self, count: usize, at: Location) {
        self.count = self.count.saturating_add(count);
        if self.count > MAX_CIDRS && self.over_at.is_none() {
            self.over_at = Some(at);
        }
    }
}

/// A valid `from:`.
pub(super) struct Sources {
    /// Not empty, sets expanded, duplicates removed.
    pub cidrs: Vec<Cidr>,
    /// As written, for summaries.
    pub text: String,
}

/// Where a list of sources is written, for messages.
enum Place {
    Rule(usize),
    ScanExcept,
}

impl Place {
    /// The key, as messages start with it.
    fn key(&self) -> String {
        match self {
            Place::Rule(number) => format!("`from` in rule {number}"),
            Place::ScanExcept => "`except` in `scan`".to_owned(),
        }
    }

    /// What the sources are added to.
    fn name(&self) -> String {
        match self {
            Place::Rule(number) => format!("rule {number}"),
            Place::ScanExcept => "`scan: except`".to_owned(),
        }
    }
}

/// One item of a `from:` list, in the order written.
enum Source {
    Set(usize),
    Prefix(Cidr),
}

impl Validator<'_, '_, '_> {
    /// Reads the top-level `sets:` mapping.
    pub(super) fn sets(&mut self, entry: &Entry) {
        if Self::is_null(&entry.value) {
            return;
        }
        let Value::Mapping(definitions) = &entry.value.value else {
            self.invalid(
                &entry.value,
                "`sets` must be a mapping from set names to addresses",
            );
            return;
        };
        for definition in definitions {
            let name = definition.key.as_str();
            let name_ok = is_set_name(name);
            if !name_ok {
                self.reporter.error(
                    definition.key_location,
                    format!(
                        "invalid set name `{name}`: use 1 to {MAX_SET_NAME} letters, digits, \
                         `_` or `-`"
                    ),
                );
            }
            let (cidrs, file, broken) = self.set_value(name, &definition.value);
            let cidrs = dedupe(cidrs);
            self.sets.add(cidrs.len(), definition.key_location);
            if name_ok {
                let set = AddressSet {
                    name: name.to_owned(),
                    cidrs,
                    location: definition.key_location,
                    file,
                };
                self.sets
                    .by_name
                    .insert(set.name.clone(), self.sets.defined.len());
                self.sets.defined.push(Defined {
                    set,
                    used: false,
                    broken,
                });
            }
        }
    }

    /// Reports the prefix limit and unused sets, once every rule has been read.
    pub(super) fn finish_sets(&mut self) -> Vec<AddressSet> {
        if let Some(at) = self.sets.over_at {
            self.reporter.error(
                at,
                format!(
                    "the policy holds {} addresses and CIDRs in sets and `from` lists (a set \
                     counts once, and again for each rule that uses it); at most {MAX_CIDRS} \
                     are supported",
                    self.sets.count
                ),
            );
        }
        let defined = std::mem::take(&mut self.sets.defined);
        for unused in defined.iter().filter(|d| !d.used) {
            self.reporter.warning(
                unused.set.location,
                format!("set `{}` is defined but no rule uses it", unused.set.name),
            );
        }
        defined.into_iter().map(|d| d.set).collect()
    }

    /// A set's prefixes in the order written, the set file it came from, and whether any of
    /// it was in error.
    fn set_value(&mut self, name: &str, value: &Node) -> (Vec<Cidr>, Option<String>, bool) {
        let items = match &value.value {
            Value::Mapping(entries) => return self.set_file(name, value, entries),
            Value::Invalid => return (Vec::new(), None, true),
            Value::Scalar(s) if s.kind() == ScalarKind::Null => {
                self.invalid(
                    value,
                    format!(
                        "set `{name}` must be an address or CIDR, a list of them, or \
                         `{{file: PATH}}`"
                    ),
                );
                return (Vec::new(), None, true);
            }
            Value::Sequence(items) => items.as_slice(),
            Value::Scalar(_) => std::slice::from_ref(value),
        };
        let mut cidrs = Vec::with_capacity(items.len());
        let mut broken = false;
        let expected = format!("set `{name}` expects an address or a CIDR");
        for item in items {
            let Some(text) = self.address_text(item, &expected) else {
                broken = true;
                continue;
            };
            if text.starts_with('$') {
                self.reporter.error(
                    item.location,
                    format!(
                        "sets cannot nest: `{text}` is a set reference; list the addresses \
                         here instead"
                    ),
                );
                broken = true;
                continue;
            }
            match self.prefix(item, text) {
                Some(cidr) => cidrs.push(cidr),
                None => broken = true,
            }
        }
        (cidrs, None, broken)
    }

    /// A set given as `{file: PATH}`: reads the file and reports what is wrong inside it at
    /// its own lines.
    fn set_file(
        &mut self,
        name: &str,
        node: &Node,
        entries: &[Entry],
    ) -> (Vec<Cidr>, Option<String>, bool) {
        let mut path = None;
        let mut ok = true;
        for entry in entries {
            if entry.key != "file" {
                self.reporter.error(
                    entry.key_location,
                    format!(
                        "unknown key `{}` in set `{name}`; expected only `file`",
                        entry.key
                    ),
                );
                ok = false;
                continue;
            }
            match Self::text(&entry.value) {
                Some(text) if !text.is_empty() => path = Some((text, entry.value.location)),
                _ => {
                    self.invalid(
                        &entry.value,
                        format!("the `file` of set `{name}` must be a path"),
                    );
                    ok = false;
                }
            }
        }
        let Some((written, at)) = path else {
            if ok {
                self.reporter.error(
                    node.location,
                    format!(
                        "set `{name}` needs `file: PATH`, or a list of addresses instead of a \
                         mapping"
                    ),
                );
            }
            return (Vec::new(), None, true);
        };
        let full = self.dir.join(written);
        let shown = full.display().to_string();
        let text = match (self.read_file)(&full) {
            Ok(text) => text,
            Err(error) => {
                let also = if shown == written {
                    String::new()
                } else {
                    format!(" ({shown})")
                };
                self.reporter.error(
                    at,
                    format!("cannot read set file `{written}`{also}: {error}"),
                );
                return (Vec::new(), Some(written.to_owned()), true);
            }
        };
        self.set_files.push(SetFileRead {
            path: written.to_owned(),
            sha256: Sha256::digest(text.as_bytes()).into(),
        });
        let contents = setfile::read(&text);
        drop(text);
        let broken = !ok || contents.has_errors();
        for problem in contents.problems {
            let diagnostic = Diagnostic {
                file: shown.clone(),
                location: problem.location,
                severity: problem.severity,
                message: problem.message,
                snippet: Some(problem.snippet),
                count: 1,
            };
            self.reporter.push_elsewhere(at, diagnostic);
        }
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        for (n, severity, what) in [
            (contents.more_errors, Severity::Error, "error"),
            (contents.more_warnings, Severity::Warning, "warning"),
        ] {
            if n > 0 {
                let message = format!(
                    "set file `{shown}` has {n} more {what}{} not shown",
                    plural(n)
                );
                self.reporter.push_after(at, severity, message);
            }
        }
        (contents.cidrs, Some(written.to_owned()), broken)
    }

    /// Reads a rule's `from:`. `None` when it has errors, which are reported.
    pub(super) fn from(&mut self, number: usize, entry: &Entry) -> Option<Sources> {
        self.source_list(entry, &Place::Rule(number))
    }

    /// Reads `scan: except:`, which takes what `from:` does and may be empty.
    pub(super) fn except(&mut self, entry: &Entry) -> Option<Sources> {
        self.source_list(entry, &Place::ScanExcept)
    }

    fn source_list(&mut self, entry: &Entry, place: &Place) -> Option<Sources> {
        let value = &entry.value;
        let items = match &value.value {
            Value::Sequence(items) if items.is_empty() => {
                if let Place::ScanExcept = place {
                    return Some(Sources {
                        cidrs: Vec::new(),
                        text: "[]".to_owned(),
                    });
                }
                self.reporter.error(
                    value.location,
                    "`from` is empty; omit it to match any source",
                );
                return None;
            }
            Value::Sequence(items) => items.as_slice(),
            Value::Mapping(_) => {
                self.invalid(
                    value,
                    format!(
                        "{} must be a set reference (`$name`), an address, a CIDR or a list of \
                         them",
                        place.key()
                    ),
                );
                return None;
            }
            Value::Invalid => return None,
            Value::Scalar(_) => std::slice::from_ref(value),
        };
        let expected = format!(
            "{} expects a set reference (`$name`), an address or a CIDR",
            place.key()
        );
        let mut sources = Vec::with_capacity(items.len());
        let mut written = Written::default();
        let mut empty_sets: Vec<(Location, usize)> = Vec::new();
        let mut count = 0usize;
        let mut ok = true;
        for item in items {
            let Some(text) = self.address_text(item, &expected) else {
                ok = false;
                continue;
            };
            written.push(text);
            if let Some(name) = text.strip_prefix('$') {
                let Some(index) = self.set_reference(name, item.location) else {
                    ok = false;
                    continue;
                };
                let defined = &mut self.sets.defined[index];
                defined.used = true;
                ok &= !defined.broken;
                count = count.saturating_add(defined.set.cidrs.len());
                if defined.set.cidrs.is_empty() {
                    empty_sets.push((item.location, index));
                } else {
                    sources.push(Source::Set(index));
                }
            } else {
                match self.prefix(item, text) {
                    Some(cidr) => {
                        count += 1;
                        sources.push(Source::Prefix(cidr));
                    }
                    None => ok = false,
                }
            }
        }
        self.sets.add(count, entry.key_location);
        if !ok || self.sets.over_at.is_some() {
            return None;
        }
        let set_name = |index: usize| &self.sets.defined[index].set.name;
        if sources.is_empty()
            && let Place::Rule(number) = place
        {
            if let Some(&(at, index)) = empty_sets.first() {
                let message = format!(
                    "set `${}` is empty, so rule {number} could never match",
                    set_name(index)
                );
                self.reporter.error(at, message);
            }
            return None;
        }
        for &(at, index) in &empty_sets {
            let message = format!(
                "set `${}` is empty; it adds no sources to {}",
                set_name(index),
                place.name()
            );
            self.reporter.warning(at, message);
        }
        let text = match &value.value {
            Value::Sequence(_) => format!("[{}]", quote_items(&written)),
            _ => written.first.concat(),
        };
        Some(Sources {
            cidrs: self.expand(&sources),
            text,
        })
    }

    /// The prefixes `sources` stand for, without duplicates.
    fn expand(&self, sources: &[Source]) -> Vec<Cidr> {
        if let [Source::Set(index)] = sources {
            // Already without duplicates; the common case of a rule naming one set.
            return self.sets.defined[*index].set.cidrs.clone();
        }
        let mut all = Vec::new();
        for source in sources {
            match source {
                Source::Set(index) => all.extend_from_slice(&self.sets.defined[*index].set.cidrs),
                Source::Prefix(cidr) => all.push(*cidr),
            }
        }
        dedupe(all)
    }

    /// The set `$name` refers to, or an error saying why there is none.
    fn set_reference(&mut self, name: &str, at: Location) -> Option<usize> {
        if !is_set_name(name) {
            self.reporter.error(
                at,
                format!(
                    "invalid set reference `${name}`: set names are 1 to {MAX_SET_NAME} \
                     letters, digits, `_` or `-`"
                ),
            );
            return None;
        }
        if let Some(&index) = self.sets.by_name.get(name) {
            return Some(index);
        }
        let names: Vec<&str> = self
            .sets
            .defined
            .iter()
            .map(|d| d.set.name.as_str())
            .collect();
        let closest = names
            .iter()
            .map(|candidate| (edit_distance(name, candidate), *candidate))
            .min()
            .filter(|(distance, _)| *distance <= 1 + name.len() / 4);
        let hint = match closest {
            Some((_, candidate)) => format!("; did you mean `${candidate}`?"),
            None if names.is_empty() => {
                "; the policy defines no sets (they go under the top-level `sets:` key)".to_owned()
            }
            None => {
                let mut listed = names
                    .iter()
                    .take(SET_NAMES_LISTED)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ");
                if names.len() > SET_NAMES_LISTED {
                    listed.push_str(", ...");
                }
                format!("; the sets defined are: {listed}")
            }
        };
        self.reporter
            .error(at, format!("unknown set `${name}`{hint}"));
        None
    }

    /// The text of an address, CIDR or set reference; anything else is reported as not
    /// being what `expected` says.
    fn address_text<'n>(&mut self, item: &'n Node, expected: &str) -> Option<&'n str> {
        match &item.value {
            Value::Scalar(s) if !matches!(s.kind(), ScalarKind::Null | ScalarKind::Bool(_)) => {
                return Some(&s.text);
            }
            Value::Mapping(entries) => {
                // `- 2001:db8::` reads as a mapping from `2001:db8:` to nothing.
                if let [entry] = entries.as_slice()
                    && Self::is_null(&entry.value)
                    && format!("{}:", entry.key).parse::<Ipv6Addr>().is_ok()
                {
                    self.reporter.error(
                        item.location,
                        format!(
                            "`{0}:` must be quoted ('{0}:'): unquoted, YAML reads a value \
                             ending in `:` as a mapping key",
                            entry.key
                        ),
                    );
                    return None;
                }
            }
            _ => {}
        }
        self.invalid(item, expected);
        None
    }

    /// Parses a prefix written in the policy, warning when it has host bits set.
    fn prefix(&mut self, item: &Node, text: &str) -> Option<Cidr> {
        match Cidr::parse_noting_host_bits(text) {
            Ok((cidr, host_bits)) => {
                if host_bits {
                    self.reporter
                        .warning_with(item.location, || setfile::host_bits_message(text, &cidr));
                }
                Some(cidr)
            }
            Err(error) => {
                self.reporter
                    .error_with(item.location, || error.to_string());
                None
            }
        }
    }
}

fn is_set_name(name: &str) -> bool {
    (1..=MAX_SET_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Drops repeated prefixes, keeping the first of each.
fn dedupe(cidrs: Vec<Cidr>) -> Vec<Cidr> {
    let mut seen = QuickSet::with_capacity_and_hasher(cidrs.len(), Default::default());
    cidrs
        .into_iter()
        .filter(|cidr| seen.insert(*cidr))
        .collect()
}
