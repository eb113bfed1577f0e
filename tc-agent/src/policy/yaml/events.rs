//! The node tree straight from the parser's events, for the plain YAML a
//! large policy is written in: the same tree, lines and event count that
//! serde-saphyr gives (`super::read_serde`), in a third to a half of its
//! time.
//!
//! serde-saphyr builds the tree of the benchmark's 2.9 MB, 1,024-channel
//! policy in about 112 ms; the parser's events alone take 34-51 ms of
//! it, and the rest is its general deserializer (spans, budget, scalar
//! typing, one visitor call per value), which a policy's tree of text
//! does not need. This reader builds the tree from the same parser
//! (granit-parser, the one serde-saphyr drives), with the same options,
//! in 34-58 ms across runs. (A release build, timed by a probe not kept
//! in the repository; `bench apply` with `RUST_LOG=tc_agent=debug` gives
//! the agent's whole reading step.)
//!
//! It takes only what it reads exactly as serde-saphyr does, and declines
//! the whole file at the first thing it would have to interpret: a tag,
//! an anchor or alias, a second document, an empty key or a list or map
//! as a key, nesting past [`DEPTH`], more than [`MAX_EVENTS`] events, a
//! parser error, and any plain scalar whose text YAML might type (a
//! number other than a plain decimal, a boolean word). A declined file is
//! read by serde-saphyr, which reports every error and enforces every
//! bound; a fuzz property (`policy::fuzz`) and a table of corners
//! (`super::tests`) hold the two readers to the same tree.
//!
//! What is taken, and why it reads the same:
//! - quoted and block scalars without a tag: their text, as serde-saphyr
//!   gives a string for every scalar that is not plain;
//! - plain scalars: `""`, `~`, `null`, `Null`, `NULL` are nothing (YAML's
//!   null); a decimal without a leading zero, up to 19 digits, is its
//!   text (serde-saphyr reads it as a `u64` and writes it back alike);
//!   text that cannot be a number ([`number_like`]) and is no boolean
//!   word is a string as written;
//! - lines: the line of each node's first event, as serde-saphyr's spans;
//! - events: every event the parser gives, stream and document markers
//!   included, as serde-saphyr's budget counts them.

use std::borrow::Cow;

use granit_parser::{Event, Parser, ScalarStyle};

use super::{Entry, Node, Value, MAX_DEPTH, MAX_EVENTS};

/// Nesting this reader takes; deeper files are serde-saphyr's to refuse
/// or read (a policy needs 5 levels, the bound is [`MAX_DEPTH`]).
const DEPTH: usize = MAX_DEPTH / 2;

/// Why the reader left a file to serde-saphyr: where, and what it met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Declined {
    /// 1-based line of the event it declined at (0: at the end).
    pub line: usize,
    /// What it met there.
    pub why: &'static str,
}

/// A document's root and its line (`None` for a file without a document,
/// or whose document is empty), and the parser events the text produced.
pub type Reading = (Option<(usize, Value)>, usize);

/// Reads `text` with the parser's `options` (serde-saphyr's, see
/// `super::parser_options`), or declines it. List items get their line
/// when `ITEM_LINES`, 0 otherwise (as `super::Lines`).
pub fn read<const ITEM_LINES: bool>(
    text: &str,
    options: granit_parser::Options,
) -> Result<Reading, Declined> {
    let mut parser = Parser::new_from_str_with_options(text, options);
    let mut builder = Builder::<ITEM_LINES>::default();
    let mut events = 0usize;
    while let Some(next) = parser.next_event() {
        let (event, span) = next.map_err(|e| Declined {
            line: e.marker().line(),
            why: "a parser error",
        })?;
        let line = span.start.line();
        events += 1;
        if events > MAX_EVENTS {
            return Err(Declined {
                line,
                why: "more events than the bound",
            });
        }
        builder
            .event(event, line)
            .map_err(|why| Declined { line, why })?;
    }
    if !builder.ended || !builder.open.is_empty() {
        return Err(Declined {
            line: 0,
            why: "events that end before the stream",
        });
    }
    // An empty document is no document, as serde-saphyr's `Option`.
    let root = builder.root.filter(|(_, v)| *v != Value::Null);
    Ok((root, events))
}

/// A list or map being read.
enum Open {
    /// A list.
    List {
        /// Line of its first event.
        line: usize,
        /// Where its items start in [`Builder::items`].
        start: usize,
    },
    /// A map.
    Map {
        /// Line of its first event.
        line: usize,
        /// Where its entries start in [`Builder::entries`].
        start: usize,
        /// The key read whose value comes next, and its line.
        key: Option<(String, usize)>,
    },
}

/// The tree being built from the events, one at a time.
struct Builder<const ITEM_LINES: bool> {
    /// Lists and maps opened and not yet closed, innermost last.
    open: Vec<Open>,
    /// The items of the open lists, the innermost's last: a list's are
    /// moved out into a vector of their exact size when it closes, rather
    /// than each list growing its own by doubling (a large policy's
    /// 131,072 prefixes in lists of 128).
    items: Vec<Node>,
    /// The entries of the open maps, likewise.
    entries: Vec<Entry>,
    /// Whether a document has started (a second one is declined).
    document: bool,
    /// Whether the stream has ended.
    ended: bool,
    /// The finished document's root and its line.
    root: Option<(usize, Value)>,
}

impl<const ITEM_LINES: bool> Default for Builder<ITEM_LINES> {
    fn default() -> Self {
        Self {
            open: Vec::with_capacity(DEPTH),
            items: Vec::new(),
            entries: Vec::new(),
            document: false,
            ended: false,
            root: None,
        }
    }
}

/// Why an event was declined.
type Why = &'static str;

impl<const ITEM_LINES: bool> Builder<ITEM_LINES> {
    /// Takes one event, which starts on `line`.
    fn event(&mut self, event: Event<'_>, line: usize) -> Result<(), Why> {
        match event {
            Event::StreamStart | Event::DocumentEnd => Ok(()),
            Event::StreamEnd => {
                self.ended = true;
                Ok(())
            }
            Event::DocumentStart(..) if self.document => Err("a second document"),
            Event::DocumentStart(..) => {
                self.document = true;
                Ok(())
            }
            Event::Scalar(text, style, anchor, tag) => {
                properties(anchor, tag.is_some())?;
                let value = scalar(text, style)?;
                self.close(line, value)
            }
            Event::SequenceStart(_, anchor, tag) => {
                self.opening(anchor, tag.is_some())?;
                self.open.push(Open::List {
                    line,
                    start: self.items.len(),
                });
                Ok(())
            }
            Event::MappingStart(_, anchor, tag) => {
                self.opening(anchor, tag.is_some())?;
                self.open.push(Open::Map {
                    line,
                    start: self.entries.len(),
                    key: None,
                });
                Ok(())
            }
            Event::SequenceEnd => match self.open.pop() {
                Some(Open::List { line, start }) => {
                    let items = self.items.drain(start..).collect();
                    self.close(line, Value::List(items))
                }
                _ => Err("an unmatched end of a list"),
            },
            Event::MappingEnd => match self.open.pop() {
                Some(Open::Map {
                    line,
                    start,
                    key: None,
                }) => {
                    let entries = self.entries.drain(start..).collect();
                    self.close(line, Value::Map(entries))
                }
                _ => Err("an unmatched end of a map"),
            },
            Event::Alias(_) => Err("an alias"),
            // Anything the options do not ask for.
            _ => Err("an event a policy has no use for"),
        }
    }

    /// Checks a list or map about to open: no anchor, no tag, not as a
    /// key, not too deep.
    fn opening(&self, anchor: usize, tagged: bool) -> Result<(), Why> {
        properties(anchor, tagged)?;
        if matches!(self.open.last(), Some(Open::Map { key: None, .. })) {
            return Err("a list or map as a key");
        }
        if self.open.len() >= DEPTH {
            return Err("deep nesting");
        }
        Ok(())
    }

    /// Puts a finished node (at `line`) where it belongs: into the open
    /// list or map, or as the document's root.
    fn close(&mut self, line: usize, value: Value) -> Result<(), Why> {
        match self.open.last_mut() {
            None if self.root.is_some() => return Err("a second root"),
            None => self.root = Some((line, value)),
            Some(Open::List { .. }) => self.items.push(Node {
                line: if ITEM_LINES { line } else { 0 },
                value,
            }),
            Some(Open::Map {
                key: key @ None, ..
            }) => match value {
                // A key is a name: serde-saphyr reads an empty one as its
                // own kind of nothing, which this reader leaves to it.
                Value::Scalar(k) => *key = Some((k, line)),
                _ => return Err("an empty key"),
            },
            Some(Open::Map {
                key: key @ Some(_), ..
            }) => {
                if let Some((key, key_line)) = key.take() {
                    self.entries.push(Entry {
                        key,
                        line: key_line,
                        value: Node { line, value },
                    });
                }
            }
        }
        Ok(())
    }
}

/// Checks a node's properties: an anchor or a tag asks YAML to interpret.
fn properties(anchor: usize, tagged: bool) -> Result<(), Why> {
    match (anchor, tagged) {
        (0, false) => Ok(()),
        (0, true) => Err("a tag"),
        _ => Err("an anchor"),
    }
}

/// A scalar's value without a tag, as serde-saphyr reads it; an error
/// when YAML might give it a type whose text differs.
fn scalar(text: Cow<'_, str>, style: ScalarStyle) -> Result<Value, Why> {
    if style != ScalarStyle::Plain {
        return Ok(Value::Scalar(text.into_owned()));
    }
    let t: &str = &text;
    if matches!(t, "" | "~" | "null" | "Null" | "NULL") {
        return Ok(Value::Null);
    }
    if boolean_word(t) {
        return Err("a boolean word");
    }
    let decimal = !t.is_empty()
        && t.len() <= 19
        && t.bytes().all(|b| b.is_ascii_digit())
        && (t.len() == 1 || !t.starts_with('0'));
    if !decimal && number_like(t) {
        return Err("a plain scalar YAML may read as a number");
    }
    Ok(Value::Scalar(text.into_owned()))
}

/// A word YAML 1.1 reads as a boolean (serde-saphyr's default), in any
/// case.
fn boolean_word(t: &str) -> bool {
    ["y", "yes", "true", "on", "n", "no", "false", "off"]
        .iter()
        .any(|w| t.eq_ignore_ascii_case(w))
}

/// Whether `t` might be a YAML number, in any form a YAML or Rust number
/// parser takes: text that starts with a letter only as `inf`,
/// `infinity` or `nan` (in any case); other text only if every character
/// may be part of a number (digits, hexadecimal letters, radix prefixes
/// `0x`, `0o`, `0b`, `.`, `_`, the letters of `.inf` and `.nan`, and
/// signs, first or after an exponent's `e`), with a digit or an `i` or
/// `n`, and at most one `.`. So `c0`, `e2e`, `cafe`, `198.18.1.7`,
/// `8000-8080` and `.` are no numbers; `1e3`, `0x50`, `-.5`, `+1`, `007`,
/// `1_000`, `.inf` and `NaN` may be.
fn number_like(t: &str) -> bool {
    let bytes = t.as_bytes();
    let Some(first) = bytes.first() else {
        return false;
    };
    if first.is_ascii_alphabetic() {
        return ["inf", "infinity", "nan"]
            .iter()
            .any(|w| t.eq_ignore_ascii_case(w));
    }
    let digit_or_word = bytes
        .iter()
        .any(|b| b.is_ascii_digit() || matches!(b, b'i' | b'I' | b'n' | b'N'));
    let signs_placed = (1..bytes.len())
        .filter(|&i| matches!(bytes[i], b'+' | b'-'))
        .all(|i| matches!(bytes[i - 1], b'e' | b'E'));
    let one_point = bytes.iter().filter(|&&b| b == b'.').count() <= 1;
    digit_or_word
        && signs_placed
        && one_point
        && bytes.iter().all(|b| {
            b.is_ascii_hexdigit()
                || matches!(
                    b,
                    b'x' | b'X'
                        | b'o'
                        | b'O'
                        | b'.'
                        | b'_'
                        | b'+'
                        | b'-'
                        | b'i'
                        | b'I'
                        | b'n'
                        | b'N'
                )
        })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Plain scalars YAML (serde-saphyr, or Rust's number parsers under
    /// it) may type: left to serde-saphyr. `super::super::tests` reads
    /// each of these and [`STRINGS`] with both readers.
    pub(in crate::policy::yaml) const TYPED: &[&str] = &[
        "0x50",
        "0o17",
        "0b101",
        "1e3",
        "1e-3",
        "-1E+3",
        "1.5",
        ".5",
        "+.5",
        "-1",
        "+1",
        "-0",
        "007",
        "0777",
        "1_000",
        "_1",
        ".inf",
        "-.inf",
        ".Inf",
        ".nan",
        "nan",
        "NaN",
        "Inf",
        "infinity",
        "yes",
        "No",
        "ON",
        "off",
        "y",
        "N",
        "TRUE",
        "false",
        "12345678901234567890",
        "1a",
        "0x1F",
        "1e999",
    ];

    /// Plain scalars read as their text.
    pub(in crate::policy::yaml) const STRINGS: &[&str] = &[
        "0",
        "80",
        "65535",
        "1234567890123456789",
        "198.18.0.1/32",
        "198.18.1.7",
        "2001:db8::1/128",
        "2001:db8::1",
        "10Mbit",
        "1.5Mbit",
        "ch0",
        "c9",
        "db2",
        "e2e",
        "b_2",
        "udp",
        "yesterday",
        "1 2",
        "a",
        "cafe",
        "deadbeef",
        ".",
        "+",
        "_",
        "8000-8080",
        "2001-12-14",
        "1-",
        "1:30",
        "none",
        "nine",
        "inform",
    ];

    #[test]
    fn numbers_booleans_and_nulls_are_left_to_serde_saphyr() {
        for t in TYPED {
            assert!(scalar((*t).into(), ScalarStyle::Plain).is_err(), "{t}");
        }
        for t in ["", "~", "null", "Null", "NULL"] {
            assert_eq!(scalar(t.into(), ScalarStyle::Plain), Ok(Value::Null), "{t}");
        }
        for t in STRINGS {
            let text = Value::Scalar((*t).into());
            assert_eq!(scalar((*t).into(), ScalarStyle::Plain), Ok(text), "{t}");
        }
        for style in [ScalarStyle::SingleQuoted, ScalarStyle::DoubleQuoted] {
            for t in ["", "null", "0x50", "yes"] {
                assert_eq!(scalar(t.into(), style), Ok(Value::Scalar(t.into())));
            }
        }
    }
}
