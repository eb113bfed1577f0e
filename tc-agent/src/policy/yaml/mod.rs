//! The policy file as YAML: text to a small tree of nodes that
//! remember their line. The plain reader (`events`) reads the plain YAML
//! large policies are written in; a file it declines (at the first thing
//! it would have to interpret) is read again, whole, by serde-saphyr,
//! which reports every error. Both drive the same parser with the same
//! options.
//!
//! Every resource the text can make the parser spend is bounded here, before
//! it can grow: the size of the text, the nesting depth, the parser events,
//! and what aliases may replay. Types and meanings are checked later, by
//! `validate`, which knows each node's field path.

mod events;

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{
    Budget, DuplicateKeyPolicy, Location, MergeKeyPolicy, MessageFormatter, Options, Spanned,
};

/// Largest policy text accepted: the largest policy the datapath can hold
/// (1,024 channels, 65,536 prefixes per side and family, written out) is
/// about 3 MiB; twice that leaves room for comments and long names, and a
/// file a few MiB past it is refused before it is parsed.
pub const MAX_FILE_BYTES: usize = 6 << 20;
/// Deepest nesting of lists and maps: a policy needs 5 levels
/// (`channels` / item / `limit` / value, or `endpoints` / set / item).
pub const MAX_DEPTH: usize = 16;
/// Parser events (scalars, starts and ends of lists and maps) one file may
/// produce: a policy at every limit (1,024 channels, 4 x 65,536 prefixes)
/// needs well under a million.
pub const MAX_EVENTS: usize = 2_000_000;
/// Events that aliases (`*name`) may replay in all: enough to share a list
/// of prefixes or a `limit` among many channels, too few for an alias bomb
/// (a billion laughs, or 1,024 channels each aliasing a 65,536-entry list).
pub const MAX_ALIAS_EVENTS: usize = 262_144;

/// One YAML node and where it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line where the node is used (for an alias: the alias), the
    /// line diagnostics about this node name.
    pub line: usize,
    /// What the node holds.
    pub value: Value,
}

/// What a node holds, with every scalar kept as its text: `validate` decides
/// what a field's text means, so a port, a name and a rate are read alike
/// whether or not YAML would have inferred a number.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `key:` with nothing after it, `~` or `null`: kept apart from a missing
    /// key so that a file cut after `from:` cannot silently mean "any".
    Null,
    /// A scalar's text as written (quotes and escapes resolved).
    Scalar(String),
    /// A sequence, in order.
    List(Vec<Node>),
    /// A mapping in file order, duplicates kept so that `validate` can name them.
    Map(Vec<Entry>),
}

/// One key of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key's text.
    pub key: String,
    /// 1-based line of the key: where an unknown or duplicate key is reported.
    pub line: usize,
    /// The value under the key.
    pub value: Node,
}

impl Value {
    /// What the node is, for "expected a list, found a map" messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "nothing",
            Value::Scalar(_) => "a single value",
            Value::List(_) => "a list",
            Value::Map(_) => "a map",
        }
    }
}

/// The text could not be read as YAML, or hit one of the bounds above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    /// 1-based line of the problem, when the parser knows it.
    pub line: Option<usize>,
    /// What is wrong, without the position (the diagnostic leads with it).
    pub message: String,
}

/// Which nodes [`parse`] gives their line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lines {
    /// Every node: what diagnostics need.
    All,
    /// Mapping keys and values only; a list's items get line 0. A large
    /// policy is mostly list items (its prefixes), and serde-saphyr's spans
    /// are costly: it read the benchmark's 2.9 MB policy in 160-170 ms with
    /// every span, 117-119 ms without the items' (the plain reader, which
    /// takes that file, in 40-58 ms either way). A file read this way is
    /// read again with [`Lines::All`] when validation has anything to say
    /// about it (`Policy::parse`).
    MapsOnly,
}

/// Parses `text` into a node tree, `None` for a file without a document
/// (empty, or only comments), which `validate` turns into its own error;
/// with the parser events the text produced (what [`MAX_EVENTS`] bounds),
/// so that a file read in parts (`reuse`) is held to the bound of the
/// whole.
pub fn parse_counted(text: &str, lines: Lines) -> Result<(Option<Node>, usize), SyntaxError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(SyntaxError {
            line: None,
            message: format!(
                "the file is {} bytes; a policy file may hold at most {} bytes ({} MiB)",
                text.len(),
                MAX_FILE_BYTES,
                MAX_FILE_BYTES >> 20
            ),
        });
    }
    // The plain YAML of a large policy straight from the parser's events;
    // anything else through serde-saphyr.
    let (root, events) = match plain(text, lines) {
        Ok(read) => read,
        Err(declined) => {
            tracing::debug!(
                line = declined.line,
                why = declined.why,
                "the plain YAML reader declined the file; serde-saphyr reads it"
            );
            read_serde(text, lines)?
        }
    };
    let root = root.and_then(|(line, value)| match value {
        Value::Null => None,
        value => Some(Node { line, value }),
    });
    Ok((root, events))
}

/// [`parse_counted`] through the plain reader (`events`), with
/// serde-saphyr's parser options.
fn plain(text: &str, lines: Lines) -> Result<events::Reading, events::Declined> {
    match lines {
        Lines::All => events::read::<true>(text, parser_options()),
        Lines::MapsOnly => events::read::<false>(text, parser_options()),
    }
}

/// The options serde-saphyr gives its parser for [`options`] (its
/// `Options::parser_options`, which it does not export), for the plain
/// reader: a file one reader's parser refuses, the other's refuses too.
fn parser_options() -> granit_parser::Options {
    let serde = options();
    let mut parser = granit_parser::Options::default();
    if let Some(budget) = &serde.budget {
        parser.simple_key_max_lookahead = budget.simple_key_max_lookahead;
        parser.flow_nesting_limit = budget.flow_nesting_limit;
        parser.block_nesting_limit = parser
            .block_nesting_limit
            .max(budget.max_depth.saturating_add(1));
    }
    parser.strict_indentation = serde.strict_indentation;
    parser.bom_inside_document_as_content = serde.bom_inside_document_as_content;
    // Comments are no events for serde-saphyr (its `comments` feature is
    // off).
    parser.emit_comments = false;
    parser
}

/// [`parse_counted`] through serde-saphyr: the document's root and its
/// line, and the parser events.
fn read_serde(text: &str, lines: Lines) -> Result<(Option<(usize, Value)>, usize), SyntaxError> {
    let events = std::rc::Rc::new(std::cell::Cell::new(0));
    let counted = events.clone();
    let opts = options().with_budget_report(move |r| counted.set(r.events));
    let root = match lines {
        Lines::All => read::<true>(text, opts)?,
        Lines::MapsOnly => read::<false>(text, opts)?,
    };
    Ok((root, events.get()))
}

/// The document's root and its line, its list items spanned or not
/// (`ITEM_LINES`).
fn read<const ITEM_LINES: bool>(
    text: &str,
    opts: Options,
) -> Result<Option<(usize, Value)>, SyntaxError> {
    let root: Option<Spanned<Read<ITEM_LINES>>> =
        serde_saphyr::from_str_with_options(text, opts).map_err(|e| syntax_error(&e))?;
    Ok(root.map(|r| (line_of(&r.referenced), r.value.0)))
}

fn options() -> Options {
    let mut budget = Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_nodes = MAX_EVENTS;
    budget.flow_nesting_limit = MAX_DEPTH;
    budget.max_events = MAX_EVENTS;
    budget.max_documents = 1;
    budget.max_recorded_anchor_events = MAX_ALIAS_EVENTS;
    let mut opts = Options::default();
    opts.budget = Some(budget);
    opts.alias_limits.max_total_replayed_events = MAX_ALIAS_EVENTS;
    // `validate` names a repeated key with its field path and line.
    opts.duplicate_keys = DuplicateKeyPolicy::PassThrough;
    // `<<` merges would hide where a key came from; a `<<` key is reported
    // as an unknown key instead.
    opts.merge_keys = MergeKeyPolicy::AsOrdinary;
    opts.with_snippet = false;
    opts
}

fn line_of(l: &Location) -> usize {
    usize::try_from(l.line()).unwrap_or(usize::MAX)
}

fn syntax_error(e: &serde_saphyr::Error) -> SyntaxError {
    use serde_saphyr::{budget::BudgetBreach as B, Error as E};
    let line = e.location().map(|l| line_of(&l)).filter(|l| *l > 0);
    // The error itself, under the wrappers that add an alias's location or
    // a snippet of the text.
    let mut e = e;
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = e {
        e = error;
    }
    let nesting = || {
        format!("nested deeper than {MAX_DEPTH} levels; a policy needs 5 (check for unclosed `[` or `{{`)")
    };
    let aliases = || {
        format!("aliases (`*name`) would expand to more than {MAX_ALIAS_EVENTS} values; refused rather than expanded (name an endpoint set in `from`/`to` instead of aliasing a list)")
    };
    let too_large = || {
        format!("more than {MAX_EVENTS} YAML values; far more than a policy at every limit needs")
    };
    let message = match e {
        E::Budget { breach, .. } => match breach {
            B::Depth { .. } => nesting(),
            B::Events { .. } | B::Nodes { .. } | B::ScalarBytes { .. } => too_large(),
            B::Documents { .. } => "more than one YAML document; a policy file holds one".into(),
            B::Aliases { .. }
            | B::Anchors { .. }
            | B::AliasAnchorRatio { .. }
            | B::RecordedAnchorEvents { .. }
            | B::RecordedAnchorBytes { .. } => aliases(),
            other => format!("the file is too large or complex to read: {other:?}"),
        },
        E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. }
        | E::AliasReplayCounterOverflow { .. } => aliases(),
        e => {
            let m = serde_saphyr::DefaultMessageFormatter.format_message(e);
            // The scanner's bound on open flow collections (`[[[...`).
            if m.contains("recursion limit exceeded") {
                nesting()
            } else {
                m.into_owned()
            }
        }
    };
    SyntaxError { line, message }
}

/// A [`Value`] as read with list items spanned (`ITEM_LINES`) or not.
struct Read<const ITEM_LINES: bool>(
    /// What was read.
    Value,
);

impl<'de, const ITEM_LINES: bool> Deserialize<'de> for Read<ITEM_LINES> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor::<ITEM_LINES>).map(Read)
    }
}

/// Builds a [`Value`] from whatever the parser found; maps ask for their
/// keys and values with spans, lists for their items with spans when
/// `ITEM_LINES` (see [`Lines`]).
struct ValueVisitor<const ITEM_LINES: bool>;

impl<'de, const ITEM_LINES: bool> Visitor<'de> for ValueVisitor<ITEM_LINES> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a YAML value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Read::<ITEM_LINES>::deserialize(d).map(|r| r.0)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Scalar(v.to_string()))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Scalar(v.to_string()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Scalar(v.to_string()))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::Scalar(v.to_string()))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(Value::Scalar(v.to_string()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Scalar(v.to_string()))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Scalar(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Scalar(v))
    }

    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Value, E> {
        Err(E::custom("binary values have no meaning in a policy"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        if ITEM_LINES {
            while let Some(item) = seq.next_element::<Spanned<Read<ITEM_LINES>>>()? {
                items.push(Node {
                    line: line_of(&item.referenced),
                    value: item.value.0,
                });
            }
        } else {
            while let Some(item) = seq.next_element::<Read<ITEM_LINES>>()? {
                items.push(Node {
                    line: 0,
                    value: item.0,
                });
            }
        }
        Ok(Value::List(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Key>>()? {
            let value: Spanned<Read<ITEM_LINES>> = map.next_value()?;
            entries.push(Entry {
                key: key.value.0,
                line: line_of(&key.referenced),
                value: Node {
                    line: line_of(&value.referenced),
                    value: value.value.0,
                },
            });
        }
        Ok(Value::Map(entries))
    }
}

/// A mapping key: a scalar's text. A list or map as a key has no meaning in
/// a policy.
struct Key(
    /// The key's text.
    String,
);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Read::<false>::deserialize(d)?.0 {
            Value::Scalar(s) => Ok(Key(s)),
            Value::Null => Ok(Key(String::new())),
            other => Err(de::Error::custom(format!(
                "a key must be a name, not {}",
                other.kind()
            ))),
        }
    }
}

/// Whether the events reader took `text` read with `lines`, having
/// given exactly what serde-saphyr gives (tree, lines, events); an error
/// says how they differ. For the fuzz property that holds the two
/// readers together (`policy::fuzz`).
#[cfg(test)]
pub(super) fn plain_reads_as_serde(text: &str, lines: Lines) -> Result<bool, String> {
    let Ok(plain) = plain(text, lines) else {
        return Ok(false);
    };
    match read_serde(text, lines) {
        Ok(serde) if serde == plain => Ok(true),
        Ok(serde) => Err(format!(
            "{lines:?}: the events reader gave\n{plain:#?}\nserde-saphyr\n{serde:#?}"
        )),
        Err(e) => Err(format!(
            "{lines:?}: the events reader took a file serde-saphyr refuses: {e:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `node` with every list item's line set to 0.
    fn without_item_lines(mut node: Node) -> Node {
        node.value = match node.value {
            Value::List(items) => Value::List(
                items
                    .into_iter()
                    .map(|i| Node {
                        line: 0,
                        ..without_item_lines(i)
                    })
                    .collect(),
            ),
            Value::Map(entries) => Value::Map(
                entries
                    .into_iter()
                    .map(|e| Entry {
                        value: without_item_lines(e.value),
                        ..e
                    })
                    .collect(),
            ),
            v => v,
        };
        node
    }

    #[test]
    fn without_item_lines_the_tree_is_the_same() {
        let text = r#"
endpoints:
  web: &web [198.18.1.0/24, "2001:db8:1::/64"]
  nothing:
channels:
  - name: a
    from: *web
    ports: [80, "443", 8000-8080, 0x50, 1e3, true, ~, null, '']
    limit: {bandwidth: 10Mbit, packets: 1000}
  -
    name: b
    to:
      - 198.18.2.0/24
      - [nested, list]
      - {a: map}
    limit:
      bandwidth: 5Mbit
"#;
        let all = parse_counted(text, Lines::All).unwrap().0.unwrap();
        let maps = parse_counted(text, Lines::MapsOnly).unwrap().0.unwrap();
        assert_ne!(all, maps, "the list items' lines differ");
        assert_eq!(without_item_lines(all), maps);
    }

    /// The plain reader on YAML's corners: where it takes a file it reads
    /// it as serde-saphyr does, and it takes the plain ones.
    #[test]
    fn the_plain_reader_reads_corners_as_serde_saphyr() {
        let taken = [
            "",
            "# only a comment\n",
            "channels:\n  - name: a\n    from:\n",
            "a: |\n  text\n  more\nb: >\n  folded\n  text\n\nc: |-\n  x\n",
            "a: 'it''s'\nb: \"esc\\n\\t\\u0041\"\nc: ''\n",
            "--- \na: 1\n...\n",
            "a: b\na: c\n",
            "a:\n  - x\n  -\n  - z\n  - ~\n  - null\n",
            "? a\n: b\n",
            "a: {b: c, d: [e, f], g: }\n",
            "a: plain\n  continued line\nb: two  spaces\n",
            "- a\n- b\n",
            "just-a-scalar\n",
            "a: 2001:db8::/32\nb: 198.18.0.0/15\n",
            "a: x # a comment\n# another\n",
            "\u{feff}a: b\n",
            "a: [1, 2,]\n",
            "a: b\r\nc: d\r\n",
            "a:\n  b:\n    c:\n      d: [e]\n",
            "ports: [0, 80, 65535, 8000-8080]\nlimit: {bandwidth: 10Mbit}\n",
            "a: cafe\nb: .\nc: +\nd: _\ne: deadbeef\nf: a b\n",
            "a:\tb\n",
            "a:\n  <<: {b: c}\n",
            "---\n",
            "~\n",
            "null\n",
            "--- # nothing\n",
            "1: b\n\"~\": c\n'null': d\n\"\": e\n",
            "a: \"multi\n  line\"\nb: 'x\n\n  y'\n",
            "a: 2001-12-14\nb: 1-2\nc: 2001-12-14t21:59:43.10-05:00\n",
        ];
        let declined = [
            "a: !!str 5\n",
            "a: &x 1\nb: *x\n",
            "[a, b]: c\n",
            "~: c\n",
            "a: 0x50\n",
            "yes: b\n",
            "! a: b\n",
            "a: !local b\n",
            "a: yes\n",
            "a: 1e3\n",
            "a: [.inf, 1.5, 12345678901234567890]\n",
            "a: [1, 2\n",
            "---\na: 1\n---\nb: 2\n",
        ];
        // Each plain scalar of the reader's own table as a value, a list
        // item and a key.
        let as_nodes = |t: &str| [format!("k: {t}\n"), format!("- {t}\n"), format!("{t}: v\n")];
        let typed: Vec<String> = events::tests::TYPED
            .iter()
            .flat_map(|t| as_nodes(t))
            .collect();
        let strings: Vec<String> = events::tests::STRINGS
            .iter()
            .flat_map(|t| as_nodes(t))
            .collect();
        let taken = taken
            .iter()
            .copied()
            .chain(strings.iter().map(String::as_str));
        let declined = declined
            .iter()
            .copied()
            .chain(typed.iter().map(String::as_str));
        for (text, take) in taken.map(|t| (t, true)).chain(declined.map(|t| (t, false))) {
            for lines in [Lines::All, Lines::MapsOnly] {
                let took = plain_reads_as_serde(text, lines).unwrap();
                assert_eq!(took, take, "{text:?} {lines:?}");
            }
        }
    }

    /// The plain reader's scalar rules (`events::scalar`: YAML 1.1
    /// booleans, numbers typed whatever their form, nulls) were checked
    /// against serde-saphyr with these settings: one changed in
    /// [`options`] asks for the rules to be checked again.
    #[test]
    fn the_plain_reader_assumes_these_scalar_settings() {
        let o = options();
        assert!(
            !o.strict_booleans
                && !o.legacy_octal_numbers
                && !o.leading_zero_numbers_as_strings
                && !o.underscored_numbers_as_strings
                && !o.null_as_string
                && !o.angle_conversions
                && !o.no_schema,
            "serde-saphyr's scalar settings changed: check `events::scalar`"
        );
    }

    #[test]
    fn both_readings_refuse_alike() {
        for text in [
            "a: [1, 2",
            "a: *nothing",
            "---\na: 1\n---\nb: 2\n",
            &"[".repeat(40),
        ] {
            let all = parse_counted(text, Lines::All).unwrap_err();
            let maps = parse_counted(text, Lines::MapsOnly).unwrap_err();
            assert_eq!((all.line, all.message), (maps.line, maps.message), "{text}");
        }
    }
}
