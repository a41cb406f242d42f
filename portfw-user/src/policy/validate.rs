//! Turns the YAML tree into a [`Policy`], reporting every problem it finds in one pass.

use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
};

use portfw_common::MAX_RULES;

use super::{
    Action, Flows, IcmpMatch, IcmpPolicy, LogMode, Parsed, Policy, PortRange, Protocol, Rule,
    SetFileRead,
    diag::{Diagnostics, Location, Reporter},
    icmp,
    ports::{self, SpecForm},
    yaml::{self, Entry, Node, ScalarKind, Tree, Value},
};

mod defences;
mod flows;
mod shadow;
mod sources;

const TOP_KEYS: &[&str] = &[
    "default",
    "log",
    "interfaces",
    "sets",
    "rules",
    "icmp",
    "fragments",
    "other-ip",
    "non-ip",
    "replies",
    "flows",
    "enforce",
    "scan",
    "log-limit",
    "knock",
];
const RULE_KEYS: &[&str] = &["name", "allow", "drop", "from", "log", "limit"];

/// Linux's IFNAMSIZ less the terminating NUL.
const MAX_INTERFACE_NAME: usize = 15;
pub(super) const MAX_RULE_NAME: usize = 64;
/// How many port specs or sources a message quotes from a rule before eliding the rest.
const ITEMS_QUOTED: usize = 4;

/// Reads a set file; the path is already joined to the policy's directory.
type ReadFile<'f> = &'f dyn Fn(&Path) -> io::Result<String>;

pub(super) fn parse(
    source: &str,
    file: &str,
    read_file: ReadFile<'_>,
) -> Result<Parsed, Diagnostics> {
    let mut reporter = Reporter::new(source, file);
    let checked = match yaml::parse(source, &mut reporter) {
        Tree::Root(root) => {
            let dir = Path::new(file).parent().unwrap_or(Path::new(""));
            let mut validator = Validator {
                reporter: &mut reporter,
                dir: dir.to_owned(),
                read_file,
                sets: sources::Sets::default(),
                set_files: Vec::new(),
            };
            Some(validator.policy(&root, file))
        }
        Tree::Empty => {
            reporter.error(
                Location::new(1, 1),
                "the policy is empty; it needs at least `default: allow` or `default: drop`",
            );
            None
        }
        Tree::Broken => None,
    };
    match checked {
        Some((policy, written)) if !reporter.has_errors() => {
            shadow::shadowed_rules(&policy, &written, &mut reporter);
            let (_, warnings) = reporter.finish();
            Ok(Parsed { policy, warnings })
        }
        _ => Err(Diagnostics(reporter.finish().0)),
    }
}

struct Validator<'r, 's, 'f> {
    reporter: &'r mut Reporter<'s>,
    /// The policy file's directory, which set file paths are relative to.
    dir: PathBuf,
    read_file: ReadFile<'f>,
    sets: sources::Sets,
    /// The set files read so far, for the policy's hash.
    set_files: Vec<SetFileRead>,
}

/// Items of a list as written, for messages: the first [`ITEMS_QUOTED`] and how many there
/// are, so that a list of a million ports costs no string per port.
#[derive(Clone, Debug, Default)]
struct Written {
    first: Vec<String>,
    count: usize,
}

impl Written {
    fn push(&mut self, text: &str) {
        if self.first.len() < ITEMS_QUOTED {
            self.first.push(text.to_owned());
        }
        self.count += 1;
    }
}

impl Validator<'_, '_, '_> {
    /// Checks the whole document. The policy returned is only meaningful when no error was
    /// reported; fallbacks stand in for invalid values so checking can go on.
    fn policy(&mut self, root: &Node, file: &str) -> (Policy, Vec<Written>) {
        let mut policy = Policy {
            file: file.to_owned(),
            default: Action::Drop,
            log: LogMode::default(),
            interfaces: Vec::new(),
            icmp: Action::Allow,
            icmp_types: IcmpPolicy::default(),
            fragments: Action::Allow,
            other_ip: Action::Drop,
            non_ip: Action::Allow,
            replies: Action::Allow,
            enforce: true,
            flows: Flows::DEFAULT,
            sets: Vec::new(),
            rules: Vec::new(),
            set_files: Vec::new(),
            scan: None,
            log_limit: Some(crate::policy::LOG_LIMIT_DEFAULT),
            doors: Vec::new(),
        };
        let mut written = Vec::new();
        let Value::Mapping(entries) = &root.value else {
            if !matches!(root.value, Value::Invalid) {
                self.reporter.error(
                    root.location,
                    format!(
                        "a policy is a mapping of keys ({}), but this is {}",
                        TOP_KEYS.join(", "),
                        root.describe()
                    ),
                );
            }
            return (policy, written);
        };
        // Rules may name sets defined further down, so sets are read first.
        let sets_entry = entries.iter().find(|e| e.key == "sets");
        if let Some(entry) = sets_entry {
            self.sets(entry);
        }
        let mut default_given = false;
        let mut other_ip = None;
        let mut flows_key = None;
        let mut doors = Vec::new();
        for entry in entries {
            match entry.key.as_str() {
                "sets" => {}
                "default" => {
                    default_given = true;
                    policy.default = self.action(entry).unwrap_or(policy.default);
                }
                "log" => policy.log = self.log_mode(entry).unwrap_or(policy.log),
                "interfaces" => policy.interfaces = self.interfaces(entry),
                "rules" => (policy.rules, written) = self.rules(entry),
                "icmp" => self.icmp(entry, &mut policy),
                "fragments" => policy.fragments = self.action(entry).unwrap_or(policy.fragments),
                "other-ip" => other_ip = self.action(entry),
                "non-ip" => policy.non_ip = self.action(entry).unwrap_or(policy.non_ip),
                "replies" => policy.replies = self.action(entry).unwrap_or(policy.replies),
                "enforce" => {
                    policy.enforce = self
                        .boolean(&entry.value, "`enforce` must be `true` or `false`")
                        .unwrap_or(policy.enforce);
                }
                "flows" => {
                    flows_key = Some(entry.key_location);
                    policy.flows = self.flows(entry);
                }
                "scan" => policy.scan = self.scan(entry),
                "log-limit" => {
                    policy.log_limit = self.log_limit(entry).unwrap_or(policy.log_limit);
                }
                "knock" => doors = self.knock(entry),
                _ => self.unknown_key(entry, "", TOP_KEYS),
            }
        }
        defences::knock_warnings(&policy, &doors, self);
        policy.doors = doors.into_iter().map(|read| read.door).collect();
        if !default_given {
            self.reporter.error(
                root.location,
                "missing required key `default`: the verdict for ports no rule names \
                 (`allow` or `drop`)",
            );
        }
        if let Some(at) = flows_key
            && policy.replies == Action::Drop
        {
            self.reporter.warning(
                at,
                "`flows` has no effect under `replies: drop`, which keeps no flow table",
            );
        }
        policy.other_ip = other_ip.unwrap_or(policy.default);
        policy.sets = self.finish_sets();
        policy.set_files = std::mem::take(&mut self.set_files);
        (policy, written)
    }

    fn unknown_key(&mut self, entry: &Entry, place: &str, allowed: &[&str]) {
        self.reporter.error(
            entry.key_location,
            format!(
                "unknown key `{}`{place}; expected one of: {}",
                entry.key,
                allowed.join(", ")
            ),
        );
    }

    /// The text of a scalar that is not null; anything else is `None`.
    fn text(node: &Node) -> Option<&str> {
        match &node.value {
            Value::Scalar(s) if s.kind() != ScalarKind::Null => Some(&s.text),
            _ => None,
        }
    }

    fn action(&mut self, entry: &Entry) -> Option<Action> {
        match Self::text(&entry.value) {
            Some("allow") => Some(Action::Allow),
            Some("drop") => Some(Action::Drop),
            _ => {
                self.invalid(
                    &entry.value,
                    format!("`{}` must be `allow` or `drop`", entry.key),
                );
                None
            }
        }
    }

    /// `icmp: allow|drop`, or a mapping with `default` and lists of types to `allow`/`drop`.
    fn icmp(&mut self, entry: &Entry, policy: &mut Policy) {
        let Value::Mapping(entries) = &entry.value.value else {
            policy.icmp = self.action(entry).unwrap_or(policy.icmp);
            return;
        };
        let mut named: Vec<(IcmpMatch, Action, usize)> = Vec::new();
        for inner in entries {
            let action = match inner.key.as_str() {
                "default" => {
                    policy.icmp = self.action(inner).unwrap_or(policy.icmp);
                    continue;
                }
                "allow" => Action::Allow,
                "drop" => Action::Drop,
                _ => {
                    self.unknown_key(inner, " in `icmp`", &["default", "allow", "drop"]);
                    continue;
                }
            };
            let Some(items) = Self::one_or_many(&inner.value) else {
                self.invalid(&inner.value, "expected an ICMP type or a list of them");
                continue;
            };
            for item in items {
                let Some(text) = Self::text(item) else {
                    self.invalid(
                        item,
                        "expected an ICMP type name, `icmp/TYPE` or `icmpv6/TYPE`",
                    );
                    continue;
                };
                match icmp::parse_icmp_spec(text) {
                    Err(message) => self.reporter.error(item.location, message),
                    Ok(matches) => {
                        // A name may cover both families; one conflict message per name.
                        let conflict = matches.iter().find_map(|m| {
                            named
                                .iter()
                                .find(|(n, a, _)| n == m && *a != action)
                                .map(|&(_, _, line)| line)
                        });
                        if let Some(line) = conflict {
                            self.reporter.error(
                                item.location,
                                format!(
                                    "ICMP type `{text}` is both allowed and dropped (the other at line {line})"
                                ),
                            );
                            continue;
                        }
                        named.extend(matches.into_iter().map(|m| (m, action, item.location.line)));
                    }
                }
            }
        }
        for (m, action, _) in named {
            let list = match action {
                Action::Allow => &mut policy.icmp_types.allow,
                Action::Drop => &mut policy.icmp_types.drop,
            };
            if !list.contains(&m) {
                list.push(m);
            }
        }
    }

    /// `true` or `false`; anything else is reported with `expected`.
    fn boolean(&mut self, node: &Node, expected: &str) -> Option<bool> {
        match &node.value {
            Value::Scalar(s) if matches!(s.kind(), ScalarKind::Bool(_)) => {
                Some(s.kind() == ScalarKind::Bool(true))
            }
            _ => {
                self.invalid(node, expected);
                None
            }
        }
    }

    fn log_mode(&mut self, entry: &Entry) -> Option<LogMode> {
        match Self::text(&entry.value) {
            Some("none") => Some(LogMode::None),
            Some("drops") => Some(LogMode::Drops),
            Some("all") => Some(LogMode::All),
            _ => {
                self.invalid(&entry.value, "`log` must be `none`, `drops` or `all`");
                None
            }
        }
    }

    /// Reports that `node` is not what `expected` says, unless it was already reported.
    fn invalid(&mut self, node: &Node, expected: impl std::fmt::Display) {
        self.invalid_with(node, || expected);
    }

    /// [`Validator::invalid`], saying what was expected only if the error is reported: one
    /// per item of a long list would otherwise cost a message each.
    fn invalid_with<D: std::fmt::Display>(&mut self, node: &Node, expected: impl FnOnce() -> D) {
        if !matches!(node.value, Value::Invalid) {
            self.reporter.error_with(node.location, || {
                format!("{}, found {}", expected(), node.describe())
            });
        }
    }

    /// The items of a value that may be one item or a list of them; `None` when it is neither.
    fn one_or_many(node: &Node) -> Option<&[Node]> {
        match &node.value {
            Value::Sequence(items) => Some(items),
            Value::Scalar(_) | Value::Invalid => Some(std::slice::from_ref(node)),
            Value::Mapping(_) => None,
        }
    }

    fn interfaces(&mut self, entry: &Entry) -> Vec<String> {
        if Self::is_null(&entry.value) {
            return Vec::new();
        }
        let Some(items) = Self::one_or_many(&entry.value) else {
            self.invalid(
                &entry.value,
                "`interfaces` must be a list of interface names",
            );
            return Vec::new();
        };
        let mut names = Vec::new();
        let mut first_line: HashMap<&str, usize> = HashMap::new();
        for item in items {
            let Some(name) = Self::text(item) else {
                self.invalid(item, "expected an interface name");
                continue;
            };
            if let Some(problem) = interface_name_problem(name) {
                self.reporter.error(
                    item.location,
                    format!("invalid interface name `{name}`: {problem}"),
                );
                continue;
            }
            if let Some(line) = first_line.get(name) {
                self.reporter.error(
                    item.location,
                    format!("interface `{name}` is listed twice (first at line {line})"),
                );
                continue;
            }
            first_line.insert(name, item.location.line);
            names.push(name.to_owned());
        }
        names
    }

    fn is_null(node: &Node) -> bool {
        matches!(&node.value, Value::Scalar(s) if s.kind() == ScalarKind::Null)
    }

    fn rules(&mut self, entry: &Entry) -> (Vec<Rule>, Vec<Written>) {
        if Self::is_null(&entry.value) {
            return (Vec::new(), Vec::new());
        }
        let Value::Sequence(items) = &entry.value.value else {
            self.invalid(&entry.value, "`rules` must be a list of rules");
            return (Vec::new(), Vec::new());
        };
        if items.len() > MAX_RULES as usize {
            self.reporter.error(
                entry.key_location,
                format!(
                    "the policy has {} rules; at most {MAX_RULES} are supported",
                    items.len()
                ),
            );
        }
        let mut rules = Vec::with_capacity(items.len());
        let mut written = Vec::with_capacity(items.len());
        let mut names: HashMap<String, (usize, usize)> = HashMap::new();
        let mut limit_at = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            if let Some((rule, specs, at)) = self.rule(index + 1, item, &mut names) {
                rules.push(rule);
                written.push(specs);
                limit_at.push(at);
            }
        }
        defences::assign_limit_ids(&mut rules, &limit_at, self);
        (rules, written)
    }

    /// Checks rule `number` (1-based). `names` maps rule names seen so far to (number, line).
    /// Also returns where its `limit` is written.
    fn rule(
        &mut self,
        number: usize,
        node: &Node,
        names: &mut HashMap<String, (usize, usize)>,
    ) -> Option<(Rule, Written, Option<Location>)> {
        let Value::Mapping(entries) = &node.value else {
            self.invalid(
                node,
                format!("rule {number} must be a mapping with `allow:` or `drop:`"),
            );
            return None;
        };
        let mut name = None;
        let mut log = None;
        let mut verdict: Option<(Action, &Entry)> = None;
        let mut from = None;
        let mut limit = None;
        let mut ok = true;
        for entry in entries {
            match entry.key.as_str() {
                "name" => name = self.rule_name(number, entry, names),
                "limit" => match self.rule_limit(number, entry) {
                    Some(rate) => limit = Some((rate, entry.key_location)),
                    None => ok = false,
                },
                "from" => match self.from(number, entry) {
                    Some(sources) => from = Some(sources),
                    None => ok = false,
                },
                "log" => match &entry.value.value {
                    Value::Scalar(s) if matches!(s.kind(), ScalarKind::Bool(_)) => {
                        log = Some(s.kind() == ScalarKind::Bool(true));
                    }
                    _ => {
                        self.invalid(
                            &entry.value,
                            format!("`log` in rule {number} must be `true` or `false`"),
                        );
                    }
                },
                key @ ("allow" | "drop") => {
                    if verdict.is_some() {
                        self.reporter.error(
                            entry.key_location,
                            format!(
                                "rule {number} has both `allow` and `drop`; a rule takes \
                                 exactly one"
                            ),
                        );
                        // Still worth checking, so its own mistakes show up in this run too.
                        let _ = self.port_specs(number, entry);
                        ok = false;
                    } else {
                        let action = if key == "allow" {
                            Action::Allow
                        } else {
                            Action::Drop
                        };
                        verdict = Some((action, entry));
                    }
                }
                _ => self.unknown_key(entry, &format!(" in rule {number}"), RULE_KEYS),
            }
        }
        let Some((action, entry)) = verdict else {
            self.reporter.error(
                node.location,
                format!("rule {number} has neither `allow` nor `drop`; a rule needs exactly one"),
            );
            return None;
        };
        let (ports, specs) = self.port_specs(number, entry)?;
        if let Some((_, at)) = limit
            && action == Action::Drop
        {
            self.reporter.error(
                at,
                format!(
                    "`limit` applies to `allow` rules, and rule {number} drops: a limit caps \
                     the new connections a rule lets through"
                ),
            );
            return None;
        }
        if !ok {
            return None;
        }
        let mut summary = format!("{action} {}", entry_text(&entry.value));
        let (from, from_text) = match from {
            Some(sources) => {
                summary.push_str(" from ");
                summary.push_str(&sources.text);
                (Some(sources.cidrs), Some(sources.text))
            }
            None => (None, None),
        };
        if let Some((rate, _)) = limit {
            summary.push_str(&format!(" limit {rate}"));
        }
        let rule = Rule {
            name,
            action,
            ports,
            from,
            from_text,
            log,
            limit: limit.map(|(rate, _)| defences::limit(rate)),
            location: node.location,
            summary,
        };
        Some((rule, specs, limit.map(|(_, at)| at)))
    }

    fn rule_name(
        &mut self,
        number: usize,
        entry: &Entry,
        names: &mut HashMap<String, (usize, usize)>,
    ) -> Option<String> {
        let Some(name) = Self::text(&entry.value) else {
            self.invalid(
                &entry.value,
                format!("the `name` of rule {number} must be a string"),
            );
            return None;
        };
        let valid_chars = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid_chars || name.len() > MAX_RULE_NAME {
            self.reporter.error(
                entry.value.location,
                format!(
                    "invalid rule name `{name}`: use 1 to {MAX_RULE_NAME} letters, digits, \
                     `_`, `.` or `-`"
                ),
            );
            return None;
        }
        if let Some((first, line)) = names.get(name) {
            self.reporter.error(
                entry.value.location,
                format!("rule name `{name}` is already used by rule {first} (line {line})"),
            );
            return None;
        }
        names.insert(name.to_owned(), (number, entry.value.location.line));
        Some(name.to_owned())
    }

    /// The ranges an `allow:` or `drop:` names, and its specs as written.
    fn port_specs(&mut self, number: usize, entry: &Entry) -> Option<(Vec<PortRange>, Written)> {
        let key = &entry.key;
        let Some(items) = Self::one_or_many(&entry.value) else {
            self.invalid(
                &entry.value,
                format!("`{key}` in rule {number} must be a port spec or a list of them"),
            );
            return None;
        };
        if items.is_empty() {
            self.reporter.error(
                entry.value.location,
                format!("the `{key}` list of rule {number} is empty; name at least one port"),
            );
            return None;
        }
        let mut ranges = Vec::new();
        let mut written = Written::default();
        let mut ok = true;
        for item in items {
            let text = match &item.value {
                Value::Scalar(s) => match s.kind() {
                    ScalarKind::Null => None,
                    ScalarKind::Bool(_) => None,
                    _ => Some(s.text.as_str()),
                },
                _ => None,
            };
            let Some(text) = text else {
                self.invalid_with(item, || {
                    format!("`{key}` in rule {number} expects a port spec")
                });
                ok = false;
                continue;
            };
            let spec = match ports::parse_spec(text) {
                Ok(spec) => spec,
                Err(error) => {
                    self.reporter
                        .error_with(item.location, || error.to_string());
                    ok = false;
                    continue;
                }
            };
            let only_port_zero = spec.form == SpecForm::Port && spec.low == 0;
            if only_port_zero && spec.protocols.contains(&Protocol::Tcp) {
                self.reporter.warning(
                    item.location,
                    "tcp port 0 never matches: portfw drops TCP packets to port 0 as \
                     malformed before any rule is consulted",
                );
            }
            ranges.extend(spec.protocols.iter().map(|&protocol| PortRange {
                protocol,
                low: spec.low,
                high: spec.high,
            }));
            written.push(text);
        }
        ok.then_some((ranges, written))
    }
}

/// Why Linux would refuse `name` as an interface name (see `dev_valid_name`), if it would.
fn interface_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".to_owned());
    }
    if name.len() > MAX_INTERFACE_NAME {
        return Some(format!(
            "it is {} bytes long and Linux allows at most {MAX_INTERFACE_NAME}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Some("`.` and `..` are reserved".to_owned());
    }
    if name.contains('/') {
        return Some("it contains `/`".to_owned());
    }
    if name.contains(':') {
        return Some("it contains `:`".to_owned());
    }
    if name.chars().any(char::is_whitespace) {
        return Some("it contains whitespace".to_owned());
    }
    None
}

/// Up to [`ITEMS_QUOTED`] items joined with ", ", then "...".
fn quote_items(items: &Written) -> String {
    let mut quoted = items.first.join(", ");
    if items.count > ITEMS_QUOTED {
        quoted.push_str(", ...");
    }
    quoted
}

/// The text of an `allow:` or `drop:` value for a rule's summary: its items as written,
/// joined with ", " (the value was checked to be a scalar or a list of scalars).
fn entry_text(value: &Node) -> String {
    let items = match &value.value {
        Value::Sequence(items) => items.as_slice(),
        _ => std::slice::from_ref(value),
    };
    let mut text = String::new();
    for item in items {
        if let Value::Scalar(s) = &item.value {
            if !text.is_empty() {
                text.push_str(", ");
            }
            text.push_str(&s.text);
        }
    }
    text
}

#[cfg(test)]
mod tests;
