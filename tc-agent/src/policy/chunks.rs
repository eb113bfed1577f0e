//! A policy file cut, by its lines alone, into the text before its
//! channels, each channel item as written, and the text after them, so
//! that `reuse` can tell which channels an edit touched without parsing
//! the file.
//!
//! Only the plain block layout is cut:
//!
//! ```yaml
//! endpoints: ...
//! channels:
//!   - name: a        # an item: its `-` at the list's column,
//!     from: [...]    # and every line indented past it
//!   - name: b
//! other: ...         # the tail: back at column 0
//! ```
//!
//! Lines alone cannot see a quoted string or a `[...]` that runs over
//! several lines, so the cut is a guess about where YAML's items are; it
//! is never trusted by itself: `reuse` parses every item it takes on its
//! own and keeps it only if it reads as exactly one complete item. Texts
//! with constructs that reach across lines in other ways (anchors and
//! aliases, tags, block scalars, directives, tabs, other line breaks than
//! `\n`) are not cut at all, and are read whole.

/// A file cut at its channel items; the parts, in order, are the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Cut<'t> {
    /// Up to the first item: the `channels:` line, what precedes it, and
    /// the blank and comment lines after it.
    pub head: &'t str,
    /// Each item from its `-` line up to the next item's (comment and
    /// blank lines in between belong to the item before them).
    pub items: Vec<&'t str>,
    /// From the first line back at column 0 after the items, to the end.
    pub tail: &'t str,
    /// Column of the items' `-`.
    pub indent: usize,
}

/// Where `part`, a slice of `text` (one of its [`Cut`]'s parts), is in it.
pub(super) fn span(text: &str, part: &str) -> std::ops::Range<usize> {
    let start = (part.as_ptr() as usize)
        .checked_sub(text.as_ptr() as usize)
        .filter(|&s| s + part.len() <= text.len())
        .expect("a part of the text");
    start..start + part.len()
}

/// Characters after which a line no longer says where a node starts or
/// ends: `&`/`*` (anchors, aliases), `!` (tags), `|`/`>` (block
/// scalars), `%` (directives), a tab (YAML forbids it in indentation;
/// refused rather than measured), and the line breaks YAML 1.1 readers
/// also honour (`\r`, NEL, LS, PS) and a byte-order mark.
const UNCUT: [char; 12] = [
    '&', '*', '!', '|', '>', '%', '\t', '\r', '\u{85}', '\u{2028}', '\u{2029}', '\u{feff}',
];

/// Whether `text` holds any of [`UNCUT`]. ASCII text (the usual policy)
/// can hold only its ASCII ones, found with SIMD byte searches: a search
/// for the twelve characters at once decodes every character, and was
/// most of the cut of a 2.9 MB file.
fn has_uncut(text: &str) -> bool {
    if !text.is_ascii() {
        return text.contains(UNCUT);
    }
    let b = text.as_bytes();
    memchr::memchr3(b'&', b'*', b'!', b).is_some()
        || memchr::memchr3(b'|', b'>', b'%', b).is_some()
        || memchr::memchr2(b'\t', b'\r', b).is_some()
}

/// What one line is, to the cut.
enum Line {
    /// Blank, or only a comment.
    Inert,
    /// Anything else: its indentation, and whether it starts an item.
    Content { indent: usize, dash: bool },
}

fn line_kind(line: &str) -> Line {
    let body = line.strip_suffix('\n').unwrap_or(line);
    let text = body.trim_start_matches(' ');
    if text.is_empty() || text.starts_with('#') {
        return Line::Inert;
    }
    Line::Content {
        indent: body.len() - text.len(),
        dash: text == "-" || text.starts_with("- "),
    }
}

/// `text` cut at its channel items, or `None` when its layout is not the
/// plain one (see the module's documentation).
pub(super) fn cut(text: &str) -> Option<Cut<'_>> {
    if has_uncut(text) {
        return None;
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    if lines
        .iter()
        .any(|l| l.starts_with("---") || l.starts_with("..."))
    {
        return None;
    }
    // The one `channels:` line at column 0, with nothing after the colon.
    let mut key = None;
    for (i, l) in lines.iter().enumerate() {
        if l.trim_end() == "channels:" && key.replace(i).is_some() {
            return None;
        }
    }
    let key = key?;
    // Byte offset of each line's start, and of the end.
    let offsets: Vec<usize> = std::iter::once(0)
        .chain(lines.iter().scan(0, |at, l| {
            *at += l.len();
            Some(*at)
        }))
        .collect();
    let mut i = key + 1;
    while i < lines.len() && matches!(line_kind(lines[i]), Line::Inert) {
        i += 1;
    }
    let Line::Content { indent, dash: true } = line_kind(lines.get(i)?) else {
        return None;
    };
    let mut starts = vec![i];
    let mut end = lines.len();
    for (j, l) in lines.iter().enumerate().skip(i + 1) {
        match line_kind(l) {
            Line::Inert => {}
            Line::Content { indent: n, dash } if n == indent && dash => starts.push(j),
            Line::Content { indent: n, .. } if n > indent => {}
            Line::Content { indent: 0, .. } => {
                end = j;
                break;
            }
            Line::Content { .. } => return None,
        }
    }
    let (head_end, tail_start) = (offsets[i], offsets[end]);
    let bounds: Vec<usize> = starts
        .iter()
        .map(|&s| offsets[s])
        .chain([tail_start])
        .collect();
    Some(Cut {
        head: &text[..head_end],
        items: bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect(),
        tail: &text[tail_start..],
        indent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_the_plain_layout_into_parts_that_make_the_text() {
        let text = "endpoints:\n  web: [198.18.0.0/24]\nchannels:\n  # first\n  - name: a\n    from: web\n\n  # second\n  - name: b\n    limit: {bandwidth: 1Mbit}\n# after\nother: 1\n";
        let c = cut(text).unwrap();
        assert_eq!(
            c.head,
            "endpoints:\n  web: [198.18.0.0/24]\nchannels:\n  # first\n"
        );
        assert_eq!(
            c.items,
            vec![
                "  - name: a\n    from: web\n\n  # second\n",
                "  - name: b\n    limit: {bandwidth: 1Mbit}\n# after\n"
            ]
        );
        assert_eq!(c.tail, "other: 1\n");
        assert_eq!(c.indent, 2);
        assert_eq!(
            [c.head, &c.items.concat(), c.tail].concat(),
            text,
            "the parts are the text"
        );
    }

    #[test]
    fn the_byte_search_finds_what_the_character_search_finds() {
        for c in UNCUT {
            for text in [format!("a: 1\nb{c}c\n"), format!("é: 1\nb{c}c\n")] {
                assert!(has_uncut(&text), "{text:?}");
            }
        }
        for text in [
            "channels:\n  - name: a\n",
            "é: [\"x\"]\n",
            "",
            "\u{84}\u{2027}",
        ] {
            assert_eq!(has_uncut(text), text.contains(UNCUT), "{text:?}");
            assert!(!has_uncut(text), "{text:?}");
        }
    }

    #[test]
    fn items_at_column_zero_end_at_the_next_key() {
        let c = cut("channels:\n- name: a\n  from: x\n- name: b\nendpoints:\n  x: [198.18.0.1]\n")
            .unwrap();
        assert_eq!(c.items, vec!["- name: a\n  from: x\n", "- name: b\n"]);
        assert_eq!(c.tail, "endpoints:\n  x: [198.18.0.1]\n");
        assert_eq!(c.indent, 0);
    }

    #[test]
    fn other_layouts_are_not_cut() {
        for text in [
            // No block list of channels.
            "channels: []\n",
            "channels:\n",
            "channels: # none\n",
            "endpoints: {}\n",
            // Two `channels:` lines.
            "channels:\n  - name: a\nchannels:\n  - name: b\n",
            // A line between the list's column and column 0.
            "channels:\n    - name: a\n  - name: b\n",
            "channels:\n  - name: a\n  name: b\n",
            // Constructs that reach across lines.
            "channels:\n  - &a {name: a}\n  - *a\n",
            "channels:\n  - name: a\n    from: !!str x\n",
            "channels:\n  - name: |\n      a\n",
            "channels:\n  - name: >\n      a\n",
            "%YAML 1.2\n---\nchannels:\n  - name: a\n",
            "channels:\n  - name: a\n---\n",
            "channels:\n\t- name: a\n",
            "channels:\r\n  - name: a\r\n",
            "channels:\n  - name: a\u{2028}  - name: b\n",
        ] {
            assert_eq!(cut(text), None, "{text:?}");
        }
    }
}
