//! The node tree straight from the parser's events, for the plain YAML a
//! large policy is written in: the same tree, lines and event count that
//! serde-saphyr gives (`super::read`), in about half its time.
//!
//! serde-saphyr reads the benchmark's 2.9 MB, 1,024-channel policy in
//! 110-150 ms; the parser's events alone take 50 ms of it, and the rest
//! is its general deserializer (spans, budget, scalar typing, one visitor
//! call per value), which a policy's tree of text does not need.
//!
//! This reader takes only what it can read exactly as serde-saphyr does,
//! and declines the whole file at the first thing it would have to
//! interpret: a tag, an anchor or alias, a second document, a key that is
//! not a plain name, a nesting or event count near a bound, a parser
//! error, and any plain scalar whose text YAML might type (a number other
//! than a plain decimal, a boolean word). A declined file is read by
//! serde-saphyr, which reports every error and enforces every bound; a
//! fuzz property (`policy::fuzz`) holds the two readers to the same tree
//! on generated, wild and mutated files.
//!
//! What is taken, and why it reads the same:
//! - quoted and block scalars without a tag: their text, as serde-saphyr
//!   gives a string for every scalar that is not plain;
//! - plain scalars: `""`, `~`, `null`, `Null`, `NULL` are nothing (YAML's
//!   null); a decimal without a leading zero, up to 19 digits, is its
//!   text (serde-saphyr reads it as a `u64` and writes it back alike);
//!   text with a character no YAML number has (a `/`, a `:`, a letter
//!   past `f` other than the `x`, `o`, `i` and `n` of radix prefixes and
//!   `.inf`/`.nan`) and that is no boolean word is a string as written;
//! - lines: the line of each node's first event, as serde-saphyr's spans.

use std::borrow::Cow;

use granit_parser::{Event, Parser, ScalarStyle, Span};

use super::{Entry, Node, Value, MAX_DEPTH, MAX_EVENTS};

/// Nesting this reader takes; deeper files are serde-saphyr's to refuse
/// or read (a policy needs 5 levels, the bound is [`MAX_DEPTH`]).
const DEPTH: usize = MAX_DEPTH / 2;

/// The document's root and its line (`None` for a file without a
/// document), and the parser events the text produced; `None` if this
/// reader declines the file. List items get their line when `ITEM_LINES`,
/// 0 otherwise (as `super::Lines`).
pub fn read<const ITEM_LINES: bool>(text: &str) -> Option<(Option<(usize, Value)>, usize)> {
    // serde-saphyr's own settings for its parser (its `Budget`'s
    // `parser_options`, with the bounds `super::options` sets): a file one
    // parser refuses the other refuses too.
    let mut opts = granit_parser::Options::default();
    opts.simple_key_max_lookahead = 1024;
    opts.flow_nesting_limit = MAX_DEPTH;
    opts.block_nesting_limit = opts.block_nesting_limit.max(MAX_DEPTH + 1);
    // Comments are no events for serde-saphyr (its `comments` feature is
    // off), whichever crate turns the parser's on.
    opts.emit_comments = false;
    let mut parser = Parser::new_from_str_with_options(text, opts);
    let mut builder = Builder::<ITEM_LINES>::default();
    let mut events = 0usize;
    while let Some(next) = parser.next_event() {
        let (event, span) = next.ok()?;
        events += 1;
        if events > MAX_EVENTS {
            return None;
        }
        builder.event(event, span)?;
    }
    builder.finished().then_some((builder.root, events))
}

/// A list or map being read.
enum Open {
    /// A list: its line and the items so far.
    List(usize, Vec<Node>),
    /// A map: its line, the entries so far, and the key whose value comes
    /// next (its text and line).
    Map(usize, Vec<Entry>, Option<(String, usize)>),
}

/// The tree being built from the events, one at a time.
struct Builder<const ITEM_LINES: bool> {
    /// Lists and maps opened and not yet closed, innermost last.
    open: Vec<Open>,
    /// Documents started (a second one is declined).
    documents: usize,
    /// Whether the stream has ended.
    ended: bool,
    /// The finished document's root and its line.
    root: Option<(usize, Value)>,
}

impl<const ITEM_LINES: bool> Default for Builder<ITEM_LINES> {
    fn default() -> Self {
        Self {
            open: Vec::with_capacity(DEPTH),
            documents: 0,
            ended: false,
            root: None,
        }
    }
}

impl<const ITEM_LINES: bool> Builder<ITEM_LINES> {
    /// Takes one event; `None` declines the file.
    fn event(&mut self, event: Event<'_>, span: Span) -> Option<()> {
        let line = span.start.line();
        match event {
            Event::StreamStart | Event::DocumentEnd => Some(()),
            Event::StreamEnd => {
                self.ended = true;
                Some(())
            }
            Event::DocumentStart(..) => {
                self.documents += 1;
                (self.documents == 1).then_some(())
            }
            Event::Scalar(text, style, anchor, tag) => {
                if anchor != 0 || tag.is_some() {
                    return None;
                }
                let value = scalar(text, style)?;
                self.close(line, value)
            }
            Event::SequenceStart(_, anchor, tag) => {
                self.opening(anchor, tag.is_some())?;
                self.open.push(Open::List(line, Vec::new()));
                Some(())
            }
            Event::MappingStart(_, anchor, tag) => {
                self.opening(anchor, tag.is_some())?;
                self.open.push(Open::Map(line, Vec::new(), None));
                Some(())
            }
            Event::SequenceEnd => match self.open.pop()? {
                Open::List(line, items) => self.close(line, Value::List(items)),
                Open::Map(..) => None,
            },
            Event::MappingEnd => match self.open.pop()? {
                Open::Map(line, entries, None) => self.close(line, Value::Map(entries)),
                Open::Map(..) | Open::List(..) => None,
            },
            // Aliases, and anything the options above do not ask for.
            _ => None,
        }
    }

    /// Checks a list or map about to open: no anchor, no tag, not as a
    /// key, not too deep.
    fn opening(&self, anchor: usize, tagged: bool) -> Option<()> {
        let as_key = matches!(self.open.last(), Some(Open::Map(_, _, None)));
        (anchor == 0 && !tagged && !as_key && self.open.len() < DEPTH).then_some(())
    }

    /// Puts a finished node (at `line`) where it belongs: into the open
    /// list or map, or as the document's root.
    fn close(&mut self, line: usize, value: Value) -> Option<()> {
        match self.open.last_mut() {
            None => {
                if self.root.is_some() {
                    return None;
                }
                self.root = Some((line, value));
            }
            Some(Open::List(_, items)) => items.push(Node {
                line: if ITEM_LINES { line } else { 0 },
                value,
            }),
            Some(Open::Map(_, _, key @ None)) => match value {
                // A key is a name: serde-saphyr reads an empty one as its
                // own kind of nothing, which this reader leaves to it.
                Value::Scalar(k) => *key = Some((k, line)),
                _ => return None,
            },
            Some(Open::Map(_, entries, key @ Some(_))) => {
                let (key, key_line) = key.take()?;
                entries.push(Entry {
                    key,
                    line: key_line,
                    value: Node { line, value },
                });
            }
        }
        Some(())
    }

    /// Whether the events made one whole document (or none).
    fn finished(&self) -> bool {
        self.ended && self.open.is_empty() && self.documents <= 1
    }
}

/// A scalar's value without a tag, as serde-saphyr reads it; `None` when
/// YAML might give it a type whose text differs.
fn scalar(text: Cow<'_, str>, style: ScalarStyle) -> Option<Value> {
    if style != ScalarStyle::Plain {
        return Some(Value::Scalar(text.into_owned()));
    }
    let t: &str = &text;
    if matches!(t, "" | "~" | "null" | "Null" | "NULL") {
        return Some(Value::Null);
    }
    let decimal = !t.is_empty()
        && t.len() <= 19
        && t.bytes().all(|b| b.is_ascii_digit())
        && (t.len() == 1 || !t.starts_with('0'));
    if decimal || (!boolean_word(t) && !number_like(t)) {
        return Some(Value::Scalar(text.into_owned()));
    }
    None
}

/// A word YAML 1.1 reads as a boolean (serde-saphyr's default), in any
/// case.
fn boolean_word(t: &str) -> bool {
    ["y", "yes", "true", "on", "n", "no", "false", "off"]
        .iter()
        .any(|w| t.eq_ignore_ascii_case(w))
}

/// Whether `t` might be a YAML number: every character may be part of
/// one (digits, hexadecimal letters, radix prefixes `0x`, `0o`, `0b`,
/// `.`, `_`, the letters of `.inf` and `.nan`, and signs, first or after
/// an exponent's `e`), and it has a digit or an `i` or `n`. Text with any
/// other character, a sign elsewhere (`8000-8080`), or only hexadecimal
/// letters and punctuation (`cafe`, `a`, `.`) is no number.
fn number_like(t: &str) -> bool {
    let b = t.as_bytes();
    let digit_or_word = b
        .iter()
        .any(|b| b.is_ascii_digit() || matches!(b, b'i' | b'I' | b'n' | b'N'));
    let signs_placed = (1..b.len())
        .filter(|&i| matches!(b[i], b'+' | b'-'))
        .all(|i| matches!(b[i - 1], b'e' | b'E'));
    digit_or_word
        && signs_placed
        && b.iter().all(|b| {
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
mod tests {
    use super::*;

    #[test]
    fn numbers_booleans_and_nulls_are_left_to_serde_saphyr() {
        for t in [
            "0x50",
            "0o17",
            "0b101",
            "1e3",
            "1.5",
            "-1",
            "+1",
            "007",
            "1_000",
            ".inf",
            "-.inf",
            ".nan",
            "nan",
            "Inf",
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
        ] {
            assert_eq!(scalar(t.into(), ScalarStyle::Plain), None, "{t}");
        }
        for t in ["", "~", "null", "Null", "NULL"] {
            assert_eq!(
                scalar(t.into(), ScalarStyle::Plain),
                Some(Value::Null),
                "{t}"
            );
        }
        for t in [
            "0",
            "80",
            "65535",
            "198.18.0.1/32",
            "2001:db8::1/128",
            "10Mbit",
            "ch0",
            "udp",
            "yesterday",
            "1 2",
            "a",
            "cafe",
            "deadbeef",
            ".",
            "+",
            "_",
        ] {
            assert_eq!(
                scalar(t.into(), ScalarStyle::Plain),
                Some(Value::Scalar(t.into())),
                "{t}"
            );
        }
        for style in [ScalarStyle::SingleQuoted, ScalarStyle::DoubleQuoted] {
            for t in ["", "null", "0x50", "yes"] {
                assert_eq!(scalar(t.into(), style), Some(Value::Scalar(t.into())));
            }
        }
    }
}
