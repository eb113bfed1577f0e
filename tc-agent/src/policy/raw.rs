//! The policy file as written: the YAML node tree read into the file's
//! shape (which keys, lists and maps go where), each value with its line.
//!
//! Problems of shape (an unknown or repeated key, a list where a map
//! belongs, a key with no value) are reported here with their field path;
//! what the values mean is `validate`'s job.

use std::collections::HashSet;

use super::yaml::{Entry, Node, Value};

/// One problem of shape: field path, line, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line of the offending key or value.
    pub line: usize,
    /// Field path, e.g. `channels[0].limit`.
    pub field: String,
    /// What is wrong and what would be valid.
    pub message: String,
}

/// A scalar and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    /// 1-based line of the value.
    pub line: usize,
    /// The value as written.
    pub text: String,
}

/// A list of scalars and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextList {
    /// 1-based line of the key the list is under: errors about the whole list point there.
    pub line: usize,
    /// The items, each with its own line.
    pub items: Vec<Text>,
}

/// `from` / `to` as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawEndpoints {
    /// `from: web`: one set name or CIDR.
    One(Text),
    /// `from: [web, 198.18.0.0/24]`.
    Many(TextList),
}

/// `endpoints.<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSet {
    /// The set's name, the key channels refer to it by.
    pub name: String,
    /// 1-based line of the name.
    pub line: usize,
    /// The CIDRs, unparsed.
    pub cidrs: Vec<Text>,
}

/// `channels[i].limit`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawLimit {
    /// 1-based line of the `limit` key: "a limit needs..." points there.
    pub line: usize,
    /// `bandwidth`: a rate such as `20Mbit`.
    pub bandwidth: Option<Text>,
    /// `burst`: bytes, bare or with a unit.
    pub burst: Option<Text>,
    /// `packets`: packets per second.
    pub packets: Option<Text>,
    /// `packet_burst`: packets.
    pub packet_burst: Option<Text>,
    /// `connections`: open TCP connections at once.
    pub connections: Option<Text>,
    /// `new_connections`: new TCP connections per second.
    pub new_connections: Option<Text>,
    /// `new_connection_burst`: new connections at once.
    pub new_connection_burst: Option<Text>,
}

/// `channels[i]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawChannel {
    /// 1-based line of the item: where channel-wide findings point.
    pub line: usize,
    /// `name`; `None` when missing (already reported).
    pub name: Option<Text>,
    /// `from`; `None` = any address.
    pub from: Option<RawEndpoints>,
    /// `to`; `None` = any address.
    pub to: Option<RawEndpoints>,
    /// `protocol`; `None` = any.
    pub protocol: Option<Text>,
    /// `ports`; `None` = any port.
    pub ports: Option<TextList>,
    /// `direction`; `None` = ingress.
    pub direction: Option<Text>,
    /// `limit`; `None` = unlimited, counting only.
    pub limit: Option<RawLimit>,
    /// `action`; `None` = drop.
    pub action: Option<Text>,
    /// `connection_action`; `None` = drop.
    pub connection_action: Option<Text>,
    /// `horizon`; `None` = the default, for `delay`.
    pub horizon: Option<Text>,
    /// `mode`; `None` = enforce.
    pub mode: Option<Text>,
}

/// The whole file as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawPolicy {
    /// `endpoints`, in file order.
    pub endpoints: Vec<RawSet>,
    /// `channels` with the line of its key; `None` when the key is missing,
    /// which is an error: an empty policy says `channels: []`.
    pub channels: Option<(usize, Vec<RawChannel>)>,
    /// Line of the document: a missing `channels` is reported there.
    pub line: usize,
}

/// Reads the node tree into [`RawPolicy`], collecting every problem of shape.
/// Consumes the tree: scalars move into the result, and each channel's
/// nodes are freed once it is read, so the tree and its reading are not
/// both whole in memory (the peak of a large apply).
pub fn read(root: Node) -> (RawPolicy, Vec<Problem>) {
    let mut r = Reader::default();
    let mut policy = RawPolicy {
        line: root.line,
        ..RawPolicy::default()
    };
    let Some(fields) = r.map("", root, &["endpoints", "channels"]) else {
        return (policy, r.problems);
    };
    for (key, entry) in fields {
        match key {
            "endpoints" => policy.endpoints = r.sets(entry),
            _ => policy.channels = r.channels(entry),
        }
    }
    (policy, r.problems)
}

/// Joins a field path and a key.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Walks the tree, collecting problems.
#[derive(Default)]
struct Reader {
    /// Every problem found so far, in file order.
    problems: Vec<Problem>,
}

impl Reader {
    fn problem(&mut self, line: usize, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            line,
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// The entries of a map node whose keys are all in `known`, each once;
    /// `None` (reported) if the node is not a map.
    fn map(
        &mut self,
        path: &str,
        node: Node,
        known: &[&'static str],
    ) -> Option<Vec<(&'static str, Entry)>> {
        let Value::Map(entries) = node.value else {
            let expected = if path.is_empty() {
                "a policy is a map with `endpoints` and `channels`".to_string()
            } else {
                format!("expected a map of {}", list(known))
            };
            self.problem(
                node.line,
                path,
                format!("{expected}, found {}", node.value.kind()),
            );
            return None;
        };
        let mut out: Vec<(&'static str, Entry)> = Vec::new();
        for e in entries {
            let Some(&k) = known.iter().find(|k| **k == e.key) else {
                self.problem(
                    e.line,
                    path,
                    format!("unknown field `{}`, expected one of {}", e.key, list(known)),
                );
                continue;
            };
            if out.iter().any(|(seen, _)| *seen == k) {
                self.duplicate(e.line, &join(path, k));
                continue;
            }
            if e.value.value == Value::Null {
                let message = if k == "channels" {
                    "has no value; a policy without channels says `channels: []`"
                } else {
                    "has no value; give one, or remove the key for the default"
                };
                self.problem(e.value.line, &join(path, k), message);
                continue;
            }
            out.push((k, e));
        }
        Some(out)
    }

    fn duplicate(&mut self, line: usize, field: &str) {
        self.problem(
            line,
            field,
            "defined twice; each key may appear once (rename one, or merge the lists)",
        );
    }

    fn text(&mut self, path: &str, node: Node) -> Option<Text> {
        self.text_at(|| path.to_string(), node)
    }

    /// [`text`](Self::text) with the field path made only for a problem
    /// (a list of 65,536 prefixes would format 65,536 paths otherwise).
    fn text_at(&mut self, path: impl FnOnce() -> String, node: Node) -> Option<Text> {
        match node.value {
            Value::Scalar(text) => Some(Text {
                line: node.line,
                text,
            }),
            other => {
                self.problem(
                    node.line,
                    &path(),
                    format!("expected a single value, found {}", other.kind()),
                );
                None
            }
        }
    }

    fn texts(&mut self, path: &str, entry: Entry) -> Option<TextList> {
        let Value::List(items) = entry.value.value else {
            self.problem(
                entry.value.line,
                path,
                format!("expected a list, found {}", entry.value.value.kind()),
            );
            return None;
        };
        let items = items
            .into_iter()
            .enumerate()
            .filter_map(|(i, n)| self.text_at(|| format!("{path}[{i}]"), n))
            .collect();
        Some(TextList {
            line: entry.line,
            items,
        })
    }

    fn sets(&mut self, entry: Entry) -> Vec<RawSet> {
        let Value::Map(entries) = entry.value.value else {
            self.problem(
                entry.value.line,
                "endpoints",
                format!(
                    "expected a map from set names to lists of CIDRs, found {}",
                    entry.value.value.kind()
                ),
            );
            return Vec::new();
        };
        let mut out: Vec<RawSet> = Vec::new();
        let mut seen = HashSet::new();
        for mut e in entries {
            let field = join("endpoints", &e.key);
            if !seen.insert(e.key.clone()) {
                self.duplicate(e.line, &field);
                continue;
            }
            // The key moves into the set; `texts` reads only the value.
            let (name, line) = (std::mem::take(&mut e.key), e.line);
            let cidrs = match &e.value.value {
                Value::Null => {
                    self.problem(
                        e.line,
                        &field,
                        "has no value; an endpoint set needs at least one CIDR",
                    );
                    continue;
                }
                _ => match self.texts(&field, e) {
                    Some(t) => t.items,
                    None => continue,
                },
            };
            out.push(RawSet { name, line, cidrs });
        }
        out
    }

    fn channels(&mut self, entry: Entry) -> Option<(usize, Vec<RawChannel>)> {
        let Value::List(items) = entry.value.value else {
            self.problem(
                entry.value.line,
                "channels",
                format!(
                    "expected a list of channels, found {}",
                    entry.value.value.kind()
                ),
            );
            return None;
        };
        // Counted before any channel is read: a file of a million channels
        // is refused without a million channel checks.
        if items.len() > tc_common::MAX_CHANNELS as usize {
            self.problem(
                entry.line,
                "channels",
                format!(
                    "{} channels; at most {} fit in the datapath",
                    items.len(),
                    tc_common::MAX_CHANNELS
                ),
            );
            return None;
        }
        let channels = items
            .into_iter()
            .enumerate()
            .filter_map(|(i, n)| self.channel(&format!("channels[{i}]"), n))
            .collect();
        Some((entry.line, channels))
    }

    fn channel(&mut self, path: &str, node: Node) -> Option<RawChannel> {
        const KEYS: &[&str] = &[
            "name",
            "from",
            "to",
            "protocol",
            "ports",
            "direction",
            "limit",
            "action",
            "connection_action",
            "horizon",
            "mode",
        ];
        let named = matches!(&node.value, Value::Map(es) if es.iter().any(|e| e.key == "name"));
        let line = node.line;
        let fields = self.map(path, node, KEYS)?;
        let mut c = RawChannel {
            line,
            ..RawChannel::default()
        };
        for (key, e) in fields {
            let field = join(path, key);
            match key {
                "from" => c.from = self.endpoints(&field, e),
                "to" => c.to = self.endpoints(&field, e),
                "ports" => c.ports = self.texts(&field, e),
                "limit" => c.limit = self.limit(&field, e),
                _ => {
                    let t = self.text(&field, e.value);
                    match key {
                        "name" => c.name = t,
                        "protocol" => c.protocol = t,
                        "direction" => c.direction = t,
                        "action" => c.action = t,
                        "connection_action" => c.connection_action = t,
                        "horizon" => c.horizon = t,
                        _ => c.mode = t,
                    }
                }
            }
        }
        if !named {
            self.problem(line, path, "missing field `name`: every channel needs one");
        }
        Some(c)
    }

    fn endpoints(&mut self, path: &str, entry: Entry) -> Option<RawEndpoints> {
        match &entry.value.value {
            Value::List(_) => self.texts(path, entry).map(RawEndpoints::Many),
            _ => self.text(path, entry.value).map(RawEndpoints::One),
        }
    }

    fn limit(&mut self, path: &str, entry: Entry) -> Option<RawLimit> {
        let line = entry.line;
        let fields = self.map(
            path,
            entry.value,
            &[
                "bandwidth",
                "burst",
                "packets",
                "packet_burst",
                "connections",
                "new_connections",
                "new_connection_burst",
            ],
        )?;
        let mut l = RawLimit {
            line,
            ..RawLimit::default()
        };
        for (key, e) in fields {
            let t = self.text(&join(path, key), e.value);
            match key {
                "bandwidth" => l.bandwidth = t,
                "burst" => l.burst = t,
                "packets" => l.packets = t,
                "packet_burst" => l.packet_burst = t,
                "connections" => l.connections = t,
                "new_connections" => l.new_connections = t,
                _ => l.new_connection_burst = t,
            }
        }
        Some(l)
    }
}

/// `` `a`, `b`, `c` ``, for messages.
fn list(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}
