//! Where each field of a policy file is: a map from a field path such as
//! `channels[2].limit.bandwidth` to its 1-based line, so that semantic errors
//! (found after deserialization) can point at the line like syntax errors do.

use std::collections::{HashMap, HashSet};

use yaml_rust2::{
    parser::{Event, MarkedEventReceiver, Parser},
    scanner::Marker,
};

/// Field path → line of the key (or of the item, for sequence items).
#[derive(Debug, Default)]
pub struct LineIndex {
    /// Path in the notation serde_yaml uses in its own errors.
    lines: HashMap<String, usize>,
    /// Keys that appear twice in one mapping (path, line of the second):
    /// serde_yaml keeps the last one silently when it fills a map.
    pub duplicates: Vec<(String, usize)>,
}

impl LineIndex {
    /// Indexes `text`. A file that does not parse yields an empty index; the
    /// deserializer reports the syntax error with its own location.
    pub fn new(text: &str) -> Self {
        let mut walker = Walker::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut walker, false).is_err() {
            return Self::default();
        }
        Self {
            lines: walker.lines,
            duplicates: walker.duplicates,
        }
    }

    /// Line of `path`, or of its nearest indexed ancestor.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

/// One open container while walking the event stream.
enum Frame {
    /// A mapping: `key` is `Some` while its value is pending; `seen` holds its keys so far.
    Map {
        path: String,
        key: Option<String>,
        seen: HashSet<String>,
    },
    /// A sequence and the index of its next item.
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Walker {
    stack: Vec<Frame>,
    lines: HashMap<String, usize>,
    duplicates: Vec<(String, usize)>,
}

impl Walker {
    /// Path of the node that starts now, or `None` if it is a mapping key.
    fn node_path(&mut self) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { key: None, .. }) => None,
            Some(Frame::Map { path, key, .. }) => {
                let k = key.take().unwrap_or_default();
                Some(if path.is_empty() {
                    k
                } else {
                    format!("{path}.{k}")
                })
            }
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Walker {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        // yaml-rust2 lines are 1-based already.
        let line = mark.line();
        match ev {
            Event::Scalar(value, ..) => match self.node_path() {
                None => {
                    if let Some(Frame::Map { path, key, seen }) = self.stack.last_mut() {
                        let p = if path.is_empty() {
                            value.clone()
                        } else {
                            format!("{path}.{value}")
                        };
                        if !seen.insert(value.clone()) {
                            self.duplicates.push((p.clone(), line));
                        }
                        self.lines.entry(p).or_insert(line);
                        *key = Some(value);
                    }
                }
                Some(p) => {
                    self.lines.entry(p).or_insert(line);
                }
            },
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = self.node_path().unwrap_or_default();
                self.lines.entry(path.clone()).or_insert(line);
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map {
                        path,
                        key: None,
                        seen: HashSet::new(),
                    }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::Alias(_) => {
                self.node_path();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_nested_paths() {
        let text = "endpoints:\n  web: [198.18.1.0/24]\nchannels:\n  - name: a\n    limit:\n      bandwidth: 1Mbit\n  - name: b\n";
        let idx = LineIndex::new(text);
        assert_eq!(idx.line("endpoints.web"), Some(2));
        assert_eq!(idx.line("channels[0].name"), Some(4));
        assert_eq!(idx.line("channels[0].limit.bandwidth"), Some(6));
        assert_eq!(idx.line("channels[1]"), Some(7));
        assert_eq!(idx.line("channels[1].limit.burst"), Some(7));
        assert!(idx.duplicates.is_empty());
    }

    #[test]
    fn finds_duplicate_keys() {
        let idx = LineIndex::new("endpoints:\n  web: [a]\n  db: [b]\n  web: [c]\n");
        assert_eq!(idx.duplicates, vec![("endpoints.web".to_string(), 4)]);
    }
}
